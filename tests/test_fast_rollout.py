"""The fast decode loop (minigrpo/decode.py) against transformers' generate and a plain forward pass.

CPU tests run in float32 on the session's tiny SFT model; the ``gpu`` tests check the bf16
and CUDA-graph paths and skip without a CUDA device.
"""

from __future__ import annotations

import math

import pytest
import torch

from minigrpo import decode as fast
from minigrpo import decode_attention, decode_support, sampling
from minigrpo.config import ConfigError
from minigrpo.losses import logprobs_from_logits
from minigrpo.rollout import (Rollout, completion_hidden, completion_logprobs, completion_logprobs_entropy,
                              completion_mask_from_ids, eos_token_ids, forward_completion, generate, hidden_gives_logits,
                              score_logprobs, tokenize_prompts)

from conftest import fast_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# mixed lengths, so that the batch is left-padded
PROMPTS = [
    "All cats are mammals. Some mammals are pets. Does it follow that some cats are pets?\nAssistant:\n",
    "No birds are fish.\nAssistant:\n",
    "Some teachers are not parents. All parents are adults. Does it follow?\nAssistant:\n",
    "x\nAssistant:\n",
]


@pytest.fixture(scope="module")
def tiny(sft_model):
    from minigrpo.models import load_model

    model, tokenizer = load_model(sft_model)
    return model, tokenizer


def _prompt_batch(tokenizer, prompts=PROMPTS):
    return tokenize_prompts(tokenizer, prompts, 160, "cpu")


def _with_eos(model, eos_ids):
    """Make ``eos_ids`` the model's EOS set (generate reads it from the generation config)."""
    model.generation_config.eos_token_id = sorted(eos_ids)


# ----------------------------------------------------------------------------- (a) greedy == HF generate
def test_greedy_equals_hf_generate_with_padding_and_per_row_eos(tiny):
    model, tok = tiny
    original = model.generation_config.eos_token_id
    try:
        plain = generate(model, tok, PROMPTS, 1, 20, 1.0, greedy=True, backend="hf")
        # an extra EOS id that row 1 emits early and row 0 never does: rows end at different steps
        row0 = set(plain.completion_ids[0].tolist())
        extra = next(t for t in plain.completion_ids[1, 2:].tolist() if t not in row0)
        _with_eos(model, eos_token_ids(model, tok) | {extra})
        hf = generate(model, tok, PROMPTS, 1, 20, 1.0, greedy=True, backend="hf")
        ours = generate(model, tok, PROMPTS, 1, 20, 1.0, greedy=True, backend="fast")
    finally:
        model.generation_config.eos_token_id = original
    lengths = hf.completion_mask.sum(1)
    assert lengths[1] < 20 and lengths[0] > lengths[1]  # the test really has per-row EOS
    assert hf.prompt_mask.sum(1).unique().numel() > 1  # ... and padding
    assert torch.equal(ours.prompt_ids, hf.prompt_ids)
    assert torch.equal(ours.completion_ids, hf.completion_ids)
    assert torch.equal(ours.completion_mask, hf.completion_mask)
    assert ours.completions == hf.completions
    assert hf.sampling_logprobs is None and ours.sampling_logprobs.shape == ours.completion_ids.shape


def test_buckets_do_not_change_the_tokens(tiny):
    model, tok = tiny
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    exact = fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad)
    padded = fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad, batch_bucket=8, prompt_bucket=16,
                         check_every=5)
    assert torch.equal(exact[0], padded[0])
    torch.testing.assert_close(exact[1], padded[1], rtol=1e-5, atol=1e-5)


