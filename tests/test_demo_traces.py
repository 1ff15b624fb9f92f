"""The shipped demo traces: real runs of the embedded tiny model, loaded and validated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minigrpo.trace import load, validate

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "traces"
SIZE_LIMIT = 10 * 2**20


@pytest.mark.parametrize("name, algo", [("demo-grpo-syllogism", "grpo"), ("demo-ppo-syllogism", "ppo")])
def test_demo_trace_is_valid(name, algo):
    path = TRACES / name
    assert validate(path) == []
    trace = load(path)
    assert trace.meta.algo == algo and trace.meta.task == "syllogism"
    assert trace.meta.config["model"] != "tiny" or trace.meta.model
    assert len(trace.steps) >= 20
    decisions = [pos for s in trace.steps for p in s.probes for pos in p.positions if pos.kind == "decision"]
    assert decisions, "the scenes need decision positions"
    if algo == "ppo":
        assert all(p.values is not None for s in trace.steps for p in s.probes)


def test_demo_grpo_trace_shows_learning_and_clipping():
    trace = load(TRACES / "demo-grpo-syllogism")
    reward = trace.metric("reward")
    quarter = len(reward) // 4
    assert reward[-quarter:].mean() > reward[:quarter].mean()
    assert trace.metric("clip_ratio/region_mean").max() > 0  # ratios really leave the band
    ratios = np.concatenate([p.ratio for s in trace.steps for p in s.probes])
    assert np.abs(ratios - 1).max() > 0.05


def test_demo_traces_fit_the_size_budget():
    total = sum(f.stat().st_size for f in TRACES.rglob("*") if f.is_file())
    assert total <= SIZE_LIMIT


def test_against_advantage_counts_match_a_plain_loop():
    """bench/against_advantage.py (quoted in docs/scenes.md) re-derived token by token."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("against", ROOT / "bench" / "against_advantage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = ROOT / "traces" / "demo-ppo-syllogism"
    got = mod.against(str(path))
    n = bad = nd = badd = 0
    for step in load(path).steps:
        for pr in step.probes:
            decision = {q.pos for q in pr.positions if q.kind == "decision"}
            for t in range(len(pr.token_ids)):
                a, d = float(pr.advantage[t]), float(pr.logp_new[t]) - float(pr.logp[t])
                if abs(a) <= 1e-6 or abs(d) <= mod.MIN_MOVE:
                    continue
                n, bad = n + 1, bad + ((a > 0) != (d > 0))
                if t in decision:
                    nd, badd = nd + 1, badd + ((a > 0) != (d > 0))
    assert got["all"] == [n, bad] and got["decision"] == [nd, badd]
    assert 0 < bad < n and 0 < badd < nd  # the docs' point: some, not all, move against A
