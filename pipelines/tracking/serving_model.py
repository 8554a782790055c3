"""The code of attnunet's MLflow pyfunc models ("models from code", logged by
:func:`attnunet.pipelines.tracking.serving.log_segmentation_model`).

MLflow copies this file into every logged model and runs it when the model is loaded. It only names
attnunet's public :class:`~attnunet.pipelines.tracking.serving.SegmentationModel`, so a model logged by
an older attnunet runs the installed attnunet's code (and checkpoint upgrades), not a frozen copy.
"""

import mlflow

from attnunet.pipelines.tracking.serving import SegmentationModel

mlflow.models.set_model(SegmentationModel())
