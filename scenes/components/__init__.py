"""Building blocks of the minigrpo Manim scenes.

palette (colours, type scale) · tokens (readable tokens, TokenStrip) · readout (numbers
that change every frame) · bars (LogitBarChart) · clip_band (RatioBand) · reward_group
(RewardGroup, RewardLine) · curves (MetricCurve) · title (title card, LaTeX-or-Text
formulas) · layout (labels) · data (trace / steps / probe from the environment).
"""
