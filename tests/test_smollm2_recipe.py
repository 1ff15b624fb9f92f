"""The seed recipe presets (smollm2-135m & co.), the epoch-counted SFT, and the `rules` SFT target.

Fast and offline. The check on the real SmolLM2-135M (chat template, tokens, the decision
position) downloads ~93 MB once and runs only with MINIGRPO_SLOW=1.
"""

from __future__ import annotations

import math
import os
import random

import pytest

from minigrpo.cli import _config_from_args, _parser
from minigrpo.config import ConfigError, build_config
from minigrpo.sft import sft_batches
from minigrpo.sft_targets import _CONVERTS_TO, _broken_rule, _parse_statement, sft_target
from minigrpo.tasks import RewardConfig, TaskError, load_split, score_completion

from conftest import fast_config


def test_smollm2_preset_is_the_seed_recipe():
    cfg = build_config("smollm2-135m")
    assert cfg.model == "smollm2-135m"
    # the article's table
    assert (cfg.learning_rate, cfg.temperature, cfg.num_generations, cfg.buffer_size,
            cfg.gradient_accumulation_steps, cfg.max_completion_length) == (1e-6, 0.7, 6, 500, 12, 300)
    # the article's SFT: about 200 examples, 3 epochs, lr 5e-5
    assert (cfg.sft_size, cfg.sft_epochs, cfg.sft_learning_rate) == (200, 3, 5e-5)
    assert cfg.sft_style == "rules" and cfg.dtype == "auto"  # bf16 + float32 masters on a GPU
    for name in ("smollm-135m", "smollm-360m", "qwen3-0.6b"):
        other = build_config(name)
        assert (other.learning_rate, other.sft_epochs, other.dtype) == (1e-6, 3, "auto")


def test_tiny_preset_keeps_its_sft():
    cfg = build_config("tiny")
    assert (cfg.sft_epochs, cfg.sft_style, cfg.sft_steps) == (0, "form", 200)


def test_sft_epochs_are_shuffled_full_passes():
    cfg = build_config("smollm2-135m")
    batches = sft_batches(200, cfg, random.Random(0))
    assert len(batches) == 3 * math.ceil(200 / 16) == 39
    per_epoch = len(batches) // 3
    for e in range(3):
        seen = [i for b in batches[e * per_epoch:(e + 1) * per_epoch] for i in b]
        assert sorted(seen) == list(range(200))  # each example exactly once per epoch
        assert len(batches[(e + 1) * per_epoch - 1]) == 200 - 12 * 16  # the short last batch
    assert batches[:per_epoch] != batches[per_epoch:2 * per_epoch]  # reshuffled


def test_sft_steps_mode_draws_as_before():
    """sft_epochs = 0 keeps the tiny preset's draws: rng.sample of indices picks the same
    examples as rng.sample of the examples did."""
    cfg = build_config("tiny")
    examples = [object() for _ in range(300)]
    old = random.Random(0)
    expected = [old.sample(examples, cfg.sft_batch_size) for _ in range(cfg.sft_steps)]
    got = sft_batches(len(examples), cfg, random.Random(0))
    assert all(x is examples[i] for want, idx in zip(expected, got, strict=True) for x, i in zip(want, idx))


def test_cli_max_steps_replaces_preset_epochs():
    args = _parser().parse_args(["sft", "--preset", "smollm2-135m", "--max-steps", "4"])
    cfg = _config_from_args(args, "sft")
    assert (cfg.sft_steps, cfg.sft_epochs) == (4, 0)
    args = _parser().parse_args(["sft", "--preset", "smollm2-135m", "--max-steps", "4", "--sft-epochs", "2"])
    with pytest.raises(ConfigError, match="give one"):  # the epochs won and the steps were ignored
        _config_from_args(args, "sft")
    with pytest.raises(ConfigError, match="sft-style"):
        build_config("tiny", overrides={"sft_style": "prose"})
    with pytest.raises(ConfigError, match="sft-epochs"):
        build_config("tiny", overrides={"sft_epochs": -1})