def test_eager_attention_takes_an_additive_mask(tiny):
    model, tok = tiny
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    sdpa = fast.decode(model, ids, mask, 10, 1.0, 1.0, True, eos, pad)
    model.set_attn_implementation("eager")
    try:
        eager = fast.decode(model, ids, mask, 10, 1.0, 1.0, True, eos, pad)
        hf = generate(model, tok, PROMPTS, 1, 10, 1.0, greedy=True, backend="hf")
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.equal(eager[0], sdpa[0]) and torch.equal(eager[0], hf.completion_ids)
    torch.testing.assert_close(eager[1], sdpa[1], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- (b) log-probs == forward pass
def test_sampled_logprobs_equal_a_plain_forward_pass(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    rollout = generate(model, tok, PROMPTS, 2, 16, 0.7, top_p=0.9, backend="fast")
    scored = score_logprobs(model, rollout, 0.7, batch_size=3)
    logits, _ = forward_completion(model, rollout, 0.7)
    plain = logprobs_from_logits(logits, rollout.completion_ids) * rollout.completion_mask
    torch.testing.assert_close(rollout.sampling_logprobs, plain, rtol=0, atol=2e-5)
    torch.testing.assert_close(scored, plain, rtol=0, atol=2e-5)
    assert (rollout.sampling_logprobs[rollout.completion_mask == 0] == 0).all()
    assert (rollout.sampling_logprobs[rollout.completion_mask == 1] < 0).all()


def test_chunked_scoring_equals_full_logits(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    rollout = generate(model, tok, PROMPTS[:2], 2, 10, 1.0, backend="fast")
    logits, _ = forward_completion(model, rollout, 1.3)
    full = logprobs_from_logits(logits, rollout.completion_ids)
    vocab = model.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        chunked = completion_logprobs(model, rollout, 1.3, budget=3 * vocab)  # 3 positions per chunk
    torch.testing.assert_close(chunked, full.detach(), rtol=0, atol=2e-5)


# ----------------------------------------------------------------------------- (c) temperature and top-p
P = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)


@pytest.mark.parametrize("temperature, top_p, expected", [
    (1.0, 1.0, [0.4, 0.3, 0.2, 0.1]),
    (1.0, 0.75, [4 / 9, 3 / 9, 2 / 9, 0]),  # mass above 0.2 is 0.7 < 0.75: kept; above 0.1 is 0.9
    (1.0, 0.7, [4 / 7, 3 / 7, 0, 0]),  # mass above 0.2 is 0.7, not < 0.7: cut
    (0.5, 1.0, [16 / 30, 9 / 30, 4 / 30, 1 / 30]),  # p^(1/τ) renormalised
    (0.5, 0.8, [16 / 25, 9 / 25, 0, 0]),  # 16/30 = 0.533 < 0.8, 25/30 = 0.833: two tokens
    (2.0, 1.0, [x / sum(math.sqrt(v) for v in (0.4, 0.3, 0.2, 0.1)) for x in
                (math.sqrt(0.4), math.sqrt(0.3), math.sqrt(0.2), math.sqrt(0.1))]),
    (1.0, 0.01, [1, 0, 0, 0]),  # the most probable token is always kept
])
def test_sampling_probs_match_hand_computed(temperature, top_p, expected):
    logits = torch.log(P).float().roll(1)[None]  # token order shuffled: [0.1, 0.4, 0.3, 0.2]
    got = sampling.sampling_probs(logits, temperature, top_p)[0].double()
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64).roll(1), rtol=0, atol=1e-6)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    kept = probs > 0
    expected = n * probs[kept]
    return float(((counts[kept] - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
def test_draws_follow_the_distribution(device):
    """200k draws at τ = 0.5, top_p = 0.95 over 5 tokens: 3 kept, counts pass a χ² test."""
    logits = torch.log(torch.tensor([0.05, 0.35, 0.03, 0.25, 0.32]))
    probs = sampling.sampling_probs(logits[None], 0.5, 0.95)[0].double()
    assert (probs > 0).tolist() == [False, True, False, True, True]
    n = 200_000
    gen = torch.Generator(device).manual_seed(0)
    tokens, logp = sampling.sample(logits.to(device).expand(n, -1), 0.5, 0.95, generator=gen)
    counts = torch.bincount(tokens.cpu(), minlength=5).double()
    assert counts[probs == 0].sum() == 0  # nothing outside the nucleus
    # χ² with 2 degrees of freedom: P(χ² > x) = exp(-x/2), so x = 27.6 is a 1e-6 false alarm
    assert _chi_square(counts, probs) < 27.6
    untempered = sampling.sampling_probs(logits[None], 1.0, 0.95)[0].double()  # the test can tell τ apart
    assert _chi_square(counts, untempered / untempered.sum()) > 1000
    # the recorded log-prob is the full tempered softmax, top-p or not
    full = torch.log_softmax(logits / 0.5, dim=-1)
    torch.testing.assert_close(logp.cpu(), full[tokens.cpu()], rtol=0, atol=1e-5)


def test_greedy_sample_is_argmax():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    tokens, logp = sampling.sample(logits, 0.7, 0.5, greedy=True)
    assert torch.equal(tokens, logits.argmax(-1))
    torch.testing.assert_close(logp, torch.log_softmax(logits / 0.7, -1).max(-1).values)


# ----------------------------------------------------------------------------- (d) EOS and padding
def test_tokens_after_eos_are_pad_and_masked(tiny):
    model, tok = tiny
    ids, mask = _prompt_batch(tok, PROMPTS * 2)
    pad = tok.pad_token_id
    frequent = torch.bincount(generate(model, tok, PROMPTS, 1, 16, 1.0, greedy=True).completion_ids.flatten()).argmax()
    eos = eos_token_ids(model, tok) | {int(frequent)}
    torch.manual_seed(3)
    tokens, logps = fast.decode(model, ids, mask, 16, 1.0, 1.0, False, eos, pad)
    completion_mask = completion_mask_from_ids(tokens, eos)
    lengths = completion_mask.sum(1).long()
    assert (lengths < tokens.shape[1]).any()  # some rows did end early
    assert tokens.shape[1] == lengths.max()  # trimmed to the longest completion, like generate
    for row, n in enumerate(lengths.tolist()):
        assert int(tokens[row, n - 1]) in eos or n == tokens.shape[1]
        assert (tokens[row, n:] == pad).all()
        assert (logps[row, n:] == 0).all() and (logps[row, :n] < 0).all()


def test_all_rows_finished_stops_early(tiny, monkeypatch):
    model, tok = tiny
    ids, mask = _prompt_batch(tok)
    first = fast.decode(model, ids, mask, 1, 1.0, 1.0, True, eos_token_ids(model, tok), tok.pad_token_id)[0][:, 0]
    eos = eos_token_ids(model, tok) | set(first.tolist())  # every row's first token ends it
    steps = []
    real_step = fast.Decoder._decode_step
    monkeypatch.setattr(fast.Decoder, "_decode_step", lambda self: steps.append(1) or real_step(self))
    tokens, logps = fast.decode(model, ids, mask, 16, 1.0, 1.0, True, eos, tok.pad_token_id)
    assert tokens.shape == (len(PROMPTS), 1) and torch.equal(tokens[:, 0], first) and steps == []
    # host work to overlap: the steps queued before it run although every row has finished (the
    # first look at the finished rows comes after them), and the result is the same
    tokens, logps = fast.decode(model, ids, mask, 16, 1.0, 1.0, True, eos, tok.pad_token_id, check_every=2,
                                overlap_steps=5, while_decoding=lambda: None)
    assert tokens.shape == (len(PROMPTS), 1) and torch.equal(tokens[:, 0], first) and len(steps) == 5


# ----------------------------------------------------------------------------- (e) grouped-query attention
def _attention_inputs(batch, heads, kv_heads, length, dim, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, 1, dim, generator=g)
    k, v = (torch.randn(batch, kv_heads, length, dim, generator=g) for _ in range(2))
    allowed = torch.rand(batch, 1, 1, length, generator=g) < 0.6
    allowed[..., -1] = True  # every row attends somewhere
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
    return q, k, v, allowed, mask


@pytest.mark.parametrize("attend", [decode_attention.gqa_decode_attention, decode_attention.sdpa_decode_attention],
                         ids=["gqa", "sdpa"])
@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4), (8, 1)])
def test_gqa_attention_equals_the_eager_formula(heads, kv_heads, attend):
    """Against transformers' eager_attention_forward (repeat_kv) and a float64 loop over heads."""
    from types import SimpleNamespace

    from transformers.models.llama.modeling_llama import eager_attention_forward

    q, k, v, allowed, mask = _attention_inputs(3, heads, kv_heads, 11, 8, seed=heads)
    ours, _ = attend(None, q, k, v, mask, scaling=0.3)
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, training=False)
    theirs, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.3)
    assert ours.shape == theirs.shape == (3, 1, heads, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    group = heads // kv_heads
    for b in range(3):
        for h in range(heads):
            kv = h // group
            scores = (k[b, kv].double() @ q[b, h, 0].double()) * 0.3
            scores[~allowed[b, 0, 0]] = -math.inf
            expected = torch.softmax(scores, 0) @ v[b, kv].double()
            torch.testing.assert_close(ours[b, 0, h].double(), expected, rtol=1e-5, atol=1e-6)


def test_gqa_attention_refuses_more_than_one_query():
    q, k, v, _, mask = _attention_inputs(2, 4, 2, 5, 8, seed=0)
    for attend in (decode_attention.gqa_decode_attention, decode_attention.sdpa_decode_attention):
        with pytest.raises(ValueError, match="one query token"):
            attend(None, q.expand(-1, -1, 3, -1), k, v, mask, scaling=1.0)
    with pytest.raises(ValueError, match="attention must be"):
        fast.decode(None, torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2), 4, 1.0, 1.0, True, {0}, 0,
                    attention="flash")


