"""``LogitBarChart``: top-k next-token probabilities that morph from one policy to another.

Bars are fixed VMobjects whose corner points are rewritten by one updater from a
``ValueTracker`` ``t`` in [0, 1]: ``p(t) = (1 - t) * p_from + t * p_to`` (logits and bar
colours likewise). Nothing is rebuilt per frame; token labels change only when the
chart is re-seated on another position (:meth:`seat`).

Tests read :meth:`displayed_probs` (bar heights measured from the drawn bars, divided by
the height of p = 1) and :attr:`slot_token_ids`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from manim import (
    LEFT,
    RIGHT,
    FadeIn,
    FadeOut,
    Line,
    SurroundingRectangle,
    ValueTracker,
    VGroup,
    VMobject,
    interpolate_color,
)

from . import palette as P
from .fasttext import Text
from .readout import Readout
from .tokens import display_token

OTHER = "other"


def fmt_prob(p: float) -> str:
    if not np.isfinite(p):
        return "—"
    if p >= 0.01 or p == 0:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    return "<.001"  # keeps neighbouring labels of near-zero bars from running together


def fmt_logit(z: float) -> str:
    if not np.isfinite(z):
        return ""
    return f"{z:.1f}".replace("-", "−")


def _set_rect(mob: VMobject, x0: float, x1: float, y0: float, y1: float, z: float = 0.0) -> None:
    mob.set_points_as_corners(
        [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z], [x0, y0, z]]
    )


class LogitBarChart(VGroup):
    """Top-``n_bars`` tokens + an "other" bar; p on the bar, logit under the token (the trace's logits
    are z/τ: at a ``temperature`` other than 1 the row is headed "logit/τ").

    Layout (local): the baseline runs ``width`` wide; p = 1 is ``bar_height`` above it;
    the probability label sits on top of each bar, the token label and its logit under
    the baseline.
    """

    def __init__(
        self,
        n_bars: int = 6,
        width: float = 8.0,
        bar_height: float = 3.0,
        font_size: float = P.SMALL,
        label_chars: int = 8,
        temperature: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.n_bars = n_bars
        self.n_slots = n_bars + 1
        self.width_ = width
        self.bar_height = bar_height
        self.font_size = font_size
        self.label_chars = label_chars
        self.t = ValueTracker(0.0)

        n = self.n_slots
        self.p_from = np.zeros(n)
        self.p_to = np.zeros(n)
        self.z_from = np.full(n, np.nan)
        self.z_to = np.full(n, np.nan)
        self.c_from = [P.OLD] * n
        self.c_to = [P.OLD] * n
        self.slot_token_ids: list[Optional[int]] = [None] * n  # None = empty, -1 = other
        self.slot_labels: list[str] = [""] * n
        self.sampled_slot: Optional[int] = None

        self.baseline = Line(ORIGIN3, RIGHT * width, color=P.MUTED, stroke_width=3)
        self.bars = VGroup(*[VMobject(stroke_width=0).set_fill(P.OLD, 0.9) for _ in range(n)])
        for b in self.bars:
            _set_rect(b, 0, 0.01, 0, 0)
        self.prob_labels = VGroup(*[Readout(0.0, fmt_prob, font_size=font_size) for _ in range(n)])
        self.logit_labels = VGroup(
            *[Readout(np.nan, fmt_logit, font_size=font_size, color=P.MUTED) for _ in range(n)]
        )
        self.token_labels = VGroup(*[VGroup() for _ in range(n)])
        self.sampled_frame = VGroup()
        self.ghosts = VGroup()
        # row headers at the left of the label rows
        self.row_p = Text("p", font=P.FONT, font_size=font_size, color=P.FG)
        # a trace records the logits the sampler used, z/τ: at τ ≠ 1 the row says so
        self.row_z = Text("logit" if temperature == 1 else "logit/τ", font=P.FONT, font_size=font_size,
                          color=P.MUTED)
        self.add(self.baseline, self.ghosts, self.bars, self.prob_labels, self.token_labels,
                 self.logit_labels, self.sampled_frame, self.row_z)
        self._layout_labels()
        self._sync()
        self.add_updater(lambda m: m._sync())

    # -- geometry ---------------------------------------------------------------------
    @property
    def origin(self) -> np.ndarray:
        return self.baseline.get_start()

    @property
    def slot_width(self) -> float:
        return self.width_ / self.n_slots

    def slot_x(self, i: int) -> float:
        return self.origin[0] + (i + 0.5) * self.slot_width

    def _token_row_y(self) -> float:
        return self.origin[1] - 0.12 - self.font_size / 48 * 0.45

    def _logit_row_y(self) -> float:
        return self._token_row_y() - self.font_size / 48 * 0.95

    def _layout_labels(self):
        for i in range(self.n_slots):
            lab = self.token_labels[i]
            if len(lab.submobjects):
                lab.move_to([self.slot_x(i), self._token_row_y(), 0])
            self.logit_labels[i].place_at([self.slot_x(i), self._logit_row_y() - 0.05, 0])
        self.row_z.next_to([self.origin[0], self._logit_row_y() + 0.05, 0], LEFT, buff=0.15)
        self.row_z.set_y(self._logit_row_y() + 0.07)
        self._update_sampled_frame()

    def _update_sampled_frame(self):
        self.sampled_frame.submobjects = []
        if self.sampled_slot is not None and len(self.token_labels[self.sampled_slot].submobjects):
            self.sampled_frame.add(
                SurroundingRectangle(self.token_labels[self.sampled_slot], color=P.CLIP, buff=0.08,
                                     stroke_width=4, corner_radius=0.05)
            )

    def _sync(self):
        t = float(self.t.get_value())
        o = self.origin
        bw = self.slot_width * 0.62
        for i in range(self.n_slots):
            p = (1 - t) * self.p_from[i] + t * self.p_to[i]
            h = max(0.0, min(1.0, p)) * self.bar_height
            x = self.slot_x(i)
            _set_rect(self.bars[i], x - bw / 2, x + bw / 2, o[1], o[1] + h, o[2])
            self.bars[i].set_fill(interpolate_color(self.c_from[i], self.c_to[i], t), 0.92)
            filled = self.slot_token_ids[i] is not None
            pl = self.prob_labels[i]
            pl.set_string(fmt_prob(p) if filled else "")
            pl.value = p
            pl.place_at([x, o[1] + h + 0.1, 0])
            zf, zt = self.z_from[i], self.z_to[i]
            z = (1 - t) * zf + t * zt if np.isfinite(zf) and np.isfinite(zt) else (zt if t > 0.5 else zf)
            ll = self.logit_labels[i]
            ll.value = z
            ll.set_string(fmt_logit(z) if filled else "")
            ll.place_at([x, self._logit_row_y() - 0.05, 0])
        return self

    # -- data -> slots ------------------------------------------------------------------
    def choose_slots(self, pp, keep: bool = False) -> list[Optional[int]]:
        """Token ids for the bar slots at probe position ``pp`` (top by max(before, after)).

        With ``keep``, tokens already on the chart keep their slot (so a token can be
        followed across updates); new tokens fill the free slots in probability order.
        The sampled token is always on the chart.
        """
        ids = [int(x) for x in np.asarray(pp.token_ids)]
        score = np.maximum(np.asarray(pp.probs_before, float), np.asarray(pp.probs_after, float))
        order = [ids[j] for j in np.argsort(-score, kind="stable")]
        top = order[: self.n_bars]
        s = int(pp.sampled_token_id)
        if s in ids and s not in top:
            top = top[:-1] + [s]
        if keep:
            slots: list[Optional[int]] = [None] * self.n_bars
            for i, tid in enumerate(self.slot_token_ids[: self.n_bars]):
                if tid is not None and tid in top:
                    slots[i] = tid
            rest = [t for t in top if t not in slots]
            for i in range(self.n_bars):
                if slots[i] is None and rest:
                    slots[i] = rest.pop(0)
        else:
            # show them in order of the "before" probability
            pb = {ids[j]: float(pp.probs_before[j]) for j in range(len(ids))}
            slots = sorted(top, key=lambda t: -pb[t]) + [None] * (self.n_bars - len(top))
        return slots + [-1]

    @staticmethod
    def values_at(pp, slots: Sequence[Optional[int]], which: str):
        """(probs, logits) for ``slots`` from ``pp``'s ``probs_<which>`` / ``logits_<which>``.

        The "other" slot gets 1 − (sum of the shown probabilities): the mass of every
        token not drawn as its own bar (``other_<which>`` plus the dropped top-k tokens).
        """
        ids = [int(x) for x in np.asarray(pp.token_ids)]
        probs = np.asarray(getattr(pp, f"probs_{which}"), float)
        logits = np.asarray(getattr(pp, f"logits_{which}"), float)
        p = np.zeros(len(slots))
        z = np.full(len(slots), np.nan)
        for i, tid in enumerate(slots):
            if tid is None or tid == -1:
                continue
            j = ids.index(tid)
            p[i], z[i] = probs[j], logits[j]
        shown = p[:-1].sum()
        p[-1] = max(0.0, 1.0 - shown)
        return p, z

    # -- public API used by scenes ------------------------------------------------------
    def seat(self, pp, which: str = "before", keep: bool = False, sampled_color=None,
             run_time: float = 1.0):
        """Put position ``pp`` (its ``which`` distribution) on the chart.

        Returns the animations (label swap + height morph to the new values) to play;
        with ``run_time=0`` everything is applied at once and ``[]`` is returned.
        """
        slots = self.choose_slots(pp, keep=keep)
        p, z = self.values_at(pp, slots, which)
        tok_of = {int(a): b for a, b in zip(np.asarray(pp.token_ids), pp.tokens)}
        old_labels = [lab.copy() for lab in self.token_labels]
        changed = []
        for i, tid in enumerate(slots):
            if tid is None:
                text = ""
            elif tid == -1:
                text = OTHER
            else:
                text = display_token(tok_of[tid], self.label_chars)
            if text != self.slot_labels[i] or (self.slot_token_ids[i] != tid):
                changed.append(i)
            self.slot_labels[i] = text
            lab = self.token_labels[i]
            lab.submobjects = []
            if text:
                font = P.FONT if tid == -1 else P.MONO
                m = Text(text, font=font, font_size=self.font_size,
                         color=P.MUTED if tid == -1 else P.FG)
                if m.width > self.slot_width * 0.96:
                    m.scale_to_fit_width(self.slot_width * 0.96)
                lab.add(m)
        self.slot_token_ids = list(slots)
        s = int(pp.sampled_token_id)
        self.sampled_slot = slots.index(s) if s in slots else None
        # colours of the "before" picture: everything π_old blue
        cols = [P.OLD if tid not in (None, -1) else P.GRID for tid in slots]
        cols[-1] = P.MUTED
        self._retarget(p, z, cols)
        self._layout_labels()
        self.clear_ghosts()
        if run_time == 0:
            self.t.set_value(1.0)
            self._sync()
            return []
        fade_old = [FadeOut(old_labels[i]) for i in changed if len(old_labels[i].submobjects)]
        fade_new = [FadeIn(self.token_labels[i]) for i in changed if len(self.token_labels[i].submobjects)]
        return [self.t.animate(run_time=run_time).set_value(1.0), *fade_old, *fade_new]

    def morph_to(self, pp, which: str = "after", sampled_color=None, run_time: float = 2.0):
        """Animate the bars (same slots) to ``pp``'s ``which`` distribution.

        ``sampled_color`` colours the sampled token's bar (e.g. by the sign of its
        advantage); the other token bars turn π_new orange.
        """
        p, z = self.values_at(pp, self.slot_token_ids, which)
        cols = [P.NEW if tid not in (None, -1) else P.GRID for tid in self.slot_token_ids]
        cols[-1] = P.MUTED
        if sampled_color is not None and self.sampled_slot is not None:
            cols[self.sampled_slot] = sampled_color
        self._retarget(p, z, cols)
        return self._run_to_target(run_time)

    def set_target(self, probs, logits=None, colors=None, run_time: float = 2.0):
        """Low-level: animate the current slots to ``probs`` (one per slot, "other" last).

        ``logits`` (NaN where unknown) and ``colors`` default to keeping the current ones.
        Returns the animation to play (``[]`` and applied at once with ``run_time=0``).
        """
        p = np.asarray(probs, float)
        if p.shape != (self.n_slots,):
            raise ValueError(f"set_target needs {self.n_slots} probabilities (slots + other), got {p.shape}")
        z = self.z_to if logits is None else np.asarray(logits, float)
        t = float(self.t.get_value())
        cols = colors or [interpolate_color(a, b, t) for a, b in zip(self.c_from, self.c_to)]
        self._retarget(p, z, cols)
        return self._run_to_target(run_time)

    def _run_to_target(self, run_time: float) -> list:
        """The animation that moves the bars to their target (applied at once when run_time == 0)."""
        if run_time == 0:
            self.t.set_value(1.0)
            self._sync()
            return []
        return [self.t.animate(run_time=run_time).set_value(1.0)]

    def _retarget(self, p, z, cols):
        t = float(self.t.get_value())
        cur_p = (1 - t) * self.p_from + t * self.p_to
        cur_z = np.where(np.isfinite(self.z_from) & np.isfinite(self.z_to),
                         (1 - t) * self.z_from + t * self.z_to, self.z_to)
        cur_c = [interpolate_color(a, b, t) for a, b in zip(self.c_from, self.c_to)]
        self.p_from, self.z_from, self.c_from = cur_p, cur_z, cur_c
        self.p_to, self.z_to, self.c_to = np.asarray(p, float), np.asarray(z, float), list(cols)
        self.t.set_value(0.0)

    def make_ghosts(self, color=P.OLD) -> VGroup:
        """Outlines of the bars as drawn now (e.g. π_old), left behind while bars move."""
        self.clear_ghosts()
        for b in self.bars:
            g = b.copy().clear_updaters()
            g.set_fill(opacity=0).set_stroke(color, width=3, opacity=0.9)
            self.ghosts.add(g)
        return self.ghosts

    def clear_ghosts(self):
        self.ghosts.submobjects = []

    # -- read-back for tests / narration -------------------------------------------------
    def bar_heights(self) -> np.ndarray:
        base = self.origin[1]
        return np.array([max(0.0, b.get_top()[1] - base) if b.has_points() else 0.0 for b in self.bars])

    def displayed_probs(self) -> np.ndarray:
        """Probabilities as drawn: bar height / height of p = 1 (slots in chart order)."""
        return self.bar_heights() / self.bar_height

    def displayed_logits(self) -> np.ndarray:
        return np.array([lab.value if lab.value is not None else np.nan for lab in self.logit_labels])


ORIGIN3 = np.zeros(3)
