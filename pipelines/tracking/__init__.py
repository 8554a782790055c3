"""MLflow: the tracking store, the run tracker and the registered model."""
