"""Scoring completions: the prompt-sharing forward pass is the same function as one full pass per row."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from minigrpo.losses import logprobs_from_logits
from minigrpo.models import load_model
from minigrpo.rollout import _forward_full, forward_completion, generate
from minigrpo.tasks import build_prompt, load_train_eval


@pytest.fixture(scope="module")
def grouped_rollout(sft_model):
    torch.manual_seed(0)
    model, tok = load_model(sft_model)
    train, _ = load_train_eval("syllogism", 40, 4, 0)
    # prompts of different lengths, so rows are left-padded by different amounts
    prompts = [build_prompt(item, tok) for item in train[:6]]
    rollout = generate(model, tok, prompts, num_generations=3, max_completion_length=20, temperature=1.0,
                       batch_size=18, max_prompt_length=160)
    assert len(set(rollout.prompt_mask.sum(1).tolist())) > 1, "want mixed prompt lengths"
    return model, rollout


def _grads(model, logits, batch):
    model.zero_grad(set_to_none=True)
    (logprobs_from_logits(logits, batch.completion_ids) * batch.completion_mask).sum().backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("rows", [list(range(18)), [17, 0, 5, 3, 4, 12, 1, 9, 16, 2]])
def test_shared_prompt_forward_equals_full_forward(grouped_rollout, rows):
    model, rollout = grouped_rollout
    batch = rollout.select(rows)
    model.train()
    shared, shared_hidden = forward_completion(model, batch, temperature=0.7, output_hidden=True)
    full, full_hidden = _forward_full(model, batch, temperature=0.7, output_hidden=True)
    mask = batch.completion_mask.bool()
    assert shared.shape == full.shape and shared_hidden.shape == full_hidden.shape
    torch.testing.assert_close(shared[mask], full[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared_hidden[mask], full_hidden[mask], rtol=1e-5, atol=1e-5)
    grads_shared, grads_full = _grads(model, shared, batch), _grads(model, full, batch)
    assert len(grads_shared) == len(grads_full)
    for g_shared, g_full in zip(grads_shared, grads_full):
        # the same sums in a different order: equal up to float32 rounding
        assert (g_shared - g_full).norm() <= 1e-5 * g_full.norm() + 1e-8


def test_rows_with_distinct_prompts_take_one_full_pass(grouped_rollout, monkeypatch):
    model, rollout = grouped_rollout
    batch = rollout.select([0, 3, 6, 9])  # one row from each of four groups
    decoder = model.get_decoder()
    calls = []
    monkeypatch.setattr(decoder, "forward", lambda *a, **kw: calls.append(kw) or type(decoder).forward(decoder, *a, **kw))
    forward_completion(model, batch, temperature=1.0)
    assert len(calls) == 1 and calls[0]["input_ids"].shape[1] == batch.prompt_ids.shape[1] + batch.completion_ids.shape[1]


def test_rows_sharing_prompts_run_each_prompt_once(grouped_rollout, monkeypatch):
    model, rollout = grouped_rollout
    batch = rollout.select([0, 1, 2, 3, 4])  # groups of 3: two distinct prompts
    decoder = model.get_decoder()
    calls = []
    monkeypatch.setattr(decoder, "forward", lambda *a, **kw: calls.append(kw) or type(decoder).forward(decoder, *a, **kw))
    forward_completion(model, batch, temperature=1.0)
    assert [c["input_ids"].shape for c in calls] == [(2, batch.prompt_ids.shape[1]), tuple(batch.completion_ids.shape)]


@pytest.mark.parametrize("budget", [2 ** 27, 5000])
def test_update_logprobs_without_full_logits_equal_forward_completion(grouped_rollout, budget, monkeypatch):
    """The update's chunked forward: log-probs, entropy, hidden states and every parameter's gradient
    equal those through the full (N, Lc, V) logits; at most ``budget`` logits at a time."""
    from minigrpo import losses
    from minigrpo.losses import entropy_from_logits
    from minigrpo.rollout import completion_logprobs_entropy

    model, rollout = grouped_rollout
    batch = rollout.select([4, 0, 13, 7, 8])
    model.train()
    vocab = model.get_output_embeddings().weight.shape[0]
    widest = []
    real_linear = torch.nn.functional.linear  # the output layer as losses.py applies it (the model's own layers untouched)
    monkeypatch.setattr(losses, "F", SimpleNamespace(linear=lambda *a: widest.append(real_linear(*a).numel())
                                                     or real_linear(*a)))
    logp, entropy, hidden = completion_logprobs_entropy(model, batch, 0.7, output_hidden=True, budget=budget)
    model.zero_grad(set_to_none=True)
    (logp * batch.completion_mask).sum().backward()
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert widest and max(widest) <= max(budget, vocab)
    assert (len(widest) > 2) == (budget < len(batch) * batch.completion_ids.shape[1] * vocab)  # chunked when asked

    logits, full_hidden = forward_completion(model, batch, 0.7, output_hidden=True)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(logp[mask], logprobs_from_logits(logits, batch.completion_ids)[mask], rtol=0, atol=2e-5)
    torch.testing.assert_close(entropy[mask], entropy_from_logits(logits.detach())[mask], rtol=0, atol=2e-5)
    torch.testing.assert_close(hidden, full_hidden, rtol=0, atol=0)
    want = _grads(model, logits, batch)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g - w).norm() <= 1e-5 * w.norm() + 1e-8


@pytest.mark.parametrize("path", ["chunked", "full logits"])
def test_update_logprobs_are_zero_at_padding(grouped_rollout, path):
    """log π of the update is 0 off the completion mask on both paths (the full-logits one is taken
    when the output layer has a hook), as every stored log-prob is, with no gradient there."""
    from minigrpo.rollout import completion_logprobs_entropy

    model, rollout = grouped_rollout
    batch = rollout.select(list(range(len(rollout))))  # a copy, ended early: EOS, then padding (the pad id is EOS)
    for i in range(len(batch)):
        batch.completion_ids[i, 2 + i % 6:] = model.config.eos_token_id
        batch.completion_mask[i, 3 + i % 6:] = 0
    mask = batch.completion_mask.bool()
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda *a: None) if path == "full logits" else None
    try:
        model.zero_grad(set_to_none=True)
        logp, _, _ = completion_logprobs_entropy(model, batch, 0.05)
        logp.sum().backward()
    finally:
        if hook is not None:
            hook.remove()
    logits, _ = forward_completion(model, batch, 0.05)
    raw = logprobs_from_logits(logits, batch.completion_ids)
    assert torch.equal(logp[~mask], torch.zeros_like(logp[~mask])) and (raw[~mask] < -1).all()
    torch.testing.assert_close(logp[mask], raw[mask].detach(), rtol=0, atol=2e-5)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_model_whose_prompt_cache_cannot_be_shared_is_scored_row_by_row(grouped_rollout):
    """LFM2 keeps convolution states its cache cannot index out to a group's rows (transformers'
    ``batch_select_indices``): scoring and the update's forward run one full pass per row instead of
    raising AttributeError, with the numbers of the model's own forward."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from minigrpo.rollout import completion_logprobs_entropy, score_logprobs

    _, rollout = grouped_rollout
    torch.manual_seed(0)
    config = AutoConfig.for_model("lfm2", vocab_size=int(rollout.completion_ids.max()) + 1, hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, layer_types=["conv", "full_attention"], block_ff_dim=64,
                                  block_auto_adjust_ff_dim=False)
    model = AutoModelForCausalLM.from_config(config).eval()
    batch = rollout.select(list(range(6)))  # two groups of three
    full, _ = _forward_full(model, batch, temperature=0.7, output_hidden=False)
    own = logprobs_from_logits(full, batch.completion_ids) * batch.completion_mask
    torch.testing.assert_close(score_logprobs(model, batch, 0.7, 6), own, rtol=0, atol=1e-5)
    logp, _, _ = completion_logprobs_entropy(model, batch, 0.7)
    torch.testing.assert_close(logp.detach() * batch.completion_mask, own, rtol=0, atol=1e-5)
