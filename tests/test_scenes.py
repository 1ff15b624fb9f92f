"""The Manim scenes draw what the trace says.

Every scene is constructed on a small synthetic trace (tests/trace_factory.py) with
animations skipped (fast, no video) and its on-screen state is compared with the trace:
bar heights of ppo_logits after each replayed update, the numbers of the GRPO group
table, the points of the clip plot, ... One real ``-ql`` render of ppo_logits is checked
with ffprobe. Bad input (no trace, an invalid trace, a GRPO trace where PPO is needed)
must give one ``minigrpo: ...`` line and a non-zero exit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

manim = pytest.importorskip("manim")
from manim import tempconfig  # noqa: E402

from trace_factory import make_synthetic_trace  # noqa: E402

from minigrpo.render import SCENES, render  # noqa: E402
from minigrpo.trace import load  # noqa: E402
from scenes.components import data as D  # noqa: E402

ENV_VARS = ("MINIGRPO_TRACE", "MINIGRPO_PPO_TRACE", "MINIGRPO_STEPS", "MINIGRPO_PROBE", "MINIGRPO_FOLLOW",
            "MINIGRPO_NO_LATEX")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    base = tmp_path_factory.mktemp("scene_traces")
    return {
        "grpo": make_synthetic_trace(base / "grpo", "grpo", n_steps=5, fsync=False),
        "ppo": make_synthetic_trace(base / "ppo", "ppo", n_steps=4, fsync=False),
        # this seed/shape has a group whose rewards are all equal (std = 0) in rollout 1
        "zero": make_synthetic_trace(base / "zero", "grpo", n_steps=4, G=4, n_groups=2, T=10, K=5, seed=1,
                                     fsync=False),
    }


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return tmp_path_factory.mktemp("scene_media")


@pytest.fixture
def scene_env(monkeypatch):
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)

    def set_env(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(k, str(v))

    return set_env


def construct(cls, media_dir):
    """Run ``cls.construct`` with every animation skipped (no frames, no video)."""
    with tempconfig({"dry_run": True, "progress_bar": "none", "verbosity": "ERROR", "media_dir": str(media_dir),
                     "disable_caching": True}):
        scene = cls(skip_animations=True)
        scene.render()
    return scene


def pos_of(probe, pos):
    return next(p for p in probe.positions if p.pos == pos)


# ----------------------------------------------------------------------------- ppo_logits
def test_ppo_logits_bars_follow_the_trace(traces, media, scene_env):
    from scenes.ppo_logits import PPOLogits

    scene_env(MINIGRPO_TRACE=traces["grpo"])
    tr = load(traces["grpo"])
    scene = construct(PPOLogits, media)
    assert len(scene.record) >= 2, "the flagship should replay the first update and follow at least one more"
    steps_seen = [r["step"] for r in scene.record]
    assert steps_seen == sorted(steps_seen) and len(set(steps_seen)) == len(steps_seen)
    eps, eps_high = D.clip_epsilons(tr)
    for rec in scene.record:
        st = tr.steps[rec["step_index"]]
        assert st.step == rec["step"]
        pr = st.probes[rec["probe_index"]]
        pp = pos_of(pr, rec["pos"])
        ids = [int(x) for x in pp.token_ids]
        slots = rec["slots"]
        assert int(pp.sampled_token_id) in slots, "the sampled token must have a bar"
        for which, shown in (("before", rec["shown_before"]), ("after", rec["shown_after"])):
            probs = np.asarray(getattr(pp, f"probs_{which}"), float)
            expect = np.array([probs[ids.index(t)] if t not in (None, -1) else 0.0 for t in slots])
            expect[-1] = 1.0 - expect[:-1].sum()  # "other": every token without its own bar
            np.testing.assert_allclose(shown, expect, atol=2e-3, err_msg=f"step {st.step} bars ({which})")
        logits = np.asarray(pp.logits_after, float)
        for i, t in enumerate(slots[:-1]):
            if t is not None:
                assert rec["shown_logits_after"][i] == pytest.approx(logits[ids.index(t)], abs=1e-4)
        assert rec["rho_loss"] == pytest.approx(float(pr.ratio[pp.pos]), rel=1e-6)
        assert rec["rho_new"] == pytest.approx(float(np.exp(pr.logp_new[pp.pos] - pr.logp_old[pp.pos])), rel=1e-5)
        assert rec["clipped"] == bool(pr.clipped_low[pp.pos] or pr.clipped_high[pp.pos])
    # the chart on screen at the end is the last update's "after"
    np.testing.assert_allclose(scene.chart.displayed_probs(), scene.record[-1]["shown_after"], atol=1e-9)
    assert_ppo_logits_layout(scene)
    assert_against_captions(scene, tr)


def _boxes_overlap(a, b, pad=0.0) -> bool:
    """Axis-aligned bounding boxes of two mobjects intersect (``pad`` widens ``a``)."""
    return not (a.get_right()[0] + pad < b.get_left()[0] or b.get_right()[0] < a.get_left()[0] - pad
                or a.get_top()[1] + pad < b.get_bottom()[1] or b.get_top()[1] < a.get_bottom()[1] - pad)


def test_ppo_logits_labels_do_not_collide_on_the_shipped_trace(media, scene_env):
    from scenes.ppo_logits import PPOLogits

    scene_env(MINIGRPO_TRACE=ROOT / "traces" / "demo-grpo-syllogism")
    scene = construct(PPOLogits, media)
    assert_ppo_logits_layout(scene)
    against = assert_against_captions(scene, load(ROOT / "traces" / "demo-grpo-syllogism"))
    assert 0 < against < len(scene.record)  # the shipped replay shows both kinds of update


def assert_against_captions(scene, tr) -> int:
    """After each update the status says "against its A" exactly when the token moved so. Returns how often."""
    n = 0
    for rec in scene.record:
        pr = tr.steps[rec["step_index"]].probes[rec["probe_index"]]
        a = float(pr.advantage[rec["pos"]])
        moved = float(pr.logp_new[rec["pos"]]) - float(pr.logp[rec["pos"]])
        against = abs(a) > 1e-6 and abs(moved) > 1e-3 and np.sign(moved) != np.sign(a)
        assert bool(rec["against"]) == against
        assert any(line.startswith("against its A") for line in rec["status"]) == against
        n += against
    return n


def assert_ppo_logits_layout(scene) -> None:
    """The reward value never sits on the curve; the sampled token's frame never touches its logit."""
    curve = scene.curve
    plot_top = curve.box_origin.get_center()[1] + curve.height_
    assert curve.readout.string and curve.readout.get_bottom()[1] > plot_top, "reward readout inside the plot"
    assert not _boxes_overlap(curve.readout, curve.title, pad=0.05)
    for text in (curve.title, curve.readout, scene.band):  # the status lines under the band clear both
        assert not _boxes_overlap(scene.band_caption, text, pad=0.03)
    chart = scene.chart
    frame = chart.sampled_frame
    assert len(frame.submobjects) == 1
    for lab in chart.logit_labels:
        if lab.string:
            assert not _boxes_overlap(frame, lab, pad=0.03), f"logit {lab.string} touches the sampled-token frame"


