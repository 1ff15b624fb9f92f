"""Sampling G completions per prompt, and scoring token log-probabilities.

Layout of a batch (N = prompts × G rows)::

    [ pad pad p p p p | c c c c eos pad pad ]
      prompt (left-padded)  completion (right-padded)

``completion_mask`` is 1 on every generated token up to and including the first EOS.
Position ids are computed from the attention mask, so a left-padded row is scored exactly
as it was sampled.

The policy is π(·|s) = softmax(z / temperature), z the model's logits: the same
tempered distribution that sampled the tokens is the one the loss scores (as TRL does),
so in the first optimizer step after sampling ρ = π_θ/π_old is 1 (the later steps, of the
first pass too, train a policy that the steps before them moved).

Two samplers fill the same layout: ``backend="hf"`` calls ``model.generate``;
``backend="fast"`` runs our own decode loop (minigrpo/decode.py: static KV cache, CUDA
graphs on a GPU), which also returns the log-probs of the tokens it sampled.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import ChunkedHeadLogprobs, entropy_from_logits, head_logprobs, logprobs_from_logits


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (N, Lp) left-padded
    prompt_mask: torch.Tensor  # (N, Lp)
    completion_ids: torch.Tensor  # (N, Lc) right-padded
    completion_mask: torch.Tensor  # (N, Lc) float
    completions: list[str]  # (N,) decoded text (special tokens removed)
    sampling_logprobs: torch.Tensor | None = None  # (N, Lc) log π(token) at sampling time (fast backend), 0 off the mask

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> "Rollout":
        idx = torch.as_tensor(index, dtype=torch.long)
        logps = None if self.sampling_logprobs is None else self.sampling_logprobs[idx.to(self.sampling_logprobs.device)]
        return Rollout(self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx],
                       self.completion_mask[idx], [self.completions[i] for i in idx.tolist()], logps)

    def to(self, device) -> "Rollout":
        logps = None if self.sampling_logprobs is None else self.sampling_logprobs.to(device)
        return Rollout(self.prompt_ids.to(device), self.prompt_mask.to(device), self.completion_ids.to(device),
                       self.completion_mask.to(device), self.completions, logps)


def tokenize_prompts(tokenizer, prompts: list[str], max_prompt_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                    max_length=max_prompt_length, add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """1 for tokens up to and including the first EOS of each row, 0 after."""
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= completion_ids == eos
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return (~after_eos).float()


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update(source if isinstance(source, (list, tuple)) else [source])
    return ids


BACKENDS = ("hf", "fast")


def pad_token_id(model, tokenizer) -> int:
    """The id that pads prompts (left) and completions (right): the tokenizer's pad, else an EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_token_ids(model, tokenizer)))


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Rows of several rollouts as one: prompts left-padded, completions right-padded to the widest."""
    lp = max(r.prompt_ids.shape[1] for r in parts)
    lc = max(r.completion_ids.shape[1] for r in parts)

    def left(t, width, value):
        return F.pad(t, (width - t.shape[1], 0), value=value)

    def right(t, width, value):
        return F.pad(t, (0, width - t.shape[1]), value=value)

    logps = None
    if all(r.sampling_logprobs is not None for r in parts):
        logps = torch.cat([right(r.sampling_logprobs, lc, 0.0) for r in parts])
    return Rollout(torch.cat([left(r.prompt_ids, lp, pad_id) for r in parts]),
                   torch.cat([left(r.prompt_mask, lp, 0) for r in parts]),
                   torch.cat([right(r.completion_ids, lc, pad_id) for r in parts]),
                   torch.cat([right(r.completion_mask, lc, 0) for r in parts]),
                   [text for r in parts for text in r.completions], logps)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], num_generations: int, max_completion_length: int,
             temperature: float, top_p: float = 1.0, batch_size: int = 64, max_prompt_length: int = 512,
             greedy: bool = False, backend: str = "hf", compile_decode: bool = False,
             fused_decode: bool = False, while_decoding=None) -> Rollout:
    """Sample ``num_generations`` completions for each prompt (rows grouped by prompt).

    ``compile_decode``: the fast backend's decode step goes through torch.compile;
    ``fused_decode``: its decode step fuses the q/k/v and gate/up projections (``fused_step``).
    ``while_decoding()``: host work run once, by the fast backend while the GPU decodes the first
    batch's steps (``decode.Decoder.run``), by ``hf`` before it generates.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = next(model.parameters()).device
    expanded = [p for p in prompts for _ in range(num_generations)]
    eos_ids = eos_token_ids(model, tokenizer)
    pad_id = pad_token_id(model, tokenizer)
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(expanded), batch_size):
        prompt_ids, prompt_mask = tokenize_prompts(tokenizer, expanded[start:start + batch_size], max_prompt_length, device)
        if backend == "fast":
            from .decode import decode

            completion, logps = decode(model, prompt_ids, prompt_mask, max_completion_length, temperature, top_p,
                                       greedy, eos_ids, pad_id, compile=compile_decode, fused=fused_decode,
                                       while_decoding=while_decoding)
            while_decoding = None
        else:
            if while_decoding is not None:
                while_decoding()
                while_decoding = None
            sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            with _plain_generation_config(model):
                out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                     max_new_tokens=max_completion_length, pad_token_id=pad_id,
                                     eos_token_id=sorted(eos_ids), **sampling)
            completion, logps = out[:, prompt_ids.shape[1]:], None
        chunks.append((prompt_ids, prompt_mask, completion, logps))
    model.train(was_training)

    lp = max(c[0].shape[1] for c in chunks)
    lc = max(max(c[2].shape[1] for c in chunks), 1)
    prompt_ids = torch.cat([F.pad(c[0], (lp - c[0].shape[1], 0), value=pad_id) for c in chunks])
    prompt_mask = torch.cat([F.pad(c[1], (lp - c[1].shape[1], 0), value=0) for c in chunks])
    completion_ids = torch.cat([F.pad(c[2], (0, lc - c[2].shape[1]), value=pad_id) for c in chunks])
    completion_mask = completion_mask_from_ids(completion_ids, eos_ids)
    sampling_logprobs = None
    if backend == "fast":
        sampling_logprobs = torch.cat([F.pad(c[3], (0, lc - c[3].shape[1])) for c in chunks]) * completion_mask
    # the text of each completion's own tokens (up to and including EOS): a pad id that is an
    # ordinary token would otherwise reach the text the reward reads
    lengths = completion_mask.sum(dim=1).long().tolist()
    texts = tokenizer.batch_decode([row[:n] for row, n in zip(completion_ids.tolist(), lengths)],
                                   skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts, sampling_logprobs)


