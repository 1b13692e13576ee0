"""Support devices: radiopaque tubes, lines, a pacemaker and ECG electrodes.

Devices are smooth curves through anatomically placed control points, drawn
with PIL at twice the internal resolution and box-filtered down (cheap
anti-aliasing). Their attenuation is much higher than tissue: the radiopaque
stripe of a tube, a lead or the pacemaker can is the brightest thing in the
image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy.interpolate import CubicSpline

from overread.phantom.anatomy import ChestFields, Field
from overread.phantom.pathology import FindingLayer
from overread.phantom.spec import FindingSpec

#: Device kinds the renderer knows.
DEVICE_KINDS: tuple[str, ...] = (
    "et_tube",
    "ng_tube",
    "central_line",
    "pacemaker",
    "chest_tube",
    "ecg_leads",
)

Points = list[tuple[float, float]]


def _curve(points: Points, n: int = 48) -> Points:
    """A smooth curve through the control points (natural cubic spline)."""
    arr = np.asarray(points, dtype=np.float64)
    t = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(arr, axis=0).T))])
    spline = CubicSpline(t, arr, bc_type="natural")
    samples = spline(np.linspace(0.0, t[-1], n))
    return [(float(a), float(b)) for a, b in samples]


class _Canvas:
    """A supersampled float canvas in patient-frame coordinates."""

    factor = 2

    def __init__(self, fields: ChestFields) -> None:
        self.grid = fields.grid
        size = (self.grid.cols * self.factor, self.grid.rows * self.factor)
        self.image = Image.new("F", size, 0.0)
        self.draw = ImageDraw.Draw(self.image)

    def _px(self, points: Points) -> list[tuple[float, float]]:
        out = []
        for u, v in points:
            col, row = self.grid.to_pixel(u, v)
            out.append((col * self.factor, row * self.factor))
        return out

    def _width(self, width: float) -> int:
        return max(1, round(width * self.grid.scale * self.factor))

    def line(self, points: Points, width: float, value: float) -> None:
        self.draw.line(self._px(points), fill=value, width=self._width(width), joint="curve")

    def ellipse(self, u: float, v: float, ru: float, rv: float, value: float) -> None:
        (c0, r0), (c1, r1) = self._px([(u - ru, v - rv), (u + ru, v + rv)])
        box = (min(c0, c1), min(r0, r1), max(c0, c1), max(r0, r1))
        self.draw.ellipse(box, fill=value)

    def rectangle(self, u: float, v: float, hu: float, hv: float, value: float) -> None:
        corners = [(u - hu, v - hv), (u + hu, v - hv), (u + hu, v + hv), (u - hu, v + hv)]
        self.draw.polygon(self._px(corners), fill=value)

    def result(self) -> Field:
        small = self.image.resize((self.grid.cols, self.grid.rows), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32)


def _tube(canvas: _Canvas, points: Points, width: float, stripe: float, body: float) -> None:
    path = _curve(points)
    canvas.line(path, width, body)
    canvas.line(path, width * 0.3, stripe)


def render_devices(spec: FindingSpec, fields: ChestFields, ptx_side: int = 0) -> FindingLayer:
    """Draw the devices named in ``spec.kinds`` (all kinds known, in any order)."""
    rng = np.random.default_rng(spec.seed)
    shape = fields.shape
    canvas = _Canvas(fields)
    carina = 0.35
    dome_l = shape.dome_left
    for kind in spec.kinds:
        j = rng.normal(0.0, 0.006, size=8)
        if kind == "et_tube":
            tip = carina - rng.uniform(0.03, 0.07)
            _tube(
                canvas,
                [(0.5 + j[0], -0.02), (0.5 + j[1], 0.12), (0.5 + j[2], tip)],
                0.016,
                1.0,
                0.25,
            )
        elif kind == "ng_tube":
            pts = [
                (0.49 + j[0], -0.02),
                (0.495 + j[1], 0.3),
                (0.51 + j[2], dome_l - 0.05),
                (0.56 + j[3], dome_l + 0.06),
                (0.62 + j[4], dome_l + 0.11),
            ]
            _tube(canvas, pts, 0.01, 1.0, 0.35)
        elif kind == "central_line":
            if rng.random() < 0.6:  # right internal jugular
                pts = [(0.41 + j[0], -0.02), (0.44 + j[1], 0.15), (0.465 + j[2], 0.3), (0.47, 0.4)]
            else:  # left subclavian
                pts = [(0.82 + j[0], 0.15), (0.65 + j[1], 0.19), (0.53 + j[2], 0.25), (0.47, 0.38)]
            _tube(canvas, pts, 0.008, 1.0, 0.4)
        elif kind == "pacemaker":
            gu = 0.72 + j[0] * 3
            gv = 0.17 + j[1] * 3
            lead_a = [(gu - 0.02, gv), (0.6, 0.2), (0.5, 0.3), (0.47, 0.42), (0.5 + j[2], 0.55)]
            lead_b = [(gu - 0.02, gv + 0.01), (0.6, 0.22), (0.51, 0.32), (0.48, 0.45), (0.58, 0.62)]
            for lead in (lead_a, lead_b):
                _tube(canvas, lead, 0.007, 1.2, 0.6)
            canvas.rectangle(gu, gv, 0.045, 0.032, 2.2)
            canvas.ellipse(gu - 0.028, gv, 0.015, 0.02, 2.0)
        elif kind == "chest_tube":
            side = ptx_side if ptx_side else int(rng.choice([-1, 1]))
            lw = shape.lung_half_width
            pts = [
                (0.5 + side * (lw + 0.1), 0.66),
                (0.5 + side * (lw - 0.02), 0.6),
                (0.5 + side * (lw - 0.1), 0.42),
                (0.5 + side * 0.2, 0.2 + j[0]),
            ]
            _tube(canvas, pts, 0.014, 1.0, 0.35)
        elif kind == "ecg_leads":
            for _ in range(int(rng.integers(3, 6))):
                u = rng.uniform(0.12, 0.88)
                v = rng.uniform(0.08, 0.3) if rng.random() < 0.6 else rng.uniform(0.65, 0.85)
                canvas.ellipse(u, v, 0.014, 0.014, 0.55)
                canvas.ellipse(u, v, 0.006, 0.006, 1.2)
                wire = [
                    (u, v),
                    (u + rng.uniform(-0.1, 0.1), v + 0.12),
                    (u + rng.uniform(-0.2, 0.2), 1.05),
                ]
                canvas.line(_curve(wire, 24), 0.003, 0.35)
    add = canvas.result()
    return FindingLayer(mask=add > 0.08, add=add, attributes={"devices": list(spec.kinds)})
