"""GRPOAdvantage — the group is the baseline: A_i = (R_i − mean) / std, from a real rollout.

Storyboard
  1. title card
  2. one prompt and its G sampled completions: reward parts (format, correctness) and the
     total reward R_i of each, exactly as recorded in the trace
  3. the group's mean and std (dots on a line, μ and ±σ), the formula, then the advantage
     column A_i appears row by row, coloured by sign
  4. a group whose rewards are all equal (std = 0): every A_i = 0, "GRPO learns nothing
     here" — or, if the chosen steps hold no such group, that fact, from the data.

Run:  manim -ql scenes/grpo_advantage.py GRPOAdvantage   (env: MINIGRPO_TRACE, MINIGRPO_STEPS,
      MINIGRPO_PROBE picks the probe whose group is shown)
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
from manim import DOWN, LEFT, RIGHT, UP, FadeIn, FadeOut, LaggedStart, Scene, VGroup  # noqa: E402

from scenes.components import data as D  # noqa: E402
from scenes.components import palette as P  # noqa: E402
from scenes.components.layout import label, setup  # noqa: E402
from scenes.components.reward_group import RewardGroup, RewardLine, eps_shows, fmt_num  # noqa: E402
from scenes.components.title import formula, heading, play_title  # noqa: E402
from scenes.components.tokens import wrapped_text  # noqa: E402


class GRPOAdvantage(Scene):
    shown: dict  # what the table displayed (tests compare it with the trace)

    @D.friendly
    def construct(self):
        setup(self)
        trace = D.scene_trace()
        D.require_algo(trace, "grpo", "MINIGRPO_TRACE", "GRPOAdvantage (group z-score advantages)")
        si, gi = D.pick_group(trace)
        step = trace.steps[si]
        group = step.groups[gi]
        self.shown = {"step_index": si, "group": gi}

        play_title(self, "GRPO: the group is the baseline",
                   f"{len(group.rewards)} completions of one prompt, scored and compared", trace)

        title = heading(f"One prompt, G = {len(group.rewards)} completions  (rollout of step {step.step})",
                        P.HEADING - 6)
        q = wrapped_text(group.question, width=80, max_lines=2, font_size=P.SMALL + 2, max_width=13.2)
        q.next_to(title, DOWN, buff=0.25).align_to(title, LEFT)
        self.play(FadeIn(title), FadeIn(q), run_time=0.8)

        row_h = 0.47 if len(group.rewards) <= 6 else 0.40  # 8 rows must leave room for the μ/σ line
        table = RewardGroup(group, max_rows=8, width=13.2, row_h=row_h, weights=D.reward_weights(trace))
        table.next_to(q, DOWN, buff=0.3)
        table.set_x(0)
        a_col = table.detach_advantages()
        a_head = table.header[-1]
        table.remove(table.header)
        header_wo_a = VGroup(*table.header[:-1])
        self.play(FadeIn(header_wo_a), LaggedStart(*[FadeIn(r, shift=RIGHT * 0.2) for r in table.rows],
                                                     lag_ratio=0.12), run_time=1.8)
        self.table = table
        self.shown.update(rewards=table.shown_rewards, parts=table.shown_parts)
        self.wait(0.6)

        # -- mean / std --------------------------------------------------------------------
        rule = D.advantage_rule(group, trace.meta.config or {})
        bottom_y = table.get_bottom()[1] - 0.35
        line = RewardLine(group.rewards, group.mean, group.std, width=5.2)
        line.move_to([3.6, 0, 0]).align_to([0, bottom_y, 0], UP)
        eps = D.advantage_eps(trace.meta.config or {})
        shown_eps = f"    ε = {fmt_num(eps)}" if rule == "z" and eps_shows(eps) else ""
        stats = label(f"μ = {fmt_num(group.mean)}    σ = {fmt_num(group.std)}{shown_eps}", P.LABEL + 2, P.CLIP,
                      mono=True)
        stats.move_to([-3.6, 0, 0]).align_to([0, bottom_y - 0.05, 0], UP)
        self.shown.update(mean=float(group.mean), std=float(group.std))
        self.play(FadeIn(line), FadeIn(stats), run_time=1.0)

        # -- advantages --------------------------------------------------------------------
        if rule == "z":
            f = formula(r"A_i = \frac{R_i - \mu}{\sigma + \varepsilon}", "A_i = (R_i − μ) / (σ + ε)", P.BODY)
        elif rule == "center":
            f = formula(r"A_i = R_i - \mu", "A_i = R_i − μ   (scale_rewards = none)", P.BODY)
        else:  # batch scaling divides by the rollout's σ; anything else is shown as recorded, not explained
            scaled = (trace.meta.config or {}).get("scale_rewards") == "batch"
            f = label("A_i as recorded (batch-scaled)" if scaled else "A_i as recorded", P.BODY, P.FG)
        f.next_to(stats, DOWN, buff=0.3).align_to(stats, LEFT)
        if f.get_bottom()[1] < -3.85:
            f.shift(UP * (-3.85 - f.get_bottom()[1]))
        self.play(FadeIn(f), FadeIn(a_head), run_time=0.8)
        for g, ro in enumerate(table.a_readouts):
            a = float(group.advantages[g])
            table.row_boxes[g].set_stroke(P.sign_color(round(a, 6)), width=3)
        self.play(LaggedStart(*[FadeIn(a, shift=LEFT * 0.3) for a in a_col], lag_ratio=0.25), run_time=2.0)
        self.shown.update(advantages=table.shown_advantages)
        self.wait(1.5)

        # -- a group with no signal ----------------------------------------------------------
        self.play(*[FadeOut(m) for m in self.mobjects], run_time=0.6)
        zeros = D.zero_std_groups(trace)
        self.shown["zero_std"] = zeros[0] if zeros else None
        if zeros:
            zsi, zgi = zeros[0]
            zstep = trace.steps[zsi]
            zg = zstep.groups[zgi]
            scored = np.asarray(zg.rewards, float)[np.isfinite(np.asarray(zg.rewards, float))]
            unscorable = len(zg.rewards) - len(scored)
            same = (f"All {len(zg.rewards)} completions scored {fmt_num(float(scored[0]))}" if not unscorable else
                    f"All {len(scored)} scored completions scored {fmt_num(float(scored[0]))}, {unscorable} n/a")
            t2 = heading(f"{same}  (rollout of step {zstep.step})", P.HEADING - 6)
            q2 = wrapped_text(zg.question, width=80, max_lines=2, font_size=P.SMALL + 2, max_width=13.2)
            q2.next_to(t2, DOWN, buff=0.25).align_to(t2, LEFT)
            z_table = RewardGroup(zg, max_rows=6, width=13.2, row_h=0.47, weights=D.reward_weights(trace))
            z_table.next_to(q2, DOWN, buff=0.3).set_x(0)
            self.play(FadeIn(t2), FadeIn(q2), FadeIn(z_table), run_time=1.2)
            largest = float(np.nanmax(np.abs(np.asarray(zg.advantages, float)), initial=0.0))
            every = "every A_i = 0" if largest == 0 else f"every A_i ≈ 0 (|A_i| ≤ {largest:.1g}: float32 rounding)"
            verdict = VGroup(
                label(f"σ = {fmt_num(zg.std)}  →  {every}", P.BODY, P.NEG, mono=True, max_width=13),
                label("GRPO learns nothing here", P.HEADING, P.NEG, weight="BOLD"),
            ).arrange(DOWN, buff=0.2)
            verdict.next_to(z_table, DOWN, buff=0.35)
            if verdict.get_bottom()[1] < -3.8:
                verdict.shift(UP * (-3.8 - verdict.get_bottom()[1]))
            self.play(FadeIn(verdict, shift=UP * 0.2), run_time=0.8)
            self.shown.update(zero_advantages=z_table.shown_advantages)
        else:
            n = D.n_groups_checked(trace)
            frac = D.metric_mean(trace, "frac_reward_zero_std")
            lines = [
                label("Groups where every completion gets the same reward", P.HEADING - 4, P.FG, weight="BOLD",
                      max_width=13),
                label(f"none in {D.step_range_text(trace)} of this trace ({n} group{'' if n == 1 else 's'} checked)",
                      P.BODY, P.MUTED),
                label("such a group has σ = 0, so A_i = 0 for all i: GRPO would learn nothing from it", P.LABEL,
                      P.MUTED, max_width=13),
            ]
            if (trace.meta.config or {}).get("dynamic_sampling"):  # the metric counts groups the buffer left out
                lines.append(label("dynamic sampling kept only groups whose rewards differ", P.LABEL, P.CLIP,
                                   max_width=13))
                if np.isfinite(frac):
                    lines.append(label(f"frac_reward_zero_std over every group sampled, mean over these steps: "
                                       f"{frac:.3f}", P.LABEL, P.CLIP, max_width=13))
            elif np.isfinite(frac):
                lines.append(label(f"metric frac_reward_zero_std, mean over these steps: {frac:.3f}", P.LABEL,
                                   P.CLIP, max_width=13))
            msg = VGroup(*lines).arrange(DOWN, buff=0.35)
            self.play(FadeIn(msg), run_time=1.0)
        self.wait(1.5)