def test_ppo_logits_probe_and_steps_from_env(traces, media, scene_env):
    from scenes.ppo_logits import PPOLogits

    scene_env(MINIGRPO_TRACE=traces["grpo"], MINIGRPO_STEPS="2:4", MINIGRPO_PROBE=1, MINIGRPO_FOLLOW=1)
    scene = construct(PPOLogits, media)
    assert [r["step"] for r in scene.record] == [2, 3]
    assert scene.record[0]["probe_index"] == 1


# ----------------------------------------------------------------------------- grpo_advantage
def test_grpo_advantage_table_shows_trace_numbers(traces, media, scene_env):
    from scenes.grpo_advantage import GRPOAdvantage

    scene_env(MINIGRPO_TRACE=traces["grpo"])
    tr = load(traces["grpo"])
    scene = construct(GRPOAdvantage, media)
    s = scene.shown
    g = tr.steps[s["step_index"]].groups[s["group"]]
    n = len(s["rewards"])
    assert n == min(len(g.rewards), 8)
    np.testing.assert_allclose(s["rewards"], g.rewards[:n], atol=1e-9)
    np.testing.assert_allclose(s["advantages"], g.advantages[:n], atol=1e-9)
    for part, vals in s["parts"].items():
        np.testing.assert_allclose(vals, np.asarray(g.reward_parts[part])[:n], atol=1e-9)
    assert s["mean"] == pytest.approx(g.mean) and s["std"] == pytest.approx(g.std)
    # the strings drawn are those numbers, rounded for display
    assert [r.string for r in scene.table.r_readouts] == [f"{x:.2f}".replace("-", "−") for x in g.rewards[:n]]
    signed = [("0.00" if round(x, 2) == 0 else f"{x:+.2f}").replace("-", "−") for x in g.advantages[:n]]
    assert [a.string for a in scene.table.a_readouts] == signed
    if not D.zero_std_groups(tr):
        assert s["zero_std"] is None


def test_grpo_advantage_zero_std_group(traces, media, scene_env):
    from scenes.grpo_advantage import GRPOAdvantage

    scene_env(MINIGRPO_TRACE=traces["zero"])
    tr = load(traces["zero"])
    zeros = D.zero_std_groups(tr)
    assert zeros, "fixture trace should contain a group with std == 0"
    scene = construct(GRPOAdvantage, media)
    assert scene.shown["zero_std"] == zeros[0]
    si, gi = zeros[0]
    assert tr.steps[si].groups[gi].std == 0
    np.testing.assert_array_equal(scene.shown["zero_advantages"], 0.0)


# ----------------------------------------------------------------------------- clip_surrogate
def test_clip_surrogate_points_are_trace_tokens(traces, media, scene_env):
    from scenes.clip_surrogate import ClipSurrogate, surrogate

    scene_env(MINIGRPO_TRACE=traces["grpo"], MINIGRPO_NO_LATEX=1)
    tr = load(traces["grpo"])
    eps, eps_high = D.clip_epsilons(tr)
    tokens = {}
    for st in tr.steps:
        for pr in st.probes:
            for t in range(len(pr.ratio)):
                tokens.setdefault((round(float(pr.ratio[t]), 6), round(float(pr.advantage[t]), 6)), set()).add(
                    bool(pr.clipped_low[t] or pr.clipped_high[t]))
    scene = construct(ClipSurrogate, media)
    assert scene.dots_data, "no token was drawn"
    assert any(c for _, _, c, _, _ in scene.dots_data) == any(any(v) for v in tokens.values())
    for rho, a, clipped, sign, dot in scene.dots_data:
        assert (round(rho, 6), round(a, 6)) in tokens, "a drawn point is not a token of the trace"
        assert clipped in tokens[(round(rho, 6), round(a, 6))]
        assert np.sign(a) == sign
        x, y = scene.axes[sign].p2c(dot.get_center())[:2]
        assert x == pytest.approx(rho, abs=1e-6)
        assert y == pytest.approx(float(surrogate(rho, a, eps, eps_high)) / abs(a), abs=1e-6)
    for k in ("low_mean", "high_mean", "region_mean"):
        assert scene.clip_metrics[k] == pytest.approx(np.nanmean(tr.metric(f"clip_ratio/{k}")))


