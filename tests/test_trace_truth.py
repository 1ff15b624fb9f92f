"""The truth test: recompute, from the trace alone, what the trainer recorded.

Each check re-derives a recorded number with numpy from other recorded numbers (never
calling the trainer's own functions), so a bug in the trainer or in the recording shows up
as a disagreement.
"""

from __future__ import annotations

import numpy as np
import pytest

from minigrpo.trace import load


@pytest.fixture(scope="module")
def grpo_trace(grpo_run):
    out, cfg, _ = grpo_run
    return load(out / "trace"), cfg


@pytest.fixture(scope="module")
def ppo_trace(ppo_run):
    out, cfg, _ = ppo_run
    return load(out / "trace"), cfg


def all_probes(trace):
    return [p for s in trace.steps for p in s.probes]


def test_meta_and_steps(grpo_trace):
    trace, cfg = grpo_trace
    assert trace.meta.algo == "grpo" and trace.meta.task == cfg.task
    assert [s.step for s in trace.steps] == [1, 2, 3]
    assert trace.meta.config["epsilon"] == cfg.epsilon


def test_advantages_from_rewards(grpo_trace):
    trace, cfg = grpo_trace
    for step in trace.steps:
        for g in step.groups:
            r = g.rewards.astype(np.float64)
            assert g.mean == pytest.approx(r.mean(), abs=1e-6)
            assert g.std == pytest.approx(r.std(ddof=1), abs=1e-6)
            expected = np.zeros_like(r) if np.all(r == r[0]) else (r - r.mean()) / (r.std(ddof=1) + cfg.advantage_eps)
            np.testing.assert_allclose(g.advantages, expected, atol=1e-5)
            total = sum(w * g.reward_parts[k] for k, w in (("format", cfg.format_weight),
                                                             ("correctness", cfg.correctness_weight)))
            np.testing.assert_allclose(g.rewards, total, atol=1e-6)


def test_probe_advantage_is_its_groups(grpo_trace):
    trace, _ = grpo_trace
    for step in trace.steps:
        for p in step.probes:
            np.testing.assert_allclose(p.advantage, step.groups[p.group].advantages[p.index], atol=1e-6)
            np.testing.assert_array_equal(p.token_ids, step.groups[p.group].completion_ids[p.index])


def test_ratio_is_exp_logp_minus_old(grpo_trace):
    trace, _ = grpo_trace
    for p in all_probes(trace):
        np.testing.assert_allclose(p.ratio, np.exp(p.logp.astype(np.float64) - p.logp_old), rtol=1e-4, atol=1e-6)


def test_first_update_of_a_rollout_is_on_policy(grpo_trace):
    trace, _ = grpo_trace
    first = trace.steps[0]
    for p in first.probes:
        np.testing.assert_allclose(p.ratio, 1.0, atol=1e-4)


def test_update_moves_the_policy(grpo_trace):
    trace, _ = grpo_trace
    moved = max(float(np.abs(p.logp_new - p.logp).max()) for p in all_probes(trace))
    assert moved > 1e-4


def test_clip_flags_from_ratio_epsilon_and_sign(grpo_trace):
    trace, cfg = grpo_trace
    eps_low = cfg.epsilon
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    for p in all_probes(trace):
        np.testing.assert_array_equal(p.clipped_low, (p.ratio < 1 - eps_low) & (p.advantage < 0))
        np.testing.assert_array_equal(p.clipped_high, (p.ratio > 1 + eps_high) & (p.advantage > 0))


def test_k3_kl_from_logp_and_ref(grpo_trace):
    trace, _ = grpo_trace
    for p in all_probes(trace):
        d = p.logp_ref.astype(np.float64) - p.logp
        np.testing.assert_allclose(p.kl, np.exp(d) - d - 1, rtol=1e-3, atol=1e-6)
        assert (p.kl >= -1e-7).all()


def test_position_probabilities_are_softmax_of_logits(grpo_trace):
    trace, _ = grpo_trace
    seen = 0
    for p in all_probes(trace):
        for pos in p.positions:
            seen += 1
            for which in ("before", "after", "ref"):
                logits = getattr(pos, f"logits_{which}").astype(np.float64)
                probs = getattr(pos, f"probs_{which}")
                other = getattr(pos, f"other_{which}")
                within = np.exp(logits - logits.max())
                within /= within.sum()
                np.testing.assert_allclose(probs, within * (1 - other), rtol=1e-4, atol=1e-6)
                assert 0 <= other <= 1 + 1e-6
            assert pos.sampled_token_id in pos.token_ids.tolist()
            assert pos.sampled_token_id == p.token_ids[pos.pos]
            # probability of the sampled token before/after = exp of the per-token log-probs
            k = pos.token_ids.tolist().index(pos.sampled_token_id)
            assert pos.probs_before[k] == pytest.approx(np.exp(p.logp[pos.pos]), rel=1e-3, abs=1e-5)
            assert pos.probs_after[k] == pytest.approx(np.exp(p.logp_new[pos.pos]), rel=1e-3, abs=1e-5)
    assert seen > 0


def test_decision_position_is_first_token_inside_answer(grpo_trace):
    trace, _ = grpo_trace
    for p in all_probes(trace):
        for pos in p.positions:
            if pos.kind == "decision":
                prefix = "".join(p.tokens[:pos.pos])
                assert prefix.endswith("<answer>") or prefix.rstrip().endswith("<answer>")


def test_scalars_from_fully_probed_updates(grpo_trace):
    trace, _ = grpo_trace
    for step in trace.steps:
        n_tokens = sum(len(p.token_ids) for p in step.probes)
        assert step.metrics["num_tokens"] == n_tokens
        low = sum(p.clipped_low.sum() for p in step.probes) / n_tokens
        high = sum(p.clipped_high.sum() for p in step.probes) / n_tokens
        kl = sum(p.kl.astype(np.float64).sum() for p in step.probes) / n_tokens
        assert step.metrics["clip_ratio/low_mean"] == pytest.approx(low, abs=1e-9)
        assert step.metrics["clip_ratio/high_mean"] == pytest.approx(high, abs=1e-9)
        assert step.metrics["clip_ratio/region_mean"] == pytest.approx(low + high, abs=1e-9)
        assert step.metrics["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-8)


def test_rollout_scalars_from_groups(grpo_trace):
    trace, _ = grpo_trace
    for step in trace.steps:
        rewards = np.concatenate([g.rewards for g in step.groups])
        stds = np.array([g.std for g in step.groups])
        assert step.metrics["reward"] == pytest.approx(rewards.mean(), abs=1e-6)
        assert step.metrics["reward_std"] == pytest.approx(stds.mean(), abs=1e-6)
        assert step.metrics["frac_reward_zero_std"] == pytest.approx((stds == 0).mean())
        correct = np.concatenate([g.correct for g in step.groups])
        assert step.metrics["accuracy"] == pytest.approx(correct.mean())


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