def _random_gqa_model(arch: str, tok, **extra):
    """A random 2-layer ``arch`` model with 4 query heads sharing 2 KV heads, over the tiny tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch == "qwen3":
        extra["head_dim"] = 16
    attn_implementation = extra.pop("attn_implementation", "sdpa")
    config = AutoConfig.for_model(arch, vocab_size=len(tok), hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def gqa_model(request, tiny):
    _, tok = tiny
    return _random_gqa_model(request.param, tok), tok


@pytest.mark.parametrize("attention", ["gqa", "sdpa"])
def test_gqa_decode_equals_the_models_own_attention(gqa_model, attention):
    model, tok = gqa_model
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    ours = fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad, attention=attention)
    stock = fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad, attention="model")
    assert torch.equal(ours[0], stock[0])
    torch.testing.assert_close(ours[1], stock[1], rtol=0, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # switched for the decode steps only


def test_gqa_decode_caps_attention_scores_as_gemma2_does(tiny):
    """Gemma 2 caps its attention scores (softcap·tanh(s / softcap)): the decode steps' attention does
    too (tokens and log-probs of the model's own eager attention, with scores large enough that the cap
    changes them), and the 'sdpa' one, which cannot, refuses in one line."""
    _, tok = tiny
    model = _random_gqa_model("gemma2", tok, head_dim=16, attn_logit_softcapping=2.0,
                              attn_implementation="eager")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(40.0)  # scores of tens: the cap at 2 matters
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    ours = fast.decode(model, ids, mask, 10, 1.0, 1.0, True, eos, pad, attention="gqa")
    stock = fast.decode(model, ids, mask, 10, 1.0, 1.0, True, eos, pad, attention="model")
    assert torch.equal(ours[0], stock[0])
    torch.testing.assert_close(ours[1], stock[1], rtol=0, atol=1e-5)
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = None
    uncapped = fast.decode(model, ids, mask, 10, 1.0, 1.0, True, eos, pad, attention="model")
    assert not torch.allclose(uncapped[1], stock[1], atol=1e-3)  # the cap was doing something
    for layer in model.model.layers:
        layer.self_attn.attn_logit_softcapping = 2.0
    with pytest.raises(ValueError, match="cannot cap attention scores.*use attention 'gqa'"):
        fast.decode(model, ids, mask, 4, 1.0, 1.0, True, eos, pad, attention="sdpa")


@pytest.mark.parametrize("arch,extra", [("mistral", {}), ("qwen2", {}), ("phi3", {}), ("gemma", dict(head_dim=16)),
                                        ("gemma3_text", dict(head_dim=16)), ("olmo2", {}), ("granite", {}),
                                        ("smollm3", {})])
def test_fast_decode_on_other_architectures_equals_generate_and_a_forward_pass(tiny, arch, extra):
    """Random 2-layer models of other decoder architectures (4 query heads over 2 KV heads): greedy
    tokens of ``model.generate`` over padded prompts, sampled log-probs equal to a plain forward pass."""
    _, tok = tiny
    model = _random_gqa_model(arch, tok, **extra)
    greedy = generate(model, tok, PROMPTS, 1, 10, 1.0, greedy=True, backend="fast")
    hf = generate(model, tok, PROMPTS, 1, 10, 1.0, greedy=True, backend="hf")
    assert torch.equal(greedy.completion_ids, hf.completion_ids)
    torch.manual_seed(6)
    rollout = generate(model, tok, PROMPTS, 2, 10, 0.7, backend="fast")
    logits, _ = forward_completion(model, rollout, 0.7)
    plain = logprobs_from_logits(logits, rollout.completion_ids) * rollout.completion_mask
    torch.testing.assert_close(rollout.sampling_logprobs, plain, rtol=0, atol=2e-5)


def _own_logprobs(model, rollout, temperature):
    """log π(token) from the model's own logits (its forward, whatever it does after the output layer)."""
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
    attention = torch.cat([rollout.prompt_mask, rollout.completion_mask.long()], 1)
    lp, lc = rollout.prompt_ids.shape[1], rollout.completion_ids.shape[1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention,
                       position_ids=(attention.cumsum(1) - 1).clamp(min=0)).logits[:, lp - 1: lp - 1 + lc]
    logp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, rollout.completion_ids[..., None])[..., 0]
    return logp * rollout.completion_mask


