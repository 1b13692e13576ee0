"""Label-free drift: has what a site sends, or what the model says, changed?

Following CheXstray (Soin et al. 2022), each site's recent studies are compared
with its reference period on three kinds of evidence, none of which needs a label:

* **header mix** (manufacturer, station, view, kVp, exposure...): chi-square test
  of homogeneity per field;
* **image statistics** (grey-level percentiles, contrast, noise, entropy, size,
  spacing): two-sample Kolmogorov-Smirnov test per statistic, and the **image
  embedding** (:mod:`overread.monitoring.observations`): maximum mean discrepancy
  with a permutation p-value;
* **model outputs**: KS test per label's probability, with the population
  stability index (PSI) reported beside it.

Each family's p-values are Holm-adjusted (:mod:`overread.evaluation.multiplicity`),
so a family's score ``-log10(min adjusted p)`` is one number per site and day whose
false-alarm rate does not grow with the number of fields tested. A one-sided CUSUM
on each family's daily score raises the alert (acquisition drift, output drift); a
CUSUM and an EWMA chart of the site's combined score (the larger of the two) are
kept beside them for the daily summary and the plots (they raise no alert of their
own: the family charts say which kind of drift it is).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import stats

from overread.errors import ConfigError
from overread.evaluation.multiplicity import Correction, adjust_p_values
from overread.monitoring.alerts import Alert, AlertKind
from overread.monitoring.observations import HEADER_FIELDS, IMAGE_STATISTICS, StudyObservation

FloatArray = npt.NDArray[np.float64]

#: Scores are capped here (p-values below 1e-10 all mean "certainly changed").
MAX_SCORE = 10.0


# -- statistics ---------------------------------------------------------------------
def population_stability_index(
    reference: npt.ArrayLike, current: npt.ArrayLike, bins: int = 10
) -> float:
    """PSI of ``current`` against ``reference`` on the reference's quantile bins.

    ``sum((c - r) * ln(c / r))`` over bins, with shares floored at 1e-4 so an empty
    bin does not give infinity. Conventional reading: < 0.1 stable, 0.1-0.25 a
    moderate shift, > 0.25 a major one.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        edges = np.array([ref.min() - 0.5, ref.min() + 0.5])
    edges[0], edges[-1] = -np.inf, np.inf
    r = np.histogram(ref, edges)[0] / ref.size
    c = np.histogram(cur, edges)[0] / cur.size
    r, c = np.maximum(r, 1e-4), np.maximum(c, 1e-4)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_p_value(reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Two-sided two-sample Kolmogorov-Smirnov p-value (NaN without data or variation)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if ref.size < 2 or cur.size < 2:
        return float("nan")
    if np.ptp(np.concatenate([ref, cur])) == 0:
        return 1.0
    return float(stats.ks_2samp(ref, cur).pvalue)


def chi_square_p_value(reference: Sequence[str], current: Sequence[str]) -> float:
    """Chi-square test of homogeneity of two categorical samples (1.0 when both hold
    one and the same category; NaN without data)."""
    if not reference or not current:
        return float("nan")
    categories = sorted(set(reference) | set(current))
    if len(categories) < 2:
        return 1.0
    table = np.array(
        [
            [sum(1 for v in reference if v == c) for c in categories],
            [sum(1 for v in current if v == c) for c in categories],
        ],
        dtype=np.float64,
    )
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _rbf_kernel(z: FloatArray, gamma: float) -> FloatArray:
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    out: FloatArray = np.exp(-gamma * d2)
    return out


def _mmd2_from_kernel(k: FloatArray, n: int) -> float:
    m = k.shape[0] - n
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2.0 * kxy.mean())


@dataclass(frozen=True)
class MmdResult:
    """Unbiased squared MMD (Gaussian kernel) with its permutation p-value."""

    mmd2: float
    p_value: float
    gamma: float