def test_run_sft_counts_epochs(tmp_path, sft_model):
    from minigrpo.sft import run_sft

    # from the session's SFT'd tiny model (a folder), so the tiny model is not built again
    cfg = fast_config(model=sft_model, sft_size=40, sft_epochs=2, sft_batch_size=16, eval_n=4, max_completion_length=48)
    summary = run_sft(cfg, tmp_path, log=lambda *_: None)
    assert (summary["steps"], summary["epochs"], summary["examples"]) == (2 * 3, 2, 40)


# ----------------------------------------------------------------------------- the rules target


@pytest.mark.parametrize("seed", [0, 1_000_003])
def test_rules_chain_decides_exactly_as_reasoning_gym(seed):
    """The rule the chain names (or 'Every rule holds') determines rg's label on every item."""
    data = load_split("syllogism", "train", 1500, seed)
    for item in data.items:
        m = item["metadata"]
        p1, p2, c = (_parse_statement(m[k]) for k in ("premise1", "premise2", "conclusion"))
        if m["type"] == "inversion":
            valid = _CONVERTS_TO[(p1, p2)[m["selected_premise"] - 1][0]] == c[0]
        else:
            valid = _broken_rule(p1, p2, c) is None
        assert valid == m["is_valid"] == (item["answer"] == "Yes"), item["question"]
        target = sft_target(item, "syllogism", "rules")
        assert ("Every rule holds." in target or "converts only to" in target) if valid else True
        result = score_completion(target, item, data, RewardConfig())
        assert result.formatted and result.correct


def test_rules_target_by_hand():
    item = {"answer": "No", "metadata": {"premise1": "Some cats are dogs", "premise2": "Some dogs are birds",
                                         "conclusion": "Some cats are birds", "type": "syllogism"}}
    assert sft_target(item, "syllogism", "rules") == (
        "<think>The middle term is dogs. Premise 1 is particular affirmative, premise 2 is particular affirmative, "
        "the conclusion is particular affirmative. Rule broken: both premises are particular.</think><answer>No</answer>")
    inversion = {"answer": "Yes", "metadata": {"premise1": "Some cats are not dogs", "premise2": "All dogs are birds",
                                               "conclusion": "Some birds are dogs", "type": "inversion",
                                               "selected_premise": 2}}
    assert sft_target(inversion, "syllogism", "rules") == (
        "<think>The conclusion swaps the terms of premise 2, which is universal affirmative; the conclusion is "
        "particular affirmative. A universal affirmative converts only to a particular affirmative.</think>"
        "<answer>Yes</answer>")
    # the tiny model's form target is unchanged, and the default
    assert sft_target(item, "syllogism") == sft_target(item, "syllogism", "form") == (
        "<think>Form: some A-B, some B-C; conclusion some A-C.</think><answer>No</answer>")
    with pytest.raises(TaskError, match="unknown SFT style"):
        sft_target(item, "syllogism", "prose")


# ----------------------------------------------------------------------------- the real model


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MINIGRPO_SLOW") != "1", reason="downloads ~93 MB; set MINIGRPO_SLOW=1")
def test_smollm2_prompt_target_and_decision_position():
    from minigrpo.models import load_model
    from minigrpo.probes import decision_position
    from minigrpo.rollout import eos_token_ids
    from minigrpo.tasks import build_prompt

    model, tok = load_model("smollm2-135m", device="cpu")
    item = load_split("syllogism", "train", 3, 0).items[2]
    prompt = build_prompt(item, tok)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert item["question"].strip() in prompt
    assert tok.convert_tokens_to_ids("<|im_end|>") in eos_token_ids(model, tok)
    target = sft_target(item, "syllogism", "rules")
    ids = tok(target, add_special_tokens=False)["input_ids"]
    pos = decision_position(tok, ids)
    assert tok.decode([ids[pos]]) == item["answer"]  # the verdict is one whole-word token
    words = [tok.decode([i]) for i in ids]
    assert " middle" in words and " term" in words