class _HalvedLogits(torch.nn.Module):
    """A model that scales its logits under a name no config field gives away."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config, self.generation_config = model, model.config, model.generation_config

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    def get_decoder(self):
        return self.inner.get_decoder()

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


@pytest.mark.parametrize("arch,extra", [("granite", dict(logits_scaling=8.0)), ("cohere", {})],
                         ids=["granite-logits-scaling", "cohere-logit-scale"])
def test_scaled_logits_are_scored_as_the_model_computes_them(tiny, arch, extra):
    """Granite divides its logits by ``logits_scaling``, Cohere multiplies them by ``logit_scale``
    (0.0625 by default): the scoring passes (π_old, π_ref), the update's log-probs and the fast
    backend's sampling log-probs all equal log softmax(the model's own logits / τ)."""
    _, tok = tiny
    model = _random_gqa_model(arch, tok, **extra)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)  # logits of tens: the scale matters
    assert not hidden_gives_logits(model)
    torch.manual_seed(3)
    rollout = generate(model, tok, PROMPTS, 2, 10, 0.7, backend="fast")
    own = _own_logprobs(model, rollout, 0.7)
    head_only = logprobs_from_logits(model.get_output_embeddings()(completion_hidden(model, rollout)).float() / 0.7,
                                     rollout.completion_ids) * rollout.completion_mask
    assert (head_only - own).abs().max() > 0.1  # the output layer alone would score another policy
    torch.testing.assert_close(rollout.sampling_logprobs, own, rtol=0, atol=2e-5)
    torch.testing.assert_close(score_logprobs(model, rollout, 0.7, 3), own, rtol=0, atol=2e-5)
    logp, entropy, _ = completion_logprobs_entropy(model, rollout, 0.7)
    torch.testing.assert_close(logp, own, rtol=0, atol=2e-5)
    assert torch.isfinite(entropy).all()


def test_a_logit_transform_no_config_field_names_is_found(tiny):
    model, tok = tiny
    halved = _HalvedLogits(model)
    assert hidden_gives_logits(model) and not hidden_gives_logits(halved)
    torch.manual_seed(4)
    rollout = generate(model, tok, PROMPTS, 1, 8, 1.0, backend="fast")
    torch.testing.assert_close(score_logprobs(halved, rollout, 1.0, 4), _own_logprobs(halved, rollout, 1.0),
                               rtol=0, atol=2e-5)


def test_hf_backend_ignores_the_models_other_generation_settings(tiny):
    """Fields of the model's generation_config that π = softmax(z / τ) has not (repetition_penalty,
    no_repeat_ngram_size, min_new_tokens, top_k) do not reach ``model.generate``: hf and fast give
    the same greedy and the same seeded sampled tokens, and the model keeps its config."""
    import copy

    model, tok = tiny
    saved = model.generation_config
    odd = copy.deepcopy(saved)
    odd.repetition_penalty, odd.no_repeat_ngram_size, odd.min_new_tokens, odd.top_k = 1.3, 2, 5, 3
    model.generation_config = odd
    try:
        for greedy in (True, False):
            torch.manual_seed(5)
            hf = generate(model, tok, PROMPTS, 2, 16, 1.0, greedy=greedy, backend="hf")
            torch.manual_seed(5)
            ours = generate(model, tok, PROMPTS, 2, 16, 1.0, greedy=greedy, backend="fast")
            assert torch.equal(hf.completion_ids, ours.completion_ids), greedy
        assert model.generation_config is odd
    finally:
        model.generation_config = saved


def test_completion_text_holds_only_its_own_tokens(tiny):
    """A pad id that is an ordinary token (here the text "'") fills the rows that ended early; the
    completions' text, which the reward reads, is their tokens up to EOS, for both backends."""
    model, tok = tiny
    saved_pad, saved_eos = tok.pad_token, model.generation_config.eos_token_id
    tok.pad_token = "'"
    assert tok.decode([tok.pad_token_id], skip_special_tokens=True) == "'"  # skipping special tokens keeps it
    try:
        plain = generate(model, tok, PROMPTS, 1, 8, 1.0, greedy=True, backend="hf")
        rows = [row[:n] for row, n in zip(plain.completion_ids.tolist(), plain.completion_mask.sum(1).long().tolist())]

        def lengths(eos=None):  # greedy rows are the same up to an extra EOS, which ends them there
            return {row.index(eos) + 1 if eos in row else len(row) for row in rows}

        if len(lengths()) == 1:  # no row ended before another: an extra EOS that makes one do so
            _with_eos(model, eos_token_ids(model, tok) | {next(t for row in rows for t in row if len(lengths(t)) > 1)})
        for backend in ("hf", "fast"):
            rollout = generate(model, tok, PROMPTS, 1, 8, 1.0, greedy=True, backend=backend)
            mask = rollout.completion_mask.bool()
            assert not mask.all() and (rollout.completion_ids[~mask] == tok.pad_token_id).all()
            for row, text in enumerate(rollout.completions):
                assert text == tok.decode(rollout.completion_ids[row][mask[row]], skip_special_tokens=True)
    finally:
        tok.pad_token = saved_pad
        model.generation_config.eos_token_id = saved_eos


def test_the_fast_backend_refuses_a_short_sliding_window_at_start(gqa_model):
    """A window shorter than max_prompt_length + max_completion_length is refused before any work,
    not at the first rollout whose prompts happen to be long enough."""
    from minigrpo.runtime import check_context

    model, _ = gqa_model
    assert decode_support.unsupported(model, 56) is None  # the decode check, run (and kept) with the model's own config
    saved = getattr(model.config, "sliding_window", None), getattr(model.config, "layer_types", None)
    model.config.sliding_window = 64
    if saved[1]:
        model.config.layer_types = ["sliding_attention"] * len(saved[1])
    try:
        check_context(model, fast_config(rollout_backend="hf", max_prompt_length=160, max_completion_length=24))
        with pytest.raises(ConfigError, match="invalid --rollout-backend fast:.*sliding window of 64 tokens"):
            check_context(model, fast_config(rollout_backend="fast", max_prompt_length=160, max_completion_length=24))
        check_context(model, fast_config(rollout_backend="fast", max_prompt_length=32, max_completion_length=24))
    finally:
        model.config.sliding_window = saved[0]
        if saved[1]:
            model.config.layer_types = saved[1]


def test_gqa_sampled_logprobs_equal_a_plain_forward_pass(gqa_model):
    model, tok = gqa_model
    torch.manual_seed(2)
    rollout = generate(model, tok, PROMPTS, 2, 12, 0.7, backend="fast")
    logits, _ = forward_completion(model, rollout, 0.7)
    plain = logprobs_from_logits(logits, rollout.completion_ids) * rollout.completion_mask
    torch.testing.assert_close(rollout.sampling_logprobs, plain, rtol=0, atol=2e-5)


@pytest.mark.parametrize("config,expected", [
    (dict(), None),  # Llama: no window
    (dict(sliding_window=8), 8),  # Mistral-style: the window applies to every layer
    (dict(sliding_window=4096), None),  # longer than the context
    (dict(sliding_window=8, use_sliding_window=False), None),
    (dict(sliding_window=8, layer_types=["full_attention"] * 2), None),  # Qwen3 default
    (dict(sliding_window=8, layer_types=["full_attention", "sliding_attention"]), 8),
    (dict(window_size=8, attention_layers=["global", "local"]), 8),  # GPT-Neo: its local layers
    (dict(window_size=8, attention_layers=["global", "global"]), None),
    (dict(window_size=256, attention_layers=["global", "local"]), None),
])
def test_which_sliding_windows_the_fast_backend_refuses(config, expected):
    from types import SimpleNamespace

    assert decode_support.shorter_sliding_window(SimpleNamespace(**config), 100) == expected


def test_a_sliding_window_shorter_than_the_context_is_refused(gqa_model):
    model, tok = gqa_model
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    saved = getattr(model.config, "sliding_window", None), getattr(model.config, "layer_types", None)
    model.config.sliding_window = 8
    if saved[1]:  # Qwen3 says per layer which ones use the window
        model.config.layer_types = ["sliding_attention"] * len(saved[1])
    try:
        with pytest.raises(ValueError, match="sliding window of 8 tokens.*rollout_backend 'hf'"):
            fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad)
    finally:
        model.config.sliding_window = saved[0]
        if saved[1]:
            model.config.layer_types = saved[1]


