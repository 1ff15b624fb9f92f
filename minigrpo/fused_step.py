"""One decode step of a Llama or Qwen3 model with its projections fused: q, k and v in one
matmul, gate and up in one (``decode.Decoder`` with ``fused=True``, config ``fused_decode``).

At batch 48 a decode step of SmolLM-135M is bound by how many kernels it runs, not by bytes
(docs/performance.md): each of a layer's seven projections is a small matmul of a few µs. The
three that read the attention's input and the two that read the MLP's input can each be one
matmul over the concatenated weights; everything else is the model's own modules, called in
the order of its decoder layer (transformers' ``LlamaDecoderLayer`` / ``Qwen3DecoderLayer``):

    h ← h + o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))   q, k, v = split(x · [Wq; Wk; Wv]ᵀ), x = norm₁(h)
    h ← h + down_proj(act(g) · u)                                     g, u = split(y · [Wg; Wu]ᵀ),     y = norm₂(h)
    logits = lm_head(norm(h))

with the decode loop's attention (``decode_attention.gqa_decode_attention`` or ``sdpa_decode_attention``)
over its KV cache. The values are the model's up to the rounding of the fused matmuls (a wider
matrix, the same sums). The fused weights are copies, written in place by ``refresh`` before each rollout (the
optimizer changes the model's weights between rollouts), so a captured CUDA graph reads them
at the same addresses.
"""

from __future__ import annotations

import sys
import weakref

import torch
import torch.nn.functional as F

SUPPORTED = ("LlamaForCausalLM", "Qwen3ForCausalLM")


def unsupported(model) -> str | None:
    """Why ``FusedStep`` cannot run this model, or None when it can."""
    name = type(model).__name__
    if name not in SUPPORTED:
        return f"fused_decode supports {' and '.join(SUPPORTED)}; this model is {name}"
    if (getattr(model.config, "pretraining_tp", 1) or 1) != 1:
        return "fused_decode does not support pretraining_tp > 1"
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, a) for a in needed):
        return f"{name} does not have the layout fused_decode reads (model.{', model.'.join(needed)})"
    for layer in inner.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if not all(isinstance(getattr(attn, p, None), torch.nn.Linear) for p in ("q_proj", "k_proj", "v_proj")) \
                or not all(isinstance(getattr(mlp, p, None), torch.nn.Linear) for p in ("gate_proj", "up_proj")):
            return f"{name}'s projections are not plain linear layers (adapters?), which fused_decode concatenates"
        for group in ((attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj)):
            if len({m.bias is None for m in group}) > 1:
                return f"{name}'s projections mix layers with and without a bias"
    if not callable(getattr(sys.modules[type(model).__module__], "apply_rotary_pos_emb", None)):
        return f"{name}'s module has no apply_rotary_pos_emb"
    return None


def _concat(linears, out: tuple | None = None):
    """[W₁; W₂; …] and [b₁; b₂; …] (None without biases), written into ``out`` when given (in place)."""
    weight = torch.cat([m.weight for m in linears], out=out[0] if out else None)
    if linears[0].bias is None:
        return weight, None
    return weight, torch.cat([m.bias for m in linears], out=out[1] if out else None)


class FusedStep:
    """``step(input_ids (B, 1), position_ids (B, 1), mask (B, 1, 1, L) additive, cache[, attend])``
    → logits (B, 1, V)."""

    def __init__(self, model):
        reason = unsupported(model)
        if reason:
            raise ValueError(reason)
        self._model = weakref.ref(model)  # the decoders that hold this step are cached per model: no cycle
        self.rope = sys.modules[type(model).__module__].apply_rotary_pos_emb
        layers = model.model.layers
        with torch.no_grad():
            self.qkv = [_concat(self._attn_linears(layer)) for layer in layers]
            self.gate_up = [_concat(self._mlp_linears(layer)) for layer in layers]
        self.q_width = [layer.self_attn.q_proj.out_features for layer in layers]
        self.kv_width = [layer.self_attn.k_proj.out_features for layer in layers]
        self.ffn_width = [layer.mlp.gate_proj.out_features for layer in layers]

    @staticmethod
    def _attn_linears(layer):
        return layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj

    @staticmethod
    def _mlp_linears(layer):
        return layer.mlp.gate_proj, layer.mlp.up_proj

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the model's current weights into the fused ones, in place (same addresses)."""
        for layer, qkv, gate_up in zip(self._model().model.layers, self.qkv, self.gate_up):
            _concat(self._attn_linears(layer), out=qkv)
            _concat(self._mlp_linears(layer), out=gate_up)

    def __call__(self, input_ids, position_ids, mask, cache, attend=None) -> torch.Tensor:
        """``attend``: the attention (``decode_attention.gqa_decode_attention``, the default, or ``sdpa_decode_attention``)."""
        if attend is None:
            from .decode_attention import gqa_decode_attention as attend

        model = self._model()
        inner = model.model
        hidden = inner.embed_tokens(input_ids)
        cos, sin = inner.rotary_emb(hidden, position_ids)
        b, q_len, _ = hidden.shape
        for i, layer in enumerate(inner.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x = layer.input_layernorm(hidden)
            q, k, v = F.linear(x, *self.qkv[i]).split([self.q_width[i], self.kv_width[i], self.kv_width[i]], dim=-1)
            q, k, v = (t.view(b, q_len, -1, attn.head_dim) for t in (q, k, v))
            if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head, before RoPE
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            keys, values = cache.update(k, v, attn.layer_idx)
            out, _ = attend(attn, q, keys, values, mask, attn.scaling)
            hidden = hidden + attn.o_proj(out.reshape(b, q_len, -1).contiguous())
            y = layer.post_attention_layernorm(hidden)
            gate, up = F.linear(y, *self.gate_up[i]).split([self.ffn_width[i]] * 2, dim=-1)
            hidden = hidden + mlp.down_proj(mlp.act_fn(gate) * up)
        return model.lm_head(inner.norm(hidden))