def mmd_test(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    n_permutations: int = 200,
    seed: int = 0,
    gamma: float | None = None,
) -> MmdResult:
    """Maximum mean discrepancy two-sample test (Gretton et al. 2012).

    The kernel width follows the median heuristic on the pooled sample unless
    ``gamma`` is given; the p-value is ``(1 + #{permuted >= observed}) / (1 + B)``.
    """
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(current, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ConfigError("MMD needs two 2-D samples with the same number of columns")
    if len(x) < 2 or len(y) < 2:
        return MmdResult(float("nan"), float("nan"), float("nan"))
    z = np.concatenate([x, y])
    if gamma is None:
        sq = np.sum(z * z, axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
        median = float(np.median(d2[np.triu_indices(len(z), 1)]))
        gamma = 1.0 / median if median > 0 else 1.0
    k = _rbf_kernel(z, gamma)
    n = len(x)
    observed = _mmd2_from_kernel(k, n)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(n_permutations):
        order = rng.permutation(len(z))
        if _mmd2_from_kernel(k[np.ix_(order, order)], n) >= observed:
            exceed += 1
    return MmdResult(observed, (1 + exceed) / (1 + n_permutations), float(gamma))


def family_score(p_values: Iterable[float], method: Correction = Correction.HOLM) -> float:
    """``-log10`` of the smallest adjusted p-value of a family (0 when none is known)."""
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.size == 0 or np.isnan(p).all():
        return 0.0
    adjusted = adjust_p_values(p, method)
    smallest = float(np.nanmin(adjusted))
    return float(min(MAX_SCORE, -math.log10(max(smallest, 10.0**-MAX_SCORE))))


@dataclass
class Cusum:
    """One-sided upper CUSUM (Page 1954): ``S = max(0, S + x - k)``; alarm when ``S > h``.

    ``k`` is the allowance (about the in-control mean plus half the shift to detect)
    and ``h`` the decision interval; after an alarm the chart restarts at 0.
    """

    k: float
    h: float
    value: float = 0.0

    def update(self, x: float) -> bool:
        """Add one observation; True when the chart crosses ``h``."""
        self.value = max(0.0, self.value + x - self.k)
        if self.value > self.h:
            self.value = 0.0
            return True
        return False


@dataclass
class Ewma:
    """EWMA chart (Roberts 1959): ``Z = lam * x + (1 - lam) * Z``, started at ``mean``;
    out of control above ``mean + L * sd * sqrt(lam / (2 - lam))`` (asymptotic limit)."""

    lam: float
    width: float
    mean: float
    sd: float
    value: float = float("nan")

    def update(self, x: float) -> bool:
        """Add one observation; True when above the upper limit."""
        previous = self.mean if math.isnan(self.value) else self.value
        self.value = self.lam * x + (1.0 - self.lam) * previous
        return self.value > self.upper

    @property
    def upper(self) -> float:
        """The upper control limit."""
        return self.mean + self.width * self.sd * math.sqrt(self.lam / (2.0 - self.lam))


# -- the per-site monitor ---------------------------------------------------------------
@dataclass(frozen=True)
class DriftSettings:
    """Thresholds of label-free drift monitoring (see docs/monitoring.md).

    Parameters
    ----------
    reference_days
        Days at the start of a site's data that form its reference.
    window_days
        The rolling window compared with the reference.
    min_studies
        A site's window needs at least this many studies to be tested.
    cusum_k, cusum_h
        CUSUM allowance and decision interval on each family's daily score.
    ewma_lambda, ewma_width
        EWMA smoothing and limit width (in in-control standard deviations).
    mmd_permutations
        Permutations of the MMD test.
    correction
        Multiple-comparison correction within a family.
    """

    reference_days: int = 14
    window_days: int = 7
    min_studies: int = 30
    cusum_k: float = 1.5
    cusum_h: float = 6.0
    ewma_lambda: float = 0.2
    ewma_width: float = 3.0
    mmd_permutations: int = 100
    correction: Correction = Correction.HOLM

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting."""
        if self.reference_days < 1 or self.window_days < 1:
            raise ConfigError("drift reference and window must be at least one day")
        if self.min_studies < 5:
            raise ConfigError(f"drift min_studies {self.min_studies} is below 5")
        if self.cusum_h <= 0 or self.cusum_k < 0:
            raise ConfigError("drift CUSUM needs h > 0 and k >= 0")
        if not 0 < self.ewma_lambda <= 1:
            raise ConfigError(f"EWMA lambda {self.ewma_lambda} is outside (0, 1]")


@dataclass(frozen=True)
class DriftPoint:
    """One site's drift figures for one day."""

    site: str
    date: dt.date
    n_window: int
    acquisition_score: float
    output_score: float
    combined_score: float
    acquisition_cusum: float
    output_cusum: float
    combined_cusum: float
    combined_ewma: float
    max_psi: float
    top_test: str


@dataclass(frozen=True)
class FamilyTests:
    """The p-values of one comparison, by test name, in two families."""

    acquisition: dict[str, float]
    output: dict[str, float]
    psi: dict[str, float]


def compare(
    reference: Sequence[StudyObservation],
    window: Sequence[StudyObservation],
    *,
    mmd_permutations: int = 100,
    seed: int = 0,
) -> FamilyTests:
    """Every drift test of ``window`` against ``reference``."""
    acquisition: dict[str, float] = {}
    for i, name in enumerate(HEADER_FIELDS):
        acquisition[f"header:{name}"] = chi_square_p_value(
            [o.header[i] for o in reference], [o.header[i] for o in window]
        )
    for i, name in enumerate(IMAGE_STATISTICS):
        acquisition[f"image:{name}"] = ks_p_value(
            [o.image[i] for o in reference], [o.image[i] for o in window]
        )
    acquisition["embedding:mmd"] = mmd_test(
        [o.embedding for o in reference],
        [o.embedding for o in window],
        n_permutations=mmd_permutations,
        seed=seed,
    ).p_value
    output: dict[str, float] = {}
    psi: dict[str, float] = {}
    labels = reference[0].labels if reference else ()
    for i, label in enumerate(labels):
        ref = [o.probabilities[i] for o in reference]
        cur = [o.probabilities[i] for o in window]
        output[f"output:{label}"] = ks_p_value(ref, cur)
        psi[label] = population_stability_index(ref, cur)
    return FamilyTests(acquisition, output, psi)


@dataclass
class _SiteState:
    reference: list[StudyObservation] = field(default_factory=list)
    reference_end: dt.date | None = None
    recent: list[StudyObservation] = field(default_factory=list)
    acquisition: Cusum | None = None
    output: Cusum | None = None
    combined: Cusum | None = None
    ewma: Ewma | None = None


class DriftMonitor:
    """Per-site drift monitoring fed one day of observations at a time.

    Each site's first ``reference_days`` of studies become its reference; from then
    on, every day the last ``window_days`` are compared with it (:func:`compare`).
    """

    def __init__(self, settings: DriftSettings | None = None, *, seed: int = 0) -> None:
        self.settings = settings or DriftSettings()
        self.settings.validate()
        self.seed = seed
        self._sites: dict[str, _SiteState] = defaultdict(_SiteState)
        self.history: list[DriftPoint] = []

    def _state(self, site: str, day: dt.date) -> _SiteState:
        state = self._sites[site]
        if state.reference_end is None:
            state.reference_end = day + dt.timedelta(days=self.settings.reference_days)
            s = self.settings
            state.acquisition = Cusum(s.cusum_k, s.cusum_h)
            state.output = Cusum(s.cusum_k, s.cusum_h)
            state.combined = Cusum(s.cusum_k, s.cusum_h)
            # In control, a Holm-adjusted minimum p is about uniform or larger:
            # -log10(U) has mean 1/ln(10) and standard deviation 1/ln(10).
            state.ewma = Ewma(s.ewma_lambda, s.ewma_width, 1 / math.log(10), 1 / math.log(10))
        return state

    def update(self, day: dt.date, observations: Sequence[StudyObservation]) -> list[Alert]:
        """Add one day's studies (any sites); return the alerts raised on ``day``."""
        by_site: dict[str, list[StudyObservation]] = defaultdict(list)
        for o in observations:
            by_site[o.site].append(o)
        alerts: list[Alert] = []
        for site in sorted(set(by_site) | set(self._sites)):
            state = self._state(site, day)
            todays = by_site.get(site, [])
            assert state.reference_end is not None
            if day < state.reference_end:
                state.reference.extend(todays)
                continue
            state.recent.extend(todays)
            start = day - dt.timedelta(days=self.settings.window_days - 1)
            state.recent = [o for o in state.recent if o.date >= start]
            if len(state.recent) < self.settings.min_studies or len(state.reference) < 10:
                continue
            alerts.extend(self._test(site, day, state))
        return alerts

    def _test(self, site: str, day: dt.date, state: _SiteState) -> list[Alert]:
        s = self.settings
        tests = compare(
            state.reference,
            state.recent,
            mmd_permutations=s.mmd_permutations,
            seed=self.seed + day.toordinal(),
        )
        acquisition = family_score(tests.acquisition.values(), s.correction)
        output = family_score(tests.output.values(), s.correction)
        combined = max(acquisition, output)
        assert state.acquisition and state.output and state.combined and state.ewma
        acquisition_alarm = state.acquisition.update(acquisition)
        acquisition_cusum = state.acquisition.value if not acquisition_alarm else s.cusum_h
        output_alarm = state.output.update(output)
        output_cusum = state.output.value if not output_alarm else s.cusum_h
        combined_alarm = state.combined.update(combined)
        combined_cusum = state.combined.value if not combined_alarm else s.cusum_h
        state.ewma.update(combined)
        everything = {**tests.acquisition, **tests.output}
        known = {k: v for k, v in everything.items() if not math.isnan(v)}
        top = min(known, key=lambda k: known[k]) if known else ""
        psi = [v for v in tests.psi.values() if not math.isnan(v)]
        max_psi = max(psi) if psi else float("nan")
        self.history.append(
            DriftPoint(
                site=site,
                date=day,
                n_window=len(state.recent),
                acquisition_score=acquisition,
                output_score=output,
                combined_score=combined,
                acquisition_cusum=acquisition_cusum,
                output_cusum=output_cusum,
                combined_cusum=combined_cusum,
                combined_ewma=state.ewma.value,
                max_psi=max_psi,
                top_test=top,
            )
        )
        alerts = []
        for alarm, kind, family, score in (
            (acquisition_alarm, AlertKind.ACQUISITION_DRIFT, tests.acquisition, acquisition),
            (output_alarm, AlertKind.OUTPUT_DRIFT, tests.output, output),
        ):
            if not alarm:
                continue
            known_family = {k: v for k, v in family.items() if not math.isnan(v)}
            worst = min(known_family, key=lambda k: known_family[k]) if known_family else ""
            alerts.append(
                Alert(
                    kind=kind,
                    date=day,
                    subject=f"site {site}",
                    statistic="cusum",
                    value=s.cusum_h,
                    threshold=s.cusum_h,
                    message=(
                        f"{kind.value.replace('_', ' ')} at site {site}: CUSUM of the daily "
                        f"drift score crossed {s.cusum_h:g} (today's score {score:.2f}, "
                        f"strongest test {worst})"
                    ),
                    evidence={
                        "score": score,
                        "window_studies": float(len(state.recent)),
                        "reference_studies": float(len(state.reference)),
                        "max_psi": max_psi,
                        "strongest_test": worst,
                    },
                )
            )
        return alerts


# -- prevalence of the model's positive calls ----------------------------------------------
@dataclass(frozen=True)
class PrevalenceSettings:
    """Thresholds of the positive-call rate charts (one per label, all sites pooled).

    Parameters
    ----------
    reference_days
        Days that fix each label's reference rate.
    cusum_k, cusum_h
        Allowance and decision interval of the two-sided CUSUM on the daily
        standardised count ``z = (x - n p0) / sqrt(n p0 (1 - p0))``.
    min_rate
        Labels called positive less often than this in the reference are not charted
        (a z-score on a handful of calls is meaningless).
    """

    reference_days: int = 14
    cusum_k: float = 0.75
    cusum_h: float = 8.0
    min_rate: float = 0.02


@dataclass(frozen=True)
class PrevalencePoint:
    """One label's positive-call rate chart on one day."""

    label: str
    date: dt.date
    rate: float
    reference_rate: float
    z: float
    upper: float
    lower: float


class PrevalenceMonitor:
    """Has the share of studies the model calls positive for a label moved?

    Without labels this is the first sign of a change in case mix (a new ward, an
    outbreak) or of the model itself; a two-sided CUSUM on the daily standardised
    count catches a sustained move in either direction.
    """

    def __init__(self, settings: PrevalenceSettings | None = None) -> None:
        self.settings = settings or PrevalenceSettings()
        self._start: dt.date | None = None
        self._counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._reference: dict[str, float] = {}
        self._upper: dict[str, Cusum] = {}
        self._lower: dict[str, Cusum] = {}
        self.history: list[PrevalencePoint] = []

    def update(self, day: dt.date, observations: Sequence[StudyObservation]) -> list[Alert]:
        """Add one day's studies; return the alerts raised on ``day``."""
        s = self.settings
        if self._start is None:
            self._start = day
        if not observations:
            return []
        labels = observations[0].labels
        if day < self._start + dt.timedelta(days=s.reference_days):
            for o in observations:
                for label, positive in zip(o.labels, o.positive, strict=True):
                    self._counts[label][0] += int(positive)
                    self._counts[label][1] += 1
            return []
        if not self._reference:
            for label, (x, n) in self._counts.items():
                rate = x / n if n else 0.0
                if rate >= s.min_rate and rate <= 1.0 - s.min_rate:
                    self._reference[label] = rate
                    self._upper[label] = Cusum(s.cusum_k, s.cusum_h)
                    self._lower[label] = Cusum(s.cusum_k, s.cusum_h)
        alerts: list[Alert] = []
        n = len(observations)
        for i, label in enumerate(labels):
            p0 = self._reference.get(label)
            if p0 is None:
                continue
            x = sum(1 for o in observations if o.positive[i])
            z = (x - n * p0) / math.sqrt(n * p0 * (1.0 - p0))
            up = self._upper[label].update(z)
            down = self._lower[label].update(-z)
            self.history.append(
                PrevalencePoint(
                    label,
                    day,
                    x / n,
                    p0,
                    z,
                    s.cusum_h if up else self._upper[label].value,
                    s.cusum_h if down else self._lower[label].value,
                )
            )
            if up or down:
                direction = "up" if up else "down"
                alerts.append(
                    Alert(
                        kind=AlertKind.PREVALENCE,
                        date=day,
                        subject=label,
                        statistic="cusum",
                        value=s.cusum_h,
                        threshold=s.cusum_h,
                        message=(
                            f"{label}: the share of studies called positive moved {direction} "
                            f"(today {x}/{n}, reference rate {p0:.3f})"
                        ),
                        evidence={"rate": x / n, "reference_rate": p0, "z": z},
                    )
                )
        return alerts


__all__ = [
    "MAX_SCORE",
    "Cusum",
    "DriftMonitor",
    "DriftPoint",
    "DriftSettings",
    "Ewma",
    "FamilyTests",
    "MmdResult",
    "PrevalenceMonitor",
    "PrevalencePoint",
    "PrevalenceSettings",
    "chi_square_p_value",
    "compare",
    "family_score",
    "ks_p_value",
    "mmd_test",
    "population_stability_index",
]
