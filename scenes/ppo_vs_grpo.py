"""PPOvsGRPO — a learned critic vs the group baseline, and what each costs.

Needs two traces: ``MINIGRPO_TRACE`` (GRPO, default traces/demo-grpo-syllogism) and
``MINIGRPO_PPO_TRACE`` (PPO, default traces/demo-ppo-syllogism).

Storyboard
  1. title card
  2. left, PPO: one probed completion, per token t: the critic's value V(s_t)
     (probe.values), the return (probe.returns) and the GAE advantage (probe.advantage)
  3. right, GRPO: one probed completion of the same length scale: its advantage is one
     number, the group z-score (R_i − μ)/σ, broadcast to every token
  4. bottom: measured cost from each run's metrics — mean peak_memory_mb and mean
     step_time over the chosen steps.

Run:  manim -ql scenes/ppo_vs_grpo.py PPOvsGRPO
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
    DOWN, LEFT, RIGHT, UP, Axes, FadeIn, GrowFromEdge, LaggedStart, Line, Rectangle, Scene, VGroup,
    VMobject, Create,
)

from scenes.components import data as D  # noqa: E402
from scenes.components import palette as P  # noqa: E402
from scenes.components.layout import label, setup  # noqa: E402
from scenes.components.reward_group import advantage_text, fmt_num  # noqa: E402
from scenes.components.title import heading, trace_caption  # noqa: E402
from scenes.components.title import TitleCard  # noqa: E402

MAX_T = 48


def load_pair():
    """(grpo trace, ppo trace) from the environment, with one-line errors for every mix-up."""
    grpo = D.scene_trace("MINIGRPO_TRACE", D.DEFAULT_GRPO_TRACE)
    if grpo.meta.algo == "ppo" and not os.environ.get("MINIGRPO_PPO_TRACE", "").strip():
        raise D.SceneInputError(
            f"{grpo.path} is a PPO trace: pass it as MINIGRPO_PPO_TRACE (or --ppo-trace) and set "
            f"MINIGRPO_TRACE (--trace) to a GRPO trace")
    D.require_algo(grpo, "grpo", "MINIGRPO_TRACE", "PPOvsGRPO's group-baseline panel")
    ppo = D.scene_trace("MINIGRPO_PPO_TRACE", D.DEFAULT_PPO_TRACE)
    D.require_algo(ppo, "ppo", "MINIGRPO_PPO_TRACE", "PPOvsGRPO's critic panel")
    return grpo, ppo


def pick_ppo_probe(trace):
    """The longest probe that has critic values (first step wins ties)."""
    best, key = None, None
    for si, st in enumerate(trace.steps):
        for pi, pr in enumerate(st.probes):
            if pr.values is None or pr.returns is None:
                continue
            k = (len(pr.token_ids), -si)
            if key is None or k > key:
                best, key = (si, pi), k
    if best is None:
        raise D.no_probes(trace, "probe with critic values")
    return best


def pick_grpo_probe(trace):
    """A probe with a non-zero advantage, largest |A| (first step wins ties)."""
    best, key = None, None
    for si, st in enumerate(trace.steps):
        for pi, pr in enumerate(st.probes):
            if not len(pr.advantage):
                continue
            k = (abs(float(pr.advantage[0])), -si)
            if key is None or k > key:
                best, key = (si, pi), k
    if best is None:
        raise D.no_probes(trace)
    return best


class PPOvsGRPO(Scene):
    shown: dict

    @D.friendly
    def construct(self):
        setup(self)
        grpo, ppo = load_pair()
        psi, ppi = pick_ppo_probe(ppo)
        gsi, gpi = pick_grpo_probe(grpo)
        pp = ppo.steps[psi].probes[ppi]
        gp = grpo.steps[gsi].probes[gpi]

        card = VGroup(TitleCard("Critic vs group baseline", "where the advantage comes from, and what it costs"),
                      label("PPO: " + trace_caption(ppo), P.SMALL, P.PPO_C, max_width=13.2),
                      label("GRPO: " + trace_caption(grpo), P.SMALL, P.GRPO_C, max_width=13.2)).arrange(DOWN, buff=0.3)
        self.play(FadeIn(card, shift=UP * 0.2), run_time=0.8)
        self.wait(1.2)
        self.play(*[m.animate.set_opacity(0) for m in [card]], run_time=0.4)
        self.remove(card)

        self.add(heading("Where does the advantage come from?", P.HEADING - 4))
        T_p = min(len(pp.token_ids), MAX_T)
        T_g = min(len(gp.token_ids), MAX_T)
        v, r, a = (np.asarray(x, float)[:T_p] for x in (pp.values, pp.returns, pp.advantage))
        ga = np.asarray(gp.advantage, float)[:T_g]
        lo = float(min(v.min(), r.min(), a.min(), ga.min(), 0.0))
        hi = float(max(v.max(), r.max(), a.max(), ga.max(), 0.0))
        pad = 0.1 * (hi - lo or 1.0)
        lo, hi = lo - pad, hi + pad

        left = self._axes(T_p, lo, hi, -3.35)
        right = self._axes(T_g, lo, hi, 3.85)
        self.axes = {"ppo": left, "grpo": right}
        lt = label("PPO: learned critic V(s_t)", P.LABEL + 2, P.PPO_C, weight="BOLD").next_to(left[0], UP, buff=0.95)
        rt = label("GRPO: group baseline", P.LABEL + 2, P.GRPO_C, weight="BOLD").next_to(right[0], UP, buff=0.95)
        self.play(FadeIn(left), FadeIn(right), FadeIn(lt), FadeIn(rt), run_time=0.8)

        # PPO: advantage bars, value + return lines
        axp = left[0]
        p_bars = self._bars(axp, a)
        v_line, r_line = self._series(axp, v, P.VALUE), self._series(axp, r, P.RETURN)
        legend = VGroup(label("— value V(s_t)", P.TINY, P.VALUE), label("— return", P.TINY, P.RETURN),
                        label("▮ GAE advantage", P.TINY, P.FG)).arrange(RIGHT, buff=0.3)
        # centred on the plot, and above `left`, whose top is the highest y label
        legend.move_to(axp).next_to(left, UP, buff=0.1, coor_mask=UP)
        self.play(Create(v_line), Create(r_line), FadeIn(legend), run_time=1.2)
        self.play(LaggedStart(*[GrowFromEdge(b, DOWN if y >= 0 else UP) for b, y in zip(p_bars, a)],
                              lag_ratio=0.03), run_time=1.4)
        pnote = label(f"differs token by token · step {ppo.steps[psi].step}, probe {ppi}", P.TINY, P.MUTED)
        pnote.next_to(left, DOWN, buff=0.12)

        # GRPO: one z-score for every token
        axg = right[0]
        g_bars = self._bars(axg, ga)
        grp = grpo.steps[gsi].groups[gp.group] if gp.group < len(grpo.steps[gsi].groups) else None
        rule = D.advantage_rule(grp, grpo.meta.config or {}) if grp is not None else "other"
        if grp is not None and not np.isfinite(float(grp.rewards[gp.index])):
            rule = "other"  # an unscorable completion (no reward): its A is as recorded, no arithmetic to show
        if rule == "z":
            ri = float(grp.rewards[gp.index])
            z = ["A = (R − μ) / (σ + ε)  for all tokens",
                 advantage_text(ri, grp.mean, grp.std, grpo.meta.config or {}, float(ga[0]))]
        elif rule == "center":
            ri = float(grp.rewards[gp.index])
            z = ["A = R − μ  for all tokens", advantage_text(ri, grp.mean, None, grpo.meta.config or {}, float(ga[0]))]
        else:
            z = [f"A = {fmt_num(float(ga[0]), True)} for every token"]
        gnote = VGroup(*[label(t, P.SMALL, P.GRPO_C, mono=True, max_width=5.6) for t in z]).arrange(
            DOWN, aligned_edge=LEFT, buff=0.08)
        gnote.move_to(axg).next_to(right, UP, buff=0.1, coor_mask=UP)
        self.play(LaggedStart(*[GrowFromEdge(b, DOWN if y >= 0 else UP) for b, y in zip(g_bars, ga)],
                              lag_ratio=0.03), FadeIn(gnote), run_time=1.4)
        gnote2 = label(f"the same for every token · step {grpo.steps[gsi].step}, probe {gpi}", P.TINY, P.MUTED)
        gnote2.next_to(right, DOWN, buff=0.12)
        self.play(FadeIn(pnote), FadeIn(gnote2), run_time=0.5)

        # -- cost ---------------------------------------------------------------------------
        mem = (D.metric_mean(ppo, "peak_memory_mb"), D.metric_mean(grpo, "peak_memory_mb"))
        state = (D.metric_mean(ppo, "train_state_mb"), D.metric_mean(grpo, "train_state_mb"))
        tim = (D.metric_mean(ppo, "step_time"), D.metric_mean(grpo, "step_time"))
        # peak memory is the whole process (CUDA: torch's peak allocation; CPU: peak RSS, where the
        # runtime dominates for a tiny model); train_state_mb counts weights + grads + Adam state exactly
        cost = VGroup(self._cost_row("peak memory", mem, "MiB", "{:.0f}"),
                      self._cost_row("weights+grads+Adam", state, "MiB", "{:.1f}"),
                      self._cost_row("time per update", tim, "s", "{:.2f}")).arrange(RIGHT, buff=0.6)
        cost.move_to([0, -2.85, 0])
        dev = lambda t: str((t.meta.extra or {}).get("device", "device n/a"))  # noqa: E731
        foot = label(f"measured in each run over the chosen steps · PPO on {dev(ppo)}, GRPO on {dev(grpo)}",
                     P.TINY, P.MUTED, max_width=13.4).move_to([0, -3.8, 0])
        self.play(FadeIn(cost), FadeIn(foot), run_time=1.0)
        self.shown = {
            "ppo": {"step_index": psi, "probe_index": ppi, "values": v, "returns": r, "advantage": a},
            "grpo": {"step_index": gsi, "probe_index": gpi, "advantage": ga},
            "peak_memory_mb": mem, "train_state_mb": state, "step_time": tim,
        }
        self.lines = {"values": v_line, "returns": r_line}
        self.texts = {"ppo_title": lt, "grpo_title": rt, "legend": legend, "grpo_formula": gnote,
                      "ppo_axis_labels": left[3], "grpo_axis_labels": right[3]}
        self.wait(2.0)

    # ----------------------------------------------------------------------------------
    def _axes(self, T, lo, hi, cx):
        ax = Axes(x_range=[-0.5, max(T, 1) - 0.5, max(1, T // 4)], y_range=[lo, hi, (hi - lo) / 4],
                  x_length=5.4, y_length=2.8, tips=False, axis_config={"stroke_opacity": 0, "include_ticks": False})
        ax.move_to([cx, 0.3, 0])
        zero = Line(ax.c2p(-0.5, 0), ax.c2p(T - 0.5, 0), color=P.MUTED, stroke_width=2)
        yax = Line(ax.c2p(-0.5, lo), ax.c2p(-0.5, hi), color=P.MUTED, stroke_width=2)
        ylab = VGroup(label(fmt_num(hi - 0.0), P.TINY, P.MUTED, mono=True).next_to(ax.c2p(-0.5, hi), LEFT, buff=0.08),
                      label("0", P.TINY, P.MUTED, mono=True).next_to(ax.c2p(-0.5, 0), LEFT, buff=0.08),
                      label(fmt_num(lo), P.TINY, P.MUTED, mono=True).next_to(ax.c2p(-0.5, lo), LEFT, buff=0.08))
        xlab = label(f"token t = 0 … {T - 1}", P.TINY, P.MUTED).next_to(ax.c2p(T - 0.5, lo), DOWN, buff=0.08)
        xlab.align_to(ax.c2p(T - 0.5, lo), RIGHT)
        return VGroup(ax, zero, yax, ylab, xlab)

    def _series(self, ax, ys, color):
        """A line through (t, y_t); a one-token series as a level segment across its token (one point draws nothing)."""
        points = [ax.c2p(t, y) for t, y in enumerate(ys)] if len(ys) > 1 else \
            [ax.c2p(-0.35, float(ys[0])), ax.c2p(0.35, float(ys[0]))]
        return VMobject(stroke_width=4, color=color).set_points_as_corners(points)

    def _bars(self, ax, ys):
        bars = VGroup()
        w = (ax.c2p(1, 0)[0] - ax.c2p(0, 0)[0]) * 0.7
        for t, y in enumerate(ys):
            y0, y1 = ax.c2p(t, 0)[1], ax.c2p(t, y)[1]
            b = Rectangle(width=w, height=max(abs(y1 - y0), 0.002), stroke_width=0)
            b.set_fill(P.sign_color(y), 0.75).move_to([ax.c2p(t, 0)[0], (y0 + y1) / 2, 0])
            bars.add(b)
        return bars

    def _cost_row(self, name, vals, unit, fmt):
        top = max([x for x in vals if np.isfinite(x)] or [1.0]) or 1.0
        rows = VGroup()
        for who, x, col in (("PPO", vals[0], P.PPO_C), ("GRPO", vals[1], P.GRPO_C)):
            w = 1.5 * (x / top) if np.isfinite(x) and top > 0 else 0.0
            tag = label(who, P.SMALL, col, weight="BOLD")
            bar = Rectangle(width=max(w, 0.02), height=0.28, stroke_width=0).set_fill(col, 0.9)
            bar.move_to([1.25 + w / 2, 0, 0])
            tag.move_to([0, 0, 0], aligned_edge=LEFT)
            txt = label((fmt.format(x) + f" {unit}") if np.isfinite(x) else "n/a", P.SMALL, P.FG, mono=True)
            txt.next_to(bar, RIGHT, buff=0.15)
            rows.add(VGroup(tag, bar, txt))
        rows.arrange(DOWN, aligned_edge=LEFT, buff=0.12)
        title = label(name, P.SMALL, P.MUTED)
        return VGroup(title, rows).arrange(DOWN, aligned_edge=LEFT, buff=0.15)
