"""``RatioBand``: where a probability ratio ρ sits relative to the clip band [1−ε, 1+ε_high]."""

from __future__ import annotations

import numpy as np
from manim import (
    Circle,
    LEFT,
    RIGHT,
    Dot,
    Line,
    Mobject,
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


TICK_GAP = 0.3  # least free space between two tick labels on one row (a mono space reads as one number)
TICK_REACH = 0.6  # a slid label still starts at most this far from its tick (a leader line joins them)


def place_tick_labels(ticks, make, x_range, gap: float = TICK_GAP) -> VGroup:
    """Tick labels on one row that never touch each other.

    ``ticks`` are ``(value, x, text)``, most important first; ``make(text, x)`` builds the label
    of one under its tick. A label that would touch one already placed slides away from it, to
    the side its value lies on (so the row keeps the values' order), as long as it still starts
    within TICK_REACH of its tick and its centre stays inside ``x_range``; one that finds no such
    place is left out. Each label kept has ``tick_value`` (the number it stands for) and
    ``tick_x``; :func:`tick_leaders` joins the slid ones to their ticks.
    """
    placed = VGroup()
    for value, x, text in ticks:
        m = make(text, x)
        m.tick_value, m.tick_x = float(value), float(x)
        if _slide_clear(m, placed, gap) and _may_stand_for(m, x_range):
            placed.add(m)
    return placed


def tick_leaders(labels: VGroup, y_tick: float, color=P.MUTED) -> VGroup:
    """A thin line from the tick (at height ``y_tick``) of every label that slid off it to the
    label's near top corner."""
    lines = VGroup()
    for m in labels:
        left, right = m.get_left()[0], m.get_right()[0]
        if left <= m.tick_x <= right:
            continue
        x = left if m.tick_x < left else right
        lines.add(Line([m.tick_x, y_tick, 0], [x, m.get_top()[1], 0], color=color, stroke_width=2))
    return lines


def _clash(m: Mobject, placed: VGroup, gap: float):
    """The first placed label that ``m`` touches (closer than ``gap``), or None."""
    gap -= 1e-9  # a label slid to exactly ``gap`` off another one is clear of it
    for p in placed:
        if m.get_left()[0] < p.get_right()[0] + gap and p.get_left()[0] < m.get_right()[0] + gap:
            return p
    return None


def _slide_clear(m: Mobject, placed: VGroup, gap: float) -> bool:
    """Slide ``m`` sideways off every placed label; False when it cannot get clear."""
    for _ in range(2 * len(placed) + 1):  # each slide passes one label; more means it is boxed in
        hit = _clash(m, placed, gap)
        if hit is None:
            return True
        if hit.tick_value == m.tick_value:
            return False  # the same number is already on the row
        if m.tick_value > hit.tick_value:
            m.shift(RIGHT * (hit.get_right()[0] + gap - m.get_left()[0]))
        else:
            m.shift(LEFT * (m.get_right()[0] - hit.get_left()[0] + gap))
    return False


def _may_stand_for(m: Mobject, x_range) -> bool:
    """A slid label still reads as its tick's: it starts near the tick, its centre is on the axis."""
    off = max(m.get_left()[0] - m.tick_x, m.tick_x - m.get_right()[0], 0.0)
    return off <= TICK_REACH + 1e-9 and x_range[0] - 1e-9 <= m.get_x() <= x_range[1] + 1e-9


class RatioBand(VGroup):
    """A number line around 1 with the trust region shaded and a dot at ρ.

    ``rho`` is a ValueTracker; animate it (``band.rho.animate.set_value(x)``) and the
    dot and readout follow. Values beyond the drawn range pin the dot to the end and
    show an arrow. :meth:`set_clipped` turns the dot and band yellow with a "clipped"
    tag; ``self.clipped`` records the state (tests read it). The axis starts at 0 at the
    lowest (no ratio is negative); tick labels of a lopsided band never overlap
    (:func:`place_tick_labels`).
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
        self.lo, self.hi = max(0.0, 1.0 - half), 1.0 + half  # a ratio is never negative
        self.width_ = width
        self.symbol = symbol
        self.clipped = False
        self.rho = ValueTracker(float(rho))

        self.axis = Line(LEFT * width / 2, RIGHT * width / 2, color=P.MUTED, stroke_width=3)
        # the band as far as the axis reaches (all of it unless ``span`` is set narrower)
        x_lo, x_hi = self.x_of(max(self.lo, 1 - self.eps)), self.x_of(min(self.hi, 1 + self.eps_high))
        self.band = Rectangle(width=x_hi - x_lo, height=0.42, stroke_width=2, stroke_color=P.CLIP)
        self.band.set_fill(P.CLIP, 0.16).move_to([(x_lo + x_hi) / 2, 0, 0])
        self.ticks, self.tick_labels, self.tick_leaders = self._ticks(font_size)
        self.band_label = VGroup()
        if band_text:
            self.band_label = Text(band_text, font=P.FONT, font_size=font_size, color=P.CLIP)
            self.band_label.move_to([(x_lo + x_hi) / 2, -0.85, 0])
        self.dot = Dot(radius=0.13, color=P.FG).set_z_index(3)
        self.arrow = Triangle(color=P.CLIP, fill_opacity=1, stroke_width=0).scale(0.12).rotate(-np.pi / 2)
        self._arrow_right = True
        self.arrow.set_opacity(0)
        self.readout = Readout(rho, fmt=lambda v: f"{symbol} = {v:.3f}" if np.isfinite(v) else f"{symbol} = n/a",
                               font_size=font_size + 4)
        self.tag = Text("clipped", font=P.FONT, font_size=font_size, color=P.CLIP, weight="BOLD")
        self.tag.set_opacity(0)
        # a ring left behind at an earlier ratio (e.g. the ρ the loss used)
        self.ghost = Circle(radius=0.17, color=P.FG, stroke_width=4).set_z_index(2)
        self.ghost.set_stroke(opacity=0)
        self.ghost_value = None
        self.add(self.band, self.axis, self.ticks, self.tick_labels, self.tick_leaders, self.band_label, self.arrow,
                 self.ghost, self.dot, self.readout, self.tag)
        self._sync()
        self.add_updater(lambda m: m._sync())

    def _ticks(self, font_size: float):
        """Tick marks at 1 − ε, 1, 1 + ε_high, their labels (in that order of importance: one that
        would collide slides aside, joined to its mark by a leader line, or is left out) and the
        leader lines. The marks always stand at the true values."""
        values = [v for v in (1 - self.eps, 1.0, 1 + self.eps_high) if self.lo <= v <= self.hi]
        marks = VGroup(*[Line([self.x_of(v), -0.14, 0], [self.x_of(v), 0.14, 0], color=P.FG, stroke_width=3)
                         for v in values])

        def make(text, x):
            return Text(text, font=P.MONO, font_size=font_size, color=P.MUTED).move_to([x, -0.42, 0])

        labels = place_tick_labels([(v, self.x_of(v), band_edge(v)) for v in values], make,
                                   (-self.width_ / 2, self.width_ / 2))
        return marks, labels, tick_leaders(labels, -0.16)

    def x_of(self, v: float) -> float:
        """x (in the band's own coordinates before any move) of ratio ``v``."""
        return (float(v) - self.lo) / (self.hi - self.lo) * self.width_ - self.width_ / 2

    def point_of(self, v: float) -> np.ndarray:
        a, b = self.axis.get_start(), self.axis.get_end()
        f = (min(max(float(v), self.lo), self.hi) - self.lo) / (self.hi - self.lo)
        return a + f * (b - a)

    def _sync(self):
        v = float(self.rho.get_value())
        known = bool(np.isfinite(v))  # a probe's ratio may be NaN (n/a): no dot, no arrow, "n/a"
        p = self.point_of(v if known else 1.0)
        self.dot.move_to(p)
        if known != getattr(self, "_dot_shown", True):  # only on a change: a FadeIn owns the opacity meanwhile
            self.dot.set_opacity(1 if known else 0)
            self._dot_shown = known
        out = known and (v < self.lo or v > self.hi)
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
