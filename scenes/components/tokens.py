"""Readable tokens: visible whitespace, decoded byte markers, a coloured token strip."""

from __future__ import annotations

import re
import textwrap
import unicodedata
from typing import Optional, Sequence

import numpy as np
from manim import (
    DOWN,
    LEFT,
    RoundedRectangle,
    SurroundingRectangle,
    VGroup,
)

from . import palette as P
from .fasttext import Text

SPACE = "·"
NEWLINE = "⏎"
TAB = "⇥"
ELLIPSIS = "…"
EMPTY = "∅"

_BYTE_MARKERS = {"Ġ": " ", "Ċ": "\n", "ĉ": "\t", "▁": " "}
_COVERAGE: "set[int] | None" = None


def _font_coverage() -> "set[int] | None":
    """Code points the DejaVu fonts can draw (None if that cannot be determined)."""
    global _COVERAGE
    if _COVERAGE is not None:
        return _COVERAGE or None
    cover: set[int] = set()
    try:
        import subprocess

        from fontTools.ttLib import TTFont

        for fam in (P.MONO, P.FONT):
            f = subprocess.run(["fc-match", "-f", "%{file}", fam], capture_output=True, text=True, timeout=5).stdout
            if f:
                cover |= set(TTFont(f, lazy=True).getBestCmap().keys())
    except Exception:
        cover = set()
    _COVERAGE = cover
    return cover or None


def _drawable(ch: str) -> bool:
    cov = _font_coverage()
    return True if cov is None else ord(ch) in cov
_HEX_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def display_token(tok: str, max_chars: int = 12) -> str:
    """A token as a lecture audience can read it.

    Spaces become ``·``, newlines ``⏎``, tabs ``⇥``; GPT-2/SentencePiece byte markers
    (``Ġ``, ``Ċ``, ``▁``, ``<0x0A>``) are decoded first; other control characters are
    shown as ``\\xNN``; the empty string as ``∅``; long tokens are cut with ``…``.
    """
    s = str(tok)
    for k, v in _BYTE_MARKERS.items():
        s = s.replace(k, v)
    s = _HEX_BYTE.sub(lambda m: chr(int(m.group(1), 16)), s)
    out = []
    for ch in s:
        if ch == " ":
            out.append(SPACE)
        elif ch == "\n":
            out.append(NEWLINE)
        elif ch == "\t":
            out.append(TAB)
        elif ch == "\r":
            continue
        elif unicodedata.category(ch)[0] in "CZ" or not _drawable(ch):  # control, format, no glyph
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    s = "".join(out) or EMPTY
    if len(s) > max_chars:
        s = s[: max_chars - 1] + ELLIPSIS
    return s


def plain_text(s: str) -> str:
    """Decode byte markers in running text (not tokens) without making spaces visible."""
    for k, v in _BYTE_MARKERS.items():
        s = s.replace(k, v)
    out = []
    for ch in s:
        if ch == "\n":
            out.append(ch)
        elif unicodedata.category(ch)[0] == "C":
            out.append(" ")
        elif not _drawable(ch):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def shorten(s: str, width: int = 60, max_lines: int = 2) -> str:
    """Wrap running text to ``max_lines`` lines of ``width`` chars, ending with ``…`` if cut."""
    s = " ".join(plain_text(s).split())
    lines = textwrap.wrap(s, width=width) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        lines[-1] = (last[: width - 1] if len(last) >= width else last) + ELLIPSIS
    return "\n".join(lines)


def one_line(s: str, max_chars: int = 40) -> str:
    """Collapse text to one line (newlines shown as ⏎), cut with an ellipsis."""
    s = plain_text(s).replace("\n", f" {NEWLINE} ")
    s = " ".join(s.split())
    return s if len(s) <= max_chars else s[: max_chars - 1] + ELLIPSIS


def wrapped_text(s: str, width: int = 60, max_lines: int = 2, font_size=P.BODY, color=P.FG, max_width=None):
    t = Text(shorten(s, width, max_lines) or " ", font=P.FONT, font_size=font_size, color=color, line_spacing=0.8)
    if max_width and t.width > max_width:
        t.scale_to_fit_width(max_width)
    return t


_GLYPHS: dict = {}


def _glyph_count(s: str, font_size: float) -> int:
    key = (s, font_size)
    if key not in _GLYPHS:
        _GLYPHS[key] = len(Text(s, font=P.MONO, font_size=font_size).submobjects)
    return _GLYPHS[key]


def _fill_for(value: float, mode: str, scale: float):
    if mode == "signed":
        return P.signed_color(value, scale), 0.55
    if mode == "ratio":
        return P.signed_color(value - 1.0, scale), 0.55
    if mode == "magnitude":
        t = 0.0 if not np.isfinite(value) or scale <= 0 else min(abs(value) / scale, 1.0)
        return P.REF, 0.10 + 0.65 * t
    return P.CARD, 0.9


