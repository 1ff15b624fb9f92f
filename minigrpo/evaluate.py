"""Held-out evaluation: greedy answers on the eval split, next to the majority-class baseline."""

from __future__ import annotations

import math

from .config import ConfigError
from .rollout import generate
from .tasks import RewardConfig, TaskData, build_prompt, score_completion


def evaluate(model, tokenizer, data: TaskData, cfg, n: int | None = None) -> dict:
    items = [data[i] for i in range(min(n or len(data), len(data)))]
    prompts = [build_prompt(item, tokenizer) for item in items]
    check_fits(model, tokenizer, prompts, cfg)
    rollout = generate(model, tokenizer, prompts, 1, cfg.max_completion_length, 1.0, 1.0,
                       cfg.sampling_batch_size, cfg.max_prompt_length, greedy=True,
                       backend=getattr(cfg, "rollout_backend", "hf"))
    reward_cfg = RewardConfig(format_weight=cfg.format_weight, correctness_weight=cfg.correctness_weight,
                              penalize_premise_copy=cfg.penalize_premise_copy)
    results = [score_completion(text, item, data, reward_cfg) for text, item in zip(rollout.completions, items)]
    count = max(1, len(results))
    baseline = (TaskData(data.name, items, data.dataset).majority_baseline(cfg.penalize_premise_copy)
                if items else math.nan)
    return {
        "accuracy": sum(r.correct for r in results) / count,
        "mean_score": sum(r.parts["correctness"] for r in results) / count,
        "format_rate": sum(r.formatted for r in results) / count,
        "premise_copy_rate": sum(r.premise_copy for r in results) / count,
        "majority_baseline": baseline,
        "n": len(results),
    }


def check_fits(model, tokenizer, prompts: list[str], cfg) -> None:
    """The longest prompt (as cut to ``max_prompt_length``) plus ``max_completion_length`` must fit the
    model's positions: past them a model's output is undefined (and a huge length decodes for hours)."""
    n_ctx = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(n_ctx, int) or not prompts:
        return
    longest = min(max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]),
                  cfg.max_prompt_length)
    if longest + cfg.max_completion_length > n_ctx:
        raise ConfigError(f"invalid --max-completion-length: the longest prompt ({longest} tokens) + "
                          f"{cfg.max_completion_length} exceed the model's context of {n_ctx} "
                          f"(max_position_embeddings); lower --max-completion-length")