def test_attention_switch_is_undone_on_error(gqa_model):
    model, _ = gqa_model
    with pytest.raises(RuntimeError, match="boom"):
        with decode_attention.attention_implementation(model, decode_attention.GQA_ATTENTION):
            assert model.config._attn_implementation == decode_attention.GQA_ATTENTION
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


# ----------------------------------------------------------------------------- (f) the compiled step
def _same_draws(model, tok, new_tokens, seed, base: dict, variant: dict, cases=((True, 1.0), (False, 0.7))):
    """Decoding with ``variant`` options gives the tokens of ``base`` from the same seed (greedy and
    sampled), log-probs to float32 rounding."""
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    for greedy, temperature in cases:
        out = []
        for options in (base, variant):
            torch.manual_seed(seed)
            out.append(fast.decode(model, ids, mask, new_tokens, temperature, 1.0, greedy, eos, pad, **options))
        assert torch.equal(out[0][0], out[1][0])
        torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=1e-5)


def test_compiled_step_gives_the_same_tokens_and_logprobs(tiny):
    """torch.compile of the decode step (inductor's CPU code here): greedy and sampled tokens as eager,
    the same draws from the same seed (aten's random kernels), log-probs to float32 rounding."""
    model, tok = tiny
    _same_draws(model, tok, 10, 5, {}, {"compile": True})
    assert fast.STATS["compiled"] is True


# ----------------------------------------------------------------------------- (g) fused projections
@pytest.fixture(scope="module", params=["llama", "qwen3", "llama-biases"])
def fusable_model(request, tiny):
    """Random 2-layer Llama / Qwen3 (4 query heads over 2 KV heads), one Llama with every bias on."""
    _, tok = tiny
    biases = request.param == "llama-biases"
    model = _random_gqa_model(request.param.split("-")[0], tok,
                              **(dict(attention_bias=True, mlp_bias=True) if biases else {}))
    if biases:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1 and not torch.all(p == 1):  # the biases (init at 0), not the norms' ones
                    p.normal_(0, 0.1)
    return model, tok


def test_fused_step_decodes_as_the_model(fusable_model):
    """q/k/v and gate/up in one matmul each: the model's greedy and sampled tokens from the same seed,
    log-probs to float32 rounding and equal to a plain forward pass."""
    model, tok = fusable_model
    _same_draws(model, tok, 12, 3, {}, {"fused": True})
    torch.manual_seed(4)
    rollout = generate(model, tok, PROMPTS, 2, 12, 0.7, backend="fast", fused_decode=True)
    logits, _ = forward_completion(model, rollout, 0.7)
    scored = logprobs_from_logits(logits, rollout.completion_ids) * rollout.completion_mask
    torch.testing.assert_close(rollout.sampling_logprobs, scored, rtol=0, atol=2e-5)


def test_fused_step_with_the_sdpa_attention_decodes_as_the_model(fusable_model):
    """The fused step over ``sdpa_decode_attention``: the unfused decode's greedy and sampled tokens, and
    the sdpa attention unfused the same."""
    model, tok = fusable_model
    _same_draws(model, tok, 12, 3, {}, {"fused": True, "attention": "sdpa"})
    _same_draws(model, tok, 12, 3, {}, {"attention": "sdpa"}, cases=((False, 0.7),))


def test_fused_weights_follow_the_models(fusable_model):
    """After the model's weights change in place (an optimizer step), the next fused decode uses them."""
    model, tok = fusable_model
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    fast.decode(model, ids, mask, 6, 1.0, 1.0, True, eos, pad, fused=True)  # builds the fused weights
    saved = [p.detach().clone() for p in model.parameters()]
    try:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if any(k in name for k in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
                    p.add_(torch.randn_like(p) * 0.5)
        plain = fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad)
        fused = fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad, fused=True)
        assert torch.equal(plain[0], fused[0])
        torch.testing.assert_close(plain[1], fused[1], rtol=0, atol=1e-5)
    finally:
        with torch.no_grad():
            for p, value in zip(model.parameters(), saved):
                p.copy_(value)


def test_fused_decode_on_the_tiny_model_with_padding_and_eos(tiny):
    model, tok = tiny
    ids, mask = _prompt_batch(tok)
    eos = eos_token_ids(model, tok) | {tok.convert_tokens_to_ids(tok.tokenize("\n")[0])}
    plain = fast.decode(model, ids, mask, 16, 1.0, 1.0, True, eos, tok.pad_token_id)
    fused = fast.decode(model, ids, mask, 16, 1.0, 1.0, True, eos, tok.pad_token_id, fused=True)
    assert torch.equal(plain[0], fused[0])
    torch.testing.assert_close(plain[1], fused[1], rtol=0, atol=1e-5)


def test_compiled_fused_step_gives_the_same_tokens(tiny):
    """The fused step through torch.compile (inductor's CPU code): the fused eager step's draws and log-probs."""
    model, tok = tiny
    _same_draws(model, tok, 8, 6, {"fused": True}, {"fused": True, "compile": True}, cases=((False, 0.7),))
    assert fast.STATS["compiled"] is True


def test_fused_decode_refuses_what_it_cannot_fuse(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    from minigrpo.fused_step import unsupported
    from minigrpo.runtime import check_context

    _, tok = tiny
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=256)).eval()
    assert "supports LlamaForCausalLM and Qwen3ForCausalLM; this model is GPT2LMHeadModel" in unsupported(gpt2)
    ids, mask = _prompt_batch(tok)
    with pytest.raises(ValueError, match="this model is GPT2LMHeadModel"):
        fast.decode(gpt2, ids, mask, 4, 1.0, 1.0, True, {0}, 0, fused=True)
    with pytest.raises(ConfigError, match="invalid --fused-decode: .*GPT2LMHeadModel.*leave it off"):
        check_context(gpt2, fast_config(rollout_backend="fast", fused_decode=True))
    model, _ = tiny
    assert unsupported(model) is None
    with pytest.raises(ValueError, match="our own attention, 'gqa' or 'sdpa'"):
        fast.decode(model, ids, mask, 4, 1.0, 1.0, True, {0}, 0, fused=True, attention="model")
    with pytest.raises(ConfigError, match="fused-decode.*rollout-backend fast"):
        fast_config(fused_decode=True)


@pytest.mark.parametrize("check_every, overlap_steps, steps_before", [(1, 0, 0), (4, 0, 3), (4, 6, 7), (1, 5, 4),
                                                                      (4, 40, 11)])
