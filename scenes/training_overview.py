"""TrainingOverview — the run at a glance: reward, accuracy, KL and clip fraction per step.

Storyboard
  1. title card
  2. four small plots from the trace's step metrics: ``reward``, ``accuracy``, ``kl``,
     ``clip_ratio/region_mean``; a marker sweeps all four from the first to the last step
     with the value at each step.

Run:  manim -ql scenes/training_overview.py TrainingOverview   (env: MINIGRPO_TRACE, MINIGRPO_STEPS)
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
from manim import FadeIn, LaggedStart, Scene, VGroup, linear  # noqa: E402

from scenes.components import data as D  # noqa: E402
from scenes.components import palette as P  # noqa: E402
from scenes.components.curves import METRIC_BOUNDS, MetricCurve, fmt_kl, fmt_value  # noqa: E402
from scenes.components.layout import setup  # noqa: E402
from scenes.components.title import heading, play_title  # noqa: E402

METRICS = [
    ("reward", "reward", P.NEW),
    ("accuracy", "accuracy", P.POS),
    ("kl", "KL to π_ref (k3)", P.REF),
    ("clip_ratio/region_mean", "clip fraction (region)", P.CLIP),
]


class TrainingOverview(Scene):
    curves: dict

    @D.friendly
    def construct(self):
        setup(self)
        trace = D.scene_trace()
        play_title(self, "Training at a glance", "every point is one optimizer update of this trace", trace)
        self.add(heading(f"{trace.meta.algo.upper()} on {trace.meta.task}: {D.step_range_text(trace)}",
                         P.HEADING - 4))
        xs = trace.step_numbers
        self.curves = {}
        grid = VGroup()
        origins = [(-5.7, 0.6), (1.35, 0.6), (-5.7, -3.0), (1.35, -3.0)]
        for (name, title, color), (x0, y0) in zip(METRICS, origins):
            values = trace.metric(name)
            if name == "kl" and not trace.meta.kl_recorded:  # TRL with β = 0: no reference model, no KL
                values, title = np.full(len(xs), np.nan), "KL: none (TRL, β = 0: no π_ref)"
            c = MetricCurve(xs, values, title, color=color, width=5.2, height=1.9, font_size=P.SMALL,
                            bounds=METRIC_BOUNDS.get(name, (None, None)), fmt=fmt_kl if name == "kl" else fmt_value)
            c.shift([x0, y0, 0] - c.box_origin.get_center())
            c.k.set_value(float(xs[0]))
            self.curves[name] = c
            grid.add(c)
        self.play(LaggedStart(*[FadeIn(c) for c in grid], lag_ratio=0.2), run_time=1.5)
        sweep = max(2.0, min(8.0, 0.25 * len(xs)))
        anims = [c.k.animate(run_time=sweep, rate_func=linear).set_value(float(xs[-1]))
                 for c in grid if c.marker is not None]
        if anims:
            self.play(*anims)
        self.wait(2.0)
