"""The per-result explanation trust score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from overread.explain import ExplanationTrust, explanation_trust, map_concentration
from overread.explain.faithfulness import label_probabilities


class _RegionLogit(nn.Module):
    """Logit = 10 x the mean of one fixed region minus 5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (10.0 * x[:, :, 8:18, 28:38].mean(dim=(1, 2, 3)) - 5.0)[:, None]


def test_map_concentration_is_the_gini_coefficient() -> None:
    assert map_concentration(np.ones((10, 10))) == pytest.approx(0.0)
    assert map_concentration(np.zeros((10, 10))) == 0.0
    blob = np.zeros((10, 10))
    blob[:2, :5] = 0.7  # uniform on 10% of the map
    assert map_concentration(blob) == pytest.approx(0.9)
    point = np.zeros((10, 10))
    point[3, 3] = 1.0
    assert map_concentration(point) == pytest.approx(0.99)


def test_trust_of_a_map_on_the_evidence_and_one_beside_it() -> None:
    x = torch.full((1, 48, 48), 0.2)
    x[:, 8:18, 28:38] = 0.9
    on = np.zeros((48, 48), dtype=np.float32)
    on[8:18, 28:38] = 1.0
    beside = np.roll(on, 20, axis=0)
    good = explanation_trust(_RegionLogit(), x, on, 0)
    bad = explanation_trust(_RegionLogit(), x, beside, 0)
    assert isinstance(good, ExplanationTrust)
    assert good.deletion_drop > 0.9 and bad.deletion_drop == 0.0
    assert good.trust_score > 0.9 and bad.trust_score == 0.0
    assert good.map_concentration == pytest.approx(bad.map_concentration)
    assert set(good.to_dict()) == {"trust_score", "map_concentration", "deletion_drop"}
    # Giving the probability saves the first forward pass and changes nothing.
    p = float(label_probabilities(_RegionLogit(), x[None])[0, 0])
    assert explanation_trust(_RegionLogit(), x, on, 0, probability=p) == good
    with pytest.raises(ValueError, match="differ in size"):
        explanation_trust(_RegionLogit(), x, on[:10], 0)


def test_trained_model_trusts_a_map_on_the_lesion_over_one_on_the_background(
    phantom_cohort: Path,
) -> None:
    from overread.inference.explanation_study import load_findings, read_cohort
    from overread.inference.pipeline import Pipeline
    from overread.models import Registry

    pipeline = Pipeline(Registry(phantom_cohort.parent / "registry").load("cxr-default"))
    network = pipeline.network.eval()
    gains: list[float] = []
    for item in read_cohort(phantom_cohort):
        x, findings = load_findings(pipeline, item)
        probabilities = label_probabilities(network, torch.from_numpy(x[None]))[0]
        anywhere = np.any([f.mask for f in findings], axis=0)
        for finding in findings:
            mirrored = np.fliplr(finding.mask)  # the same shape on the other side
            shared = float((mirrored & anywhere).sum()) / float(finding.mask.sum())
            if probabilities[finding.label_index] < 0.9 or shared > 0.1:
                continue
            lesion = ndimage.gaussian_filter(finding.mask.astype(np.float32), 3)
            on = explanation_trust(network, x, lesion, finding.label_index)
            off = explanation_trust(network, x, np.fliplr(lesion), finding.label_index)
            assert on.trust_score >= off.trust_score, finding.label
            assert on.deletion_drop >= off.deletion_drop, finding.label
            gains.append(on.trust_score - off.trust_score)
    # Some findings (a thin device line) leave the probability where it was either
    # way; most are trusted clearly more on the lesion.
    assert sum(g > 0.1 for g in gains) >= 2 and sum(g > 0.1 for g in gains) > len(gains) / 2


def test_pipeline_scores_a_map_with_its_serving_runtime(phantom_cohort: Path) -> None:
    from overread.inference.explanation_study import load_findings, read_cohort
    from overread.inference.pipeline import Pipeline
    from overread.models import Registry

    pipeline = Pipeline(Registry(phantom_cohort.parent / "registry").load("cxr-default"))
    x, findings = load_findings(pipeline, read_cohort(phantom_cohort)[0])
    finding = findings[0]
    trust = pipeline.explanation_trust(x, finding.mask.astype(np.float32), finding.label)
    direct = explanation_trust(
        pipeline.runtime_logits, x, finding.mask.astype(np.float32), finding.label_index
    )
    assert trust == direct
    assert 0.0 <= trust.trust_score <= 1.0 and 0.0 <= trust.deletion_drop <= 1.0
    assert trust.map_concentration > 0.5  # a lesion mask is concentrated
