"""The colours of every minigrpo picture, as hex strings (no Manim import).

The Manim scenes (``scenes/components/palette.py``) wrap these in ``ManimColor``; the
matplotlib figures of ``minigrpo plot`` use them as they are, so a plot on a slide and a
scene in the same lecture read the same way.
"""

BG = "#0f1117"  # background (near-black, slightly blue)
FG = "#ECEFF4"  # main text
MUTED = "#9AA3B2"  # secondary text, axes
GRID = "#3B4252"  # faint lines, card borders
CARD = "#1B1F2A"  # card / panel fill

POS = "#3FB950"  # positive advantage / reward went up
NEG = "#F85149"  # negative advantage
ZERO = "#8B949E"  # zero advantage / no signal

OLD = "#58A6FF"  # π_old (behaviour policy, before the update)
NEW = "#F0883E"  # π_new (after the optimizer step)
REF = "#BC8CFF"  # π_ref (frozen reference model)
CLIP = "#FFD33D"  # clipped tokens, the clip band, highlights
VALUE = "#39C5CF"  # PPO critic values
RETURN = "#D2A8FF"  # PPO returns

PPO_C = "#39C5CF"  # PPO (critic) in side-by-side comparisons
GRPO_C = "#DB61A2"  # GRPO (group baseline) in side-by-side comparisons

FONT = "DejaVu Sans"
MONO = "DejaVu Sans Mono"
