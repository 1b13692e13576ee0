"""Label policies: each uncertainty rule, blanks, overrides, U-LSR, and the parse syntax."""

from __future__ import annotations

import numpy as np
import pytest

from overread.data import BlankMode, LabelPolicy, UncertainMode, apply_policy
from overread.errors import ConfigError, DatasetError

NAN = np.nan
RAW = np.array(
    [
        [1.0, 0.0, -1.0],
        [-1.0, NAN, 1.0],
        [0.0, -1.0, NAN],
    ],
    dtype=np.float32,
)
LABELS = ["Atelectasis", "Cardiomegaly", "Edema"]


@pytest.mark.parametrize(
    ("policy", "targets", "mask"),
    [
        ("u-ones", [[1, 0, 1], [1, 0, 1], [0, 1, 0]], [[1, 1, 1]] * 3),
        ("u-zeros", [[1, 0, 0], [0, 0, 1], [0, 0, 0]], [[1, 1, 1]] * 3),
        ("u-ignore", [[1, 0, 0], [0, 0, 1], [0, 0, 0]], [[1, 1, 0], [0, 1, 1], [1, 0, 1]]),
        (
            "u-ones;blank=ignore",
            [[1, 0, 1], [1, 0, 1], [0, 1, 0]],
            [[1, 1, 1], [1, 0, 1], [1, 1, 0]],
        ),
    ],
)
def test_single_rules(policy: str, targets: list[list[int]], mask: list[list[int]]) -> None:
    t, m = apply_policy(RAW, LabelPolicy.parse(policy))
    assert t.dtype == np.float32 and m.dtype == np.float32
    np.testing.assert_array_equal(t, np.array(targets, dtype=np.float32))
    np.testing.assert_array_equal(m, np.array(mask, dtype=np.float32))


def test_per_label_overrides_as_in_the_chexpert_paper() -> None:
    policy = LabelPolicy.parse("u-ignore;Atelectasis=u-ones;Cardiomegaly=u-zeros;blank=zero")
    assert policy.rule_for("Atelectasis").mode is UncertainMode.ONES
    assert policy.rule_for("Edema").mode is UncertainMode.IGNORE
    t, m = apply_policy(RAW, policy, LABELS)
    np.testing.assert_array_equal(t[:, 0], [1, 1, 0])  # Atelectasis: uncertain -> 1
    np.testing.assert_array_equal(m[:, 1], [1, 1, 1])  # Cardiomegaly: uncertain -> 0, kept
    np.testing.assert_array_equal(t[:, 1], [0, 0, 0])
    np.testing.assert_array_equal(m[:, 2], [0, 1, 1])  # Edema: uncertain ignored


def test_u_lsr_is_seeded_and_in_range() -> None:
    rng = np.random.default_rng(1)
    raw = rng.choice([1.0, 0.0, -1.0, NAN], size=(500, 4)).astype(np.float32)
    uncertain = raw == -1.0
    t1, m1 = apply_policy(raw, "u-lsr(0.55,0.85);seed=3")
    t2, _ = apply_policy(raw, "u-lsr(0.55,0.85);seed=3")
    t3, _ = apply_policy(raw, "u-lsr(0.55,0.85);seed=4")
    np.testing.assert_array_equal(t1, t2)
    assert not np.array_equal(t1, t3)
    soft = t1[uncertain]
    assert soft.min() >= 0.55 and soft.max() <= 0.85 and soft.std() > 0.05
    assert (m1 == 1).all()
    np.testing.assert_array_equal(t1[raw == 1.0], 1.0)
    np.testing.assert_array_equal(t1[~uncertain & (raw != 1.0)], 0.0)
    zeros_flavour, _ = apply_policy(raw, "u-lsr(0,0.3)")
    assert zeros_flavour[uncertain].max() <= 0.3


def test_spec_round_trip() -> None:
    text = "u-lsr(0,0.3);Atelectasis=u-ones;Pleural Effusion=u-lsr;blank=ignore;seed=9"
    policy = LabelPolicy.parse(text)
    assert policy.blank is BlankMode.IGNORE and policy.seed == 9
    assert (policy.uncertain.low, policy.uncertain.high) == (0.0, 0.3)
    assert LabelPolicy.parse(policy.spec()) == policy
    assert LabelPolicy.parse(" U-Ones ; blank = zero ") == LabelPolicy.parse("u-ones")
    assert LabelPolicy.chexpert_paper().rule_for("Edema").mode is UncertainMode.ONES


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("u-maybe", "'u-maybe' is not one of"),
        ("u-ones;u-zeros", "two default rules"),
        ("u-ones(0,1)", "only u-lsr takes a range"),
        ("u-lsr(0.9,0.1)", "0 <= a <= b <= 1"),
        ("blank=sometimes", "blank must be"),
        ("seed=abc", "seed must be an integer"),
    ],
)
def test_parse_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        LabelPolicy.parse(text)


def test_apply_policy_refuses_unknown_labels_and_values() -> None:
    with pytest.raises(DatasetError, match="Hernia"):
        apply_policy(RAW, "u-ones;Hernia=u-zeros", LABELS)
    with pytest.raises(DatasetError, match="pass the label names"):
        apply_policy(RAW, "u-ones;Edema=u-zeros")
    with pytest.raises(DatasetError, match="value 2"):
        apply_policy(np.array([[2.0]]), "u-ones")


def test_u_lsr_on_a_table_is_stable_per_image() -> None:
    import pandas as pd

    from overread.data import LabelTable

    rng = np.random.default_rng(2)
    n = 2000
    frame = pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(n)],
            "patient_id": [f"P{i // 3}" for i in range(n)],
            "study_id": [f"S{i // 2}" for i in range(n)],
            "A": rng.choice([1.0, 0.0, -1.0, NAN], size=n),
            "B": rng.choice([1.0, -1.0], size=n),
        }
    )
    table = LabelTable(frame, ["A", "B"])
    full, _ = apply_policy(table, "u-lsr;seed=5")
    rows = np.flatnonzero(rng.random(n) < 0.3)
    part, _ = apply_policy(table.take(rows), "u-lsr;seed=5")
    np.testing.assert_array_equal(part, full[rows])
    other_seed, _ = apply_policy(table, "u-lsr;seed=6")
    soft = table.raw == -1.0
    assert not np.array_equal(full[soft], other_seed[soft])
    # Uniform over [0.55, 0.85]: mean near 0.70, spread over the whole range, labels independent.
    values = full[soft]
    assert abs(values.mean() - 0.70) < 0.01 and values.min() < 0.57 and values.max() > 0.83
    both = soft.all(axis=1)
    assert abs(np.corrcoef(full[both, 0], full[both, 1])[0, 1]) < 0.1