def test_while_decoding_runs_once_between_the_steps_outside_the_decode_attention(tiny, check_every, overlap_steps,
                                                                                 steps_before, monkeypatch):
    """The host work handed to decode runs once, when the steps before the first look at the
    finished rows are made (``overlap_steps`` columns at least, rounded up to a multiple of
    ``check_every``, at most all of them), with the model's own attention (it may run a forward
    pass), and the tokens are those of a decode without it."""
    model, tok = tiny
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    steps, seen = [], []
    real_step = fast.Decoder._decode_step
    monkeypatch.setattr(fast.Decoder, "_decode_step", lambda self: steps.append(1) or real_step(self))

    def work():
        seen.append((model.config._attn_implementation, len(steps)))
        model(input_ids=ids, attention_mask=mask)  # a full forward in the middle of decoding

    torch.manual_seed(3)
    plain = fast.decode(model, ids, mask, 12, 1.0, 1.0, False, eos, pad, check_every=check_every)
    steps.clear()
    torch.manual_seed(3)
    got = fast.decode(model, ids, mask, 12, 1.0, 1.0, False, eos, pad, check_every=check_every, while_decoding=work,
                      overlap_steps=overlap_steps)
    # the prefill makes token 1; steps make tokens 2.. up to the first look at the finished rows
    assert seen == [(model.config._attn_implementation, steps_before)]
    assert model.config._attn_implementation != decode_attention.GQA_ATTENTION and len(steps) >= steps_before
    assert torch.equal(plain[0], got[0]) and torch.equal(plain[1], got[1])
    calls = []
    generate(model, tok, PROMPTS, 2, 6, 1.0, backend="hf", while_decoding=lambda: calls.append("hf"))
    generate(model, tok, PROMPTS, 2, 6, 1.0, batch_size=3, backend="fast", while_decoding=lambda: calls.append("fast"))
    assert calls == ["hf", "fast"]  # once per generate, also over several generation batches


def test_compile_decode_needs_the_fast_backend():
    with pytest.raises(ConfigError, match="compile-decode.*rollout-backend fast"):
        fast_config(compile_decode=True)
    assert fast_config(compile_decode=True, rollout_backend="fast").compile_decode


# ----------------------------------------------------------------------------- the captured-step logic on CPU
def test_replayed_step_with_reused_buffers_equals_eager(tiny, monkeypatch):
    """The CUDA path's bookkeeping, with a stand-in for the graph: warm-up steps really run
    (and must be undone), the step is then replayed, and the cached buffers serve a second call."""
    model, tok = tiny
    captured = []

    def fake_capture(step, warmup=2):
        for _ in range(warmup + 1):
            step()
        captured.append(step)
        return step

    monkeypatch.setattr(fast, "capture_graph", fake_capture)
    monkeypatch.setitem(fast.STATS, "captures", 0)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    for prompts in (PROMPTS, list(reversed(PROMPTS))):
        ids, mask = _prompt_batch(tok, prompts)
        eager = fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad)
        replayed = fast.decode(model, ids, mask, 12, 1.0, 1.0, True, eos, pad, batch_bucket=8, prompt_bucket=64,
                               check_every=4, cuda_graphs=True)
        assert fast.STATS["mode"] == "cuda-graph"
        assert torch.equal(eager[0], replayed[0])
        torch.testing.assert_close(eager[1], replayed[1], rtol=1e-5, atol=1e-5)
    assert len(captured) == 1 and fast.STATS["captures"] == 1  # one shape, captured once


def test_failed_capture_falls_back_to_eager(tiny, monkeypatch):
    model, tok = tiny

    def broken(step, warmup=2):
        step()  # a warm-up step ran before the failure
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(fast, "capture_graph", broken)
    monkeypatch.setitem(fast.STATS, "fallback", None)
    ids, mask = _prompt_batch(tok)
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    eager = fast.decode(model, ids, mask, 8, 1.0, 1.0, True, eos, pad)
    fallback = fast.decode(model, ids, mask, 8, 1.0, 1.0, True, eos, pad, prompt_bucket=32, cuda_graphs=True)
    assert fast.STATS["mode"] == "eager"
    assert fast.STATS["fallback"] == "RuntimeError: operation not permitted when stream is capturing"
    assert torch.equal(eager[0], fallback[0])


# ----------------------------------------------------------------------------- wiring
def test_collect_with_the_fast_backend(sft_model, tiny):
    import random

    from minigrpo.experience import collect
    from minigrpo.tasks import load_train_eval

    model, tok = tiny
    cfg = fast_config(model=sft_model, rollout_backend="fast", buffer_size=8, num_generations=4)
    data, _ = load_train_eval(cfg.task, 20, 1, cfg.seed)
    torch.manual_seed(0)
    exp = collect(model, model, tok, data, cfg, random.Random(0))
    assert len(exp.rollout) == 8 and exp.rollout.sampling_logprobs is not None
    torch.testing.assert_close(exp.logp_old, exp.rollout.sampling_logprobs, rtol=0, atol=2e-5)
    torch.testing.assert_close(exp.logp_ref, exp.logp_old, rtol=0, atol=0)
    sub = exp.rollout.select([5, 1])
    assert torch.equal(sub.sampling_logprobs, exp.rollout.sampling_logprobs[[5, 1]])


def test_backend_is_validated():
    with pytest.raises(ConfigError, match="rollout-backend"):
        fast_config(rollout_backend="vllm")
    with pytest.raises(ValueError, match="backend"):
        generate(None, None, ["x"], 2, 4, 1.0, backend="vllm")


# ----------------------------------------------------------------------------- GPU
@pytest.fixture(scope="module")
def cuda_model(tmp_path_factory):
    """A random-weight tiny model in bf16 on the GPU (no SFT: the GPU image has no reasoning-gym)."""
    from minigrpo.models import build_tiny, load_model

    folder = build_tiny(str(tmp_path_factory.mktemp("tiny-gpu")), PROMPTS * 20, vocab_size=320)
    return load_model(folder, device="cuda", dtype=torch.bfloat16)


STEP_KINDS = pytest.mark.parametrize(
    "compile,fused,attention",
    [(False, False, "gqa"), (True, False, "gqa"), (False, True, "gqa"), (True, True, "gqa"), (False, True, "sdpa"),
     (True, True, "sdpa")],
    ids=["graph", "compiled-graph", "fused-graph", "fused-compiled-graph", "fused-sdpa-graph", "fused-sdpa-compiled-graph"])


