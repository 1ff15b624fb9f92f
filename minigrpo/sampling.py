"""Sampling one token per row, exactly and without a host round trip.

    z = logits / τ;  p = softmax(z) cut to its top-p nucleus (renormalised);
    token = argmax_v p_v / E_v with E_v ~ Exp(1) i.i.d.   (the exponential race: P(token = v) = p_v / Σ p)
    log-prob = log softmax(z)[token], over the whole vocabulary (the policy the loss scores, as TRL does)

Unlike ``torch.multinomial`` the race reads nothing back to the host, so it can be captured in a
CUDA graph (``decode.py``).
"""

from __future__ import annotations

import torch

from .losses import logprobs_from_logits


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """True on the smallest set of most probable tokens whose mass reaches ``top_p``.

    A token is kept iff the tokens ranked above it hold less than top_p of the mass, i.e. iff it
    and the tokens ranked below it hold more than 1 − top_p; so the most probable token is always
    kept. The mass is summed from the least probable token up, as transformers' ``TopPLogitsWarper``
    (what ``model.generate`` applies) sums it (fewer rounding errors than from the top). Of tied
    tokens the higher id ranks above (transformers leaves the order of ties to an unstable sort,
    so on ties the two may keep different tokens of equal probability). (B, V) -> (B, V) bool.
    """
    sorted_p, order = probs.sort(dim=-1, descending=False, stable=True)
    keep = sorted_p.cumsum(dim=-1) > 1 - top_p
    keep[..., -1] = True
    return torch.zeros_like(keep).scatter(-1, order, keep)


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """The distribution a token is drawn from: softmax(logits / τ) cut to the top-p nucleus, renormalised."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = probs * nucleus_mask(probs, top_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row, P(v) = probs[v] / Σ probs: the exponential race argmax_v probs_v / E_v.

    E is clamped away from 0 so that a zero-probability token scores 0, never 0/0.
    """
    race = torch.empty_like(probs).exponential_(generator=generator).clamp_(min=torch.finfo(probs.dtype).tiny)
    return (probs / race).argmax(dim=-1)


def sample(logits: torch.Tensor, temperature: float, top_p: float = 1.0, greedy: bool = False,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, log π(token)) per row of (B, V) logits, π = softmax(logits / τ) over the whole vocabulary."""
    logits = logits.float()
    token = logits.argmax(dim=-1) if greedy else draw(sampling_probs(logits, temperature, top_p), generator)
    return token, logprobs_from_logits(logits / temperature, token)
