"""The attention of one new token per row over a KV cache, for the decode steps (``decode.py``,
``fused_step.py``): each KV head serves its group of query heads without copying the cache
(transformers' sdpa path with a mask calls ``repeat_kv``, which copies it Hq/Hkv times per layer
and step). Registered in transformers' ``AttentionInterface`` and switched on for the decode
steps only (``attention_implementation``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


# the names they are registered under in transformers' AttentionInterface
GQA_ATTENTION, SDPA_ATTENTION = "minigrpo_gqa_decode", "minigrpo_sdpa_decode"


def gqa_decode_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **kwargs):
    """softmax(q·kᵀ·scaling + mask)·v for one query token per row, each KV head shared by its query heads.

    transformers' eager formula (``eager_attention_forward``: bf16 products, float32 softmax;
    with ``softcap`` (Gemma 2) the scores are first capped to softcap·tanh(scores / softcap))
    without ``repeat_kv``, which copies the whole KV cache Hq/Hkv times per layer and step:
    query head h = kv·g + r uses KV head kv (g = Hq/Hkv), so a reshape of the query to
    (B, Hkv, g, D) lines each group up with its head. ``attention_mask`` is additive, (B, 1, 1, L).
    Returns (B, 1, Hq, D), as the attention modules expect.
    """
    b, heads, q, d = query.shape
    if q != 1:
        raise ValueError(f"gqa_decode_attention takes one query token per row, got {q}")
    grouped = query.reshape(b, key.shape[1], heads // key.shape[1], d)
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).reshape(b, 1, heads, d), None


def sdpa_decode_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None, **kwargs):
    """``gqa_decode_attention`` through torch's fused attention, ``F.scaled_dot_product_attention``:
    the g query heads of a KV head are g queries of that head, so the cache is not copied either,
    and where the backend has one kernel for an additive mask (on CUDA the memory-efficient one is
    expected to take it: not yet measured) it replaces two matmuls and a softmax. Its rounding is
    the backend's, as in the model's own sdpa forward, not the eager formula's (bf16 scores).
    Same arguments and result.
    """
    b, heads, q, d = query.shape
    if q != 1:
        raise ValueError(f"sdpa_decode_attention takes one query token per row, got {q}")
    if softcap is not None:
        raise ValueError("the 'sdpa' decode attention cannot cap attention scores (this model has softcap "
                         f"{softcap}); use attention 'gqa'")
    grouped = query.reshape(b, key.shape[1], heads // key.shape[1], d)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(b, 1, heads, d), None


# decode() attention name -> (registered name, function) of the decode steps' own attentions
STEP_ATTENTIONS = {"gqa": (GQA_ATTENTION, gqa_decode_attention), "sdpa": (SDPA_ATTENTION, sdpa_decode_attention)}


def register_step_attentions() -> bool:
    """Make ``STEP_ATTENTIONS``' names ones the attention modules can look up (False on a transformers without the
    registry)."""
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    for name, function in STEP_ATTENTIONS.values():
        AttentionInterface.register(name, function)
    return True


@contextlib.contextmanager
def attention_implementation(model, name: str | None):
    """The model's layers look up ``name`` as their attention function inside the block (None: unchanged)."""
    if name is None:
        yield
        return
    before = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = before
