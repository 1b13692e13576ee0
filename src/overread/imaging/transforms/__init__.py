"""Composable pixel transforms shared by training and serving.

Each transform is a small callable class ``Image -> Image`` (MONAI's array
transforms are the model) that leaves its input untouched, appends one line to
:attr:`Image.provenance`, and can describe itself with :meth:`to_spec` so a
model package records the exact chain it was trained with and
:func:`build_chain` rebuilds it at serving time.

The order of the grey-scale steps follows the presentation pipeline of PS3.4
N.2: Modality LUT (done by :func:`overread.imaging.read`) -> VOI LUT / window
(:class:`VoiWindow`, PS3.3 C.11.2) -> Presentation LUT, here the MONOCHROME1
inversion (:class:`InvertMonochrome1`, PS3.3 C.7.6.3.1.2) -> scaling and
geometry, which are outside the standard's pipeline.
"""

from __future__ import annotations

from overread.imaging.transforms.base import Transform, registered_transforms
from overread.imaging.transforms.chain import ChainRun, Compose, build_chain
from overread.imaging.transforms.harmonise import (
    Clahe,
    Harmonisation,
    HistogramMatch,
    IntensityStandard,
    VendorLut,
    ZScoreNormalize,
    reference_quantiles,
)
from overread.imaging.transforms.intensity import (
    LUMA,
    WINDOW_PRESETS,
    InvertMonochrome1,
    Normalize,
    Rescale,
    ToGrayscale,
    VoiWindow,
)
from overread.imaging.transforms.spatial import Letterbox, Resample, Resize, SelectFrame


def cxr_chain(
    size: int = 224, method: str = "area", harmonisation: Harmonisation | None = None
) -> Compose:
    """The standard chest X-ray classification chain.

    First frame; RGB -> grey; the file's VOI window (else 0.5-99.5 percentile
    window) to [0, 1]; MONOCHROME1 inversion (bone bright); clip to [0, 1];
    resize keeping aspect with zero padding to ``size x size``. A
    ``harmonisation`` may ignore the vendor's window and adds its steps after the
    clip, before the resize (so the padding is not part of any histogram).
    """
    harmonise = harmonisation or Harmonisation()
    return Compose(
        [
            SelectFrame(0),
            ToGrayscale(),
            VoiWindow(
                fallback="percentile",
                lower=0.5,
                upper=99.5,
                use_file=harmonise.vendor_lut is VendorLut.FILE,
            ),
            InvertMonochrome1(),
            Normalize("clip"),
            *harmonise.steps(),
            Resize(size, keep_aspect=True, pad_value=0.0, method=method),
        ]
    )


def ct_window_chain(preset: str, size: int | None = None) -> Compose:
    """A CT chain: a named window preset (HU), optionally resized."""
    steps: list[Transform] = [VoiWindow(preset=preset), Normalize("clip")]
    if size is not None:
        steps.append(Resize(size))
    return Compose(steps)


__all__ = [
    "LUMA",
    "WINDOW_PRESETS",
    "ChainRun",
    "Clahe",
    "Compose",
    "Harmonisation",
    "HistogramMatch",
    "IntensityStandard",
    "InvertMonochrome1",
    "Letterbox",
    "Normalize",
    "Resample",
    "Rescale",
    "Resize",
    "SelectFrame",
    "ToGrayscale",
    "Transform",
    "VendorLut",
    "VoiWindow",
    "ZScoreNormalize",
    "build_chain",
    "ct_window_chain",
    "cxr_chain",
    "reference_quantiles",
    "registered_transforms",
]