# ----------------------------------------------------------------------------- kl, overview, ppo_vs_grpo
def test_kl_penalty_bars_are_probe_kl(traces, media, scene_env):
    from scenes.kl_penalty import KLPenalty

    scene_env(MINIGRPO_TRACE=traces["grpo"])
    tr = load(traces["grpo"])
    scene = construct(KLPenalty, media)
    pr = tr.steps[scene.shown["step_index"]].probes[scene.shown["probe_index"]]
    np.testing.assert_allclose(scene.shown["kl"], np.asarray(pr.kl, float)[scene.shown["tokens"]], rtol=1e-6)
    for i, kl, drawn in scene.bar_data:  # bar height (as KL) == the probe's kl
        assert drawn == pytest.approx(float(pr.kl[i]), abs=1e-3 * max(1e-9, float(np.max(pr.kl))) + 1e-9)
    assert scene.shown["beta"] == tr.meta.config["beta"]


def test_kl_penalty_draws_an_all_nan_probe_as_na(tmp_path, media, scene_env):
    """The reader takes NaN probe arrays (n/a); an all-NaN kl was "All-NaN slice encountered" here."""
    import shutil

    from scenes.kl_penalty import KLPenalty

    trace = tmp_path / "t"
    shutil.copytree(ROOT / "traces" / "demo-grpo-syllogism", trace)
    payload = trace / "payloads" / "step_000003.npz"
    arrays = dict(np.load(payload))
    arrays["p0.kl"] = np.full_like(arrays["p0.kl"], np.nan)
    np.savez_compressed(payload, **arrays)
    scene_env(MINIGRPO_TRACE=trace, MINIGRPO_STEPS=3, MINIGRPO_PROBE=0)
    scene = construct(KLPenalty, media)
    assert scene.shown["probe_index"] == 0 and np.isnan(scene.shown["kl"]).all()
    assert all(drawn == 0.0 for _, _, drawn in scene.bar_data)


def test_training_overview_curves_are_metrics(traces, media, scene_env):
    from scenes.training_overview import METRICS, TrainingOverview

    scene_env(MINIGRPO_TRACE=traces["grpo"])
    tr = load(traces["grpo"])
    scene = construct(TrainingOverview, media)
    for name, _, _ in METRICS:
        c = scene.curves[name]
        np.testing.assert_array_equal(c.xs, tr.step_numbers)
        np.testing.assert_allclose(c.ys, tr.metric(name))
        assert c.k.get_value() == tr.step_numbers[-1]  # marker swept to the last step
        assert c.readout.value == pytest.approx(tr.metric(name)[-1])


def test_ppo_vs_grpo_numbers(traces, media, scene_env):
    from scenes.ppo_vs_grpo import PPOvsGRPO

    scene_env(MINIGRPO_TRACE=traces["grpo"], MINIGRPO_PPO_TRACE=traces["ppo"])
    g, p = load(traces["grpo"]), load(traces["ppo"])
    scene = construct(PPOvsGRPO, media)
    s = scene.shown
    pr = p.steps[s["ppo"]["step_index"]].probes[s["ppo"]["probe_index"]]
    T = len(s["ppo"]["values"])
    np.testing.assert_allclose(s["ppo"]["values"], pr.values[:T], rtol=1e-6)
    np.testing.assert_allclose(s["ppo"]["returns"], pr.returns[:T], rtol=1e-6)
    np.testing.assert_allclose(s["ppo"]["advantage"], pr.advantage[:T], rtol=1e-6)
    gp = g.steps[s["grpo"]["step_index"]].probes[s["grpo"]["probe_index"]]
    np.testing.assert_allclose(s["grpo"]["advantage"], gp.advantage[: len(s["grpo"]["advantage"])])
    assert s["peak_memory_mb"] == pytest.approx((np.mean(p.metric("peak_memory_mb")), np.mean(g.metric("peak_memory_mb"))))
    assert s["step_time"] == pytest.approx((np.mean(p.metric("step_time")), np.mean(g.metric("step_time"))))
    # the drawn value line passes through the critic's values
    ax = scene.axes["ppo"][0]
    ys = [ax.p2c(pt)[1] for pt in scene.lines["values"].get_start_anchors()]
    np.testing.assert_allclose(ys, pr.values[: len(ys)], atol=1e-6)


@pytest.mark.parametrize("which", ["synthetic", "demo"])
def test_ppo_vs_grpo_texts_do_not_collide(which, traces, media, scene_env):
    from itertools import combinations

    from scenes.ppo_vs_grpo import PPOvsGRPO

    if which == "demo":
        scene_env(MINIGRPO_TRACE=ROOT / "traces" / "demo-grpo-syllogism",
                  MINIGRPO_PPO_TRACE=ROOT / "traces" / "demo-ppo-syllogism")
    else:
        scene_env(MINIGRPO_TRACE=traces["grpo"], MINIGRPO_PPO_TRACE=traces["ppo"])
    scene = construct(PPOvsGRPO, media)
    for (na, a), (nb, b) in combinations(scene.texts.items(), 2):
        assert not _boxes_overlap(a, b, pad=0.02), f"{na} overlaps {nb}"
    half_w = manim.config.frame_width / 2
    for name, m in scene.texts.items():
        assert -half_w <= m.get_left()[0] and m.get_right()[0] <= half_w, f"{name} leaves the frame"


@pytest.mark.parametrize("rewards", [[0.0, 0.2, 0.2, 0.2, 1.0, 1.2, 1.2, 1.2], [0.0] * 2 + [1.0] * 6, [0.5, 0.7]])
def test_reward_line_sigma_label_clears_the_dots(rewards):
    from scenes.components.reward_group import RewardLine

    r = np.asarray(rewards)
    line = RewardLine(r, float(r.mean()), float(r.std(ddof=1)))
    top_dot = max(d.get_top()[1] for d in line.dots)
    assert line.std_label.get_bottom()[1] > top_dot
    for d in line.dots:
        assert not _boxes_overlap(line.std_label, d)
    assert line.mean_line.get_top()[1] > top_dot and all(sl.get_top()[1] > top_dot for sl in line.std_lines)


