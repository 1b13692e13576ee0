"""The PyTorch dataset on real DICOM files: chain, policy, caches, bad images, workers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from overread.data import CxrDataset, LabelTable, apply_policy, make_loader, read_labels
from overread.errors import DatasetError
from overread.imaging import Image, read
from overread.imaging.transforms import cxr_chain

from .label_files import write_phantom_cohort


class CountingReader:
    """The real reader, counting how often it is asked to decode a file."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> Image:
        self.calls.append(Path(path))
        return read(path)


@pytest.fixture
def cohort(tmp_path: Path) -> LabelTable:
    folder = write_phantom_cohort(tmp_path / "cohort", patients=5, studies=2, with_images=True)
    return read_labels("phantom", folder / "labels.csv")


def test_items_follow_the_chain_and_the_policy(cohort: LabelTable) -> None:
    chain = cxr_chain(32)
    ds = CxrDataset(cohort, chain, policy="u-ones;blank=ignore", return_metadata=True)
    assert len(ds) == 10 and ds.labels == cohort.labels
    targets, mask = apply_policy(cohort, "u-ones;blank=ignore")
    for i in (0, 7):
        x, target, m, meta = ds[i]
        assert x.dtype == torch.float32 and x.shape == (1, 32, 32)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        expected = chain(read(cohort.image_path(i))).pixels
        np.testing.assert_array_equal(x[0].numpy(), expected)
        np.testing.assert_array_equal(target.numpy(), targets[i])
        np.testing.assert_array_equal(m.numpy(), mask[i])
        assert meta["row"] == i and meta["patient_id"] == cohort.frame["patient_id"].iat[i]
    three = CxrDataset(cohort, chain, channels=3)
    x3 = three[0][0]
    assert x3.shape == (3, 32, 32) and torch.equal(x3[0], x3[2])


def test_truth_targets_can_be_given(cohort: LabelTable) -> None:
    truth = np.ones((len(cohort), len(cohort.labels)), dtype=np.float32)
    ds = CxrDataset(cohort, cxr_chain(16), targets=truth)
    _, target, mask = ds[3]
    assert target.sum() == len(cohort.labels) and mask.sum() == len(cohort.labels)
    with pytest.raises(DatasetError, match="do not match"):
        CxrDataset(cohort, cxr_chain(16), targets=truth[:3])


@pytest.mark.parametrize(("dtype", "tolerance"), [("float16", 1e-3), ("uint8", 0.5 / 255 + 1e-6)])
def test_memory_mapped_cache_is_reused(
    cohort: LabelTable, tmp_path: Path, dtype: str, tolerance: float
) -> None:
    chain = cxr_chain(32)
    first_reader = CountingReader()
    first = CxrDataset(
        cohort, chain, cache=tmp_path / "cache", cache_dtype=dtype, reader=first_reader
    )  # type: ignore[arg-type]
    assert first.prepare() == []
    assert len(first_reader.calls) == len(cohort)
    second_reader = CountingReader()
    second = CxrDataset(
        cohort, cxr_chain(32), cache=tmp_path / "cache", cache_dtype=dtype, reader=second_reader
    )  # type: ignore[arg-type]
    for i in range(len(second)):
        x = second[i][0][0].numpy()
        direct = chain(read(cohort.image_path(i))).pixels
        assert np.abs(x - direct).max() <= tolerance
    assert second_reader.calls == []  # every image came from the memory-mapped file
    # A different chain is a different cache: it decodes again.
    other_reader = CountingReader()
    other = CxrDataset(cohort, cxr_chain(24), cache=tmp_path / "cache", reader=other_reader)
    other[0]
    assert len(other_reader.calls) == 1


def test_changed_file_is_decoded_again(cohort: LabelTable, tmp_path: Path) -> None:
    from .label_files import write_dx

    CxrDataset(cohort, cxr_chain(16), cache=tmp_path / "cache").prepare()
    write_dx(cohort.image_path(0), np.full((48, 40), 100, dtype=np.uint16))
    reader = CountingReader()
    again = CxrDataset(cohort, cxr_chain(16), cache=tmp_path / "cache", reader=reader)
    again.prepare()
    assert reader.calls == [cohort.image_path(0)]


def test_memory_cache_decodes_once(cohort: LabelTable) -> None:
    reader = CountingReader()
    ds = CxrDataset(cohort, cxr_chain(16), cache="memory", reader=reader)
    for _ in range(3):
        ds[2]
    assert len(reader.calls) == 1


