"""Truth checks on a loaded GRPO trace: recompute, from the trace alone, what the trainer recorded.

Each check re-derives a recorded number with numpy from other recorded numbers and the run
config in ``meta.config`` (never calling a trainer's own functions), so a bug in the trainer
or in the recording shows up as a disagreement. Used on minigrpo's own traces
(test_trace_truth.py) and on traces recorded from TRL (test_integration_trl.py).

Every check takes a ``minigrpo.trace.Trace`` and raises AssertionError on a mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest


def all_probes(trace):
    return [p for s in trace.steps for p in s.probes]


def _epsilons(trace):
    c = trace.meta.config
    return c["epsilon"], c["epsilon"] if c.get("epsilon_high") is None else c["epsilon_high"]


def check_advantages_from_rewards(trace):
    c = trace.meta.config
    assert c["scale_rewards"] == "group"
    for step in trace.steps:
        for g in step.groups:
            r = g.rewards.astype(np.float64)
            assert g.mean == pytest.approx(r.mean(), abs=1e-6)
            assert g.std == pytest.approx(r.std(ddof=1), abs=1e-6)
            expected = np.zeros_like(r) if np.all(r == r[0]) else (r - r.mean()) / (r.std(ddof=1) + c["advantage_eps"])
            np.testing.assert_allclose(g.advantages, expected, atol=1e-5)
            total = sum(c[f"{name}_weight"] * part for name, part in g.reward_parts.items())
            np.testing.assert_allclose(g.rewards, total, atol=1e-6)


def check_probe_advantage_is_its_groups(trace):
    for step in trace.steps:
        for p in step.probes:
            np.testing.assert_allclose(p.advantage, step.groups[p.group].advantages[p.index], atol=1e-6)
            np.testing.assert_array_equal(p.token_ids, step.groups[p.group].completion_ids[p.index])


def check_ratio_is_exp_logp_minus_old(trace):
    for p in all_probes(trace):
        np.testing.assert_allclose(p.ratio, np.exp(p.logp.astype(np.float64) - p.logp_old), rtol=1e-4, atol=1e-6)


def check_first_update_of_a_rollout_is_on_policy(trace):
    firsts = [s for i, s in enumerate(trace.steps) if i == 0 or trace.steps[i - 1].rollout != s.rollout]
    assert firsts and all(s.probes for s in firsts)
    for step in firsts:
        for p in step.probes:
            np.testing.assert_allclose(p.ratio, 1.0, atol=1e-4)


def check_update_moves_the_policy(trace):
    moved = max(float(np.abs(p.logp_new - p.logp).max()) for p in all_probes(trace))
    assert moved > 1e-4


def check_clip_flags_from_ratio_epsilon_and_sign(trace):
    eps_low, eps_high = _epsilons(trace)
    for p in all_probes(trace):
        np.testing.assert_array_equal(p.clipped_low, (p.ratio < 1 - eps_low) & (p.advantage < 0))
        np.testing.assert_array_equal(p.clipped_high, (p.ratio > 1 + eps_high) & (p.advantage > 0))


def check_k3_kl_from_logp_and_ref(trace):
    for p in all_probes(trace):
        d = p.logp_ref.astype(np.float64) - p.logp
        np.testing.assert_allclose(p.kl, np.exp(d) - d - 1, rtol=1e-3, atol=1e-6)
        assert (p.kl >= -1e-7).all()


def check_position_probabilities_are_softmax_of_logits(trace):
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
            # probability of the sampled token before/after/ref = exp of the per-token log-probs
            k = pos.token_ids.tolist().index(pos.sampled_token_id)
            assert pos.probs_before[k] == pytest.approx(np.exp(p.logp[pos.pos]), rel=1e-3, abs=1e-5)
            assert pos.probs_after[k] == pytest.approx(np.exp(p.logp_new[pos.pos]), rel=1e-3, abs=1e-5)
            assert pos.probs_ref[k] == pytest.approx(np.exp(p.logp_ref[pos.pos]), rel=1e-3, abs=1e-5)
    assert seen > 0


def check_decision_position_is_first_token_inside_answer(trace):
    for p in all_probes(trace):
        for pos in p.positions:
            if pos.kind == "decision":
                prefix = "".join(p.tokens[:pos.pos])
                assert prefix.endswith("<answer>") or prefix.rstrip().endswith("<answer>")


def check_scalars_from_fully_probed_updates(trace):
    """Needs ``probe_completions = -1``: the probes are the whole batch of each update."""
    for step in trace.steps:
        n_tokens = sum(len(p.token_ids) for p in step.probes)
        assert step.metrics["num_tokens"] == n_tokens
        low = sum(p.clipped_low.sum() for p in step.probes) / n_tokens
        high = sum(p.clipped_high.sum() for p in step.probes) / n_tokens
        kl = sum(p.kl.astype(np.float64).sum() for p in step.probes) / n_tokens
        ratio = sum(p.ratio.astype(np.float64).sum() for p in step.probes) / n_tokens
        assert step.metrics["clip_ratio/low_mean"] == pytest.approx(low, abs=1e-9)
        assert step.metrics["clip_ratio/high_mean"] == pytest.approx(high, abs=1e-9)
        assert step.metrics["clip_ratio/region_mean"] == pytest.approx(low + high, abs=1e-9)
        assert step.metrics["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-8)
        assert step.metrics["ratio_mean"] == pytest.approx(ratio, rel=1e-5)


def check_rollout_scalars_from_groups(trace):
    for step in trace.steps:
        rewards = np.concatenate([g.rewards for g in step.groups])
        stds = np.array([g.std for g in step.groups])
        assert step.metrics["reward"] == pytest.approx(rewards.mean(), abs=1e-6)
        assert step.metrics["reward_std"] == pytest.approx(stds.mean(), abs=1e-6)
        assert step.metrics["frac_reward_zero_std"] == pytest.approx((stds == 0).mean())
        correct = np.concatenate([g.correct for g in step.groups])
        assert step.metrics["accuracy"] == pytest.approx(correct.mean())
        lengths = [len(ids) for g in step.groups for ids in g.completion_ids]
        assert step.metrics["completion_length"] == pytest.approx(np.mean(lengths))


GRPO_CHECKS = [
    check_advantages_from_rewards,
    check_probe_advantage_is_its_groups,
    check_ratio_is_exp_logp_minus_old,
    check_first_update_of_a_rollout_is_on_policy,
    check_update_moves_the_policy,
    check_clip_flags_from_ratio_epsilon_and_sign,
    check_k3_kl_from_logp_and_ref,
    check_position_probabilities_are_softmax_of_logits,
    check_decision_position_is_first_token_inside_answer,
    check_scalars_from_fully_probed_updates,
    check_rollout_scalars_from_groups,
]
