"""One colour and type scale for every minigrpo scene.

Lecture framing: the frame is 14.2 x 8 units at 1080p; nothing a viewer must read is
set below ``SMALL`` (22 pt in Manim units, ~2.3% of the frame height).
"""

from __future__ import annotations

from manim import ManimColor, interpolate_color

BG = ManimColor("#0f1117")  # background (near-black, slightly blue)
FG = ManimColor("#ECEFF4")  # main text
MUTED = ManimColor("#9AA3B2")  # secondary text, axes
GRID = ManimColor("#3B4252")  # faint lines, card borders
CARD = ManimColor("#1B1F2A")  # card / panel fill

POS = ManimColor("#3FB950")  # positive advantage / reward went up
NEG = ManimColor("#F85149")  # negative advantage
ZERO = ManimColor("#8B949E")  # zero advantage / no signal

OLD = ManimColor("#58A6FF")  # π_old (behaviour policy, before the update)
NEW = ManimColor("#F0883E")  # π_new (after the optimizer step)
REF = ManimColor("#BC8CFF")  # π_ref (frozen reference model)
CLIP = ManimColor("#FFD33D")  # clipped tokens, the clip band, highlights
HIGHLIGHT = CLIP
VALUE = ManimColor("#39C5CF")  # PPO critic values
RETURN = ManimColor("#D2A8FF")  # PPO returns

FONT = "DejaVu Sans"
MONO = "DejaVu Sans Mono"

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

PPO_C = ManimColor("#39C5CF")  # PPO (critic) in side-by-side comparisons
GRPO_C = ManimColor("#DB61A2")  # GRPO (group baseline) in side-by-side comparisons
