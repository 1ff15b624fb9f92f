"""NaN/inf in logits, loss, gradients or weights: detected, reported with the step and the
quantity, and the run stops (default, last checkpoint kept) or skips the update (nan_policy=skip).
Zero-std groups and clipped batches are counted, not crashed on."""

from __future__ import annotations

import json
import math

import harness as H
import pytest
import torch

from harness import trainer
from minigrpo.runtime import TrainingError
from minigrpo.trace import load

from harness import one_thread  # noqa: E402,F401 - the fixture below

pytestmark = pytest.mark.usefixtures("one_thread")


def nan_logits_when(t, steps):
    """From now on, the policy's logits are NaN during the updates numbered ``steps``."""
    def hook(module, inputs, output):
        return output * math.nan if t.step + 1 in steps and t.stage == "update" else output
    return t.policy.lm_head.register_forward_hook(hook)


def test_nan_logits_stop_the_run_naming_step_and_quantity(sft_model, tmp_path):
    t, _ = trainer(sft_model, tmp_path, max_steps=3)
    nan_logits_when(t, {2})
    with pytest.raises(TrainingError) as err:
        t.train()
    msg = str(err.value)
    assert "logits became non-finite" in msg and "at step 2" in msg and "--nan-policy" in msg, msg
    assert "last checkpoint (step 1)" in msg and "\n" not in msg
    assert [s.step for s in load(tmp_path / "trace").steps] == [1]
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 1


def test_nan_policy_skip_drops_the_update_and_goes_on(sft_model, tmp_path):
    t, logs = trainer(sft_model, tmp_path, max_steps=3, nan_policy="skip")
    nan_logits_when(t, {2})
    t.train()
    steps = load(tmp_path / "trace").steps
    assert [s.step for s in steps] == [1, 2, 3]
    assert [s.metrics["update_skipped"] for s in steps] == [0, 1, 0]
    assert [s.metrics["skipped_updates"] for s in steps] == [0, 1, 1]
    assert math.isnan(steps[1].metrics["loss"]) and steps[1].probes == []
    assert all(math.isfinite(steps[i].metrics["loss"]) for i in (0, 2))
    assert any("step 2: logits became non-finite" in line and "update skipped" in line for line in logs), logs
    assert all(torch.isfinite(p).all() for p in t.policy.parameters())


def test_inf_gradient_is_named(sft_model, tmp_path):
    t, _ = trainer(sft_model, tmp_path)
    weight = t.policy.lm_head.weight
    weight.register_hook(lambda g: g * math.inf if t.step == 1 else g)
    with pytest.raises(TrainingError, match=r"gradient norm became (inf|nan) at step 2"):
        t.train()


def test_nan_weights_at_sampling_are_named(sft_model, tmp_path, monkeypatch):
    import minigrpo.trainer as trainer_module

    real = trainer_module.collect

    def poisoned(policy, *args, **kwargs):
        with torch.no_grad():
            next(policy.parameters()).fill_(math.nan)
        return real(policy, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "collect", poisoned)
    t, _ = trainer(sft_model, tmp_path)
    # before any update: the model's own weights, named (not "lower --learning-rate")
    with pytest.raises(TrainingError, match=r"non-finite .*the first rollout .*model.embed_tokens.weight") as err:
        t.train()
    assert "\n" not in str(err.value)


def test_zero_std_groups_are_counted_and_give_no_gradient(sft_model, tmp_path, monkeypatch):
    """Every completion scores the same: all groups have std 0, A = 0; with beta = 0 the loss has a
    zero gradient, the update is a no-op, and the metrics count it."""
    from minigrpo import experience
    from minigrpo.tasks import RewardResult

    same = RewardResult(parts={"format": 0.0, "correctness": 0.5}, total=0.5, correct=False, formatted=False,
                        premise_copy=False, answer=None)
    monkeypatch.setattr(experience, "score_completion", lambda *args: same)
    t, _ = trainer(sft_model, tmp_path, beta=0.0)
    before = [p.detach().clone() for p in t.policy.parameters()]
    t.train()
    steps = load(tmp_path / "trace").steps
    for s in steps:
        assert s.metrics["frac_reward_zero_std"] == 1.0 and s.metrics["reward_std"] == 0.0
        assert s.metrics["grad_norm"] == 0.0 and s.metrics["update_skipped"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, t.policy.parameters()))


def test_an_all_clipped_batch_has_zero_surrogate_gradient_and_is_counted():
    """Every token outside the clip band on the side its advantage pushes to: the clipped surrogate
    gives no gradient, and every token is flagged."""
    from minigrpo.losses import grpo_token_loss

    logp_old = torch.log(torch.full((2, 5), 0.3))
    logp = (logp_old + torch.tensor([[0.5], [-0.5]])).requires_grad_()
    advantages = torch.tensor([[1.0], [-1.0]]).expand(2, 5)
    per_token, stats = grpo_token_loss(logp, logp_old, None, advantages, 0.0, 0.2, 0.2)
    per_token.sum().backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert stats["clipped_high"][0].all() and stats["clipped_low"][1].all()
    assert (stats["clipped_low"] | stats["clipped_high"]).float().mean() == 1.0


def test_clipped_tokens_are_counted_in_a_run(sft_model, tmp_path):
    """A clip range of 1e-6: the first update of a rollout is on-policy (rho = 1, nothing clipped);
    on the later ones every token whose ratio moved the way its advantage pushes is clipped, and
    the fractions are counted (low + high = region) without breaking anything."""
    t, _ = trainer(sft_model, tmp_path, max_steps=4, epsilon=1e-6, learning_rate=3e-3, beta=0.0)
    t.train()
    steps = load(tmp_path / "trace").steps
    assert steps[0].metrics["clip_ratio/region_mean"] == 0.0
    assert all(s.metrics["clip_ratio/region_mean"] > 0 for s in steps[1:])
    for s in steps:
        m = s.metrics
        assert m["clip_ratio/region_mean"] == pytest.approx(m["clip_ratio/low_mean"] + m["clip_ratio/high_mean"])
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
