"""Segmentation metrics against point-set brute force, and FROC/CPM by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from overread.errors import EvaluationError
from overread.evaluation import (
    Mark,
    average_surface_distance,
    cpm_score,
    dice,
    froc_curve,
    hausdorff_distance,
    iou,
    normalized_surface_dice,
)
from overread.evaluation.segmentation import surface


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _brute_distances(a, b, spacing):
    pa = np.argwhere(surface(a)) * spacing
    pb = np.argwhere(surface(b)) * spacing
    d = cdist(pa, pb)
    return d.min(axis=1), d.min(axis=0)


def test_overlap_by_counting() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True  # 16
    b[4:8, 4:8] = True  # 16, overlap 4
    assert dice(a, b) == pytest.approx(8 / 32)
    assert iou(a, b) == pytest.approx(4 / 28)
    assert dice(np.zeros(4), np.zeros(4)) == 1.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 0.7)])
def test_surface_distances_match_brute_force(spacing) -> None:
    a = _ball((24, 30, 30), (12, 14, 15), 7)
    b = _ball((24, 30, 30), (11, 16, 13), 6)
    sp = np.array(spacing)
    d_ab, d_ba = _brute_distances(a, b, sp)
    pooled = np.r_[d_ab, d_ba]
    assert hausdorff_distance(a, b, spacing, percentile=100) == pytest.approx(
        max(d_ab.max(), d_ba.max())
    )
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assert hausdorff_distance(a, b, spacing) == pytest.approx(hd95)
    assert average_surface_distance(a, b, spacing) == pytest.approx(pooled.mean())
    assert normalized_surface_dice(a, b, 1.5, spacing) == pytest.approx(np.mean(pooled <= 1.5))


def test_shifted_square_has_known_distance() -> None:
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)
    assert hausdorff_distance(a, b, (1.0, 2.0), percentile=100) == pytest.approx(6.0)


def test_empty_mask_distance_is_refused() -> None:
    a = np.zeros((5, 5), bool)
    b = a.copy()
    b[2, 2] = True
    with pytest.raises(EvaluationError, match="empty"):
        hausdorff_distance(a, b)


def test_froc_and_cpm_by_hand() -> None:
    # Two images: image 0 has lesions L1, L2; image 1 has none.
    marks = [
        [Mark(0.9, "L1"), Mark(0.8, None), Mark(0.6, "L1"), Mark(0.3, "L2")],
        [Mark(0.7, None), Mark(0.2, None)],
    ]
    curve = froc_curve(marks, [["L1", "L2"], []])
    # Thresholds 0.9, 0.8, 0.7, 0.3, 0.2 (0.6 is a duplicate hit on L1 and is dropped).
    np.testing.assert_allclose(curve.thresholds[1:], [0.9, 0.8, 0.7, 0.3, 0.2])
    np.testing.assert_allclose(curve.sensitivity, [0, 0.5, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(curve.fp_per_image, [0, 0, 0.5, 1.0, 1.0, 1.5])
    cpm, at = cpm_score(curve)
    assert at[0.125] == 0.5 and at[0.5] == 0.5 and at[1.0] == 1.0 and at[8.0] == 1.0
    assert cpm == pytest.approx((0.5 * 3 + 1.0 * 4) / 7)


def test_froc_refuses_unknown_lesion() -> None:
    with pytest.raises(EvaluationError, match="unknown lesion"):
        froc_curve([[Mark(0.5, "X")]], [["L1"]])


def test_match_detections_by_centre_and_iou() -> None:
    from overread.evaluation import match_detections

    lesions = {"a": [10, 10, 30, 30], "b": [50, 50, 60, 60]}
    boxes = [[12, 12, 28, 28], [0, 0, 8, 8], [45, 45, 58, 58], [25, 25, 55, 55]]
    marks = match_detections(boxes, [0.9, 0.8, 0.7, 0.6], lesions)
    # Centres (20,20) in a; (4,4) nowhere; (51.5,51.5) in b; (40,40) in neither box.
    assert [m.lesion for m in marks] == ["a", None, "b", None]
    marks = match_detections(
        boxes, [0.9, 0.8, 0.7, 0.6], lesions, criterion="iou", iou_threshold=0.5
    )
    # IoU with a: 256/400 = 0.64; with b: 64/(169+100-64) = 0.31.
    assert [m.lesion for m in marks] == ["a", None, None, None]
    curve = froc_curve([marks], [list(lesions)])
    assert curve.sensitivity.max() == 0.5


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_surface_metrics_match_monai() -> None:
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    a = _ball((24, 30, 30), (12, 14, 15), 7)
    b = _ball((24, 30, 30), (11, 16, 13), 6)
    spacing = (2.5, 0.7, 0.7)
    ta = torch.from_numpy(a[None, None].astype(np.float32))
    tb = torch.from_numpy(b[None, None].astype(np.float32))
    hd95 = compute_hausdorff_distance(ta, tb, percentile=95, spacing=spacing).item()
    assert hausdorff_distance(a, b, spacing) == pytest.approx(hd95, rel=1e-6)
    assd = compute_average_surface_distance(ta, tb, symmetric=True, spacing=spacing).item()
    assert average_surface_distance(a, b, spacing) == pytest.approx(assd, rel=1e-6)
    nsd = compute_surface_dice(ta, tb, class_thresholds=[1.5], spacing=spacing).item()
    assert normalized_surface_dice(a, b, 1.5, spacing) == pytest.approx(nsd, rel=1e-6)
