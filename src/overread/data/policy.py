"""Label-uncertainty policies: raw 1/0/-1/blank labels to training targets and masks.

Report labellers (CheXpert's, NegBio) say "uncertain" (-1) when a report hedges
("may represent atelectasis") and leave a label blank when the report does not
mention it. Irvin et al. (CheXpert, AAAI 2019) compared ways to train on -1:

- **U-Ignore**: leave uncertain labels out of the loss (mask 0).
- **U-Zeros**: treat uncertain as negative.
- **U-Ones**: treat uncertain as positive.
- **U-SelfTrained**, **U-MultiClass**: not implemented here.

No single policy was best for every label: U-Ones did best for Atelectasis and
Edema, U-MultiClass for Cardiomegaly (U-Zeros close behind), U-SelfTrained for
Consolidation; hence per-label overrides. **U-LSR** (label smoothing
regularisation, Pham et al., 2021, "Interpreting chest X-rays via CNNs that
exploit hierarchical disease dependencies and uncertainty labels") replaces each
uncertain label by a draw from U(a, b), e.g. U(0.55, 0.85) for the U-Ones flavour
or U(0, 0.3) for U-Zeros. Draws are seeded; for a LabelTable each draw depends only
on the image's path, the label and the seed, so an image keeps its soft target in
whichever split it lands.

Blanks are "not mentioned", which for most findings means negative (CheXpert's
own training treats them as 0); ``blank=ignore`` masks them instead.

Syntax (``;``-separated, whitespace ignored)::

    u-ignore;Atelectasis=u-ones;Edema=u-ones;Cardiomegaly=u-zeros;blank=zero
    u-lsr(0.55,0.85);seed=7
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import pandas as pd

from overread.data.table import LabelTable
from overread.errors import ConfigError, DatasetError


class UncertainMode(StrEnum):
    """What an uncertain (-1) label becomes."""

    ONES = "u-ones"
    ZEROS = "u-zeros"
    IGNORE = "u-ignore"
    LSR = "u-lsr"


class BlankMode(StrEnum):
    """What a blank (not mentioned) label becomes."""

    ZERO = "zero"
    IGNORE = "ignore"


#: U-LSR's default range: the U-Ones flavour of Pham et al.
DEFAULT_LSR_RANGE: tuple[float, float] = (0.55, 0.85)


@dataclass(frozen=True)
class UncertainRule:
    """How one label's uncertain values are treated."""

    mode: UncertainMode
    low: float = DEFAULT_LSR_RANGE[0]
    high: float = DEFAULT_LSR_RANGE[1]

    def __str__(self) -> str:
        if self.mode is UncertainMode.LSR and (self.low, self.high) != DEFAULT_LSR_RANGE:
            return f"u-lsr({self.low:g},{self.high:g})"
        return self.mode.value


_RULE = re.compile(
    r"^(u-ones|u-zeros|u-ignore|u-lsr)(?:\(\s*([^,()]+)\s*,\s*([^,()]+)\s*\))?$", re.I
)


def _parse_rule(text: str, whole: str) -> UncertainRule:
    match = _RULE.match(text.strip())
    if match is None:
        raise ConfigError(
            f"label policy {whole!r}: {text.strip()!r} is not one of u-ones, u-zeros, "
            "u-ignore, u-lsr or u-lsr(a,b)"
        )
    mode = UncertainMode(match.group(1).lower())
    if match.group(2) is None:
        return UncertainRule(mode)
    if mode is not UncertainMode.LSR:
        raise ConfigError(f"label policy {whole!r}: only u-lsr takes a range, not {mode.value}")
    try:
        low, high = float(match.group(2)), float(match.group(3))
    except ValueError as exc:
        raise ConfigError(f"label policy {whole!r}: u-lsr range must be two numbers") from exc
    if not 0.0 <= low <= high <= 1.0:
        raise ConfigError(f"label policy {whole!r}: u-lsr range needs 0 <= a <= b <= 1")
    return UncertainRule(mode, low, high)


