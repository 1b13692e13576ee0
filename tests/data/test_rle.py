"""SIIM-ACR run-length encoding: hand-checked cases, round trips, and the real file."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from overread.data import decode_rle, encode_rle, read_labels, siim_mask
from overread.errors import DatasetError


def test_relative_offsets_column_major_by_hand() -> None:
    # 3 rows x 4 columns; column-major pixel k is (k % 3, k // 3).
    # "1 2 3 1": run at 1..2, then 3 pixels after the end (3) -> pixel 6.
    mask = decode_rle("1 2 3 1", (3, 4))
    expected = np.zeros((3, 4), dtype=np.uint8)
    expected[1, 0] = expected[2, 0] = 1  # pixels 1, 2
    expected[0, 2] = 1  # pixel 6
    np.testing.assert_array_equal(mask, expected)
    absolute = decode_rle("2 2 7 1", (3, 4), relative=False)
    np.testing.assert_array_equal(absolute, expected)
    assert encode_rle(expected) == "1 2 3 1"
    assert encode_rle(expected, relative=False) == "2 2 7 1"


def test_empty_and_bad_strings() -> None:
    assert decode_rle("-1", (4, 4)).sum() == 0
    assert encode_rle(np.zeros((4, 4))) == "-1"
    with pytest.raises(DatasetError, match="odd number"):
        decode_rle("1 2 3", (4, 4))
    with pytest.raises(DatasetError, match="past the end"):
        decode_rle("10 10", (4, 4))
    with pytest.raises(DatasetError, match="integers"):
        decode_rle("1 x", (4, 4))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 1))
)
def test_round_trip(mask: np.ndarray) -> None:
    for relative in (True, False):
        text = encode_rle(mask, relative=relative)
        np.testing.assert_array_equal(decode_rle(text, mask.shape, relative=relative), mask)


def _reference_decode(rle: str, width: int, height: int) -> np.ndarray:
    """The challenge's published decoder, written out plainly (then transposed)."""
    mask = np.zeros(width * height)
    array = [int(x) for x in rle.split()]
    current = 0
    for start, length in zip(array[0::2], array[1::2], strict=True):
        current += start
        mask[current : current + length] = 1
        current += length
    return mask.reshape(width, height).T


def test_real_siim_file(txv_dir: Path) -> None:
    path = txv_dir / "siim-pneumothorax-train-rle.csv.gz"
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    body = rows[1:]
    images = {r[0] for r in body}
    positive_images = {r[0] for r in body if r[1].strip() != "-1"}
    table = read_labels("siim", path)
    assert table.skipped == []
    assert len(table) == len(images) == 12047
    assert int(table.frame["Pneumothorax"].sum()) == len(positive_images) == 2669
    # Decode the first 25 regions and compare with the reference decoder.
    regions = [r for r in body if r[1].strip() != "-1"][:25]
    for _image_id, rle in regions:
        mine = decode_rle(rle)
        np.testing.assert_array_equal(mine, _reference_decode(rle, 1024, 1024))
        assert encode_rle(mine) == rle.strip()
    # An image with several regions: the table's union mask covers each of them.
    counts: dict[str, int] = {}
    for image_id, rle in body:
        if rle.strip() != "-1":
            counts[image_id] = counts.get(image_id, 0) + 1
    multi = next(i for i, n in counts.items() if n > 1)
    union = siim_mask(table.frame.set_index("image_id").loc[multi, "encoded_pixels"])
    parts = [decode_rle(r) for i, r in body if i == multi]
    np.testing.assert_array_equal(union, np.maximum.reduce(parts))
    assert union.sum() > max(p.sum() for p in parts)
