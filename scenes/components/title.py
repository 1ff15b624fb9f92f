"""Title card and on-screen headings; LaTeX-or-Text formulas."""

from __future__ import annotations

import os
import shutil
import sys

from manim import DOWN, LEFT, UL, UP, FadeIn, FadeOut, Line, VGroup

from .fasttext import MathTex, Text

from . import palette as P

_warned = False


def latex_available() -> bool:
    """True when ``latex`` and ``dvisvgm`` are on PATH (MathTex needs both).

    ``MINIGRPO_NO_LATEX=1`` forces the plain-text fallback (used by the tests).
    """
    if os.environ.get("MINIGRPO_NO_LATEX"):
        return False
    return bool(shutil.which("latex") and shutil.which("dvisvgm"))


def formula(tex: str, plain: str, font_size: float = P.BODY, color=P.FG, **kwargs):
    """``MathTex(tex)`` if LaTeX is installed, else ``Text(plain)`` (and one warning line)."""
    global _warned
    if latex_available():
        return MathTex(tex, font_size=font_size * 1.15, color=color, **kwargs)
    if not _warned:
        print(
            "minigrpo: LaTeX (latex + dvisvgm) not found, formulas are drawn as plain text; "
            "install a TeX distribution (e.g. apt-get install texlive-latex-extra dvisvgm) for typeset math",
            file=sys.stderr,
        )
        _warned = True
    return Text(plain, font=P.FONT, font_size=font_size, color=color)


def trace_caption(trace, steps=None) -> str:
    m = trace.meta
    nums = [s.step for s in trace.steps]
    rng = f"steps {min(nums)}–{max(nums)}" if nums else "no steps"
    return f"{m.algo.upper()} · {m.model} · {m.task} · {rng} · {trace_name(trace.path)}"


def trace_name(path) -> str:
    """``run NAME`` for a run's ``trace/``, else ``trace NAME`` (minigrpo.trace.inspect.display_name)."""
    from minigrpo.trace.inspect import display_name

    return display_name(path)


class TitleCard(VGroup):
    def __init__(self, title: str, subtitle: str = "", caption: str = "", **kwargs):
        super().__init__(**kwargs)
        self.title = Text(title, font=P.FONT, font_size=P.TITLE, color=P.FG, weight="BOLD")
        if self.title.width > 13:
            self.title.scale_to_fit_width(13)
        parts = [self.title]
        rule = Line(LEFT * 3, LEFT * -3, color=P.CLIP, stroke_width=4)
        parts.append(rule)
        if subtitle:
            sub = Text(subtitle, font=P.FONT, font_size=P.HEADING - 4, color=P.MUTED)
            if sub.width > 13:
                sub.scale_to_fit_width(13)
            parts.append(sub)
        if caption:
            cap = Text(caption, font=P.FONT, font_size=P.SMALL, color=P.MUTED)
            if cap.width > 13.2:
                cap.scale_to_fit_width(13.2)
            parts.append(cap)
        self.add(*parts)
        self.arrange(DOWN, buff=0.35)


def play_title(scene, title: str, subtitle: str, trace, hold: float = 1.2):
    card = TitleCard(title, subtitle, trace_caption(trace))
    scene.play(FadeIn(card, shift=UP * 0.2), run_time=0.8)
    scene.wait(hold)
    scene.play(FadeOut(card), run_time=0.5)


def heading(text: str, font_size: float = P.HEADING) -> Text:
    """Scene heading, top-left."""
    t = Text(text, font=P.FONT, font_size=font_size, color=P.FG, weight="BOLD")
    t.to_corner(UL, buff=0.25)
    return t
