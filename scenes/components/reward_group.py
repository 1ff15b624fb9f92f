"""``RewardGroup``: one prompt's G completions, their reward parts, totals and advantages."""

from __future__ import annotations

from typing import Optional

import numpy as np
from manim import (
    DOWN,
    LEFT,
    RIGHT,
    UP,
    DashedLine,
    Dot,
    Line,
    RoundedRectangle,
    VGroup,
)

from . import palette as P
from .data import advantage_eps
from .fasttext import Text
from .readout import Readout
from .tokens import one_line

PART_TITLES = {"format": "format", "correctness": "correct", "premise_copy": "copy pen."}


def fmt_num(v: float, signed: bool = False, decimals: int = 2) -> str:
    if not np.isfinite(v):
        return "n/a"
    d = decimals
    s = f"{v:+.{d}f}" if signed and round(v, d) != 0 else f"{abs(v) if round(v, d) == 0 else v:.{d}f}"
    return s.replace("-", "−")


def eps_shows(eps: float) -> bool:
    """Whether ε changes a number printed at two decimals (TRL's 1e-4 does not: it prints as 0.00)."""
    return abs(eps) >= 0.005


def advantage_text(reward: float, mean: float, std: float | None, config, advantage: float) -> str:
    """"= (R − μ) / σ = A" of one z-scored advantage ("= R − μ = A" with ``std`` None: scale_rewards none),
    its operands at the fewest decimals (2 to 6; the divisor's first) whose arithmetic, as printed, gives the
    printed A: at two decimals, "(0.00 − 1.05) / 0.42" would make −2.50 of a true −2.47. ε is printed where
    it shows (``eps_shows``) or where the printed A needs it (a σ of 0.01 next to TRL's 1e-4)."""
    eps = advantage_eps(config)
    shown = fmt_num(advantage, True)
    text = ""
    for dn in range(2, 7):  # decimals of R and μ
        r, m = round(reward, dn), round(mean, dn)
        numerator = f"{fmt_num(reward, decimals=dn)} − {fmt_num(mean, decimals=dn)}"
        if std is None:
            text = f"= {numerator} = {shown}"
            if fmt_num(r - m, True) == shown:
                return text
            continue
        for dd in range(dn, 7):  # decimals of σ (and ε)
            for with_eps in ((True,) if eps_shows(eps) else (False, True)):
                divisor = round(std, dd) + (round(eps, dd) if with_eps else 0.0)
                sigma = fmt_num(std, decimals=dd)
                div = f"({sigma} + {fmt_num(eps, decimals=dd)})" if with_eps else sigma
                text = f"= ({numerator}) / {div} = {shown}"
                if divisor != 0 and fmt_num((r - m) / divisor, True) == shown:
                    return text
    head, _, tail = text.rpartition(" = ")  # no printing adds up (a σ near 0): say so
    return f"{head} ≈ {tail}"