@dataclass(frozen=True)
class LabelPolicy:
    """A default rule for uncertain labels, per-label overrides, and blank handling.

    Build one with :meth:`parse`; :meth:`spec` writes it back in the same syntax
    (for model packages and reports).
    """

    uncertain: UncertainRule = field(default_factory=lambda: UncertainRule(UncertainMode.IGNORE))
    overrides: Mapping[str, UncertainRule] = field(default_factory=dict)
    blank: BlankMode = BlankMode.ZERO
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> LabelPolicy:
        """Parse ``"u-ignore;Atelectasis=u-ones;blank=zero;seed=0"``.

        Raises
        ------
        ConfigError
            Naming the part that does not parse.
        """
        default: UncertainRule | None = None
        overrides: dict[str, UncertainRule] = {}
        blank = BlankMode.ZERO
        seed = 0
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            if "=" not in part:
                if default is not None:
                    raise ConfigError(
                        f"label policy {text!r}: two default rules ({default}, {part})"
                    )
                default = _parse_rule(part, text)
                continue
            key, _, value = (s.strip() for s in part.partition("="))
            if key.lower() == "blank":
                try:
                    blank = BlankMode(value.lower())
                except ValueError:
                    raise ConfigError(
                        f"label policy {text!r}: blank must be 'zero' or 'ignore', not {value!r}"
                    ) from None
            elif key.lower() == "seed":
                try:
                    seed = int(value)
                except ValueError:
                    raise ConfigError(f"label policy {text!r}: seed must be an integer") from None
            elif key:
                overrides[key] = _parse_rule(value, text)
            else:
                raise ConfigError(f"label policy {text!r}: {part!r} has no label name")
        return cls(
            uncertain=default or UncertainRule(UncertainMode.IGNORE),
            overrides=overrides,
            blank=blank,
            seed=seed,
        )

    @classmethod
    def chexpert_paper(cls) -> LabelPolicy:
        """Per-label rules after Irvin et al.'s comparison on the five competition labels.

        U-Ones for Atelectasis and Edema (best there), U-Zeros for Cardiomegaly
        (U-MultiClass was best, U-Zeros ahead of U-Ones), U-Ones for Pleural
        Effusion (second to U-MultiClass), U-Ignore elsewhere (Consolidation's
        best, U-SelfTrained, was level with it).
        """
        return cls.parse(
            "u-ignore;Atelectasis=u-ones;Edema=u-ones;Cardiomegaly=u-zeros;"
            "Pleural Effusion=u-ones;blank=zero"
        )

    def rule_for(self, label: str) -> UncertainRule:
        """The rule that applies to ``label``."""
        return self.overrides.get(label, self.uncertain)

    def spec(self) -> str:
        """This policy in :meth:`parse` syntax."""
        parts = [str(self.uncertain)]
        parts += [f"{label}={rule}" for label, rule in self.overrides.items()]
        parts.append(f"blank={self.blank.value}")
        if self.seed:
            parts.append(f"seed={self.seed}")
        return ";".join(parts)

    def __str__(self) -> str:
        return self.spec()


