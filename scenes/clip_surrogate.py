"""ClipSurrogate — the clipped PPO/GRPO objective, with the trace's real tokens dropped on it.

Storyboard
  1. title card
  2. the per-token objective  L = min(ρA, clip(ρ, 1−ε, 1+ε_high)·A)  with ε, ε_high from
     the run config
  3. two panels, A > 0 and A < 0: L/|A| against ρ (solid), the unclipped ρA/|A| (dashed),
     the clip band shaded (cut to the ρ axis; an edge beyond it is named at the panel's side)
  4. every probed token of the chosen steps (ρ = probe.ratio, A = probe.advantage) dropped
     on its curve at (ρ, L(ρ, A)/|A|); tokens the trainer clipped (probe.clipped_low/high)
     ringed in yellow
  5. the trainer's clip fractions (metrics clip_ratio/low_mean, high_mean, region_mean),
     mean over the chosen steps.

Run:  manim -ql scenes/clip_surrogate.py ClipSurrogate   (env: MINIGRPO_TRACE, MINIGRPO_STEPS)
"""

import os
import sys

# run as `manim scenes/NAME.py` from the repo root: make the repo (for `minigrpo` and
# `scenes.components`) importable; scenes/components goes last so its module names
# (data, tokens, ...) never shadow anything else
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if os.path.join(_ROOT, "scenes", "components") not in sys.path:
    sys.path.append(os.path.join(_ROOT, "scenes", "components"))

import numpy as np  # noqa: E402
from manim import (  # noqa: E402
    DOWN, LEFT, RIGHT, UP, Axes, Circle, DashedVMobject, Dot, FadeIn, LaggedStart, Line, Polygon, Scene, VGroup,
    VMobject,
)

from scenes.components import data as D  # noqa: E402
from scenes.components import palette as P  # noqa: E402
from scenes.components.clip_band import band_edge, place_tick_labels, tick_leaders  # noqa: E402
from scenes.components.layout import label, setup  # noqa: E402
from scenes.components.title import formula, heading, play_title  # noqa: E402

MAX_DOTS = 160  # per panel (clipped tokens get up to half of them)
RHO_MAX = 3.0
PANELS = ((1, -3.55), (-1, 3.55))  # (sign of A, x of the panel's centre)
NARROW_BAND = 1.4  # a band narrower than this (scene units) gets one "[1−ε, 1+ε_high]" label
MIN_BAND_WIDTH = 0.04  # a band narrower than this (under ~2 px at -ql) is outlined to stay visible


def surrogate(rho, adv, eps, eps_high):
    rho = np.asarray(rho, float)
    adv = np.asarray(adv, float)
    return np.minimum(rho * adv, np.clip(rho, 1 - eps, 1 + eps_high) * adv)


def rho_range(rhos, eps, eps_high):
    """The panels' ρ range, inside [0, RHO_MAX]: the tokens and the band twice over, as far as they
    fit (a band edge beyond it gets a note at the panel's side, see ClipPanel)."""
    rhos = np.asarray(rhos if len(rhos) else [1.0], float)
    lo = max(0.0, min(1 - 2 * eps, float(np.min(rhos)) - 0.05))
    hi = min(RHO_MAX, max(1 + 2 * eps_high, float(np.max(rhos)) + 0.05))
    return lo, hi


def probe_tokens(trace):
    """(ρ, A, clipped, step, probe index, token index) of every probed token with A ≠ 0."""
    rows = []
    for st in trace.steps:
        for pi, pr in enumerate(st.probes):
            for t in range(len(pr.ratio)):
                a = float(pr.advantage[t])
                if a == 0 or not np.isfinite(a) or not np.isfinite(pr.ratio[t]):
                    continue
                rows.append((float(pr.ratio[t]), a, bool(pr.clipped_low[t] or pr.clipped_high[t]), st.step, pi, t))
    return rows


def _spread(rows, k):
    if k <= 0 or not rows:
        return []
    if len(rows) <= k:
        return list(rows)
    idx = sorted(set(int(i) for i in np.linspace(0, len(rows) - 1, k).round()))
    return [rows[i] for i in idx]


