"""The code of attnunet's MLflow pyfunc models ("models from code", logged by
:func:`attnunet.pipelines.inference.mlflow_model.log_segmentation_model`).

MLflow copies this file into every logged model and runs it when the model is loaded. It only names
attnunet's public :class:`~attnunet.pipelines.inference.serving.SegmentationModel`, so a model logged by
an older attnunet runs the installed attnunet's code (and checkpoint upgrades), not a frozen copy. (Models
logged while this file lived in ``attnunet.pipelines.tracking`` carry a copy that imports
``attnunet.pipelines.tracking.serving``.)
"""

import mlflow

from attnunet.pipelines.inference.serving import SegmentationModel

mlflow.models.set_model(SegmentationModel())