@pytest.mark.parametrize("ys, labels", [
    ([-6.2e-09, 24.2, 0.045], ("24.2", "0")),  # the k3 KL of the demo run: float rounding of 0 reads as 0
    ([0.83, 1.141, 0.9], ("1.141", "0.83")),
    ([-1.0, 1.0], ("1", "-1")),
    ([2e-7, 5e-7], ("5.0e-7", "2.0e-7")),  # tiny but not small next to its own span: kept
])
def test_metric_curve_axis_labels(ys, labels):
    from scenes.components.curves import MetricCurve

    c = MetricCurve(list(range(1, len(ys) + 1)), ys, "metric", show_marker=False)
    assert tuple(t.text for t in c.y_labels) == labels


def test_metric_curve_of_a_flat_bounded_metric_and_of_one_step():
    from scenes.components.curves import METRIC_BOUNDS, MetricCurve, fmt_kl

    flat = MetricCurve([1, 2, 3], [0.0, 0.0, 0.0], "clip", show_marker=False,
                       bounds=METRIC_BOUNDS["clip_ratio/region_mean"])
    assert flat.y0 == 0.0 and flat.y1 > 0  # not -0.5..0.5: a clip fraction is never negative
    full = MetricCurve([1, 2], [1.0, 1.0], "accuracy", show_marker=False, bounds=METRIC_BOUNDS["accuracy"])
    assert full.y1 == 1.0 and full.y0 < 1.0
    one = MetricCurve([5], [0.3], "reward", show_marker=False)
    assert one.x_labels[1].text.replace(" ", "") == "step5"  # the recorded step, not a step 6 that does not exist
    assert fmt_kl(-6.2e-09) == "0" and fmt_kl(0.042) == "0.042" and fmt_kl(float("nan")) == "n/a"


def test_clip_band_edges_keep_the_configs_digits():
    from scenes.components.clip_band import band_edge

    assert (band_edge(1 - 0.125), band_edge(1 + 0.28), band_edge(0.8)) == ("0.875", "1.28", "0.8")


def test_ppo_logits_names_the_before_bars_by_the_first_update_of_a_rollout(traces):
    """π_θ = π_old on the first update trained on each rollout, also where its recorded ρ is 1 only up
    to rounding (an exact ρ == 1 test named most of them "π_θ"); a --steps range starting mid-rollout
    does not make its first step one."""
    from types import SimpleNamespace

    from scenes.components import data as D
    from scenes.ppo_logits import before_title

    full = load(traces["grpo"])
    first = {s.step for s in full.steps if s.step == min(t.step for t in full.steps if t.rollout == s.rollout)}
    assert first and len(first) < len(full.steps)
    titles = set()
    for lo in (None, 2):
        trace = D.load_trace(traces["grpo"], (lo, None))
        for st in trace.steps:
            title = before_title(trace, SimpleNamespace(step=lambda _, st=st: st))
            assert title == ("before the update (π_θ = π_old)" if st.step in first else "before this update (π_θ)")
            titles.add(title)
    assert len(titles) == 2


def test_the_same_completion_in_another_rollout_is_another_context(traces):
    import dataclasses

    trace = load(traces["grpo"], lazy=False)
    i = next(k for k in range(1, len(trace.steps)) if trace.steps[k].rollout == trace.steps[k - 1].rollout)
    probe = trace.steps[i - 1].probes[0]
    a = D.Shot(i - 1, 0, probe, probe.positions[0])
    b = dataclasses.replace(a, step_index=i)  # the same completion and position, one update later
    assert D.same_context(a, b, trace)
    trace.steps[i].rollout += 1  # ... but sampled again in a later rollout: its own reward and advantage
    assert not D.same_context(a, b, trace)


