"""The embedded ``tiny`` model: a byte-level BPE tokenizer trained on a given corpus and a
randomly initialised (seeded) small Llama, saved as an ordinary Hugging Face folder.

No hub, no network: ``minigrpo sft --preset tiny`` builds it from the task's own text
(:mod:`minigrpo.sft_targets`) and ``minigrpo.models.load_model(folder)`` loads it like any
other model.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

__all__ = ["build_tiny", "EOS_TOKEN", "THINK_TOKENS"]

EOS_TOKEN = "<|endoftext|>"
THINK_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")


def build_tiny(
    out_dir: str,
    corpus: list[str],
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> str:
    """Write the embedded ``tiny`` model (tokenizer + random Llama) into ``out_dir``.

    The tokenizer is a byte-level BPE trained on ``corpus`` with ``<|endoftext|>`` as
    bos/eos/pad (id 0) and ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` as single,
    non-special added tokens (they decode as text); it has no chat template. The model is
    a ``LlamaForCausalLM`` with tied embeddings, intermediate size ``4 * hidden_size``,
    randomly initialised from ``seed`` (the global torch RNG is left untouched). The
    vocabulary of the model is exactly ``len(tokenizer)`` (``vocab_size`` unless the
    corpus is too small for that many merges). Same corpus and seed -> identical files.
    Returns ``out_dir`` as a string.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [str(t) for t in corpus if t]
    if not corpus:
        raise ValueError("build_tiny needs a non-empty corpus")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    n_base = vocab_size - len(THINK_TOKENS)
    if n_base < 256 + 1:
        raise ValueError(f"vocab_size must be at least {256 + 1 + len(THINK_TOKENS)} (byte alphabet)")

    # --- tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_base,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # the think/answer markers are whole tokens: keep the trainer from spending merges on them
    marker = re.compile("|".join(re.escape(t) for t in THINK_TOKENS))
    bpe.train_from_iterator((marker.sub(" ", t) for t in corpus), trainer=trainer)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=max_position_embeddings,
    )
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)

    # --- model
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        initializer_range=0.02,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id
    )

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
