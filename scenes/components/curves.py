"""``MetricCurve``: a small line plot of one trace metric over steps, with a moving marker."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from manim import (
    DOWN,
    LEFT,
    RIGHT,
    UP,
    Dot,
    Line,
    ValueTracker,
    VGroup,
    VMobject,
)

from . import palette as P
from .fasttext import Text
from .readout import Readout


# metrics that cannot leave these bounds (None: unbounded): a flat curve's padded axis stays
# inside them, and a KL within KL_ZERO of 0 is float rounding of 0 (k3 >= 0), shown as 0
METRIC_BOUNDS = {"kl": (0.0, None), "accuracy": (0.0, 1.0), "format_rate": (0.0, 1.0),
                 "clip_ratio/region_mean": (0.0, 1.0), "clip_ratio/low_mean": (0.0, 1.0),
                 "clip_ratio/high_mean": (0.0, 1.0), "frac_reward_zero_std": (0.0, 1.0)}
KL_ZERO = 1e-6


def fmt_kl(v: float) -> str:
    """A KL value: within KL_ZERO of 0 it is 0 (a k3 mean of -6e-09 is rounding, not a negative KL)."""
    return fmt_value(0.0 if np.isfinite(v) and abs(v) < KL_ZERO else v)


def fmt_value(v: float) -> str:
    """Compact number for axis labels and readouts (at most ~6 characters)."""
    if not np.isfinite(v):
        return "n/a"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 10000 or a < 0.01:  # two significant digits: 24358 -> 2.4e4 (was 2e4), 0.0031 -> 3.1e-3
        mantissa, exponent = f"{v:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


class MetricCurve(VGroup):
    """``ys`` against ``xs`` (steps) in a ``width`` x ``height`` box.

    Non-finite values are skipped (a metric a step lacks). ``marker`` is a dot on the
    curve at step ``self.k`` (a ValueTracker holding a step number; between steps it
    interpolates); its value readout, right of the title, shows the metric at the nearest
    step. Tick labels
    are plain Text (no LaTeX needed).
    """

    def __init__(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        title: str,
        color=P.NEW,
        width: float = 5.0,
        height: float = 2.0,
        font_size: float = P.SMALL,
        y_range: Optional[tuple[float, float]] = None,
        show_marker: bool = True,
        bounds: tuple[Optional[float], Optional[float]] = (None, None),
        fmt=fmt_value,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.xs = np.asarray(xs, dtype=float)
        self.ys = np.asarray(ys, dtype=float)
        self.width_, self.height_ = width, height
        fin = np.isfinite(self.ys)
        self.has_data = bool(fin.any())
        if y_range is None:
            if self.has_data:
                lo, hi = float(np.min(self.ys[fin])), float(np.max(self.ys[fin]))
            else:
                lo, hi = 0.0, 1.0
            if hi - lo < 1e-9:
                pad = abs(hi) * 0.1 or 0.5
                lo, hi = lo - pad, hi + pad
                floor, ceiling = bounds  # a flat clip fraction of 0 gets 0..0.5, not -0.5..0.5
                if floor is not None and lo < floor <= hi - pad:
                    lo = floor
                if ceiling is not None and hi > ceiling >= lo + pad:
                    hi = ceiling
            y_range = (lo, hi)
        self.y0, self.y1 = y_range
        self.x0 = float(self.xs.min()) if len(self.xs) else 0.0
        self.x1 = float(self.xs.max()) if len(self.xs) else 1.0
        last_step = self.x1  # the x label names a recorded step, also when the axis is widened
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1

        # frame: bottom-left at local origin
        self.box_origin = VMobject().set_points(np.zeros((4, 3)))  # invisible pin
        x_axis = Line([0, 0, 0], [width, 0, 0], color=P.MUTED, stroke_width=2.5)
        y_axis = Line([0, 0, 0], [0, height, 0], color=P.MUTED, stroke_width=2.5)
        self.title = Text(title, font=P.FONT, font_size=font_size + 2, color=color)
        self.title.next_to([0, height, 0], UP, buff=0.14, aligned_edge=LEFT).align_to(y_axis, LEFT)
        # an end within a millionth of the axis span of 0 is 0 at the axis' precision (a k3 KL
        # mean of -6e-09 is float rounding of 0, and would read as a negative KL)
        span = self.y1 - self.y0

        def tick(v: float) -> str:
            return "0" if abs(v) <= 1e-6 * span else fmt(v)

        ylab = VGroup(
            Text(tick(self.y1), font=P.MONO, font_size=font_size - 2, color=P.MUTED).next_to(
                [0, height, 0], LEFT, buff=0.1
            ),
            Text(tick(self.y0), font=P.MONO, font_size=font_size - 2, color=P.MUTED).next_to(
                [0, 0, 0], LEFT, buff=0.1
            ),
        )
        self.y_labels = ylab
        xlab = VGroup(
            Text(f"{self.x0:.0f}", font=P.MONO, font_size=font_size - 2, color=P.MUTED).next_to(
                [0, 0, 0], DOWN, buff=0.1
            ),
            Text(f"step {last_step:.0f}", font=P.MONO, font_size=font_size - 2, color=P.MUTED).next_to(
                [width, 0, 0], DOWN, buff=0.1, aligned_edge=RIGHT
            ),
        )
        self.x_labels = xlab
        self.line = VMobject(stroke_color=color, stroke_width=4)
        pts = [self._local(x, y) for x, y in zip(self.xs, self.ys) if np.isfinite(y)]
        if len(pts) >= 2:
            self.line.set_points_as_corners(pts)
        elif len(pts) == 1:
            self.line = Dot(pts[0], radius=0.05, color=color)
        self.no_data = None
        parts = [self.box_origin, x_axis, y_axis, ylab, xlab, self.title, self.line]
        if not self.has_data:
            self.no_data = Text("metric not in trace", font=P.FONT, font_size=font_size, color=P.MUTED)
            self.no_data.move_to([width / 2, height / 2, 0])
            parts.append(self.no_data)
        self.add(*parts)
        self.k = ValueTracker(self.x0)
        self.marker = None
        if show_marker and self.has_data:
            self.marker = Dot(radius=0.1, color=P.CLIP).set_z_index(4)
            self.readout = Readout(np.nan, fmt=fmt, font_size=font_size, color=P.CLIP, align="left")
            self.add(self.marker, self.readout)
            self.add_updater(lambda m: m._sync())
            self._sync()

    def _local(self, x, y):
        fx = (float(x) - self.x0) / (self.x1 - self.x0)
        fy = (float(y) - self.y0) / (self.y1 - self.y0) if self.y1 > self.y0 else 0.5
        return np.array([fx * self.width_, min(max(fy, 0.0), 1.0) * self.height_, 0.0])

    def to_scene(self, x, y) -> np.ndarray:
        return self.box_origin.get_center() + self._local(x, y)

    def value_at(self, x: float) -> float:
        """Metric at step ``x``, linearly interpolated between recorded steps (NaN-free)."""
        fin = np.isfinite(self.ys)
        if not fin.any():
            return np.nan
        return float(np.interp(x, self.xs[fin], self.ys[fin]))

    def nearest_value(self, x: float) -> float:
        """The metric recorded at the step nearest ``x``: NaN (shown as n/a) where that step recorded
        null, never a neighbour's value."""
        if not len(self.xs):
            return np.nan
        return float(self.ys[int(np.argmin(np.abs(self.xs - x)))])

    def _sync(self):
        x = float(self.k.get_value())
        self.marker.move_to(self.to_scene(x, self.value_at(x)))
        self.readout.set_value(self.nearest_value(x))
        # the value sits on the title line, never on the curve, whatever the data's shape
        top = self.title.get_corner(UP + RIGHT)
        self.readout.place_at(top + RIGHT * 0.25 + DOWN * self.readout.text_height(), align="left")
        return self

    def marker_to(self, step: float, run_time: float = 0.8):
        return self.k.animate(run_time=run_time).set_value(float(step))