# ----------------------------------------------------------------------------- bad input
def test_data_helpers_reject_bad_input(tmp_path, traces, scene_env):
    with pytest.raises(D.SceneInputError, match="no trace at"):
        D.load_trace(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text("{not json")
    with pytest.raises(D.SceneInputError, match="not a valid minigrpo trace"):
        D.load_trace(bad)
    with pytest.raises(D.SceneInputError, match="selects no step"):
        D.load_trace(traces["grpo"], (90, 99))
    with pytest.raises(D.SceneInputError, match="needs a PPO trace"):
        D.require_algo(load(traces["grpo"]), "ppo", "MINIGRPO_PPO_TRACE", "x")
    assert D.parse_steps("10:40") == (10, 40) and D.parse_steps("10:") == (10, None)
    assert D.parse_steps("7") == (7, 8) and D.parse_steps(None) == (None, None)
    for s in ("a:b", "5:2"):
        with pytest.raises(D.SceneInputError):
            D.parse_steps(s)
    scene_env(MINIGRPO_PROBE="x")
    with pytest.raises(D.SceneInputError, match="not an integer"):
        D.env_int("MINIGRPO_PROBE")


def test_scene_exits_with_one_line_on_invalid_trace(tmp_path, media, scene_env):
    from scenes.kl_penalty import KLPenalty

    bad = tmp_path / "bad"
    bad.mkdir()
    scene_env(MINIGRPO_TRACE=bad)
    with pytest.raises(SystemExit) as e:
        construct(KLPenalty, media)
    msg = str(e.value.code)
    assert msg.startswith("minigrpo: ") and "\n" not in msg


@pytest.mark.parametrize("scene_cls", ["ppo_logits:PPOLogits", "kl_penalty:KLPenalty", "ppo_vs_grpo:PPOvsGRPO"])
def test_steps_without_probes_say_how_to_record_them(scene_cls, traces, tmp_path, scene_env):
    from minigrpo.trace.downsample import downsample

    thin = tmp_path / "thin"
    downsample(traces["grpo"], thin, probe_every=100)  # probes on the first and last update only
    module, cls = scene_cls.split(":")
    scene_env(MINIGRPO_TRACE=thin, MINIGRPO_PPO_TRACE=traces["ppo"], MINIGRPO_STEPS="2:4")
    with pytest.raises(SystemExit) as e:
        construct(getattr(__import__(f"scenes.{module}", fromlist=[cls]), cls), tmp_path / "media")
    line = str(e.value.code)
    assert line.startswith("minigrpo: no ") and "\n" not in line
    assert "steps 2–3" in line and "--probe-completions N" in line and "MINIGRPO_STEPS" in line


def test_render_rejects_bad_arguments(capfd):
    assert render("no_such_scene", None) == 2
    err = capfd.readouterr().err
    assert "unknown scene" in err and all(name in err for name in SCENES)
    assert render("ppo_logits", "/definitely/not/here") == 2
    assert "no trace at" in capfd.readouterr().err
    assert render("ppo_logits", None, quality="x") == 2


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("minigrpo: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def test_render_all_skips_grpo_only_scenes_for_a_ppo_run_folder(traces, tmp_path, capfd, monkeypatch):
    """`render --all` on a PPO trace (given as its run folder) renders what applies, says what it skips."""
    import minigrpo.render as R

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(traces["ppo"], run / "trace")
    called, expect = [], {"trace": run.resolve()}  # the scenes resolve run/trace themselves

    def fake_manim(cmd, cwd, env):
        called.append(cmd[-1])
        assert Path(env["MINIGRPO_TRACE"]) == expect["trace"]
        out = Path(cmd[cmd.index("--media_dir") + 1]) / "videos"
        name = Path(cmd[-2]).stem
        target = out / name / R.QUALITIES["l"] / f".{cmd[-1]}.partial.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"video")
        return 0

    monkeypatch.setattr(R.subprocess, "call", fake_manim)
    assert R.render(None, str(run), all_scenes=True, media_dir=str(tmp_path / "media")) == 0
    skipped = [n for n in R.SCENES if n in R.GRPO_ONLY]
    assert called == [R.SCENES[n] for n in R.SCENES if n not in skipped]
    err = capfd.readouterr().err
    assert all(f"skipping {n}: it needs a GRPO --trace and this trace is PPO" in err for n in skipped)
    # a GRPO trace skips nothing
    called.clear()
    expect["trace"] = Path(traces["grpo"]).resolve()
    assert R.render(None, str(traces["grpo"]), all_scenes=True, media_dir=str(tmp_path / "media")) == 0
    assert called == list(R.SCENES.values())


def test_scene_accepts_a_run_folder(traces, tmp_path, media, scene_env):
    from scenes.training_overview import METRICS, TrainingOverview

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(traces["grpo"], run / "trace")
    scene_env(MINIGRPO_TRACE=run)
    scene = construct(TrainingOverview, media)
    tr = load(run / "trace")
    for name, _, _ in METRICS:
        np.testing.assert_allclose(scene.curves[name].ys, tr.metric(name))


def test_render_grpo_trace_for_ppo_panel_fails_clearly(traces, tmp_path, capfd, scene_env):
    rc = render("ppo_vs_grpo", traces["grpo"], ppo_trace=traces["grpo"], media_dir=str(tmp_path / "media"))
    assert rc != 0
    assert "needs a PPO trace" in _one_line_error(capfd.readouterr().err)


def test_render_invalid_trace_fails_clearly(tmp_path, capfd, scene_env):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text("{}")
    rc = render("training_overview", str(bad), media_dir=str(tmp_path / "media"))
    assert rc != 0
    assert "not a valid minigrpo trace" in _one_line_error(capfd.readouterr().err)


def test_formulas_fall_back_without_latex(monkeypatch, capsys, media):
    from manim import MathTex, Text

    from scenes.components import title

    monkeypatch.setattr(title, "_warned", False)
    monkeypatch.setenv("MINIGRPO_NO_LATEX", "1")
    with tempconfig({"media_dir": str(media)}):
        m = title.formula(r"\rho", "ρ")
    assert isinstance(m, Text) and not isinstance(m, MathTex)
    assert "LaTeX" in capsys.readouterr().err
    monkeypatch.delenv("MINIGRPO_NO_LATEX")
    monkeypatch.setattr(title.shutil, "which", lambda name: None)
    assert not title.latex_available()


# ----------------------------------------------------------------------------- a real render
@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_render_ppo_logits_mp4(traces, tmp_path, scene_env):
    scene_env(MINIGRPO_FOLLOW=1)
    out = tmp_path / "media"
    rc = render("ppo_logits", traces["grpo"], quality="l", steps="1:3", media_dir=str(out))
    assert rc == 0
    mp4 = out / "videos" / "ppo_logits" / "480p15" / "PPOLogits.mp4"
    assert mp4.exists()
    info = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_type,width,height",
         "-of", "json", str(mp4)], capture_output=True, text=True, check=True).stdout)
    assert float(info["format"]["duration"]) > 0
    video = [s for s in info["streams"] if s["codec_type"] == "video"]
    assert video and video[0]["width"] == 854 and video[0]["height"] == 480