@contextlib.contextmanager
def _plain_generation_config(model):
    """While it runs, ``model.generate`` samples from π = softmax(z / τ) cut to top-p and nothing else:
    a fresh generation config stands in for the model's, whose other fields (repetition_penalty,
    no_repeat_ngram_size, min_new_tokens, suppress_tokens, ...) would otherwise apply (transformers
    fills every field the call leaves unset from the model's config) and sample off the policy the
    loss scores."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def forward_completion(model, batch: Rollout, temperature: float, output_hidden: bool = False):
    """Tempered logits (and optionally last hidden states) at the positions that predict each completion token.

    Returns ``logits`` (N, Lc, V) in float32 and ``hidden`` (N, Lc, H) or None.
    """
    if not hidden_gives_logits(model):
        return _forward_full(model, batch, temperature, output_hidden)
    hidden = completion_hidden(model, batch)
    return logits_from_hidden(model, hidden, temperature), (hidden if output_hidden else None)


def logits_from_hidden(model, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    """``forward_completion``'s tempered float32 logits from last hidden states it (or the update,
    or a scoring pass) computed: the model's output layer, then / temperature. Only for models
    whose logits are nothing more (``hidden_gives_logits``)."""
    return model.get_output_embeddings()(hidden).float() / temperature


# config fields with which transformers' models change the logits after the output layer, and the
# value that leaves them unchanged: soft-capping (Gemma 2/3), scaling (Granite, Cohere)
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logits_scaling": 1.0, "logit_scale": 1.0}
_HEAD_GIVES_LOGITS: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def hidden_gives_logits(model) -> bool:
    """Whether the model's logits are its output layer applied to the decoder's last hidden states,
    so that log-probs may come from hidden states (``logits_from_hidden``, the chunked passes).
    Not with a config field of ``_LOGIT_TRANSFORMS``; any other change of the logits (a model
    that scales them under another name) is caught by comparing the two on a two-token input,
    once per model. Elsewhere the model's own forward computes the logits (``_forward_full``)."""
    known = _HEAD_GIVES_LOGITS.get(model)
    if known is None:
        config = model.config
        plain_config = all(getattr(config, name, None) in (None, 0, neutral)
                           for name, neutral in _LOGIT_TRANSFORMS.items())
        known = _HEAD_GIVES_LOGITS[model] = plain_config and _head_matches_forward(model)
    return known