def test_in_memory_images_need_no_files(cohort: LabelTable) -> None:
    images = np.random.default_rng(0).random((len(cohort), 8, 8)).astype(np.float32)
    ds = CxrDataset(cohort, images=images, policy="u-zeros")
    x, _, _ = ds[4]
    np.testing.assert_array_equal(x[0].numpy(), images[4])
    batch = next(iter(make_loader(ds, batch_size=4)))
    assert batch[0].shape == (4, 1, 8, 8) and batch[1].shape == (4, 14)


def test_bad_images_are_reported_and_skipped(cohort: LabelTable, tmp_path: Path) -> None:
    broken = cohort.image_path(3)
    broken.write_bytes(b"DICM? no, just some bytes that are not an image" * 4)
    cohort.image_path(6).unlink()
    truncated = cohort.image_path(8)
    truncated.write_bytes(truncated.read_bytes()[:-1500])  # pixel data cut short
    reader = CountingReader()
    ds = CxrDataset(
        cohort, cxr_chain(16), cache=tmp_path / "cache", return_metadata=True, reader=reader
    )
    # Reading a bad row yields the next good one instead of stopping the epoch.
    assert ds[3][3]["row"] == 4
    assert [row.path for row in ds.skipped] == [str(cohort.frame["path"].iat[3])]
    assert str(broken) in ds.skipped[0].reason
    assert ds.skipped[0].line == 5  # the row's line in labels.csv
    dropped = ds.prepare()
    assert [row.path for row in dropped] == [str(cohort.frame["path"].iat[i]) for i in (6, 8)]
    for row, i in zip(dropped, (6, 8), strict=True):
        assert row.reason.startswith(str(cohort.image_path(i)))
    assert len(ds) == 7 and not {3, 6, 8} & set(ds.rows.tolist())
    # The failures are remembered by the cache: a new dataset does not decode them again.
    reader2 = CountingReader()
    again = CxrDataset(cohort, cxr_chain(16), cache=tmp_path / "cache", reader=reader2)
    skipped = again.prepare()
    assert reader2.calls == []
    expected = sorted(str(cohort.frame["path"].iat[i]) for i in (3, 6, 8))
    assert sorted(r.path for r in skipped) == expected
    assert len(again) == 7
    batches = list(make_loader(again, batch_size=3))
    assert sum(len(b[0]) for b in batches) == 7


def test_workers_fill_the_shared_cache(cohort: LabelTable, tmp_path: Path) -> None:
    ds = CxrDataset(cohort, cxr_chain(32), cache=tmp_path / "cache")
    loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=2, seed=1)
    seen = sum(len(batch[0]) for batch in loader)
    assert seen == len(cohort)
    reader = CountingReader()
    again = CxrDataset(cohort, cxr_chain(32), cache=tmp_path / "cache", reader=reader)
    again.prepare()
    assert reader.calls == []
    prepared = CxrDataset(cohort, cxr_chain(20), cache=tmp_path / "cache")
    assert prepared.prepare(num_workers=2) == []
    reader3 = CountingReader()
    CxrDataset(cohort, cxr_chain(20), cache=tmp_path / "cache", reader=reader3).prepare()
    assert reader3.calls == []


@pytest.mark.skipif(
    importlib.util.find_spec("overread.phantom") is None, reason="overread.phantom not available"
)
def test_generated_phantom_cohort(tmp_path: Path) -> None:
    phantom = pytest.importorskip("overread.phantom")
    generate = getattr(phantom, "generate_cohort", None)
    if generate is None:
        pytest.skip("overread.phantom has no generate_cohort yet")
    folder = tmp_path / "cohort"
    generate(folder, n=6, seed=0, rows=128, cols=128)
    noisy = read_labels("phantom", folder / "labels.csv")
    truth = read_labels("phantom-truth", folder)
    assert noisy.skipped == [] and truth.skipped == []
    assert len(noisy) == len(truth) >= 6
    assert noisy.frame["path"].tolist() == truth.frame["path"].tolist()
    assert set(np.unique(truth.raw)) <= {0.0, 1.0}
    ds = CxrDataset(noisy, cxr_chain(64), cache="memory")
    assert ds.prepare() == []
    x, target, mask = ds[0]
    assert x.shape == (1, 64, 64) and float(x.max()) > float(x.min())
    assert target.shape == mask.shape == (14,)
