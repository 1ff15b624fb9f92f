"""Shared fixtures: a tiny SFT'd model and short traced GRPO/PPO runs, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Small enough to run in seconds on 2 cores; the same code paths as the real presets.
FAST = dict(train_size=300, eval_size=40, eval_n=40, sft_size=200, sft_steps=30, sft_batch_size=16,
            buffer_size=16, num_generations=4, per_device_train_batch_size=4, gradient_accumulation_steps=2,
            max_completion_length=24, max_prompt_length=160, save_steps=1000, logging_steps=0)


def fast_config(**overrides):
    from minigrpo.config import build_config

    return build_config("tiny", overrides={**FAST, **overrides})


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    from minigrpo.sft import run_sft

    out = tmp_path_factory.mktemp("sft")
    # the tiny preset's completion length: the syllogism targets (up to 31 tokens) fit whole;
    # the RL runs of the tests stop at FAST's 24 tokens
    run_sft(fast_config(max_completion_length=48), out, log=lambda *_: None)
    return str(out)


@pytest.fixture(scope="session")
def grpo_run(tmp_path_factory, sft_model):
    """3 updates, every completion of each update probed (a fully probed trace)."""
    from minigrpo.grpo import GRPOTrainer

    out = tmp_path_factory.mktemp("grpo")
    cfg = fast_config(model=sft_model, max_steps=3, probe_completions=-1, learning_rate=3e-3, beta=0.1)
    summary = GRPOTrainer(cfg, out, log=lambda *_: None).train()
    return out, cfg, summary


@pytest.fixture(scope="session")
def ppo_run(tmp_path_factory, sft_model):
    from minigrpo.ppo import PPOTrainer

    out = tmp_path_factory.mktemp("ppo")
    cfg = fast_config(model=sft_model, algo="ppo", max_steps=2, probe_completions=-1, learning_rate=3e-3)
    summary = PPOTrainer(cfg, out, log=lambda *_: None).train()
    return out, cfg, summary
