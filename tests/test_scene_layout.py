"""Layout of the clip band in the scenes, for any valid ε and ε_high (no video rendered).

The panels of ``clip_surrogate`` and the ``RatioBand`` of ``ppo_logits`` are built for clip
settings that real runs use, symmetric and lopsided, wide and thinner than a pixel, and checked
by their bounding boxes: the shaded band stays inside its axis, no two tick labels touch, and
every number under an axis is a true band edge, 1 or an end of the axis, standing at its place.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("manim")

from scenes.clip_surrogate import MIN_BAND_WIDTH, PANELS, ClipPanel, rho_range  # noqa: E402
from scenes.components.clip_band import TICK_REACH, RatioBand, band_edge  # noqa: E402

TOL = 1e-6
# (ε, ε_high): ε_high None means ε_high = ε
PAIRS = [(0.2, None), (0.2, 0.01), (0.5, 5.0), (0.001, 0.001), (0.9, 0.28), (0.5, 1.9), (0.99, 0.001), (0.01, 50.0)]
# the probed tokens' ratios: all near 1, or spread over the whole axis
TOKEN_RHOS = {"near 1": [0.9, 1.1], "spread": [0.05, 3.5]}


def _eps_high(eps, eps_high):
    return eps if eps_high is None else eps_high


def _text(m) -> str:
    return getattr(m, "original_text", None) or m.text


def _numbers(m) -> list[str]:
    """The numbers a label prints, as printed ("[0.8, 1.2]" -> ["0.8", "1.2"])."""
    return re.findall(r"\d+(?:\.\d+)?", _text(m))


def _x_span(m) -> tuple[float, float]:
    return float(m.get_left()[0]), float(m.get_right()[0])


def _boxes_overlap(a, b) -> bool:
    (al, ar), (bl, br) = _x_span(a), _x_span(b)
    x_overlap = al < br - TOL and bl < ar - TOL
    return x_overlap and a.get_bottom()[1] < b.get_top()[1] - TOL and b.get_bottom()[1] < a.get_top()[1] - TOL


def _overlapping_pairs(labels) -> list[tuple[str, str]]:
    labels = list(labels)
    return [(_text(a), _text(b)) for i, a in enumerate(labels) for b in labels[i + 1:] if _boxes_overlap(a, b)]


def _near(m, x) -> bool:
    """The label stands at x: covers it, or (slid aside, with a leader line) starts within reach."""
    left, right = _x_span(m)
    return max(left - x, x - right, 0.0) <= TICK_REACH + TOL


def _panels(eps, eps_high, rhos):
    return _built_panels(eps, eps_high, tuple(rhos))


@functools.lru_cache(maxsize=None)
def _built_panels(eps, eps_high, rhos):
    """Both panels as the scene lays them out (built once per setting; the tests only read them)."""
    eh = _eps_high(eps, eps_high)
    lo, hi = rho_range(rhos, eps, eh)
    return lo, hi, [ClipPanel(sign, cx, lo, hi, eps, eh) for sign, cx in PANELS]


def _axis_x(panel) -> tuple[float, float]:
    lo, hi = panel.ax.x_range[:2]
    return float(panel.ax.c2p(lo, 0)[0]), float(panel.ax.c2p(hi, 0)[0])


# ----------------------------------------------------------------------------- clip_surrogate panels
@pytest.mark.parametrize("rhos", TOKEN_RHOS.values(), ids=TOKEN_RHOS.keys())
@pytest.mark.parametrize("eps, eps_high", PAIRS)
def test_clip_panel_band_stays_inside_its_axis(eps, eps_high, rhos):
    eh = _eps_high(eps, eps_high)
    lo, hi, panels = _panels(eps, eps_high, rhos)
    for panel in panels:
        x0, x1 = _axis_x(panel)
        left, right = _x_span(panel.band)
        assert x0 - TOL <= left and right <= x1 + TOL, f"band [{left:.2f}, {right:.2f}] leaves [{x0:.2f}, {x1:.2f}]"
        # ... and it is the true band where the axis reaches
        assert left == pytest.approx(panel.ax.c2p(max(lo, 1 - eps), 0)[0], abs=1e-6)
        assert right == pytest.approx(panel.ax.c2p(min(hi, 1 + eh), 0)[0], abs=1e-6)
        if panel.band.width < MIN_BAND_WIDTH:  # thinner than a pixel or two: outlined, so it still shows
            assert panel.band.get_stroke_width() > 0 and panel.band.get_stroke_opacity() > 0


@pytest.mark.parametrize("rhos", TOKEN_RHOS.values(), ids=TOKEN_RHOS.keys())
@pytest.mark.parametrize("eps, eps_high", PAIRS)
def test_clip_panel_tick_labels_never_overlap(eps, eps_high, rhos):
    _, _, panels = _panels(eps, eps_high, rhos)
    # both panels at once: a label of one panel must not land on the other one's row either
    labels = [m for panel in panels for m in [*panel.tick_labels, *panel.edge_notes]]
    assert not _overlapping_pairs(labels)
    for panel in panels:
        x0, x1 = _axis_x(panel)
        for m in panel.tick_labels:
            assert x0 - TOL <= m.get_x() <= x1 + TOL, f"tick label {_text(m)!r} is not under its own axis"


@pytest.mark.parametrize("rhos", TOKEN_RHOS.values(), ids=TOKEN_RHOS.keys())
@pytest.mark.parametrize("eps, eps_high", PAIRS)
def test_clip_panel_ticks_show_the_true_band(eps, eps_high, rhos):
    eh = _eps_high(eps, eps_high)
    lo, hi, panels = _panels(eps, eps_high, rhos)
    edges = {band_edge(1 - eps): 1 - eps, band_edge(1 + eh): 1 + eh}
    allowed = {**edges, "1": 1.0, band_edge(lo): lo, band_edge(hi): hi}
    for panel in panels:
        shown = [n for m in panel.tick_labels for n in _numbers(m)]
        assert set(shown) <= set(allowed), f"ticks {shown} are not 1 − ε, 1, 1 + ε_high or the axis ends"
        for m in panel.tick_labels:
            (n, *more) = _numbers(m)
            if not more:  # one number: it stands under its own place on the axis
                assert _near(m, panel.ax.c2p(allowed[n], 0)[0]), f"{n} is not at ρ = {allowed[n]}"
        for text, v in edges.items():
            if lo <= v <= hi:
                assert text in shown, f"band edge {text} inside the axis has no label"
            else:  # beyond the axis: no tick, a note at the panel's side names it
                notes = [_text(n) for n in panel.edge_notes]
                assert any(text in n for n in notes), f"band edge {text} beyond the axis is not named: {notes}"
        x0, x1 = _axis_x(panel)
        for note in panel.edge_notes:
            assert x0 - TOL <= note.get_left()[0] and note.get_right()[0] <= x1 + TOL


# ----------------------------------------------------------------------------- ppo_logits RatioBand
@pytest.mark.parametrize("eps, eps_high", PAIRS)
def test_ratio_band_stays_on_its_axis(eps, eps_high):
    band = RatioBand(eps, eps_high, width=4.5, band_text="")
    eh = _eps_high(eps, eps_high)
    x0, x1 = _x_span(band.axis)
    left, right = _x_span(band.band)
    assert x0 - TOL <= left and right <= x1 + TOL
    assert left == pytest.approx(band.point_of(1 - eps)[0], abs=1e-6)
    assert right == pytest.approx(band.point_of(1 + eh)[0], abs=1e-6)


@pytest.mark.parametrize("eps, eps_high", PAIRS)
def test_ratio_band_axis_has_no_negative_ratios(eps, eps_high):
    band = RatioBand(eps, eps_high, width=4.5, band_text="")
    assert band.lo >= 0.0, "a ratio is never negative: no axis to waste on it"
    assert band.lo <= 1 - eps and band.hi >= 1 + _eps_high(eps, eps_high)


@pytest.mark.parametrize("eps, eps_high", PAIRS)
def test_ratio_band_tick_labels_never_overlap(eps, eps_high):
    band = RatioBand(eps, eps_high, width=4.5, band_text="")
    assert not _overlapping_pairs(band.tick_labels)


@pytest.mark.parametrize("eps, eps_high", PAIRS)
def test_ratio_band_ticks_show_the_true_band(eps, eps_high):
    band = RatioBand(eps, eps_high, width=4.5, band_text="")
    eh = _eps_high(eps, eps_high)
    true = {band_edge(1 - eps): 1 - eps, "1": 1.0, band_edge(1 + eh): 1 + eh}
    shown = [n for m in band.tick_labels for n in _numbers(m)]
    assert shown[0] == band_edge(1 - eps), "1 − ε is labelled first, always"
    assert set(shown) <= set(true)
    for m in band.tick_labels:
        (n,) = _numbers(m)
        assert _near(m, band.point_of(true[n])[0]), f"{n} is not at ρ = {true[n]}"


def test_ratio_band_keeps_all_three_labels_of_the_runs_seen():
    """The settings of the fuzzed runs: the three numbers stay readable (slid, not dropped)."""
    for eps, eps_high in ((0.2, None), (0.2, 0.01), (0.5, 5.0), (0.001, 0.001), (0.9, 0.28)):
        band = RatioBand(eps, eps_high, width=4.5, band_text="")
        eh = _eps_high(eps, eps_high)
        assert [_text(m) for m in band.tick_labels] == [band_edge(1 - eps), "1", band_edge(1 + eh)]


def test_symmetric_band_labels_stay_under_their_ticks():
    """The shipped runs (ε = ε_high = 0.2) look as before: each label centred under its tick."""
    band = RatioBand(0.2, None, width=4.5, band_text="")
    for m, v in zip(band.tick_labels, (0.8, 1.0, 1.2)):
        assert m.get_x() == pytest.approx(band.x_of(v), abs=1e-6)
        assert m.get_y() == pytest.approx(-0.42, abs=1e-6)
