"""Small shared helpers for scene layout."""

from __future__ import annotations

from manim import DOWN

from .fasttext import Text

from . import palette as P


def label(text: str, font_size: float = P.LABEL, color=P.FG, weight="NORMAL", max_width: float | None = None,
          mono: bool = False) -> Text:
    """A one-line ``Text`` in the minigrpo type scale, shrunk to ``max_width`` if needed."""
    t = Text(text, font=P.MONO if mono else P.FONT, font_size=font_size, color=color, weight=weight)
    if max_width and t.width > max_width:
        t.scale_to_fit_width(max_width)
    return t


def setup(scene) -> None:
    """Background colour for every minigrpo scene."""
    scene.camera.background_color = P.BG


def caption(text: str, font_size: float = P.LABEL, color=P.MUTED, max_width: float = 13.4) -> Text:
    """One line of narration at the bottom of the frame."""
    return label(text, font_size, color, max_width=max_width).to_edge(DOWN, buff=0.3)
