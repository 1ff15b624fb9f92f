"""PPOLogits — watch the next-token distribution of a real model move, one update at a time.

Storyboard
  1. title card
  2. the probe's question and its sampled completion (token strip coloured by the
     advantage each token received); the decision token (first token inside <answer>)
     framed in yellow
  3. top-k bars of the policy before the update (probs_before / logits_before)
  4. "optimizer step k": bars morph to the policy after the update (probs_after); the
     sampled token's bar turns green/red by the sign of its advantage; meanwhile the
     sampled token's ratio walks along the clip band from ρ used in the loss
     (probe.ratio = π_θ/π_old) to π_new/π_old = exp(logp_new − logp_old); clipped tokens
     (probe.clipped_low/high) light the band up
  5. the same decision over the following updates, bars morphing step by step, with a
     step counter and the reward curve's marker moving along.

Run:  manim -ql scenes/ppo_logits.py PPOLogits   (env: MINIGRPO_TRACE, MINIGRPO_STEPS,
      MINIGRPO_PROBE, MINIGRPO_FOLLOW; see docs/scenes.md)
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
    DOWN, LEFT, RIGHT, FadeIn, FadeTransform, Scene, VGroup,
)

from scenes.components import data as D  # noqa: E402
from scenes.components import palette as P  # noqa: E402
from scenes.components.bars import LogitBarChart  # noqa: E402
from scenes.components.clip_band import RatioBand  # noqa: E402
from scenes.components.curves import MetricCurve  # noqa: E402
from scenes.components.layout import label, setup  # noqa: E402
from scenes.components.readout import Readout  # noqa: E402
from scenes.components.title import heading, play_title  # noqa: E402
from scenes.components.tokens import TokenStrip, display_token, wrapped_text  # noqa: E402


def before_title(trace, shot) -> str:
    """The "before" bars are π_θ at this step (``probs_before``); they are π_old only on the first
    update trained on a rollout (ρ = 1 there up to rounding; an exact test of ρ == 1 missed most)."""
    same = D.opens_its_rollout(trace, shot.step(trace))
    return "before the update (π_θ = π_old)" if same else "before this update (π_θ)"


def no_later_text(trace, shot, follow_count: int) -> str:
    """Why no later update is replayed after the shot: none follows it in the chosen steps, none was asked
    for, or the later ones recorded no probe at such a position."""
    if follow_count <= 0:
        return "later updates not followed (MINIGRPO_FOLLOW = 0)"
    if shot.step_index + 1 >= len(trace.steps):
        return "no later update in the chosen steps"
    return f"the later updates in the chosen steps recorded no probe at a {shot.position.kind} position"


class PPOLogits(Scene):
    record: list  # one dict per replayed update (tests compare it with the trace)

    @D.friendly
    def construct(self):
        setup(self)
        trace = D.scene_trace()
        shot = D.pick_flagship(trace, D.env_int("MINIGRPO_PROBE"))
        follow_count = D.env_int("MINIGRPO_FOLLOW", D.DEFAULT_FOLLOW)
        later = D.follow(trace, shot, follow_count)
        eps, eps_high = D.clip_epsilons(trace)
        self.trace, self.record = trace, []

        play_title(self, "Watching the logits move",
                   f"one decision of a real model, update by update ({trace.meta.algo.upper()})", trace)

        # -- 2. question + completion ------------------------------------------------------
        self.add(heading("One decision, update by update", P.HEADING - 4))
        self.step_no = Readout(shot.step(trace).step, fmt=lambda v: f"step {v:.0f}", font_size=P.HEADING,
                               color=P.CLIP, align="right").place_at([6.85, 3.5, 0])
        self.add(self.step_no)
        self.question, self.strip = self._prompt_and_strip(trace, shot)
        self.play(FadeIn(self.question), FadeIn(self.strip), run_time=1.0)
        kind = "first token inside <answer>" if shot.position.kind == "decision" else (
            "the token that moved most (no decision position recorded)")
        self.note = label(f"framed: {kind}", P.SMALL, P.CLIP, max_width=8.8).move_to([0, 1.02, 0])
        # under the strip's start; a strip shorter than the note (a short completion) would push it
        # off the frame and over the sampled-token panel: then it starts at the frame's left margin
        self.note.align_to(self.strip if self.strip.width >= self.note.width else [-6.6, 0, 0], LEFT)
        self.play(FadeIn(self.note), run_time=0.5)

        # -- 3. bars before the update ---------------------------------------------------
        self.chart = LogitBarChart(n_bars=5, width=7.6, bar_height=2.2, font_size=P.SMALL, label_chars=6,
                                   temperature=D.temperature(trace))
        self.chart.shift(np.array([-5.75, -2.5, 0]) - self.chart.origin)
        self.chart.seat(shot.position, "before", run_time=0)
        self.chart_title = label(before_title(trace, shot), P.LABEL, P.OLD).move_to([-2.05, 0.4, 0])
        self.play(FadeIn(self.chart), FadeIn(self.chart_title), run_time=1.0)

        # -- right panel: sampled token, advantage, ratio band, reward curve ----------------
        self.info = self._info(trace, shot)
        self.band = RatioBand(eps, eps_high, width=4.5, symbol="ρ", font_size=P.SMALL,
                              band_text="")
        self.band.shift(np.array([4.55, -0.95, 0]) - self.band.axis.get_center())
        self.band.rho.set_value(float(shot.probe.ratio[shot.position.pos]))
        self.band.update()  # drawn at this ρ before it fades in (an animation must not see its glyphs change)
        self.band_caption = self._status(shot, after=False)
        steps = trace.step_numbers
        self.curve = MetricCurve(steps, trace.metric("reward"), "reward", color=P.NEW, width=3.9, height=0.6,
                                 font_size=P.TINY)
        self.curve.shift(np.array([2.85, -3.66, 0]) - self.curve.box_origin.get_center())
        self.curve.k.set_value(shot.step(trace).step)
        self.play(FadeIn(self.info), FadeIn(self.band), FadeIn(self.band_caption), FadeIn(self.curve), run_time=1.0)
        self._set_clipped(shot)
        self.wait(0.8)

        # -- 4. the optimizer step --------------------------------------------------------
        self._update(trace, shot, first=True)

        # -- 5. follow the decision over the next updates ---------------------------------
        prev = shot
        for nxt in later:
            self._advance(trace, prev, nxt)
            self._update(trace, nxt, first=False)
            prev = nxt
        if not later:
            # under the bars' title: the bottom edge holds the bars' logits and the reward curve
            self.no_later = no_later_text(trace, shot, follow_count)
            self.play(FadeIn(label(self.no_later, P.SMALL, P.MUTED).next_to(self.chart_title, DOWN, buff=0.08)))
        self.wait(1.5)

    # ----------------------------------------------------------------------------------
    def _prompt_and_strip(self, trace, shot):
        group = shot.step(trace).groups[shot.probe.group] if shot.probe.group < len(shot.step(trace).groups) else None
        q = group.question if group is not None else shot.probe.text
        question = wrapped_text(q, width=78, max_lines=2, font_size=P.SMALL + 2, color=P.FG, max_width=13.2)
        question.move_to([0, 2.72, 0])
        pr = shot.probe
        strip = TokenStrip(pr.tokens, pr.advantage, highlight=shot.position.pos, mode="signed",
                           max_width=13.2, max_rows=2, font_size=P.SMALL)
        strip.move_to([0, 1.7, 0])
        return question, strip

    def _info(self, trace, shot):
        pr, pos = shot.probe, shot.position.pos
        a = float(pr.advantage[pos])
        tok = display_token(pr.tokens[pos], 12)
        line1 = VGroup(label("sampled", P.LABEL, P.MUTED), label(tok, P.LABEL + 2, P.FG, mono=True)).arrange(RIGHT, buff=0.2)
        line2 = VGroup(label("advantage A =", P.LABEL, P.MUTED),
                       label(f"{a:+.2f}".replace("-", "−"), P.LABEL + 2, P.sign_color(a), mono=True)).arrange(RIGHT, buff=0.2)
        g = VGroup(line1, line2).arrange(DOWN, aligned_edge=LEFT, buff=0.15)
        if g.width > 4.6:
            g.scale_to_fit_width(4.6)
        g.move_to([4.5, 0.5, 0])
        g.align_to([2.3, 0, 0], LEFT)
        return g

    def _status(self, shot, after: bool):
        """Lines under the band saying which ratio the dot shows, what clipping did, and, after the
        step, when the sampled token moved against its advantage."""
        pr, pos = shot.probe, shot.position.pos
        clipped = bool(pr.clipped_low[pos] or pr.clipped_high[pos])
        if after:
            lines = [("after the step: ρ = π_new / π_old;", P.NEW),
                     ("ring: the ρ this step's loss used", P.CLIP if clipped else P.MUTED)]
            if D.move_vs_advantage(pr, pos):
                lines.append(("against its A: other tokens won", P.FG))
        else:
            lines = [("ρ = π_θ / π_old as in this step's loss;", P.FG),
                     ("clipped: no surrogate gradient here" if clipped else "not clipped: its gradient flows",
                      P.CLIP if clipped else P.MUTED)]
        g = VGroup(*[label(t, P.TINY, c, max_width=4.7) for t, c in lines]).arrange(DOWN, buff=0.06)
        return g.next_to(self.band, DOWN, buff=0.12).set_x(4.55)

    def _set_clipped(self, shot):
        pr, pos = shot.probe, shot.position.pos
        self.band.set_clipped(bool(pr.clipped_low[pos] or pr.clipped_high[pos]))

    def _update(self, trace, shot, first: bool):
        st = shot.step(trace)
        pr, pos = shot.probe, shot.position.pos
        a = float(pr.advantage[pos])
        before = self.chart.displayed_probs().copy()
        self.step_no.set_value(st.step)
        banner = label(f"optimizer step {st.step}", P.LABEL + 4, P.NEW, weight="BOLD").move_to([-2.05, 0.4, 0])
        self.play(FadeTransform(self.chart_title, banner), run_time=0.6)
        ghosts = self.chart.make_ghosts(P.OLD)
        rho_new = float(np.exp(float(pr.logp_new[pos]) - float(pr.logp_old[pos])))
        anims = self.chart.morph_to(shot.position, "after", sampled_color=P.sign_color(a), run_time=2.2 if first else 1.6)
        was_clipped = self.band.clipped
        self.band.set_ghost(float(pr.ratio[pos]), was_clipped)
        self.band.set_clipped(False)  # the yellow ring + status line now carry it
        status = self._status(shot, after=True)
        self.play(FadeIn(ghosts), FadeTransform(self.band_caption, status), run_time=0.4)
        self.band_caption = status
        self.play(*anims, self.band.rho.animate(run_time=2.2 if first else 1.6).set_value(rho_new),
                  self.curve.marker_to(st.step, run_time=1.0))
        self.chart_title = label("after the update (π_new)  ·  outline: before", P.LABEL, P.NEW).move_to([-2.05, 0.4, 0])
        self.play(FadeTransform(banner, self.chart_title), run_time=0.5)
        self.record.append({
            "step": st.step,
            "step_index": shot.step_index,
            "probe_index": shot.probe_index,
            "pos": pos,
            "slots": list(self.chart.slot_token_ids),
            "shown_before": before,
            "shown_after": self.chart.displayed_probs().copy(),
            "shown_logits_after": self.chart.displayed_logits().copy(),
            "rho_loss": float(pr.ratio[pos]),
            "rho_new": float(self.band.rho.get_value()),
            "clipped": was_clipped,
            "against": D.move_vs_advantage(pr, pos),
            "status": [m.original_text for m in status],
        })
        self.wait(1.2 if first else 0.6)

    def _advance(self, trace, prev, nxt):
        """Move from one update's 'after' to the next update's 'before'."""
        anims = []
        same = D.same_context(prev, nxt, trace)
        if not same:
            q, s = self._prompt_and_strip(trace, nxt)
            anims += [FadeTransform(self.strip, s)]
            if q.text != self.question.text:
                anims += [FadeTransform(self.question, q)]
                self.question = q
            self.strip = s
            info = self._info(trace, nxt)
            anims += [FadeTransform(self.info, info)]
            self.info = info
        title = label("before the next update" + ("" if same else " (another completion)"), P.LABEL, P.OLD)
        title.move_to([-2.05, 0.4, 0])
        anims += [FadeTransform(self.chart_title, title)]
        self.chart_title = title
        anims += self.chart.seat(nxt.position, "before", keep=True, run_time=0.9)
        self.band.set_clipped(False)
        self.band.set_ghost(None)
        status = self._status(nxt, after=False)
        anims += [FadeTransform(self.band_caption, status)]
        self.band_caption = status
        anims += [self.band.rho.animate(run_time=0.9).set_value(float(nxt.probe.ratio[nxt.position.pos]))]
        self.play(*anims)
        self._set_clipped(nxt)
