"""KLPenalty — how far the policy has drifted from the reference, token by token.

Storyboard
  1. title card
  2. the k3 estimator  D_KL ≈ π_ref/π_θ − log(π_ref/π_θ) − 1  (always ≥ 0)
  3. a real completion (the probe with the largest mean KL in the chosen steps): each token
     under a bar of its per-token KL (probe.kl), the largest one framed
  4. the metric ``kl`` over training, marker at that probe's step
  5. the objective  J = L_clip − β·D_KL  with β from the run config (PPO traces: the KL is
     part of the reward, with kl_coef from the config).

Run:  manim -ql scenes/kl_penalty.py KLPenalty   (env: MINIGRPO_TRACE, MINIGRPO_STEPS, MINIGRPO_PROBE)
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

import math  # noqa: E402

import numpy as np  # noqa: E402
from manim import DOWN, UP, FadeIn, GrowFromEdge, LaggedStart, Line, Rectangle, Scene, VGroup  # noqa: E402

from scenes.components import data as D  # noqa: E402
from scenes.components import palette as P  # noqa: E402
from scenes.components.curves import METRIC_BOUNDS, MetricCurve, fmt_kl  # noqa: E402
from scenes.components.layout import label, setup  # noqa: E402
from scenes.components.readout import Readout  # noqa: E402
from scenes.components.title import formula, heading, play_title  # noqa: E402
from scenes.components.tokens import TokenStrip  # noqa: E402


def pick_kl_probe(trace):
    """(step index, probe index): MINIGRPO_PROBE in the first step, else the largest mean KL."""
    pi = D.env_int("MINIGRPO_PROBE")
    if pi is not None:
        s0 = trace.steps[0]
        if not 0 <= pi < len(s0.probes):
            raise D.SceneInputError(f"MINIGRPO_PROBE={pi} is out of range: step {s0.step} has probes 0..{len(s0.probes) - 1}")
        return 0, pi
    best, key = None, None
    for si, st in enumerate(trace.steps):
        for pi, pr in enumerate(st.probes):
            kl = np.asarray(pr.kl, float)
            if not kl.size:
                continue
            k = float(np.nanmean(kl))
            if key is None or k > key:
                best, key = (si, pi), k
    if best is None:
        raise D.no_probes(trace)
    return best


class KLPenalty(Scene):
    shown: dict

    @D.friendly
    def construct(self):
        setup(self)
        trace = D.scene_trace()
        D.require_kl(trace, "KLPenalty")
        si, pi = pick_kl_probe(trace)
        st = trace.steps[si]
        pr = st.probes[pi]
        kl = np.asarray(pr.kl, float)
        play_title(self, "The KL penalty", "how far the policy drifted from the reference model", trace)

        self.add(heading("k3 estimate of KL(π_θ ‖ π_ref), per token", P.HEADING - 6))
        f = formula(r"\mathrm{KL}_t \approx \frac{\pi_{ref}}{\pi_\theta} - \log\frac{\pi_{ref}}{\pi_\theta} - 1 \;\geq 0",
                    "KL_t ≈ π_ref/π_θ − log(π_ref/π_θ) − 1  ≥ 0", P.BODY)
        f.move_to([0, 2.6, 0])
        self.play(FadeIn(f), run_time=0.8)

        # -- one completion, KL per token ---------------------------------------------------
        top = int(np.nanargmax(kl)) if np.isfinite(kl).any() else 0  # an all-NaN probe (n/a) has no top
        strip = TokenStrip(pr.tokens, kl, highlight=top, mode="magnitude", max_width=13.0, max_rows=1,
                           max_tokens=14, font_size=P.SMALL)
        strip.move_to([0, -0.2, 0])
        base_y = strip.get_top()[1] + 0.12
        shown_finite = [float(kl[i]) for i in strip.shown if np.isfinite(kl[i])]
        kmax = max(shown_finite, default=1.0)
        kmax = kmax if kmax > 0 else 1.0
        H = 1.55
        bars, vals = VGroup(), VGroup()
        self.bar_data = []
        for i in strip.shown:
            cell = strip.cell(i)
            h = max(float(kl[i]) / kmax * H, 0.0) if np.isfinite(kl[i]) else 0.0  # n/a: no bar
            b = Rectangle(width=min(max(cell.width * 0.7, 0.12), 0.4), height=max(h, 0.001), stroke_width=0)
            b.set_fill(P.CLIP if i == top else P.REF, 0.9)
            b.move_to([cell.get_x(), base_y + h / 2, 0])
            bars.add(b)
            self.bar_data.append((i, float(kl[i]), h / H * kmax))
        labelled = []
        for i in sorted(strip.shown, key=lambda j: -kl[j] if np.isfinite(kl[j]) else np.inf):
            b = bars[strip.shown.index(i)]
            if len(labelled) == 3 or any(abs(b.get_x() - x) < 1.0 for x in labelled):
                continue
            labelled.append(b.get_x())
            vals.add(Readout(float(kl[i]), fmt=fmt_kl, font_size=P.TINY,
                             color=P.CLIP if i == top else P.FG).place_at(b.get_top() + UP * 0.08))
        baseline = Line([strip.get_left()[0], base_y, 0], [strip.get_right()[0], base_y, 0], color=P.MUTED,
                        stroke_width=2)
        cap = label(f"step {st.step}, probe {pi}: completion {pr.index} of group {pr.group}"
                    f" · mean KL {fmt_kl(float(np.nanmean(kl)) if np.isfinite(kl).any() else math.nan)}",
                    P.SMALL, P.MUTED, max_width=13)
        cap.next_to(strip, DOWN, buff=0.2)
        self.play(FadeIn(strip), FadeIn(baseline), FadeIn(cap), run_time=0.8)
        self.play(LaggedStart(*[GrowFromEdge(b, DOWN) for b in bars], lag_ratio=0.08), run_time=1.6)
        self.play(FadeIn(vals), run_time=0.5)
        self.shown = {"step_index": si, "probe_index": pi, "tokens": list(strip.shown),
                      "kl": [float(kl[i]) for i in strip.shown]}

        # -- over training + the objective ---------------------------------------------------
        curve = MetricCurve(trace.step_numbers, trace.metric("kl"), "kl (mean over tokens, per step)", color=P.REF,
                            width=5.3, height=1.3, font_size=P.TINY, bounds=METRIC_BOUNDS["kl"], fmt=fmt_kl)
        curve.shift(np.array([-5.7, -3.65, 0]) - curve.box_origin.get_center())
        curve.k.set_value(float(trace.step_numbers[0]))
        self.play(FadeIn(curve), run_time=0.6)
        self.play(curve.marker_to(st.step, run_time=1.2))

        c = trace.meta.config or {}
        if trace.meta.algo == "ppo":
            kc = c.get("kl_coef")
            obj = formula(r"r_t \leftarrow r_t - c_{KL}\,(\log\pi_{old} - \log\pi_{ref})",
                          "r_t ← r_t − c_KL · (log π_old − log π_ref)", P.BODY)
            note = VGroup(label("PPO: the KL is part of the reward", P.LABEL, P.CLIP, max_width=6.8),
                          label(f"c_KL = kl_coef = {kc:g}  (run config)" if kc is not None else "c_KL = kl_coef = n/a "
                      "(not in meta.config)", P.LABEL, P.CLIP,
                                mono=True, max_width=6.8)).arrange(DOWN, buff=0.12)
        else:
            b = D.beta(trace)
            if c.get("use_bias_correction_kl"):  # the loss's term is ρ·k3 (logged as kl/ratio_weighted)
                obj = formula(r"J = L_{clip} - \beta\,\rho\,\mathrm{KL}", "J = L_clip − β · ρ · KL", P.BODY + 4)
            else:
                obj = formula(r"J = L_{clip} - \beta\,\mathrm{KL}", "J = L_clip − β · KL", P.BODY + 4)
            if not np.isfinite(b):
                note = label("β = n/a  (not in meta.config)", P.LABEL + 4, P.CLIP, mono=True)
            elif b == 0:
                note = label("β = 0 in this run: KL is only monitored", P.LABEL, P.CLIP, max_width=6.8)
            elif c.get("use_bias_correction_kl"):
                note = label(f"β = {b:g}, KL weighted by ρ = π_θ/π_old (run config)", P.LABEL, P.CLIP,
                             mono=True, max_width=6.8)
            else:
                note = label(f"β = {b:g}  (run config)", P.LABEL + 4, P.CLIP, mono=True)
        VGroup(obj, note).arrange(DOWN, buff=0.3).move_to([3.6, -2.75, 0])
        self.shown["beta"] = D.beta(trace)
        self.play(FadeIn(obj), FadeIn(note), run_time=0.8)
        self.wait(2.0)