def test_title_card_names_the_run_of_a_run_trace():
    """Every run's trace folder is called trace: the card names the run folder instead."""
    from scenes.components.title import trace_name

    assert trace_name("runs/grpo/trace") == "run grpo"
    assert trace_name("runs/grpo/trace/") == "run grpo"
    assert trace_name("traces/demo-grpo-syllogism") == "trace demo-grpo-syllogism"
    assert trace_name("trace") == "trace trace"  # nothing above it to name


def test_a_curve_readout_at_a_null_step_says_na():
    """A step whose metric was recorded null reads n/a, not its neighbour's value."""
    from scenes.components.curves import MetricCurve, fmt_value

    c = MetricCurve([1, 2, 3], [0.475, float("nan"), 0.5], "reward", show_marker=False)
    assert fmt_value(c.nearest_value(2)) == "n/a"
    assert c.nearest_value(1.2) == 0.475 and c.nearest_value(2.9) == 0.5


def test_a_flagship_at_a_moved_position_is_followed_at_moved_positions(traces):
    """Probes without a decision position: the flagship falls back to a moved position, and its
    later updates are followed at moved positions too (they were dropped: "no later update")."""
    trace = load(traces["grpo"])
    for step in trace.steps:
        probes = step.probes
        for p in probes:
            p.positions = [q for q in p.positions if q.kind != "decision"]
        step.probes = probes
    probe = trace.steps[0].probes[0]
    shot = D.Shot(0, 0, probe, D.position(probe, "moved"))
    later = D.follow(trace, shot)
    assert later and all(s.position.kind == "moved" for s in later)
    assert [s.step_index for s in later] == list(range(1, 1 + len(later)))


def test_the_flagship_prefers_a_moved_position_it_can_follow(traces):
    """A trace whose probes record no decision position: the flagship opens on a probe whose prompt
    comes back later with a moved position (the preference only looked at decision positions, so it
    opened on the last step and followed nothing)."""
    from scenes.components import data as D

    trace = load(traces["grpo"])
    for st in trace.steps:
        for p in st.probes:
            p.positions = [q for q in p.positions if q.kind != "decision"]
    followable = [(si, pi) for si, st in enumerate(trace.steps) for pi, p in enumerate(st.probes)
                  if D.position(p, "moved") and any(D.prompt_of(s, q) == D.prompt_of(st, p) and D.position(q, "moved")
                                                    for s in trace.steps[si + 1:] for q in s.probes)]
    assert followable, "the synthetic trace should have a prompt that comes back"
    last = trace.steps[-1].probes[0]  # the last step's probe moved most: it wins every other preference
    moved = D.position(last, "moved")
    j = list(np.asarray(moved.token_ids)).index(int(moved.sampled_token_id))
    moved.probs_before, moved.probs_after = np.array(moved.probs_before, float), np.array(moved.probs_after, float)
    moved.probs_before[j], moved.probs_after[j] = 0.0, 1.0
    shot = D.pick_flagship(trace)
    assert shot.position.kind == "moved" and (shot.step_index, shot.probe_index) in followable
    assert D.follow(trace, shot, D.DEFAULT_FOLLOW)


def test_the_z_score_line_shows_epsilon_where_it_changes_the_arithmetic():
    """(0.20 − 0.95) / 0.50 = −0.50 was on screen for advantage_eps = 1 (σ + ε = 1.50): ε is shown
    wherever it is visible at two decimals, and left out at TRL's 1e-4."""
    from scenes.components.reward_group import advantage_text

    assert advantage_text(0.2, 0.95, 0.5, {"advantage_eps": 1.0}, -0.5) == "= (0.20 − 0.95) / (0.50 + 1.00) = −0.50"
    assert advantage_text(0.2, 0.95, 0.5, {"advantage_eps": 1e-4}, -1.5) == "= (0.20 − 0.95) / 0.50 = −1.50"
    assert advantage_text(0.2, 0.95, 0.5, {}, -1.5) == "= (0.20 − 0.95) / 0.50 = −1.50"


@pytest.mark.parametrize("reward,mean,std,eps", [(0.0, 1.05, 0.42426, 1e-4), (0.2, 1.0667, 0.35119, 1e-4),
                                                 (1.0, 0.123456, 0.0123456, 1e-4), (0.3, 0.7, 0.3, 0.5),
                                                 (1.2, 0.37, None, 1e-4), (0.004, 0.3333, None, 0.0),
                                                 (0.0, 0.5, 0.001, 1e-4)])
def test_the_advantage_line_adds_up_as_printed(reward, mean, std, eps):
    """The demo's "(0.00 − 1.05) / 0.42 = −2.47" did not add up (−1.05 / 0.42 = −2.50): the operands
    get the decimals that make the printed arithmetic give the printed A (computed here from the
    printed strings)."""
    import re

    from scenes.components.reward_group import advantage_text

    config = {"advantage_eps": eps}
    a = (reward - mean) / (std + eps) if std is not None else reward - mean
    text = advantage_text(reward, mean, std, config, a)
    assert "≈" not in text
    nums = [float(x.replace("−", "-")) for x in re.findall(r"[−+]?\d+\.\d+", text)]
    shown_a = nums[-1]
    assert shown_a == round(a, 2)
    if std is None:
        got = nums[0] - nums[1]
    else:
        got = (nums[0] - nums[1]) / (nums[2] + (nums[3] if len(nums) == 5 else 0.0))
    assert round(got, 2) == shown_a, text


def test_a_one_token_value_line_is_drawn():
    """A PPO probe of one token gave value and return "lines" of one point, which draw nothing."""
    from manim import Axes

    from scenes.ppo_vs_grpo import PPOvsGRPO

    ax = Axes(x_range=[-0.5, 0.5, 1], y_range=[-1, 2, 1], x_length=5.4, y_length=2.8)
    line = PPOvsGRPO._series(None, ax, np.array([1.719]), "#ffffff")
    assert line.width > 1.0 and abs(line.get_center()[1] - ax.c2p(0, 1.719)[1]) < 1e-6
    assert PPOvsGRPO._series(None, ax, np.array([0.0, 1.0]), "#ffffff").get_num_points() > 0