def subsample(rows, n):
    """At most ``n`` rows, deterministic: clipped tokens get up to half of the places (all of
    them when there are few), the rest an even spread of the unclipped ones."""
    if len(rows) <= n:
        return rows
    clipped = [r for r in rows if r[2]]
    rest = [r for r in rows if not r[2]]
    kc = min(len(clipped), max(n // 2, n - len(rest)))
    return _spread(clipped, kc) + _spread(rest, n - kc)


class ClipSurrogate(Scene):
    dots_data: list  # (ρ, A, clipped, sign, Dot) per drawn token (tests read it)

    @D.friendly
    def construct(self):
        setup(self)
        trace = D.scene_trace()
        eps, eps_high = D.clip_epsilons(trace)
        rows = probe_tokens(trace)
        self.dots_data, self.axes = [], {}

        play_title(self, "The clipped surrogate",
                   "why a token stops pushing once its ratio leaves the band", trace)
        self.add(heading("Clipped objective per token", P.HEADING - 4))
        f = formula(r"L(\rho, A) = \min\big(\rho A,\ \mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon_{high})\,A\big)",
                    "L(ρ, A) = min( ρA,  clip(ρ, 1−ε, 1+ε_high)·A )", P.BODY)
        f.move_to([0, 2.75, 0])
        params = label(f"ε = {eps:g}   ε_high = {eps_high:g}   (run config)", P.LABEL, P.CLIP, mono=True)
        params.next_to(f, DOWN, buff=0.18)
        self.play(FadeIn(f), FadeIn(params), run_time=1.0)

        lo, hi = rho_range([r[0] for r in rows], eps, eps_high)
        panels = VGroup()
        for sign, cx in PANELS:
            panel = ClipPanel(sign, cx, lo, hi, eps, eps_high)
            self.axes[sign] = panel.ax
            panels.add(panel)
        self.play(FadeIn(panels), run_time=1.2)

        # -- the trace's tokens --------------------------------------------------------------
        dots_anims = []
        inside = [r for r in rows if lo <= r[0] <= hi]
        beyond = len(rows) - len(inside)  # every token past the axes, drawn in the sample or not
        for sign in (1, -1):
            mine = [r for r in inside if np.sign(r[1]) == sign]
            ax = self.axes[sign]
            for rho, a, clipped, step, pi, t in subsample(mine, MAX_DOTS):
                y = float(surrogate(rho, a, eps, eps_high)) / abs(a)
                d = Dot(ax.c2p(rho, y), radius=0.075 if not clipped else 0.09,
                        color=P.CLIP if clipped else (P.POS if sign > 0 else P.NEG))
                d.set_fill(opacity=0.85)
                grp = VGroup(d)
                if clipped:
                    grp.add(Circle(radius=0.16, color=P.CLIP, stroke_width=3).move_to(d))
                self.dots_data.append((rho, a, clipped, sign, d))
                dots_anims.append(FadeIn(grp, scale=0.5))
        if dots_anims:
            self.play(LaggedStart(*dots_anims, lag_ratio=min(0.05, 2.0 / len(dots_anims)), run_time=2.5))
        n_clip = sum(1 for r in rows if r[2])
        n_drawn = len(self.dots_data)
        counts = label(
            f"{len(rows)} probed tokens with A ≠ 0 in {D.step_range_text(trace)}"
            f" · {n_clip} clipped (ringed)" + (f" · {n_drawn} drawn" if n_drawn < len(rows) else "")
            + (f" · {beyond} beyond the axes" if beyond else ""),
            P.SMALL, P.MUTED, max_width=13.4)
        counts.move_to([0, -3.25, 0])
        m = {k: D.metric_mean(trace, f"clip_ratio/{k}") for k in ("low_mean", "high_mean", "region_mean")}
        fr = label("trainer clip fractions (mean over steps):  "
                   + "   ".join(f"{k} {v:.3f}" if np.isfinite(v) else f"{k} n/a" for k, v in m.items()),
                   P.SMALL, P.CLIP, max_width=13.4)
        fr.move_to([0, -3.68, 0])
        self.clip_metrics = m
        self.counts = {"tokens": len(rows), "clipped": n_clip, "drawn": n_drawn, "beyond": beyond}
        self.play(FadeIn(counts), FadeIn(fr), run_time=0.8)
        self.wait(2.0)


class ClipPanel(VGroup):
    """One panel: L/|A| against ρ for the sign of A, the unclipped line dashed, the clip band shaded.

    The band is cut to the axis' [lo, hi]; an edge beyond the axis gets no tick but a note at that
    side of the panel ("1+ε_high = 6 →"). ``ax``, ``band``, ``tick_labels`` (each with
    ``tick_value``) and ``edge_notes`` are kept for the tests.
    """

    def __init__(self, sign, cx, lo, hi, eps, eps_high, **kwargs):
        super().__init__(**kwargs)
        # y range holds the unclipped line ρA/|A| too, so the cut-off part is visible
        y_lo, y_hi = (lo, hi) if sign > 0 else (-hi, -lo)
        pad = 0.06 * (y_hi - y_lo)
        y0, y1 = y_lo - pad, y_hi + pad
        ax = Axes(x_range=[lo, hi, (hi - lo) / 4], y_range=[y0, y1, (y1 - y0) / 4],
                  x_length=5.6, y_length=3.6, tips=False,
                  axis_config={"stroke_opacity": 0, "include_ticks": False})
        ax.move_to([cx, -0.75, 0])
        self.ax, self.lo, self.hi, self.y0, self.y1 = ax, lo, hi, y0, y1
        frame = VGroup(Line(ax.c2p(lo, y0), ax.c2p(hi, y0), color=P.MUTED, stroke_width=2.5),
                       Line(ax.c2p(lo, y0), ax.c2p(lo, y1), color=P.MUTED, stroke_width=2.5))
        self.band = self._band(max(lo, 1 - eps), min(hi, 1 + eps_high))
        raw = DashedVMobject(VMobject().set_points_as_corners([ax.c2p(x, sign * x) for x in (lo, hi)]),
                             num_dashes=28, stroke_width=2.5, color=P.MUTED)
        xs = np.linspace(lo, hi, 200)
        curve = VMobject(stroke_width=5, color=P.POS if sign > 0 else P.NEG).set_points_as_corners(
            [ax.c2p(x, y) for x, y in zip(xs, surrogate(xs, sign, eps, eps_high))])
        title = label("A > 0: raise the token" if sign > 0 else "A < 0: lower the token", P.LABEL + 2,
                      P.POS if sign > 0 else P.NEG, weight="BOLD").next_to(ax, UP, buff=0.15)
        self.tick_labels = self._ticks(eps, eps_high)
        leaders = tick_leaders(self.tick_labels, ax.c2p(lo, y0)[1] - 0.02)
        xname = label("ρ", P.LABEL, P.FG).next_to(ax.c2p(hi, y0), RIGHT, buff=0.12)
        yname = label("L / |A|", P.SMALL, P.FG).rotate(np.pi / 2).next_to(frame[1], LEFT, buff=0.12)
        self.edge_notes = self._edge_notes(sign, eps, eps_high)
        self.add(self.band, frame, raw, curve, title, self.tick_labels, leaders, xname, yname, self._legend(sign),
                 self.edge_notes)

    def x_at(self, rho):
        """Scene x of ratio ``rho`` on this panel's axis."""
        return float(self.ax.c2p(rho, self.y0)[0])

    def _legend(self, sign):
        """The dashed line's legend in the top corner the curve leaves free."""
        ax, lo, hi, y1 = self.ax, self.lo, self.hi, self.y1
        legend = label("dashed: ρA/|A| without clipping", P.TINY, P.MUTED)
        legend.next_to(ax.c2p(lo if sign < 0 else hi, y1), DOWN, buff=0.05)
        if sign > 0:
            return legend.align_to(ax.c2p(lo, y1), LEFT).shift(RIGHT * 0.15)
        return legend.align_to(ax.c2p(hi, y1), RIGHT).shift(LEFT * 0.1)

    def _band(self, a, b):
        """The band [a, b] (already cut to the axis) shaded over the panel's height; one thinner
        than MIN_BAND_WIDTH is outlined too, so it still shows as a line where it is."""
        ax, y0, y1 = self.ax, self.y0, self.y1
        band = Polygon(ax.c2p(a, y0), ax.c2p(b, y0), ax.c2p(b, y1), ax.c2p(a, y1), stroke_width=0)
        band.set_fill(P.CLIP, 0.12)
        if band.width < MIN_BAND_WIDTH:
            band.set_stroke(P.CLIP, width=4, opacity=0.5)
        return band

    def _ticks(self, eps, eps_high):
        """Tick labels under the ρ axis: the band edges inside the axis, 1, the range ends (in that
        order of importance), none overlapping; a narrow band gets one "[1−ε, 1+ε_high]" under 1."""
        lo, hi = self.lo, self.hi
        values = [v for v in (1 - eps, 1 + eps_high, 1.0) if lo <= v <= hi]  # most important first
        if len(values) == 3 and self.x_at(values[1]) - self.x_at(values[0]) < NARROW_BAND:
            texts = [(1.0, f"[{band_edge(values[0])}, {band_edge(values[1])}]")]
        else:
            texts = [(v, band_edge(v)) for v in values]
        texts += [(lo, band_edge(lo)), (hi, band_edge(hi))]
        ticks = [(v, self.x_at(v), text) for v, text in texts]
        y = self.ax.c2p(lo, self.y0)[1]

        def make(text, x):
            return label(text, P.TINY, P.MUTED, mono=True).next_to(np.array([x, y, 0]), DOWN, buff=0.1)

        return place_tick_labels(ticks, make, (self.x_at(lo), self.x_at(hi)))

    def _edge_notes(self, sign, eps, eps_high):
        """A note at the panel's side for each band edge beyond the axis ("1+ε_high = 6 →"), above
        or below the middle, wherever the curve's end is not."""
        notes = VGroup()
        beyond = ((1 - eps, f"← 1−ε = {band_edge(1 - eps)}", self.lo, LEFT),
                  (1 + eps_high, f"1+ε_high = {band_edge(1 + eps_high)} →", self.hi, RIGHT))
        for v, text, end, side in beyond:
            if self.lo <= v <= self.hi:
                continue
            note = label(text, P.TINY, P.CLIP, mono=True)
            curve_high = float(surrogate(end, sign, eps, eps_high)) > (self.y0 + self.y1) / 2
            y = self.ax.c2p(end, self.y0)[1] + 0.3 if curve_high else self.ax.c2p(end, self.y1)[1] - 0.6
            note.move_to([self.x_at(end), y, 0]).align_to(self.ax.c2p(end, self.y0), side).shift(-side * 0.1)
            note.tick_value = float(v)
            notes.add(note)
        return notes
