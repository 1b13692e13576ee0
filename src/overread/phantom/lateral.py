"""A simple lateral chest projection: test input for the input gate, not training data.

The frontal renderer (:mod:`overread.phantom.render`) is the phantom's real work; a
model made for frontal chests must recognise a lateral view and refuse it, so the
gate needs honest lateral images to be tested on. This one is deliberately plain:
one thorax outline (deeper than wide, front to the image's left), the two lungs
superimposed as one air space, the heart anterior and low on the diaphragm, the
spine posterior as a column of vertebral bodies, the sternum anterior, the trachea
and the abdomen below the diaphragm. It has no findings and no ground truth beyond
"lateral". The attenuation goes through the same detector and processing simulation
(:func:`overread.phantom.acquisition.expose`) as the frontal images, and the DICOM
header says ``ViewPosition`` ``LL`` (left lateral).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from overread.phantom.acquisition import expose
from overread.phantom.anatomy import LUNG_AIR, SOFT_TISSUE, smooth_noise
from overread.phantom.dicom import StudyUids
from overread.phantom.sampling import StudyPlan

LATERAL_VIEW = "LL"


def lateral_attenuation(internal: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Attenuation of a lateral chest on an ``internal x internal`` grid.

    ``u`` runs from the front (0, image left) to the back (1), ``v`` from the top
    (0) to the bottom (1); a patient's size and posture vary a little with ``rng``.
    """
    v, u = np.mgrid[0:internal, 0:internal].astype(np.float32) / internal
    depth = rng.uniform(0.33, 0.4)  # half the front-to-back depth of the thorax
    centre = 0.5 + rng.normal(0, 0.02)
    tilt = rng.normal(0, 0.02)
    u = u - tilt * (v - 0.5)
    # The body: full height, an ellipse front to back, thicker (further through)
    # than a frontal view because the beam crosses the chest from side to side.
    r_body = ((u - centre) / depth) ** 2
    body = np.sqrt(np.clip(1.0 - r_body, 0.0, 1.0))
    a = SOFT_TISSUE * 1.25 * (0.3 + 0.7 * body) * (r_body < 1)
    # Shoulders and arms raised across the upper chest.
    a = a + 0.35 * np.clip((0.22 - v) / 0.12, 0.0, 1.0) * (r_body < 1)
    # Diaphragm: a dome, lower at the back (posterior costophrenic recess).
    dome = 0.68 + rng.normal(0, 0.02) + 0.1 * (u - centre) + 1.2 * (u - centre) ** 2
    below = v > dome
    # Lungs: both lungs superimposed, one air space from apex to diaphragm.
    middle = 0.47 + rng.normal(0, 0.01)
    r_lung = ((u - centre - 0.02) / (depth * 0.8)) ** 2 + ((v - middle) / 0.34) ** 2
    lungs = (r_lung < 1) & ~below
    lung_depth = np.sqrt(np.clip(1.0 - r_lung, 0.0, 1.0)) * lungs
    # Heart: anterior, low, resting on the diaphragm; it displaces lung air.
    r_heart = ((u - (centre - 0.12)) / 0.15) ** 2 + ((v - (dome - 0.12)) / 0.14) ** 2
    heart = np.clip(1.0 - r_heart, 0.0, 1.0)
    texture = smooth_noise(rng, internal, internal, 48)
    air = LUNG_AIR * 1.1 * lung_depth * (1.0 - 0.8 * heart) * (0.95 + 0.1 * texture)
    a = a - air + 0.25 * heart + 0.22 * below * body
    # Spine: vertebral bodies with disc spaces, posterior.
    spine_u = centre + depth * 0.62
    column = np.exp(-(((u - spine_u) / 0.045) ** 4))
    level = (v * 14.0 + rng.uniform(0, 1)) % 1.0
    vertebrae = column * (0.45 + 0.25 * (np.abs(level - 0.5) < 0.4))
    a = a + vertebrae
    # Sternum: a thin dense band at the front of the upper chest.
    sternum_u = centre - depth * 0.85
    a = a + 0.3 * np.exp(-(((u - sternum_u) / 0.015) ** 2)) * ((v > 0.18) & (v < 0.58))
    # Trachea: a lucent band from the neck to the carina, in the middle of the depth.
    trachea = np.exp(-(((u - centre - 0.03 - 0.05 * v) / 0.02) ** 4)) * (v < 0.38)
    a = a - 0.35 * trachea
    return np.asarray(a, dtype=np.float32)


def render_lateral(
    plan: StudyPlan, rows: int, cols: int, internal: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint16], float, float]:
    """Stored pixels and VOI window of a lateral view of ``plan``'s patient at its site."""
    attenuation = lateral_attenuation(internal, rng)
    return expose(attenuation, rows, cols, plan.site.acquisition, rng, plan.monochrome1)


def _lateral_uids(seed: int, index: int) -> StudyUids:
    """UIDs of its own, so a lateral never collides with the frontal of the same seed."""
    from pydicom.uid import generate_uid

    base = ["overread-phantom-lateral", str(seed), str(index)]
    return StudyUids(
        patient_key=generate_uid(entropy_srcs=[*base, "patient"]),
        study=generate_uid(entropy_srcs=[*base, "study"]),
        series=generate_uid(entropy_srcs=[*base, "series"]),
        sop=generate_uid(entropy_srcs=[*base, "sop"]),
    )


def write_lateral_cohort(out: str | Path, n: int, seed: int = 0, *, size: int = 512) -> list[Path]:
    """Write ``n`` lateral DICOM images (one per planned study) under ``out``.

    Patients, sites and dates come from the frontal cohort planner with the same
    ``seed``; only the projection differs. Returns the files written.
    """
    from overread.phantom.cohort import CohortOptions, plan_cohort, plan_header
    from overread.phantom.dicom import write_dicom

    options = CohortOptions(n=n, seed=seed, rows=size, cols=size)
    written = []
    for plan in plan_cohort(options):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7, plan.index]))
        pixels, centre, width = render_lateral(plan, size, size, options.internal, rng)
        header = plan_header(
            plan,
            view=LATERAL_VIEW,
            uids=_lateral_uids(seed, plan.index),
            accession=f"{plan.site.code}{plan.date:%y}{plan.index + 1:07d}L",
            window=(centre, width),
            pixel_spacing_mm=options.field_of_view_mm / size,
        )
        path = Path(out) / plan.path.replace("frontal", "lateral")
        write_dicom(path, header, pixels)
        written.append(path)
    return written


__all__ = ["LATERAL_VIEW", "lateral_attenuation", "render_lateral", "write_lateral_cohort"]
