"""Which models our decode loop (``decode.py``) can sample from, and why not where it cannot.

The loop builds its own attention mask over the whole context, for sdpa or eager attention,
and keeps only keys and values. :func:`unsupported` says in one line why a model is outside
that: a limit its config names (another attention implementation, a sliding window shorter
than the context, layers with other state), or, checked once per model, a difference only
decoding shows (two greedy steps of ours against the model's own forward).
"""

from __future__ import annotations

import weakref

import torch


def shorter_sliding_window(config, length: int) -> int | None:
    """The model's attention window if some layer uses one shorter than ``length`` tokens (our mask has none)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)  # per layer, where the config says (Qwen3)
    windowed = "sliding_attention" in layer_types if layer_types else getattr(config, "use_sliding_window", True)
    if window and windowed and window < length:
        return window
    local = getattr(config, "window_size", None)  # GPT-Neo: its "local" layers see the last window_size tokens
    if isinstance(local, int) and "local" in (getattr(config, "attention_layers", None) or ()) and local < length:
        return local
    return None


ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")  # layers whose whole state is keys and values
# the check's answer per model and (dtype, device, attention): a model cast or moved after a check is checked again
_DISAGREEMENT: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def unsupported(model, context: int) -> str | None:
    """Why our decode loop cannot sample from ``model`` with prompts and completions of ``context``
    tokens in all (None if it can): it builds its own mask over the whole context, for sdpa or
    eager attention, and keeps only keys and values. Known limits are read from the config; any
    other difference (a bias built from a 2-D mask, as ALiBi models do; state the cache does not
    hold) is found by decoding two rows and comparing with the model's own forward, once per
    model, dtype, device and attention (``_disagrees_with_forward``)."""
    config = model.config
    attn = getattr(config, "_attn_implementation", "sdpa") or "sdpa"
    if attn not in ("sdpa", "eager"):
        return (f"rollout_backend 'fast' needs attn_implementation sdpa or eager, the model uses {attn!r}; "
                f"load it with attn_implementation='sdpa' or use rollout_backend 'hf'")
    window = shorter_sliding_window(config, context)
    if window:
        return (f"rollout_backend 'fast' attends to the whole context, but this model uses a sliding window of "
                f"{window} tokens, shorter than prompt + completion ({context}); use rollout_backend 'hf'")
    other = sorted({str(kind) for kind in getattr(config, "layer_types", None) or ()} - set(ATTENTION_LAYER_TYPES))
    if other:
        return (f"rollout_backend 'fast' keeps only keys and values, but this model has {', '.join(other)} "
                f"layers; use rollout_backend 'hf'")
    answers = _DISAGREEMENT.setdefault(model, {})
    placement = (model.dtype, next(model.parameters()).device, attn)
    if placement not in answers:
        answers[placement] = _disagrees_with_forward(model)
    return answers[placement]


@torch.no_grad()
def _disagrees_with_forward(model) -> str | None:
    """Why two greedy decode steps of ours over two rows (one left-padded) differ from the model's own
    forward over the same tokens (None where they agree): the log-probs of the chosen tokens within
    1e-3 nats in float32, 0.25 in 16-bit types (rounding, where a dropped ALiBi bias or a state the
    loop does not keep is off by a nat and more)."""
    from .decode import Decoder  # decode.py asks this module first: import late
    from .rollout import positions_from_mask

    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(10, device=device).view(2, 5) * 7 + vocab // 3) % vocab
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # row 0: two pad columns on the left
    was_training = model.training
    model.eval()
    try:
        decoder = Decoder(model, 2, 5, 2, 1.0, 1.0, True, set(), 0, use_graph=False)
        tokens, logps, made = decoder.run(ids, mask, 1, None, 0)
        tokens, logps = tokens[:, :made], logps[:, :made].float()
        full = torch.cat([ids, tokens], dim=1)
        full_mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
        logits = model(input_ids=full, attention_mask=full_mask, position_ids=positions_from_mask(full_mask),
                       use_cache=False).logits[:, 4:4 + made].float()
        own = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    except Exception as exc:  # noqa: BLE001 - any failure means the loop cannot run this model
        text = str(exc).strip()
        line = text.splitlines()[0][:160] if text else ""
        return (f"rollout_backend 'fast' cannot decode {type(model).__name__} ({type(exc).__name__}: {line}); "
                f"use rollout_backend 'hf'")
    finally:
        model.train(was_training)
    tolerance = 1e-3 if model.dtype == torch.float32 else 0.25
    gap = float((logps - own).abs().max())
    if not gap <= tolerance:
        return (f"rollout_backend 'fast' does not reproduce {type(model).__name__}'s own forward (log-probs "
                f"{gap:.3g} nats apart on a check input); use rollout_backend 'hf'")
    return None