def test_step_ranges_read_as_english():
    """"steps 1–1" and "1 groups" were on screen for a one-step trace."""
    from types import SimpleNamespace

    from scenes.components import data as D

    def steps(*nums):
        return SimpleNamespace(steps=[SimpleNamespace(step=n) for n in nums])

    assert D.step_range_text(steps(1)) == "step 1"
    assert D.step_range_text(steps(3, 4, 7)) == "steps 3–7"
    assert D.step_range_text(steps()) == "no steps"


def test_compact_numbers_keep_two_significant_digits():
    """A KL of 24358 was drawn as "2e4" and 13432 as "1e4"."""
    from scenes.components.curves import fmt_value

    assert [fmt_value(v) for v in (24358, 13432, -24358, 0.0031, 0.5, 12.34, 123.4, 0)] == \
        ["2.4e4", "1.3e4", "-2.4e4", "3.1e-3", "0.5", "12.3", "123", "0"]


def test_a_torn_line_is_said_once_by_a_scene(tmp_path, media, scene_env, capsys):
    """The scenes printed the torn-line warning twice, the second time as a raw Python warning."""
    import shutil
    import warnings

    from scenes.ppo_logits import PPOLogits

    trace = tmp_path / "t"
    shutil.copytree(ROOT / "traces" / "demo-grpo-syllogism", trace)
    with open(trace / "steps.jsonl", "ab") as f:
        f.write(b'{"step": 61, "rollo')
    scene_env(MINIGRPO_TRACE=trace)
    from minigrpo.trace.reader import TraceWarning

    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        construct(PPOLogits, media)
    err = capsys.readouterr().err
    assert err.count("dropped a torn last line") == 1, err  # the load's one line
    assert not [w for w in raw if issubclass(w.category, TraceWarning)]  # and no raw Python warning after it


def test_ppo_logits_replays_a_trace_whose_probe_numbers_are_all_nan(tmp_path, media, scene_env):
    """Every float of every probe NaN (n/a to the reader): the ρ readout's glyphs changed in the middle of
    its FadeIn ("zip() argument 2 is shorter than argument 1")."""
    import shutil

    from scenes.ppo_logits import PPOLogits

    trace = tmp_path / "t"
    shutil.copytree(ROOT / "traces" / "demo-grpo-syllogism", trace)
    for payload in (trace / "payloads").glob("step_*.npz"):
        arrays = dict(np.load(payload))
        arrays.update({k: np.full_like(v, np.nan) for k, v in arrays.items()
                       if k.startswith("p") and v.dtype.kind == "f"})
        np.savez_compressed(payload, **arrays)
    scene_env(MINIGRPO_TRACE=trace)
    construct(PPOLogits, media)


