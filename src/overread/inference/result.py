"""What the pipeline returns for one input: the :class:`Prediction`.

It is :class:`overread.results.Prediction` (the type the service, triage and the
web read) with what only the pipeline knows: the image's metadata and the
preprocessed model input the heatmaps align with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overread.imaging import ImageMetadata
from overread.results import FindingResult, ModelRef
from overread.results import Prediction as ResultPrediction


@dataclass
class Prediction(ResultPrediction):
    """The pipeline's result for one input, successful (``ok``) or not (``error``).

    ``model_input`` is the preprocessed image the model saw (and the heatmaps align
    with); ``metadata`` is the image's, when it could be read.
    """

    metadata: ImageMetadata | None = None
    model_input: np.ndarray | None = None

    @property
    def study_instance_uid(self) -> str | None:
        """The image's Study Instance UID when known."""
        return self.metadata.study_instance_uid if self.metadata else None

    @property
    def sop_instance_uid(self) -> str | None:
        """The image's SOP Instance UID when known."""
        return self.metadata.sop_instance_uid if self.metadata else None


__all__ = ["FindingResult", "ModelRef", "Prediction"]
