"""attnunet.pipelines: everything between files on disk and a trained, tracked, applied model.

Sub-packages by concern: ``data`` (discovery, splits, checks), ``planning``, ``engines`` (training),
``tracking`` (MLflow), ``inference``, ``evaluation``, ``bundle`` (MONAI bundles), ``demo`` and
``commands`` (the CLI); ``flags`` and ``distributed`` (DDP under ``torchrun``) serve several of them. Lower
layers never import higher ones (tests/test_import_layers.py). This package itself imports nothing heavy.
"""
