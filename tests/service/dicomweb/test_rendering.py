"""Frames as bytes and as pictures, on pydicom's own test files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

from overread.service.dicomweb.media import MediaType
from overread.service.dicomweb.query import QueryParameterError
from overread.service.dicomweb.rendering import (
    RenderOptions,
    Window,
    frame_bytes,
    frame_count,
    parse_frame_list,
    parse_render_options,
    render_frame,
)


def _file(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def _picture(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_a_compressed_frame_is_given_decoded() -> None:
    path = _file("MR_small_jp2klossless.dcm")
    reference = dcmread(_file("MR_small.dcm")).pixel_array
    decoded = np.frombuffer(frame_bytes(path, 0), dtype="<i2").reshape(reference.shape)
    assert np.array_equal(decoded, reference)


def test_colour_frames_render_as_rgb_and_each_frame_differs() -> None:
    path = _file("SC_rgb_rle_2frame.dcm")
    header = dcmread(path, stop_before_pixels=True)
    assert frame_count(header) == 2
    first, second = (
        _picture(render_frame(path, header, i, MediaType.PNG, RenderOptions())) for i in (0, 1)
    )
    assert first.shape == (100, 100, 3) and not np.array_equal(first, second)
    assert np.array_equal(first, dcmread(path).pixel_array[0])  # 8-bit RGB passed through


def test_monochrome1_is_inverted_and_the_window_applies() -> None:
    path = _file("MR_small.dcm")
    header = dcmread(path, stop_before_pixels=True)
    plain = _picture(render_frame(path, header, 0, MediaType.PNG, RenderOptions()))
    inverted_header = dcmread(path, stop_before_pixels=True)
    inverted_header.PhotometricInterpretation = "MONOCHROME1"
    inverted = _picture(render_frame(path, inverted_header, 0, MediaType.PNG, RenderOptions()))
    assert np.array_equal(inverted, 255 - plain)
    pixels = dcmread(path).pixel_array
    narrow = RenderOptions(window=Window(float(np.median(pixels)), 2.0, "LINEAR_EXACT"))
    binary = _picture(render_frame(path, header, 0, MediaType.PNG, narrow))
    assert set(np.unique(binary)) <= {0, 128, 255}
    jpeg = render_frame(path, header, 0, MediaType.JPEG, RenderOptions(quality=50))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_parameters() -> None:
    assert parse_frame_list("3,1") == [3, 1]
    options = parse_render_options(
        [("window", "40,400,sigmoid"), ("quality", "75"), ("viewport", "64,32")]
    )
    assert options == RenderOptions(Window(40.0, 400.0, "SIGMOID"), 75, (64, 32))
    for bad in ("0", "1,,2", "-1", "x"):
        with pytest.raises(QueryParameterError):
            parse_frame_list(bad)
    for name, value in (("window", "40"), ("window", "40,nan"), ("viewport", "0,1"), ("q", "1")):
        with pytest.raises(QueryParameterError):
            parse_render_options([(name, value)])