@pytest.mark.gpu
@needs_cuda
@STEP_KINDS
def test_gpu_bf16_logprobs_agree_with_a_forward_pass(cuda_model, compile, fused, attention):
    model, tok = cuda_model
    torch.manual_seed(0)
    if attention == "gqa":
        rollout = generate(model, tok, PROMPTS * 3, 4, 48, 0.7, backend="fast", compile_decode=compile,
                           fused_decode=fused)
    else:  # the decode attention is a decode() option (bench/gpu_decode.py), not a config field
        ids, mask = tokenize_prompts(tok, [p for p in PROMPTS * 3 for _ in range(4)], 160, "cuda")
        eos = eos_token_ids(model, tok)
        completion, logps = fast.decode(model, ids, mask, 48, 0.7, 1.0, False, eos, tok.pad_token_id,
                                        compile=compile, fused=fused, attention=attention)
        rollout = Rollout(ids, mask, completion, completion_mask_from_ids(completion, eos), [""] * len(ids), logps)
    assert fast.STATS["mode"] == "cuda-graph" and fast.STATS["compiled"] == compile, fast.STATS["fallback"]
    scored = score_logprobs(model, rollout, 0.7, batch_size=64)
    on = rollout.completion_mask.bool()
    diff = (rollout.sampling_logprobs - scored)[on].abs()
    # bf16: the cached one-token steps and the full forward round differently
    assert diff.mean() < 0.02 and (diff <= 0.05 + 0.05 * scored[on].abs()).float().mean() > 0.99


@pytest.mark.gpu
@needs_cuda
def test_gpu_bf16_update_logprobs_without_full_logits(cuda_model):
    """The update's chunked output layer in bf16 on the GPU: log-probs, entropy and gradients agree
    with the full-logits path (forced to 5 chunks) to bf16 rounding."""
    from minigrpo.losses import entropy_from_logits, logprobs_from_logits
    from minigrpo.rollout import completion_logprobs_entropy, forward_completion

    model, tok = cuda_model
    torch.manual_seed(0)
    batch = generate(model, tok, PROMPTS * 2, 4, 40, 0.7, backend="fast")
    vocab = model.get_output_embeddings().weight.shape[0]
    budget = len(batch) * batch.completion_ids.shape[1] * vocab // 5
    model.train()

    def grads(logp):
        model.zero_grad(set_to_none=True)
        (logp * batch.completion_mask).sum().backward()
        return [p.grad.float().clone() for p in model.parameters() if p.grad is not None]

    logp, entropy, _ = completion_logprobs_entropy(model, batch, 0.7, budget=budget)
    got = grads(logp)
    logits, _ = forward_completion(model, batch, 0.7)
    full = logprobs_from_logits(logits, batch.completion_ids)
    on = batch.completion_mask.bool()
    assert (logp - full.detach())[on].abs().max() < 0.05
    assert (entropy - entropy_from_logits(logits.detach()))[on].abs().max() < 0.05
    want = grads(full)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g - w).norm() <= 0.03 * w.norm() + 1e-6


@pytest.mark.gpu
@needs_cuda
@STEP_KINDS
def test_gpu_graph_replay_equals_eager_decode(cuda_model, compile, fused, attention):
    model, tok = cuda_model
    ids, mask = tokenize_prompts(tok, PROMPTS * 4, 160, "cuda")
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    kind = dict(fused=fused, attention=attention)
    eager = fast.decode(model, ids, mask, 32, 1.0, 1.0, True, eos, pad, cuda_graphs=False, **kind)
    graph = fast.decode(model, ids, mask, 32, 1.0, 1.0, True, eos, pad, cuda_graphs=True, compile=compile, **kind)
    assert fast.STATS["mode"] == "cuda-graph" and fast.STATS["compiled"] == compile, fast.STATS["fallback"]
    assert torch.equal(eager[0], graph[0])
    again = fast.decode(model, ids, mask, 32, 1.0, 1.0, True, eos, pad, cuda_graphs=True,  # replayed buffers
                        compile=compile, **kind)
    assert torch.equal(graph[0], again[0])


# ----------------------------------------------------------------------------- the benchmark runs
def test_gpu_step_bench_runs_at_cpu_size(tmp_path):
    """bench/gpu_step.py end to end at its CPU size: ours and TRL, completions forced to full length."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(root / "bench" / "gpu_step.py"), "--tiny", "--steps", "2",
                           "--warmup", "1", "--skip-ppo", "--skip-trace-off"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_step.json").read_text())
    ours = report["ours_grpo"]
    assert ours["completion_length"] == report["config"]["new_tokens"] == 16  # EOS never sampled
    assert len(ours["steps_s"]) == 3 and ours["median_s"] > 0 and ours["generate_tokens_per_s"] > 0
    assert ours["decode"]["mode"] == "eager"
    trl = report["trl_grpo"]
    assert "skipped" in trl or (len(trl["steps_s"]) == 3 and trl["median_s"] > 0)
    assert "TRL / ours" in proc.stdout or "skipped" in trl


def test_gpu_decode_bench_runs_at_cpu_size(tmp_path):
    """bench/gpu_decode.py end to end at its CPU size: the attentions, fused or not, full-length rows, JSON written."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(root / "bench" / "gpu_decode.py"), "--tiny", "--repeats", "2",
                           "--fused", "--sdpa"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tiny = json.loads((tmp_path / "gpu_decode.json").read_text())["archs"]["tiny"]
    for attention in ("model", "gqa", "fused", "fused-sdpa"):
        assert len(tiny[attention]["times_s"]) == 2 and tiny[attention]["tokens_per_s"] > 0
        assert tiny[attention]["decode"]["mode"] == "eager"
    assert tiny["gqa_eager"]["ms_per_step"] > 0
    assert "gqa eager" in proc.stdout


