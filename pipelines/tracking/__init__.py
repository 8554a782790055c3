"""MLflow: the tracking store and the run tracker (with its registered model's alias).

It imports only attnunet's core and MLflow: what a finished run logs is
:mod:`attnunet.pipelines.engines.finish`, ``attnunet sync`` :mod:`attnunet.pipelines.engines.sync`, the
logged model :mod:`attnunet.pipelines.inference.mlflow_model` (tests/test_import_layers.py keeps it so).
"""
