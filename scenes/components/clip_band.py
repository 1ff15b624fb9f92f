"""``RatioBand``: where a probability ratio ρ sits relative to the clip band [1−ε, 1+ε_high]."""

from __future__ import annotations

import numpy as np
from manim import (
    Circle,
    LEFT,
    RIGHT,
    Dot,
    Line,
    Rectangle,
    Triangle,
    ValueTracker,
    VGroup,
)

from . import palette as P
from .fasttext import Text
from .readout import Readout


def band_edge(v: float) -> str:
    """A clip-band edge as the config has it, to 3 decimals (ε = 0.125: 0.875, not 0.88)."""
    return f"{v:.3f}".rstrip("0").rstrip(".")


class RatioBand(VGroup):
    """A number line around 1 with the trust region shaded and a dot at ρ.

    ``rho`` is a ValueTracker; animate it (``band.rho.animate.set_value(x)``) and the
    dot and readout follow. Values beyond the drawn range pin the dot to the end and
    show an arrow. :meth:`set_clipped` turns the dot and band yellow with a "clipped"
    tag; ``self.clipped`` records the state (tests read it).
    """

    def __init__(
        self,
        epsilon: float,
        epsilon_high: float | None = None,
        width: float = 5.5,
        span: float | None = None,
        symbol: str = "ρ",
        font_size: float = P.SMALL,
        rho: float = 1.0,
        band_text: str = "clip band [1−ε, 1+ε_high]",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.eps = float(epsilon)
        self.eps_high = float(epsilon if epsilon_high is None else epsilon_high)
        half = span if span is not None else 2.2 * max(self.eps, self.eps_high)
        self.lo, self.hi = 1.0 - half, 1.0 + half
        self.width_ = width
        self.symbol = symbol
        self.clipped = False
        self.rho = ValueTracker(float(rho))

        self.axis = Line(LEFT * width / 2, RIGHT * width / 2, color=P.MUTED, stroke_width=3)
        x_lo, x_hi = self.x_of(1 - self.eps), self.x_of(1 + self.eps_high)
        self.band = Rectangle(width=x_hi - x_lo, height=0.42, stroke_width=2, stroke_color=P.CLIP)
        self.band.set_fill(P.CLIP, 0.16).move_to([(x_lo + x_hi) / 2, 0, 0])
        ticks = VGroup()
        labels = VGroup()
        for v, txt in ((1 - self.eps, band_edge(1 - self.eps)), (1.0, "1"), (1 + self.eps_high, band_edge(1 + self.eps_high))):
            x = self.x_of(v)
            ticks.add(Line([x, -0.14, 0], [x, 0.14, 0], color=P.FG, stroke_width=3))
            labels.add(Text(txt, font=P.MONO, font_size=font_size, color=P.MUTED).move_to([x, -0.42, 0]))
        self.ticks, self.tick_labels = ticks, labels
        self.band_label = VGroup()
        if band_text:
            self.band_label = Text(band_text, font=P.FONT, font_size=font_size, color=P.CLIP)
            self.band_label.move_to([(x_lo + x_hi) / 2, -0.85, 0])
        self.dot = Dot(radius=0.13, color=P.FG).set_z_index(3)
        self.arrow = Triangle(color=P.CLIP, fill_opacity=1, stroke_width=0).scale(0.12).rotate(-np.pi / 2)
        self._arrow_right = True
        self.arrow.set_opacity(0)
        self.readout = Readout(rho, fmt=lambda v: f"{symbol} = {v:.3f}", font_size=font_size + 4)
        self.tag = Text("clipped", font=P.FONT, font_size=font_size, color=P.CLIP, weight="BOLD")
        self.tag.set_opacity(0)
        # a ring left behind at an earlier ratio (e.g. the ρ the loss used)
        self.ghost = Circle(radius=0.17, color=P.FG, stroke_width=4).set_z_index(2)
        self.ghost.set_stroke(opacity=0)
        self.ghost_value = None
        self.add(self.band, self.axis, ticks, labels, self.band_label, self.arrow, self.ghost, self.dot, self.readout,
                 self.tag)
        self._sync()
        self.add_updater(lambda m: m._sync())

    def x_of(self, v: float) -> float:
        """x (in the band's own coordinates before any move) of ratio ``v``."""
        return (float(v) - self.lo) / (self.hi - self.lo) * self.width_ - self.width_ / 2

    def point_of(self, v: float) -> np.ndarray:
        a, b = self.axis.get_start(), self.axis.get_end()
        f = (min(max(float(v), self.lo), self.hi) - self.lo) / (self.hi - self.lo)
        return a + f * (b - a)

    def _sync(self):
        v = float(self.rho.get_value())
        p = self.point_of(v)
        self.dot.move_to(p)
        out = v < self.lo or v > self.hi
        if out:
            right = v > self.hi
            if right != self._arrow_right:
                self.arrow.rotate(np.pi)
                self._arrow_right = right
            self.arrow.set_opacity(1)
            self.arrow.move_to(p + (RIGHT if right else LEFT) * 0.3)
        else:
            self.arrow.set_opacity(0)
        inside = (1 - self.eps) <= v <= (1 + self.eps_high)
        self.dot.set_color(P.CLIP if self.clipped else (P.FG if inside else P.NEW))
        self.readout.set_value(v)
        # keep the readout (and the "clipped" tag) over the axis, even when the dot is pinned
        w = len(self.readout.string or "") * self.readout.gs.advance
        extra = (self.tag.width + 0.2) if self.clipped else 0.0
        left, right = self.axis.get_start()[0], self.axis.get_end()[0]
        x = min(max(p[0], left + w / 2), right - w / 2 - extra)
        self.readout.place_at(np.array([x, p[1] + 0.42, p[2]]))
        self.tag.move_to([x + w / 2 + 0.2 + self.tag.width / 2, p[1] + 0.42 + self.readout.text_height() / 2, 0])
        return self

    def set_ghost(self, v, clipped: bool = False):
        """Leave a ring at ratio ``v`` (yellow when that ratio was clipped); ``None`` hides it."""
        self.ghost_value = None if v is None else float(v)
        if v is None:
            self.ghost.set_stroke(opacity=0)
        else:
            self.ghost.move_to(self.point_of(v))
            self.ghost.set_stroke(P.CLIP if clipped else P.FG, opacity=1)
        return self

    def set_clipped(self, clipped: bool):
        self.clipped = bool(clipped)
        self.tag.set_opacity(1 if clipped else 0)
        self.band.set_fill(P.CLIP, 0.38 if clipped else 0.16)
        self.band.set_stroke(P.CLIP, width=6 if clipped else 2)
        return self