@torch.no_grad()
def _head_matches_forward(model) -> bool:
    was_training = model.training
    model.eval()  # dropout would make the two forwards differ
    try:
        ids = torch.tensor([[0, 1]], device=next(model.parameters()).device)
        mask = torch.ones_like(ids)  # id 0 is often the pad id: without a mask transformers warns about it
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        from_head = model.get_output_embeddings()(hidden).float()
    except Exception:  # a model that cannot be run this way: its own forward is always right
        return False
    finally:
        model.train(was_training)
    return from_head.shape == logits.shape and \
        bool((from_head - logits).abs().max() <= 1e-3 * logits.abs().max().clamp(min=1e-3))


# logits held at once by completion_logprobs and the update's log-probs: 2**27 fp32 values = 512 MiB
LOGITS_BUDGET = 2 ** 27


def completion_logprobs(model, batch: Rollout, temperature: float, budget: int = LOGITS_BUDGET) -> torch.Tensor:
    """log π(token) of every completion token without the (N, Lc, V) logits: the decoder's last
    hidden states, then the output layer over chunks of at most ``budget`` logits. No gradient.

    The same numbers as ``logprobs_from_logits(forward_completion(...))``: a causal LM's logits
    are its output layer applied to those hidden states. (N, Lc), float32.
    """
    return _logprobs_and_hidden(model, batch, temperature, budget)[0]


def _logprobs_and_hidden(model, batch: Rollout, temperature: float, budget: int = LOGITS_BUDGET):
    """``completion_logprobs`` and the last hidden states it scored (None where the logits are not a
    plain output layer: ``hidden_gives_logits``)."""
    head = _plain_head(model)
    if head is None:
        logits, hidden = forward_completion(model, batch, temperature, output_hidden=hidden_gives_logits(model))
        return logprobs_from_logits(logits, batch.completion_ids), hidden
    n, lc = batch.completion_ids.shape
    hidden = completion_hidden(model, batch)
    logp, _ = head_logprobs(hidden.reshape(n * lc, -1), head.weight, head.bias, batch.completion_ids.reshape(-1),
                            temperature, _chunk_rows(head, budget))
    return logp.view(n, lc), hidden


def completion_logprobs_entropy(model, batch: Rollout, temperature: float, output_hidden: bool = False,
                                budget: int = LOGITS_BUDGET):
    """The update's forward: log π(token) with its gradient, the entropy H (detached) and, if asked,
    the last hidden states, all (N, Lc), without holding the (N, Lc, V) logits (the output layer
    runs over chunks of at most ``budget`` logits, again in the backward pass:
    ``losses.ChunkedHeadLogprobs``). Same values as the log-probs and entropy of ``forward_completion``.

    log π is 0 at padding, as in every stored log-prob (π_old, π_ref): a per-token term of two of
    them is then finite there (the k3 KL of a padding position whose log π(pad) is below −88 would
    overflow exp() to inf, and inf · mask 0 is NaN, in the loss and in its gradient).
    """
    head = _plain_head(model)
    if head is None:
        logits, hidden = forward_completion(model, batch, temperature, output_hidden)
        logp, entropy = logprobs_from_logits(logits, batch.completion_ids), entropy_from_logits(logits.detach())
    else:
        n, lc = batch.completion_ids.shape
        hidden = completion_hidden(model, batch)
        logp, entropy = ChunkedHeadLogprobs.apply(hidden.reshape(n * lc, -1), head.weight, head.bias,
                                                  batch.completion_ids.reshape(-1), temperature,
                                                  _chunk_rows(head, budget))
        logp, entropy, hidden = logp.view(n, lc), entropy.view(n, lc), (hidden if output_hidden else None)
    return torch.where(batch.completion_mask.bool(), logp, 0.0), entropy, hidden


def _plain_head(model):
    """The output layer when the logits are nothing but its weight (and bias) applied to the last
    hidden states, else None: logit soft-capping or scaling, a wrapped layer (adapters) or forward hooks on it
    (which the chunked path would bypass) send the caller to the model's own logits."""
    head = model.get_output_embeddings()
    plain = type(head) is torch.nn.Linear and not head._forward_hooks and not head._forward_pre_hooks
    return head if plain and hidden_gives_logits(model) else None