class RewardGroup(VGroup):
    """A table: ``#`` · completion · reward parts · R · A, one row per completion.

    The A column starts hidden; :meth:`advantage_anims` reveals it. Everything shown is
    read from the ``Group``; ``shown_rewards`` / ``shown_advantages`` / ``shown_parts``
    hold the numbers the readouts display (rounded as displayed via ``.value``).
    """

    def __init__(self, group, max_rows: int = 8, width: float = 13.0, row_h: float = 0.5,
                 completion_chars: int = 36, font_size: float = P.SMALL, weights: Optional[dict] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.group = group
        G = len(group.rewards)
        self.n_rows = min(G, max_rows)
        self.hidden_rows = G - self.n_rows
        parts = [k for k in group.reward_parts.keys()]
        self.part_names = parts
        adv = 0.196 * font_size / 24  # mono advance at this size

        cols = [("#", 0.55, "center"), ("completion", completion_chars * adv + 0.3, "left")]
        # part weights (from the run config) are shown when they reproduce R = Σ w·part
        self.weights = None
        if weights:
            w = np.array([float(weights.get(p, np.nan)) for p in parts])
            if np.all(np.isfinite(w)):
                recon = sum(w[k] * np.asarray(group.reward_parts[p], float) for k, p in enumerate(parts))
                if np.allclose(recon, np.asarray(group.rewards, float), atol=1e-4):
                    self.weights = dict(zip(parts, w))

        def part_title(p):
            t = PART_TITLES.get(p, p[:9])
            return f"{t} ×{self.weights[p]:g}" if self.weights else t

        def col_w(title, minimum):
            t = Text(title, font=P.FONT, font_size=font_size, weight="BOLD")
            return max(minimum, t.width + 0.3)

        cols += [(part_title(p), col_w(part_title(p), 1.45), "center") for p in parts]
        cols += [("R", 1.25, "center"), ("A", 1.45, "center")]
        total = sum(w for _, w, _ in cols)
        if total > width:  # shrink the completion column to fit
            cols[1] = (cols[1][0], cols[1][1] - (total - width), "left")
            completion_chars = max(12, int((cols[1][1] - 0.3) / adv))
            total = width
        self.col_x = []
        x = -total / 2
        for _, w, _ in cols:
            self.col_x.append((x, x + w))
            x += w

        def cx(i):
            a, b = self.col_x[i]
            return (a + b) / 2

        header = VGroup()
        for i, (name, w, align) in enumerate(cols):
            t = Text(name, font=P.FONT, font_size=font_size, color=P.MUTED, weight="BOLD")
            if align == "left":
                t.move_to([self.col_x[i][0] + 0.15, 0, 0], aligned_edge=LEFT)
            else:
                t.move_to([cx(i), 0, 0])
            header.add(t)
        self.header = header
        self.rows = VGroup()
        self.r_readouts, self.a_readouts, self.part_readouts = [], [], {p: [] for p in parts}
        self.a_column = VGroup()
        self.row_boxes = VGroup()
        a_idx = len(cols) - 1
        r_idx = len(cols) - 2
        for g in range(self.n_rows):
            y = -(g + 1) * row_h - 0.1
            box = RoundedRectangle(corner_radius=0.08, width=total, height=row_h * 0.86, stroke_width=1.5,
                                   stroke_color=P.GRID).set_fill(P.CARD, 0.95).move_to([0, y, 0])
            self.row_boxes.add(box)
            num = Text(str(g), font=P.MONO, font_size=font_size, color=P.MUTED).move_to([cx(0), y, 0])
            comp = Text(one_line(group.completions[g], completion_chars) or "∅", font=P.MONO,
                        font_size=font_size - 2, color=P.FG)
            comp.move_to([self.col_x[1][0] + 0.15, y, 0], aligned_edge=LEFT)
            if comp.width > self.col_x[1][1] - self.col_x[1][0] - 0.2:
                comp.scale_to_fit_width(self.col_x[1][1] - self.col_x[1][0] - 0.2)
                comp.move_to([self.col_x[1][0] + 0.15, y, 0], aligned_edge=LEFT)
            row = VGroup(box, num, comp)
            base = y - 0.09
            for k, p in enumerate(parts):
                v = float(np.asarray(group.reward_parts[p])[g])
                ro = Readout(v, fmt=fmt_num, font_size=font_size, color=P.signed_color(v, 1.0) if v else P.MUTED)
                ro.place_at([cx(2 + k), base, 0])
                self.part_readouts[p].append(ro)
                row.add(ro)
            r = float(group.rewards[g])
            ro = Readout(r, fmt=fmt_num, font_size=font_size + 2, color=P.FG)
            ro.place_at([cx(r_idx), base, 0])
            self.r_readouts.append(ro)
            row.add(ro)
            a = float(group.advantages[g])
            ao = Readout(a, fmt=lambda v: fmt_num(v, signed=True), font_size=font_size + 2, color=P.sign_color(round(a, 6)))
            ao.place_at([cx(a_idx), base, 0])
            self.a_readouts.append(ao)
            self.a_column.add(ao)
            self.rows.add(row)
        self.more = None
        bottom = -(self.n_rows + 1) * row_h - 0.1
        if self.hidden_rows:
            self.more = Text(f"+ {self.hidden_rows} more completions (in the mean and std)", font=P.FONT,
                             font_size=font_size - 2, color=P.MUTED).move_to([0, bottom + 0.1, 0])
        self.add(self.header, self.rows, self.a_column)
        if self.more is not None:
            self.add(self.more)
        self.r_col_x = cx(r_idx)
        self.a_col_x = cx(a_idx)
        self.row_h = row_h

    # -- read-back -------------------------------------------------------------------
    @property
    def shown_rewards(self) -> np.ndarray:
        return np.array([r.value for r in self.r_readouts])

    @property
    def shown_advantages(self) -> np.ndarray:
        return np.array([a.value for a in self.a_readouts])

    @property
    def shown_parts(self) -> dict[str, np.ndarray]:
        return {p: np.array([r.value for r in v]) for p, v in self.part_readouts.items()}

    def detach_advantages(self) -> VGroup:
        """Take the A column (and its header) out of the table so a scene can reveal it later."""
        self.remove(self.a_column)
        return self.a_column

    def row(self, g: int) -> VGroup:
        return self.rows[g]


class RewardLine(VGroup):
    """Rewards of a group as dots on a line with the mean (solid) and ±std (dashed)."""

    def __init__(self, rewards, mean: float, std: float, width: float = 6.0, font_size: float = P.SMALL,
                 lo: Optional[float] = None, hi: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        r = np.asarray(rewards, float)
        r = r[np.isfinite(r)]  # an unscorable completion (NaN, TRL's None) has no place on the line
        spread = std if np.isfinite(std) else 0.0
        ends = [*r.tolist(), *([mean - spread, mean + spread] if np.isfinite(mean) else [])] or [0.0]
        lo = float(min(ends)) if lo is None else lo
        hi = float(max(ends)) if hi is None else hi
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.08 * (hi - lo)
        lo, hi = lo - pad, hi + pad
        self.lo, self.hi, self.width_ = lo, hi, width

        def x(v):
            return (v - lo) / (hi - lo) * width - width / 2

        self.x_of = x
        axis = Line([-width / 2, 0, 0], [width / 2, 0, 0], color=P.MUTED, stroke_width=2.5)
        self.dots = VGroup()
        # stack equal rewards vertically so every completion is visible
        counts: dict[float, int] = {}
        for v in r:
            key = round(float(v), 6)
            n = counts.get(key, 0)
            counts[key] = n + 1
            self.dots.add(Dot([x(v), 0.2 + 0.22 * n, 0], radius=0.09, color=P.FG))
        top = 0.25 + 0.22 * max(counts.values(), default=0)  # above the highest stack of dots
        at = mean if np.isfinite(mean) else (lo + hi) / 2  # no mean (nothing scored): the line marks nothing
        self.mean_line = Line([x(at), -0.25, 0], [x(at), top, 0], color=P.CLIP if np.isfinite(mean) else P.MUTED,
                              stroke_width=5)
        self.mean_label = Text("μ" if np.isfinite(mean) else "μ n/a", font=P.FONT, font_size=font_size + 4,
                               color=P.CLIP if np.isfinite(mean) else P.MUTED).next_to(self.mean_line, DOWN, buff=0.08)
        self.std_lines = VGroup()
        if np.isfinite(std) and std > 0 and np.isfinite(mean):
            for s in (-1, 1):
                self.std_lines.add(DashedLine([x(mean + s * std), -0.2, 0], [x(mean + s * std), top, 0],
                                              color=P.MUTED, stroke_width=3))
            self.std_label = Text("±σ", font=P.FONT, font_size=font_size, color=P.MUTED).next_to(
                self.std_lines[1], UP, buff=0.08)
        else:  # σ = 0, or not recorded (null)
            self.std_label = Text("σ = 0" if np.isfinite(std) else "σ = n/a", font=P.FONT, font_size=font_size,
                                  color=P.NEG).next_to(self.mean_line, RIGHT, buff=0.2)
        ends = VGroup(  # no scored reward: the axis has no values to name
            Text(fmt_num(lo + pad), font=P.MONO, font_size=font_size - 2, color=P.MUTED).move_to([x(lo + pad), -0.35, 0]),
            Text(fmt_num(hi - pad), font=P.MONO, font_size=font_size - 2, color=P.MUTED).move_to([x(hi - pad), -0.35, 0]),
        ) if r.size or np.isfinite(mean) else VGroup()
        self.add(axis, ends, self.dots, self.mean_line, self.mean_label, self.std_lines, self.std_label)