def _splitmix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser: a fast, well-mixed 64-bit hash, vectorised."""
    z = values + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: npt.NDArray[np.uint64] = z ^ (z >> np.uint64(31))
    return out


def _lsr_draws(
    shape: tuple[int, ...], seed: int, row_keys: npt.NDArray[np.uint64] | None
) -> npt.NDArray[np.float64]:
    """Uniform [0, 1) draws for U-LSR, one per cell.

    With row keys (a hash of each image's path, when a LabelTable is given) a
    cell's draw depends only on (image, label, seed): an image keeps its soft
    target whichever split or subset it is in. Without them, draws come from
    ``default_rng(seed)`` over the whole array.
    """
    if row_keys is None:
        return np.random.default_rng(seed).random(shape, dtype=np.float64)
    n_labels = shape[1]
    with np.errstate(over="ignore"):
        base = _splitmix64(row_keys ^ _splitmix64(np.array([seed], dtype=np.uint64)))
        cells = base[:, None] + np.arange(1, n_labels + 1, dtype=np.uint64)[None, :] * np.uint64(
            0xD1B54A32D192ED03
        )
        mixed = _splitmix64(cells)
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def apply_policy(
    raw_labels: npt.ArrayLike | pd.DataFrame | LabelTable,
    policy: LabelPolicy | str,
    labels: Sequence[str] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Turn raw labels (1, 0, -1, NaN) into float32 targets and a loss mask.

    Parameters
    ----------
    raw_labels
        An (N, L) array, a frame of label columns, or a LabelTable.
    policy
        A :class:`LabelPolicy` or its text form.
    labels
        Label names of the columns; taken from the frame or table when not given.
        Needed when the policy has per-label overrides.

    Returns
    -------
    targets, mask
        Float32 (N, L). ``mask`` is 0 where the loss must ignore the cell; there
        the target is 0. Positive stays 1, negative 0, uncertain follows the rule.

    Raises
    ------
    DatasetError
        If an override names a label the data does not have, or values other
        than 1, 0, -1 and NaN are present.
    """
    if isinstance(policy, str):
        policy = LabelPolicy.parse(policy)
    row_keys: npt.NDArray[np.uint64] | None = None
    if isinstance(raw_labels, LabelTable):
        labels = labels or raw_labels.labels
        raw = raw_labels.raw
        hashed = pd.util.hash_pandas_object(raw_labels.frame["path"], index=False)
        row_keys = np.asarray(hashed, dtype=np.uint64)
    elif isinstance(raw_labels, pd.DataFrame):
        labels = labels or [str(c) for c in raw_labels.columns]
        raw = raw_labels.to_numpy(dtype=np.float32, na_value=np.nan)
    else:
        raw = np.asarray(raw_labels, dtype=np.float32)
    if raw.ndim == 1:
        raw = raw[None, :]
    if raw.ndim != 2:
        raise DatasetError(f"raw labels must be (N, L); got shape {raw.shape}")
    n_labels = raw.shape[1]
    if labels is not None and len(labels) != n_labels:
        raise DatasetError(f"{len(labels)} label names for {n_labels} label columns")
    if policy.overrides:
        if labels is None:
            raise DatasetError("the policy has per-label rules: pass the label names")
        unknown = [name for name in policy.overrides if name not in labels]
        if unknown:
            raise DatasetError(
                f"label policy names label(s) not in the data: {', '.join(unknown)} "
                f"(labels: {', '.join(labels)})"
            )
    finite = np.isfinite(raw)
    bad = finite & ~np.isin(raw, (1.0, 0.0, -1.0))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DatasetError(
            f"raw label value {raw[row, col]:g} at row {row}, column {col} (expected 1, 0, -1 or blank)"
        )
    targets = np.where(raw == 1.0, 1.0, 0.0).astype(np.float32)
    mask = np.ones_like(targets)
    blank = ~finite
    if policy.blank is BlankMode.IGNORE:
        mask[blank] = 0.0
    uncertain = raw == -1.0
    draws = _lsr_draws(raw.shape, policy.seed, row_keys)
    for col in range(n_labels):
        rule = policy.rule_for(labels[col]) if labels is not None else policy.uncertain
        rows = uncertain[:, col]
        if not rows.any():
            continue
        if rule.mode is UncertainMode.ONES:
            targets[rows, col] = 1.0
        elif rule.mode is UncertainMode.ZEROS:
            targets[rows, col] = 0.0
        elif rule.mode is UncertainMode.IGNORE:
            targets[rows, col] = 0.0
            mask[rows, col] = 0.0
        else:
            targets[rows, col] = (rule.low + (rule.high - rule.low) * draws[rows, col]).astype(
                np.float32
            )
    return targets, mask


__all__ = [
    "DEFAULT_LSR_RANGE",
    "BlankMode",
    "LabelPolicy",
    "UncertainMode",
    "UncertainRule",
    "apply_policy",
]