# ----------------------------------------------------------------------------- what a trace does not hold
def _demo_copy(tmp_path, name="t", meta_change=None, rollouts_change=None) -> Path:
    """A copy of the shipped GRPO demo trace with its meta.json (and rollouts) changed by the callables."""
    trace = tmp_path / name
    shutil.copytree(ROOT / "traces" / "demo-grpo-syllogism", trace)
    if meta_change:
        meta = json.loads((trace / "meta.json").read_text())
        meta_change(meta)
        (trace / "meta.json").write_text(json.dumps(meta))
    if rollouts_change:
        lines = [json.loads(ln) for ln in (trace / "rollouts.jsonl").read_text().splitlines() if ln.strip()]
        rollouts_change(lines)
        (trace / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return trace


def _texts(scene) -> list[str]:
    """Every Text on screen at the end of a scene (Manim keeps a Text's string without its spaces)."""
    from manim import Text

    return [m.text for top in scene.mobjects for m in top.get_family() if isinstance(m, Text)]


def _trl_without_reference(meta):
    meta["extra"]["trainer"] = "trl"
    meta["config"]["beta"] = 0.0


def test_a_trl_run_with_beta_0_has_no_kl_to_show(tmp_path, media, scene_env, capfd):
    """TRL loads no reference model at β = 0: kl_penalty refuses in one line (it showed a KL of 0 that
    was never measured), render --all and the overview skip or blank it, plot says so."""
    from minigrpo.plot import plot
    from minigrpo.render import _applicable
    from scenes.kl_penalty import KLPenalty
    from scenes.training_overview import TrainingOverview

    trace = _demo_copy(tmp_path, meta_change=_trl_without_reference)
    assert not load(trace).meta.kl_recorded and load(ROOT / "traces" / "demo-grpo-syllogism").meta.kl_recorded
    scene_env(MINIGRPO_TRACE=trace)
    with pytest.raises(SystemExit) as e:
        construct(KLPenalty, media)
    line = str(e.value.code)
    assert line.startswith("minigrpo: ") and "\n" not in line and "beta = 0" in line and "reference model" in line
    assert "kl_penalty" not in _applicable(list(SCENES), trace)
    assert "skipping kl_penalty" in capfd.readouterr().err
    scene = construct(TrainingOverview, media)
    assert np.isnan(scene.curves["kl"].ys).all()
    figures = plot(trace, tmp_path / "figs", log=lambda *_: None)["figures"]
    assert "reference model" in figures["kl"]["missing"]


def test_null_epsilon_or_beta_is_not_replaced_by_a_guess(tmp_path, media, scene_env):
    """A meta.config with epsilon null drew the band at 0.2 as "(run config)"; beta null read "β = nan"."""
    from scenes.clip_surrogate import ClipSurrogate
    from scenes.kl_penalty import KLPenalty

    def no_eps(meta):
        meta["config"]["epsilon"] = meta["config"]["epsilon_high"] = None

    scene_env(MINIGRPO_TRACE=_demo_copy(tmp_path, "e", meta_change=no_eps))
    with pytest.raises(SystemExit) as e:
        construct(ClipSurrogate, media)
    assert "no config.epsilon" in str(e.value.code) and "\n" not in str(e.value.code)

    def no_beta(meta):
        meta["config"]["beta"] = None

    scene_env(MINIGRPO_TRACE=_demo_copy(tmp_path, "b", meta_change=no_beta))
    scene = construct(KLPenalty, media)
    texts = _texts(scene)
    assert np.isnan(scene.shown["beta"])
    assert not any("nan" in t for t in texts) and any("n/a" in t for t in texts), texts


def test_unscorable_rewards_are_left_off_the_reward_line(tmp_path, media, scene_env):
    """TRL records an unscorable completion's reward as null (NaN): the reward line crashed on NaN, and
    a σ = 0 group of 5 equal scores and 3 unscorable ones was headed "All 8 completions scored n/a"."""
    from scenes.components.reward_group import RewardLine
    from scenes.grpo_advantage import GRPOAdvantage

    line = RewardLine([1.2, np.nan, 0.2, np.nan], mean=0.7, std=0.7071)
    assert len(line.dots) == 2 and np.isfinite([line.lo, line.hi]).all()
    empty = RewardLine([np.nan, np.nan], mean=np.nan, std=np.nan)
    assert len(empty.dots) == 0 and empty.mean_label.text == "μn/a"
    assert not [m for m in empty.get_family() if getattr(m, "text", "").replace("−", "-").lstrip("-")[:1].isdigit()]

    def nan_rewards(rollouts):
        g = rollouts[0]["groups"][0]
        n = len(g["rewards"])
        g["rewards"] = [None if i % 3 == 0 else 1.2 for i in range(n)]
        for part in g["reward_parts"].values():
            part[:] = [None if i % 3 == 0 else 0.6 for i in range(n)]
        g["mean"], g["std"] = 1.2, 0.0
        g["advantages"] = [None if i % 3 == 0 else 0.0 for i in range(n)]

    trace = _demo_copy(tmp_path, rollouts_change=nan_rewards)
    assert D.zero_std_groups(load(trace))[0] == (0, 0)
    scene_env(MINIGRPO_TRACE=trace)
    scene = construct(GRPOAdvantage, media)
    assert scene.shown["zero_std"] == (0, 0)
    n = len(load(trace).steps[0].groups[0].rewards)
    unscorable = len(range(0, n, 3))
    want = f"All {n - unscorable} scored completions scored 1.20, {unscorable} n/a".replace(" ", "")
    assert any(want in t for t in _texts(scene)), _texts(scene)


def test_the_beyond_count_is_every_token_past_the_axes(traces, media, scene_env, monkeypatch):
    """Only the dots of the subsample were counted "beyond the axes" (40 shown where 76 were)."""
    import scenes.clip_surrogate as C

    monkeypatch.setattr(C, "MAX_DOTS", 3)  # a subsample for sure
    monkeypatch.setattr(C, "RHO_MAX", 1.02)  # and tokens beyond the axes
    scene_env(MINIGRPO_TRACE=traces["grpo"], MINIGRPO_NO_LATEX=1)
    tr = load(traces["grpo"])
    rows = [(float(pr.ratio[t]), float(pr.advantage[t])) for st in tr.steps for pr in st.probes
            for t in range(len(pr.ratio)) if pr.advantage[t] != 0 and np.isfinite([pr.ratio[t], pr.advantage[t]]).all()]
    scene = construct(C.ClipSurrogate, media)
    lo, hi = C.rho_range([r for r, _ in rows], *D.clip_epsilons(tr))
    beyond = sum(1 for r, _ in rows if not lo <= r <= hi)
    assert beyond > 3 and scene.counts == {"tokens": len(rows), "clipped": scene.counts["clipped"],
                                           "drawn": len(scene.dots_data), "beyond": beyond}
    assert all(lo <= rho <= hi for rho, *_ in scene.dots_data)


def test_no_later_update_says_why(traces):
    from scenes.ppo_logits import no_later_text

    tr = load(traces["grpo"])
    last = D.Shot(len(tr.steps) - 1, 0, tr.steps[-1].probes[0], tr.steps[-1].probes[0].positions[0])
    first = D.Shot(0, 0, tr.steps[0].probes[0], tr.steps[0].probes[0].positions[0])
    assert no_later_text(tr, last, 6) == "no later update in the chosen steps"
    assert "MINIGRPO_FOLLOW = 0" in no_later_text(tr, first, 0)
    assert "recorded no probe" in no_later_text(tr, first, 6)


def test_the_logit_row_says_logit_over_tau_at_another_temperature(tmp_path, media, scene_env):
    """The recorded logits are z/τ: at τ = 0.7 the row headed "logit" showed 15.9 for a raw 11.1."""
    from scenes.ppo_logits import PPOLogits

    def hot(meta):
        meta["config"]["temperature"] = 0.7

    scene_env(MINIGRPO_TRACE=_demo_copy(tmp_path, meta_change=hot), MINIGRPO_FOLLOW=0)
    assert construct(PPOLogits, media).chart.row_z.text == "logit/τ"
    scene_env(MINIGRPO_TRACE=ROOT / "traces" / "demo-grpo-syllogism", MINIGRPO_FOLLOW=0)
    scene = construct(PPOLogits, media)
    assert scene.chart.row_z.text == "logit" and "MINIGRPO_FOLLOW = 0" in scene.no_later
