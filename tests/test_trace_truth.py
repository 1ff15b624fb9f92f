"""The truth test: recompute, from the trace alone, what the trainer recorded.

Each check re-derives a recorded number with numpy from other recorded numbers (never
calling the trainer's own functions), so a bug in the trainer or in the recording shows up
as a disagreement. The GRPO checks live in trace_checks.py (traces recorded from TRL pass
the same ones, see test_integration_trl.py); the PPO checks are here.
"""

from __future__ import annotations

import numpy as np
import pytest

from minigrpo.trace import load
from trace_checks import GRPO_CHECKS, all_probes


@pytest.fixture(scope="module")
def grpo_trace(grpo_run):
    out, cfg, _ = grpo_run
    return load(out / "trace"), cfg


@pytest.fixture(scope="module")
def ppo_trace(ppo_run):
    out, cfg, _ = ppo_run
    return load(out / "trace"), cfg


@pytest.mark.parametrize("check", GRPO_CHECKS, ids=lambda check: check.__name__[len("check_"):])
def test_grpo_trace(grpo_trace, check):
    check(grpo_trace[0])


def test_meta_and_steps(grpo_trace):
    trace, cfg = grpo_trace
    assert trace.meta.algo == "grpo" and trace.meta.task == cfg.task
    assert [s.step for s in trace.steps] == [1, 2, 3]
    for name in ("epsilon", "epsilon_high", "advantage_eps", "format_weight", "correctness_weight", "scale_rewards"):
        assert trace.meta.config[name] == getattr(cfg, name), name  # the checks read these from the trace


def test_ppo_returns_are_gae_plus_values(ppo_trace):
    trace, cfg = ppo_trace
    assert trace.meta.algo == "ppo"
    for step in trace.steps:
        for k in ("value_loss", "vf_clipfrac", "explained_variance"):
            assert k in step.metrics
        for p in step.probes:
            assert p.values is not None and p.returns is not None
            score = step.groups[p.group].rewards[p.index]
            rewards = -cfg.kl_coef * (p.logp_old.astype(np.float64) - p.logp_ref)
            rewards[-1] += score
            advantages, last = np.zeros(len(rewards)), 0.0
            for t in reversed(range(len(rewards))):
                next_value = p.values[t + 1] if t + 1 < len(rewards) else 0.0
                delta = rewards[t] + cfg.gamma * next_value - p.values[t]
                last = delta + cfg.gamma * cfg.lam * last
                advantages[t] = last
            np.testing.assert_allclose(p.returns, advantages + p.values, rtol=1e-4, atol=1e-4)


def test_ppo_clip_flags_use_gae_advantage(ppo_trace):
    trace, cfg = ppo_trace
    for p in all_probes(trace):
        np.testing.assert_allclose(p.ratio, np.exp(p.logp.astype(np.float64) - p.logp_old), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(p.clipped_low, (p.ratio < 1 - cfg.epsilon) & (p.advantage < 0))
        assert np.unique(p.advantage).size > 1  # per-token GAE, not a broadcast constant


def test_decision_position_bisection_equals_the_linear_definition(sft_model):
    """The first token after ``<answer>``: bisection over prefixes finds what the scan over every
    prefix finds, with the tag early, late, split over several tokens, at the very end, or absent."""
    from minigrpo.models import load_model
    from minigrpo.probes import ANSWER_TAG, decision_position

    _, tok = load_model(sft_model)

    def linear(ids):
        return next((i for i in range(1, len(ids)) if ANSWER_TAG in tok.decode(ids[:i], skip_special_tokens=False)),
                    None)

    texts = ["<answer>Yes</answer>", "the premises say so <answer>No</answer>", "no tag at all here",
             "<think>a</think> <answ", "x <answer>", "<answer>", "", "ab<answer>c<answer>d"]
    cases = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    cases += [[t] for t in tok(ANSWER_TAG, add_special_tokens=False)["input_ids"][:1]]
    found = []
    for ids in cases:
        assert decision_position(tok, ids) == linear(ids), tok.decode(ids)
        found.append(decision_position(tok, ids))
    assert any(f is not None and f > 1 for f in found) and None in found  # both kinds of case were exercised


def test_validate_takes_a_kl_that_overflowed_float32_as_the_trainer_holds_it(tmp_path):
    """A token whose log π_ref − log π is past about 88.7 nats has k3 = inf in the trainer's float32:
    validate expects inf there (it computed e^100 in float64 and called the trace wrong), and
    still reports an inf where the KL is finite."""
    from minigrpo.trace import validate
    from trace_factory import build_synthetic, write_synthetic

    meta, rollouts, steps = build_synthetic("grpo", n_steps=2)
    probe = steps[0].probes[0]
    probe.logp_ref[0] = probe.logp[0] + 100.0
    probe.kl[0] = np.float32(np.inf)
    write_synthetic(tmp_path / "over", meta, rollouts, steps)
    assert validate(tmp_path / "over") == []

    meta, rollouts, steps = build_synthetic("grpo", n_steps=2)
    steps[0].probes[0].kl[0] = np.float32(np.inf)  # its log-probs are close: the KL is small
    write_synthetic(tmp_path / "wrong", meta, rollouts, steps)
    problems = validate(tmp_path / "wrong")
    assert len(problems) == 1 and "probes[0].kl" in problems[0]
