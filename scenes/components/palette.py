"""One colour and type scale for every minigrpo scene.

Lecture framing: the frame is 14.2 x 8 units at 1080p; nothing a viewer must read is
set below ``SMALL`` (22 pt in Manim units, ~2.3% of the frame height).
"""

from __future__ import annotations

from manim import ManimColor, interpolate_color

from minigrpo import palette as _hex  # the hex values, shared with `minigrpo plot`

BG = ManimColor(_hex.BG)  # background (near-black, slightly blue)
FG = ManimColor(_hex.FG)  # main text
MUTED = ManimColor(_hex.MUTED)  # secondary text, axes
GRID = ManimColor(_hex.GRID)  # faint lines, card borders
CARD = ManimColor(_hex.CARD)  # card / panel fill

POS = ManimColor(_hex.POS)  # positive advantage / reward went up
NEG = ManimColor(_hex.NEG)  # negative advantage
ZERO = ManimColor(_hex.ZERO)  # zero advantage / no signal

OLD = ManimColor(_hex.OLD)  # π_old (behaviour policy, before the update)
NEW = ManimColor(_hex.NEW)  # π_new (after the optimizer step)
REF = ManimColor(_hex.REF)  # π_ref (frozen reference model)
CLIP = ManimColor(_hex.CLIP)  # clipped tokens, the clip band, highlights
HIGHLIGHT = CLIP
VALUE = ManimColor(_hex.VALUE)  # PPO critic values
RETURN = ManimColor(_hex.RETURN)  # PPO returns

FONT = _hex.FONT
MONO = _hex.MONO

TITLE = 60
HEADING = 40
BODY = 32
LABEL = 28
SMALL = 24
TINY = 22  # floor: nothing smaller is ever drawn


def signed_color(value: float, scale: float = 1.0):
    """Colour for a signed quantity: green above 0, red below, grey at 0; saturates at |scale|."""
    if value != value:  # NaN
        return ZERO
    if scale <= 0:
        scale = 1.0
    t = min(abs(float(value)) / scale, 1.0)
    if value > 0:
        return interpolate_color(ZERO, POS, 0.35 + 0.65 * t)
    if value < 0:
        return interpolate_color(ZERO, NEG, 0.35 + 0.65 * t)
    return ZERO


def sign_color(value: float):
    """Pure sign colour (no intensity)."""
    if value > 0:
        return POS
    if value < 0:
        return NEG
    return ZERO

PPO_C = ManimColor(_hex.PPO_C)  # PPO (critic) in side-by-side comparisons
GRPO_C = ManimColor(_hex.GRPO_C)  # GRPO (group baseline) in side-by-side comparisons
