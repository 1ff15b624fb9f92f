"""The shipped demo traces: real runs of the embedded tiny model, loaded and validated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minigrpo.trace import load, validate

TRACES = Path(__file__).resolve().parents[1] / "traces"
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
