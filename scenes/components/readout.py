"""Fast monospace text for numbers that change every frame.

``Readout`` owns a fixed pool of glyph VMobjects and rewrites their points from a
per-character glyph cache (one Pango call per font size, ever). Nothing is added to or
removed from the scene while it changes — important because the Cairo renderer fixes
the list of moving mobjects when an animation starts. Glyphs keep their true baseline
because the cache is cut from one rendered line.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from manim import Text, VGroup, VMobject

from . import palette as P

_CHARSET = (
    "0123456789.,:;+-−=%()[]<>/|*^_'\"!?#&@~"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ρπεσμβΔθ≈×·…→←↑↓⏎⇥∅±√Σ–"
)


class _GlyphSet:
    def __init__(self, font_size: float, font: str = P.MONO):
        chars = "0" + _CHARSET
        line = Text(chars, font=font, font_size=font_size)
        self.ok = len(line.submobjects) == len(chars)
        self.glyphs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        pair = Text("00", font=font, font_size=font_size)
        self.advance = float(pair.submobjects[1].get_center()[0] - pair.submobjects[0].get_center()[0])
        if not self.ok:  # pragma: no cover - font without these glyphs
            self.cap = float(pair.height)
            return
        zero = line.submobjects[0]
        c0 = zero.get_center()[0]
        baseline = float(zero.get_bottom()[1])
        self.cap = float(zero.height)
        for j, (ch, g) in enumerate(zip(chars, line.submobjects)):
            if ch in self.glyphs:
                continue
            cell_x = c0 + j * self.advance
            # points relative to (cell centre, baseline)
            self.glyphs[ch] = g.points - np.array([cell_x, baseline, 0.0])

    def __deepcopy__(self, memo):  # shared, read-only cache: never copied with a mobject
        return self

    def __copy__(self):
        return self

    def points(self, ch: str) -> np.ndarray:
        g = self.glyphs.get(ch)
        return self.glyphs["?"] if g is None else g


_SETS: dict[tuple[float, str], _GlyphSet] = {}


def glyph_set(font_size: float, font: str = P.MONO) -> _GlyphSet:
    key = (round(float(font_size), 3), font)
    if key not in _SETS:
        _SETS[key] = _GlyphSet(font_size, font)
    return _SETS[key]


class Readout(VGroup):
    """A one-line monospace label whose text can change every frame (e.g. in an updater).

    ``fmt`` turns a float into the string shown; ``value`` is the number last shown and
    ``string`` the text (tests read them). ``place_at(point, align)`` pins the baseline
    anchor (left / centre / right end of the text); the anchor follows the readout
    through shifts and animations. Strings longer than ``max_chars`` are cut.
    """

    def __init__(
        self,
        value: float = 0.0,
        fmt: Callable[[float], str] | str = "{:.3f}",
        font_size: float = P.SMALL,
        color=P.FG,
        align: str = "center",
        max_chars: int = 16,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.fmt = fmt if callable(fmt) else (lambda v, f=fmt: f.format(v))
        self.font_size = font_size
        self.text_color = color
        self.align = align
        self.max_chars = max_chars
        self.gs = glyph_set(font_size)
        self.string = None
        self.value = None
        # invisible point that carries the baseline anchor through shifts/animations
        self._pin = VMobject(stroke_width=0, fill_opacity=0)
        self._pin.set_points(np.zeros((4, 3)))
        self.slots = [VMobject(stroke_width=0).set_fill(color, 1) for _ in range(max_chars)]
        self.add(self._pin, *self.slots)
        self.set_value(value)

    def set_string(self, s: str) -> "Readout":
        s = s[: self.max_chars]
        if s == self.string:
            return self
        self.string = s
        self._draw()
        return self

    def _draw(self):
        s = self.string or ""
        adv = self.gs.advance
        w = len(s) * adv
        x0 = {"left": 0.0, "center": -w / 2, "right": -w}[self.align]
        a = self._pin.get_center()
        for i, slot in enumerate(self.slots):
            ch = s[i] if i < len(s) else " "
            if ch == " ":
                slot.clear_points()
                continue
            pts = self.gs.points(ch)
            slot.set_points(pts + a + np.array([x0 + (i + 0.5) * adv, 0.0, 0.0]))
            slot.set_fill(self.text_color, 1)

    def set_value(self, v: float) -> "Readout":
        self.value = float(v)
        return self.set_string(self.fmt(float(v)))

    def set_text_color(self, color) -> "Readout":
        self.text_color = color
        for slot in self.slots:
            slot.set_fill(color, 1)
        return self

    def anchor(self) -> np.ndarray:
        return self._pin.get_center()

    def place_at(self, point, align: str | None = None) -> "Readout":
        """Put the baseline anchor at ``point`` (left/centre/right end per ``align``)."""
        p = np.array(point, dtype=float)
        if align is None or align == self.align:
            if np.allclose(p, self._pin.get_center()):
                return self
        if align:
            self.align = align
        self._pin.move_to(p)
        self._draw()
        return self

    def text_height(self) -> float:
        return self.gs.cap
