"""attnunet.pipelines: datasets, training, inference, evaluation and MLflow tracking.

Import the submodule you need (``attnunet.pipelines.datasets``, ``.training``, ``.inference``,
``.evaluation``, ``.demo_data``); this package itself imports nothing heavy.
"""
