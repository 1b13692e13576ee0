"""Reduce-first execution of a chain against the full-resolution order.

``Compose.read_and_apply`` may area-reduce a native grey film before its VOI
window (overread.imaging.transforms.reduced). These tests run every file the
imaging core reads, under every transfer syntax and photometric
interpretation it supports, both ways and require the outputs to agree within
the stated tolerance; films the plan does not take must come out bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from tests.imaging.conftest import PYDICOM_FILES, build_dataset

from overread.config import ImagingSettings
from overread.errors import OverreadError
from overread.imaging.transforms import VoiWindow, build_chain, cxr_chain
from overread.imaging.transforms.reduced import TOLERANCE, ReducedPlan, area_means

REDUCED = ImagingSettings(strictness="ignore")
FULL = ImagingSettings(strictness="ignore", reduce_first=False)
NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def both_ways(chain, path: Path):  # type: ignore[no-untyped-def]
    fast = chain.read_and_apply(path, settings=REDUCED)
    slow = chain.read_and_apply(path, settings=FULL)
    assert not slow.reduced_first
    return fast, slow


def assert_agree(fast, slow) -> None:  # type: ignore[no-untyped-def]
    a, b = fast.processed.pixels, slow.processed.pixels
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    if fast.reduced_first:
        assert float(np.abs(a - b).max()) <= TOLERANCE
    else:
        np.testing.assert_array_equal(a, b)
    assert fast.source_shape == slow.source_shape
    assert fast.processed.metadata.photometric_interpretation == (
        slow.processed.metadata.photometric_interpretation
    )
    assert fast.processed.metadata.rows == slow.processed.metadata.rows
    assert fast.processed.value_range == slow.processed.value_range


def film(rows: int, cols: int, seed: int, top: int = 4095) -> np.ndarray:
    """A 12-bit film with edges, collimation and saturated corners (what the clip meets)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    body = 0.5 + 0.3 * np.sin(x / 37.0) * np.cos(y / 53.0)
    body[(x - cols / 2) ** 2 / (cols / 3) ** 2 + (y - rows / 2) ** 2 / (rows / 3) ** 2 < 1] *= 0.5
    body[: rows // 10] = 1.0  # open field: saturates
    body[:, : cols // 12] = 0.0  # collimator: under the window
    noisy = body + rng.normal(0, 0.02, body.shape)
    return np.clip(noisy * top, 0, top).astype(np.uint16)


SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda u: UID(u).keyword)
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_every_syntax_and_photometric(tmp_path: Path, syntax: UID, photometric: str) -> None:
    pixels = film(700, 560, seed=3)
    ds = build_dataset(pixels, PhotometricInterpretation=photometric, Modality="CR")
    ds.BitsStored, ds.HighBit = 12, 11
    path = tmp_path / "film.dcm"
    if syntax.is_compressed:
        try:
            ds.compress(syntax)
        except Exception as exc:  # no encoder plugin installed
            pytest.skip(f"cannot encode {syntax.name}: {exc}")
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(
            path,
            enforce_file_format=True,
            implicit_vr=syntax.is_implicit_VR,
            little_endian=syntax.is_little_endian,
        )
    fast, slow = both_ways(cxr_chain(224), path)
    assert fast.reduced_first == (syntax in NATIVE_LE)
    assert_agree(fast, slow)
    if photometric == "MONOCHROME1":
        assert fast.processed.metadata.photometric_interpretation == "MONOCHROME2"


WINDOWS = [
    # (header attributes, chain window, whether the plan takes it)
    ({}, VoiWindow(fallback="percentile"), True),
    ({}, VoiWindow(fallback="minmax"), True),
    ({"WindowCenter": 2000, "WindowWidth": 3000}, VoiWindow(), True),
    (
        {"WindowCenter": 1800, "WindowWidth": 2500, "VOILUTFunction": "LINEAR_EXACT"},
        VoiWindow(),
        True,
    ),
    ({"WindowCenter": 2000, "WindowWidth": 3000, "VOILUTFunction": "SIGMOID"}, VoiWindow(), False),
    ({"WindowCenter": 2000, "WindowWidth": 300}, VoiWindow(), False),  # narrower than 1000
    ({}, VoiWindow(center=-400.0, width=3000.0), True),
    ({"RescaleSlope": 1.0, "RescaleIntercept": -1024.0}, VoiWindow(preset="bone"), True),
    ({"RescaleSlope": -0.5, "RescaleIntercept": 3000.0}, VoiWindow(), True),
    ({"PresentationLUTShape": "INVERSE"}, VoiWindow(), True),
]


@pytest.mark.parametrize(("attrs", "window", "taken"), WINDOWS)
def test_windows_rescales_and_shapes(
    tmp_path: Path, attrs: dict[str, object], window: VoiWindow, taken: bool
) -> None:
    pixels = film(640, 900, seed=5)
    ds = build_dataset(pixels, Modality="DX", **attrs)
    path = tmp_path / "film.dcm"
    ds.save_as(path, enforce_file_format=True)
    chain = cxr_chain(224)
    chain.transforms[2] = window
    fast, slow = both_ways(chain, path)
    assert fast.reduced_first == taken
    assert_agree(fast, slow)


def test_signed_values_and_voi_lut_sequence(tmp_path: Path) -> None:
    signed = (film(500, 500, seed=7).astype(np.int32) - 2048).astype(np.int16)
    path = tmp_path / "signed.dcm"
    build_dataset(signed, Modality="CT", RescaleSlope=1.0, RescaleIntercept=-1024.0).save_as(
        path, enforce_file_format=True
    )
    fast, slow = both_ways(cxr_chain(128), path)
    assert fast.reduced_first
    assert_agree(fast, slow)
    unsigned_path = tmp_path / "lut.dcm"
    from pydicom.dataset import Dataset

    ds = build_dataset(film(400, 400, seed=8))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = np.arange(0, 65536, 16, dtype="<u2").tobytes()
    ds.VOILUTSequence = [item]
    ds.save_as(unsigned_path, enforce_file_format=True)
    fast, slow = both_ways(cxr_chain(128), unsigned_path)
    assert not fast.reduced_first  # a table is not affine: read in full
    assert_agree(fast, slow)


def test_pydicom_corpus_agrees() -> None:
    """Every file of pydicom's test corpus the core reads, both ways."""
    chain = cxr_chain(32)  # smaller than the corpus images: most are 64-512 px
    compared = reduced = 0
    for path in sorted(PYDICOM_FILES.iterdir()):
        if not path.is_file():
            continue
        try:
            slow = chain.read_and_apply(path, settings=FULL)
        except (OverreadError, ValueError):
            continue
        fast = chain.read_and_apply(path, settings=REDUCED)
        assert_agree(fast, slow)
        compared += 1
        reduced += fast.reduced_first
    assert compared >= 30
    assert reduced >= 3  # the corpus's native 16-bit grey images take the reduced path


def test_phantom_cr_and_dx_films(tmp_path: Path) -> None:
    from overread.phantom import generate_cohort

    generate_cohort(tmp_path, 6, 2026, rows=768, cols=640)
    films = sorted(tmp_path.rglob("*.dcm"))
    assert films
    chain = cxr_chain(224)
    photometrics = set()
    for path in films:
        fast, slow = both_ways(chain, path)
        assert fast.reduced_first
        assert_agree(fast, slow)
        photometrics.add(slow.source.photometric_interpretation)
    assert photometrics  # the phantom's sites write MONOCHROME1 and/or MONOCHROME2


def test_area_means_are_adaptive_pooling() -> None:
    import torch
    import torch.nn.functional as F

    values = np.random.default_rng(1).integers(0, 65535, (301, 457), dtype=np.uint16)
    means = area_means(values, 37, 64, (0, 65535))
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(values.astype(np.float64))[None], (37, 64))
    np.testing.assert_allclose(means, pooled[0].numpy(), rtol=1e-12)
    clamped = area_means(values, 37, 64, (1000, 2000))
    assert clamped.min() >= 1000 and clamped.max() <= 2000