def _chunk_rows(head, budget: int) -> int:
    return max(1, budget // head.weight.shape[0])


def completion_hidden(model, batch: Rollout) -> torch.Tensor:
    """The decoder's last hidden states at the positions that predict each completion token. (N, Lc, H)

    Rows that share a prompt (the G completions of a group) share its forward pass: the
    prompt is run once, its key/value cache is indexed out to every row, and the completions
    are run on top of it. Gradients flow back through the shared cache, so the result is the
    same function as one full forward per row, at a fraction of the cost.
    """
    decoder = model.get_decoder()
    lp, lc = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask.to(batch.prompt_mask.dtype)], dim=1)
    positions = positions_from_mask(attention_mask)
    prompt_key = torch.cat([batch.prompt_ids, batch.prompt_mask.to(batch.prompt_ids.dtype)], dim=1)
    unique_prompts, row_prompt = torch.unique(prompt_key, dim=0, return_inverse=True)
    if unique_prompts.shape[0] < len(batch) and type(decoder) not in _CACHE_NOT_SHARED:
        prompt_ids, prompt_mask = unique_prompts[:, :lp], unique_prompts[:, lp:].to(batch.prompt_mask.dtype)
        prompt_out = decoder(input_ids=prompt_ids, attention_mask=prompt_mask,
                             position_ids=positions_from_mask(prompt_mask), use_cache=True)
        cache = _cache_of(prompt_out)
        try:
            cache.batch_select_indices(row_prompt)
        except (AttributeError, NotImplementedError):  # a layer state it cannot index (Mamba, LFM2's convolutions)
            _CACHE_NOT_SHARED.add(type(decoder))
        else:
            out = decoder(input_ids=batch.completion_ids, attention_mask=attention_mask, position_ids=positions[:, lp:],
                          use_cache=True, **{_cache_arg(decoder): cache})
            # position lp-1 (last prompt token) predicts completion token 0; completion token t predicts t+1
            return torch.cat([prompt_out.last_hidden_state[row_prompt, -1:], out.last_hidden_state[:, :-1]], dim=1)
    out = decoder(input_ids=torch.cat([batch.prompt_ids, batch.completion_ids], dim=1),
                  attention_mask=attention_mask, position_ids=positions, use_cache=False)
    return out.last_hidden_state[:, lp - 1: lp - 1 + lc, :]


_CACHE_NOT_SHARED: set[type] = set()  # decoders whose prompt cache cannot be indexed out to the rows


def _forward_full(model, batch: Rollout, temperature: float, output_hidden: bool):
    """The model's own forward over prompt + completion for every row (models whose logits are
    not a plain output layer, e.g. with logit soft-capping or scaling; and the tests' reference)."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask.to(batch.prompt_mask.dtype)], dim=1)
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask), output_hidden_states=output_hidden, use_cache=False)
    lp, lc = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    logits = out.logits[:, lp - 1: lp - 1 + lc, :].float() / temperature
    hidden = out.hidden_states[-1][:, lp - 1: lp - 1 + lc, :] if output_hidden else None
    return logits, hidden


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens, so a left-padded row is scored as it was sampled."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _cache_arg(module) -> str:
    """transformers ≥ 5.2x names the forward's cache argument ``cache``; earlier ones ``past_key_values``."""
    return _cache_arg_of(type(module))


@functools.lru_cache(maxsize=None)
def _cache_arg_of(module_class) -> str:  # read the signature once per class, not on every micro-batch
    return "cache" if "cache" in inspect.signature(module_class.forward).parameters else "past_key_values"


@torch.no_grad()
def score_logprobs(model, batch: Rollout, temperature: float, batch_size: int) -> torch.Tensor:
    """log π(token) of every completion token, no gradient, in micro-batches. (N, Lc)"""
    return score_logprobs_and_hidden(model, batch, temperature, batch_size, keep_hidden=False)[0]


@torch.no_grad()
def score_logprobs_and_hidden(model, batch: Rollout, temperature: float, batch_size: int, keep_hidden: bool = True):
    """``score_logprobs`` and, with ``keep_hidden``, the last hidden states it scored (N, Lc, H), from
    which ``logits_from_hidden`` gives the full logits of any row without another forward pass
    (None where the logits are not a plain output layer)."""
    was_training = model.training
    model.eval()
    parts, hidden = [], []
    for start in range(0, len(batch), batch_size):
        sub = batch.select(list(range(start, min(start + batch_size, len(batch)))))
        logp, h = _logprobs_and_hidden(model, sub, temperature)
        parts.append(logp)
        if keep_hidden:
            hidden.append(h)
    model.train(was_training)
    kept = torch.cat(hidden) if keep_hidden and all(h is not None for h in hidden) else None
    return torch.cat(parts) * batch.completion_mask, kept