@pytest.mark.parametrize("flags,expect", [
    (["--timers", "--micro-batch", "0"], "the timed step"),
    (["--update-only", "--fused-decode"], "the profiled π_ref pass and update"),
    (["--timers", "--compile-blocks", "norm-mlp-rope"], "dynamo: "),
], ids=["timers", "update-only", "compile-blocks"])
def test_gpu_profile_bench_runs_at_cpu_size(tmp_path, flags, expect):
    """bench/gpu_profile.py end to end at its CPU size: the parts of one step (or of its update) with times."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(root / "bench" / "gpu_profile.py"), "--tiny", *flags],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "gpu_profile.txt").read_text()
    assert expect in table and "update (all)" in table and "micro-batch loss" in table
    if "--timers" in flags:
        assert "generation" in table and re.search(r"the timed step: \d+\.\d+ s", table)
    if "--compile-blocks" in flags:
        graphs = int(re.search(r"dynamo: (\d+) graphs", table).group(1))
        assert graphs > 0  # the passes' blocks went through torch.compile
    if "--update-only" in flags:
        assert "generation" not in table  # the profiler saw the π_ref pass and the update, not the decode
        assert re.search(r"logp old/ref passes\s+1\s", table)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fused", [False, True], ids=["graph", "fused-graph"])
def test_gpu_while_decoding_runs_beside_the_decode_after_what_came_before(cuda_model, fused):
    """On CUDA the host work handed to decode runs on a side stream, once OVERLAP_STEPS steps are
    queued; that stream first waits for what was queued before the decode (here a write held back
    by tens of ms of GPU sleep, as an optimizer step would be), the work may run the model's
    forward, and the tokens are those of a decode without it."""
    model, tok = cuda_model
    ids, mask = tokenize_prompts(tok, PROMPTS * 4, 160, "cuda")
    eos, pad = eos_token_ids(model, tok), tok.pad_token_id
    flag = torch.zeros(4096, device="cuda")
    seen = {}

    def last_logits():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits[:, -1].float().cpu()

    def work():
        seen.update(stream=torch.cuda.current_stream(), flag=flag.sum().item(), logits=last_logits())

    new_tokens = fast.OVERLAP_STEPS + 40
    fast.decode(model, ids, mask, new_tokens, 0.7, 1.0, False, eos, pad, fused=fused)  # the capture's draws
    torch.manual_seed(5)
    plain = fast.decode(model, ids, mask, new_tokens, 0.7, 1.0, False, eos, pad, fused=fused)
    want = last_logits()
    torch.manual_seed(5)
    torch.cuda._sleep(100_000_000)  # the GPU is busy for a while before the write the work must see
    flag.fill_(1.0)
    got = fast.decode(model, ids, mask, new_tokens, 0.7, 1.0, False, eos, pad, fused=fused, while_decoding=work)
    assert fast.STATS["mode"] == "cuda-graph", fast.STATS["fallback"]
    assert seen["stream"] != torch.cuda.default_stream() and seen["flag"] == flag.numel()
    assert torch.allclose(seen["logits"], want, atol=1e-2, rtol=0)
    assert torch.equal(plain[0], got[0]) and torch.equal(plain[1], got[1])
    first = seen.pop("stream")
    fast.decode(model, ids, mask, new_tokens, 0.7, 1.0, False, eos, pad, fused=fused, while_decoding=work)
    assert seen["stream"] == first  # one side stream: the memory it frees is cached for it, not for a new one


@pytest.mark.parametrize("probs,top_p,kept", [
    ([0.25, 0.25, 0.25, 0.25], 0.5, [2, 3]),  # ties: the higher ids rank above
    ([0.1, 0.3, 0.3, 0.3], 0.5, [2, 3]),
    ([0.5, 0.5, 0.0, 0.0], 0.3, [1]),
    ([0.4, 0.3, 0.2, 0.1], 0.7, [0, 1]),  # mass above 0.2 is exactly 0.7: cut
])
def test_nucleus_keeps_the_higher_ids_of_a_tie(probs, top_p, kept):
    ours = sampling.nucleus_mask(torch.tensor([probs]), top_p)[0]
    assert torch.nonzero(ours).flatten().tolist() == kept


def test_nucleus_matches_transformers_top_p_on_random_rows():
    from transformers.generation.logits_process import TopPLogitsWarper

    gen = torch.Generator().manual_seed(0)
    for top_p in (0.5, 0.9, 0.95, 0.99):
        logits = torch.randn(4000, 64, generator=gen) * 3
        theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
        ours = sampling.nucleus_mask(torch.softmax(logits, -1), top_p)
        assert (ours != theirs).any(-1).sum() == 0, top_p


def _small_causal_lm(model_type: str, **config):
    """A two-layer random model of ``model_type`` (float32, CPU), for what the fast backend accepts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, vocab_size=96, **config)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("model_type,config,reason", [
    # ALiBi from a 2-D mask: the model's forward fails under our 4-D mask
    ("bloom", dict(hidden_size=32, n_layer=2, n_head=4), "cannot decode BloomForCausalLM"),
    # state that is not keys and values (a convolution): named by the config
    ("lfm2", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, layer_types=["conv", "full_attention"], block_ff_dim=64,
                  block_auto_adjust_ff_dim=False), "has conv layers"),
    # GPT-Neo's local attention: a window under another name
    ("gpt_neo", dict(hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                     window_size=16, max_position_embeddings=128), "sliding window of 16 tokens"),
])
def test_the_fast_backend_refuses_models_its_loop_cannot_reproduce(model_type, config, reason):
    """One line at start (check_context), not a traceback or wrong log-probs at the first rollout."""
    from minigrpo.runtime import check_context

    model = _small_causal_lm(model_type, **config)
    assert reason in decode_support.unsupported(model, 100)
    with pytest.raises(ConfigError, match="invalid --rollout-backend fast:.*use rollout_backend 'hf'") as err:
        check_context(model, fast_config(rollout_backend="fast", max_prompt_length=60, max_completion_length=40))
    assert "\n" not in str(err.value)


def test_the_decode_check_finds_what_the_config_does_not_say():
    """The once-per-model check compares our two greedy steps with the model's own forward: GPT-Neo
    with a window shorter than its check input (the config check set aside) is told apart, the same
    model with a long window and an untied GPT-2 (absolute positions) pass."""
    narrow = _small_causal_lm("gpt_neo", hidden_size=32, num_layers=2, num_heads=4, window_size=2,
                              attention_types=[[["local"], 2]], max_position_embeddings=64)
    assert "does not reproduce GPTNeoForCausalLM's own forward" in decode_support._disagrees_with_forward(narrow)
    wide = _small_causal_lm("gpt_neo", hidden_size=32, num_layers=2, num_heads=4, window_size=64,
                            attention_types=[[["local"], 2]], max_position_embeddings=64)
    assert decode_support._disagrees_with_forward(wide) is None
    gpt2 = _small_causal_lm("gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=64, tie_word_embeddings=False)
    assert decode_support.unsupported(gpt2, 60) is None


def test_the_decode_check_runs_again_for_another_dtype_or_attention(monkeypatch):
    """The check's answer holds for the model as it was checked: cast to another dtype, or given another
    attention implementation, the model is checked again (a float32 pass said nothing of bfloat16)."""
    model = _small_causal_lm("gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=64)
    calls = []
    monkeypatch.setattr(decode_support, "_disagrees_with_forward", lambda m: calls.append(m.dtype) or None)
    assert decode_support.unsupported(model, 60) is None
    assert decode_support.unsupported(model, 60) is None
    assert calls == [torch.float32]
    model.to(torch.bfloat16)
    decode_support.unsupported(model, 60)
    model.config._attn_implementation = "eager"
    decode_support.unsupported(model, 60)
    assert calls == [torch.float32, torch.bfloat16, torch.bfloat16]