def test_chains_of_other_shapes_run_in_full(tmp_path: Path) -> None:
    assert ReducedPlan.of(cxr_chain(224, method="bilinear").transforms) is None
    spec = cxr_chain(224).to_spec()
    assert ReducedPlan.of(build_chain(spec).transforms) is not None
    assert ReducedPlan.of(build_chain([spec[-1], *spec[:-1]]).transforms) is None
    path = tmp_path / "small.dcm"
    build_dataset(film(100, 80, seed=2)).save_as(path, enforce_file_format=True)
    fast, slow = both_ways(cxr_chain(224), path)  # an enlargement: read in full
    assert not fast.reduced_first
    assert_agree(fast, slow)


def test_broken_films_fail_alike(tmp_path: Path) -> None:
    """A truncated or over-limit film is refused the same way whichever read is used."""
    path = tmp_path / "film.dcm"
    build_dataset(film(600, 600, seed=9)).save_as(path, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(path.read_bytes()[:-5000])
    chain = cxr_chain(224)
    messages = []
    for settings in (REDUCED, FULL):
        with pytest.raises(OverreadError) as caught:
            chain.read_and_apply(truncated, settings=settings)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "Pixel Data holds" in messages[0]
    small = ImagingSettings(max_pixels=1000)
    for settings in (small, small.model_copy(update={"reduce_first": False})):
        with pytest.raises(OverreadError, match=r"imaging\.max_pixels"):
            chain.read_and_apply(path, settings=settings)