class TokenStrip(VGroup):
    """A completion as a row (or a few rows) of token cells coloured by a per-token value.

    * ``values`` (T,) and ``mode``: ``"signed"`` (green > 0 > red, e.g. advantage),
      ``"ratio"`` (colour by ρ − 1), ``"magnitude"`` (one hue, intensity ∝ value, e.g. KL)
      or ``None`` (neutral cells). ``scale`` is the value at full saturation.
    * ``highlight``: a token index drawn with a thick yellow frame.
    * Long completions are cut to a window around ``highlight`` (or the start) that fits
      in ``max_rows`` rows of ``max_width``; ``…`` marks what was cut.

    The whole row is typeset as one ``Text`` per line so all tokens share a baseline.
    ``shown`` lists the token indices drawn; ``cell(i)`` is the box of token ``i``.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        values: Optional[Sequence[float]] = None,
        highlight: Optional[int] = None,
        mode: Optional[str] = "signed",
        scale: Optional[float] = None,
        max_width: float = 13.0,
        max_rows: int = 2,
        max_tokens: int = 40,
        font_size: float = P.LABEL,
        token_chars: int = 10,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tokens = list(tokens)
        T = len(self.tokens)
        self.values = None if values is None else np.asarray(values, dtype=float)
        self.highlight_index = highlight if (highlight is not None and 0 <= highlight < T) else None
        self.mode = mode if self.values is not None else None
        if scale is None and self.values is not None and T:
            ref = self.values - 1.0 if mode == "ratio" else self.values
            finite = np.abs(ref[np.isfinite(ref)])
            scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        self.value_scale = scale or 1.0
        self.font_size = font_size
        disp = [display_token(t, token_chars) for t in self.tokens]
        self.display = disp

        adv = Text("0" * 10, font=P.MONO, font_size=font_size).width / 10  # mono advance
        self.advance = adv
        max_chars = max(8, int(max_width / adv))

        # choose a window [a, b) around the highlight that fits the rows
        centre = self.highlight_index if self.highlight_index is not None else 0
        a, b = centre, min(centre + 1, T)

        def rows_for(a, b):
            pieces = ([ELLIPSIS] if a > 0 else []) + disp[a:b] + ([ELLIPSIS] if b < T else [])
            rows, cur = [], 0
            for p in pieces:
                need = len(p) + (1 if cur else 0)
                if cur and cur + need > max_chars:
                    rows.append(cur)
                    cur = len(p)
                else:
                    cur += need
            rows.append(cur)
            return len(rows)

        if T:
            grew = True
            while grew and (b - a) < max_tokens:
                grew = False
                # grow right first (the future of the completion), then left
                for side in ("right", "left"):
                    if (b - a) >= max_tokens:
                        break
                    if side == "right" and b < T and rows_for(a, b + 1) <= max_rows:
                        b += 1
                        grew = True
                    elif side == "left" and a > 0 and rows_for(a - 1, b) <= max_rows and (
                        self.highlight_index is not None
                    ):
                        a -= 1
                        grew = True
        self.window = (a, b)
        self.shown = list(range(a, b))

        # lay out pieces into rows of characters
        pieces = ([(None, ELLIPSIS)] if a > 0 else []) + [(i, disp[i]) for i in range(a, b)] + (
            [(None, ELLIPSIS)] if b < T else []
        )
        rows: list[list[tuple[Optional[int], str]]] = [[]]
        cur = 0
        for idx, p in pieces:
            need = len(p) + (1 if cur else 0)
            if cur and cur + need > max_chars:
                rows.append([])
                cur = 0
                need = len(p)
            rows[-1].append((idx, p))
            cur += need

        self._cells: dict[int, RoundedRectangle] = {}
        self.texts = VGroup()
        self.boxes = VGroup()
        line_h = font_size / 48 * 0.62  # row pitch in units, enough for ascenders/descenders
        pad = adv * 0.38
        for r, row in enumerate(rows):
            line = " ".join(p for _, p in row)
            t = Text(line, font=P.MONO, font_size=font_size, color=P.FG)
            glyphs = list(t.submobjects)
            counts = [len(p) for _, p in row]
            if sum(counts) != len(glyphs):  # a char drew 0 or 2+ glyphs: count them per token
                counts = [_glyph_count(p, font_size) for _, p in row]
            per_glyph = sum(counts) == len(glyphs)
            # baseline: row r at y = -r * pitch; place text by its first glyph grid
            t.move_to(np.zeros(3), aligned_edge=LEFT)
            t.shift(DOWN * r * line_h * 1.75)
            self.texts.add(t)
            k = 0
            x_cursor = t.get_left()[0]
            for (idx, p), n in zip(row, counts):
                if per_glyph and n > 0:
                    gs = glyphs[k : k + n]
                    left = min(g.get_left()[0] for g in gs)
                    right = max(g.get_right()[0] for g in gs)
                    k += n
                else:  # fall back to the monospace grid
                    left, right = x_cursor, x_cursor + len(p) * adv
                    x_cursor += (len(p) + 1) * adv
                if idx is None:
                    continue
                w = max(right - left, adv * 0.6) + 2 * pad
                box = RoundedRectangle(
                    corner_radius=0.06, width=w, height=line_h * 1.45, stroke_width=1.2, stroke_color=P.GRID
                )
                box.move_to([(left + right) / 2, t.get_y(), 0])
                if self.mode is not None:
                    col, op = _fill_for(float(self.values[idx]), self.mode, self.value_scale)
                else:
                    col, op = P.CARD, 0.9
                box.set_fill(col, opacity=op)
                self._cells[idx] = box
                self.boxes.add(box)
        self.add(self.boxes, self.texts)
        self.frame = None
        if self.highlight_index is not None and self.highlight_index in self._cells:
            self.frame = SurroundingRectangle(
                self._cells[self.highlight_index], color=P.CLIP, buff=0.04, stroke_width=6, corner_radius=0.08
            )
            self.add(self.frame)
        self.move_to(np.zeros(3))

    def cell(self, i: int):
        """The box of token ``i`` (``None`` if it is outside the shown window)."""
        return self._cells.get(i)

    def shown_values(self) -> np.ndarray:
        return np.array([self.values[i] for i in self.shown]) if self.values is not None else np.array([])
