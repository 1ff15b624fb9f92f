"""One rollout: sample G completions per prompt, score them with the verifier, keep the reward parts."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .losses import group_advantages, group_stats
from .rollout import Rollout, generate, score_logprobs
from .tasks import RewardConfig, TaskData, build_prompt, score_completion
from .trace.schema import Group


@dataclass
class Experience:
    items: list  # P task items
    prompts: list[str]  # P prompt texts (template applied)
    rollout: Rollout  # N = P*G rows, grouped by prompt
    rewards: torch.Tensor  # (N,) total reward
    parts: dict[str, torch.Tensor]  # part -> (N,)
    correct: torch.Tensor  # (N,) bool
    formatted: torch.Tensor  # (N,) bool
    premise_copy: torch.Tensor  # (N,) bool
    advantages: torch.Tensor  # (N,) group z-score advantages
    logp_old: torch.Tensor  # (N, Lc) behaviour policy
    logp_ref: torch.Tensor | None  # (N, Lc) reference policy
    scorer_errors: torch.Tensor | None = None  # (N,) bool: the task's scorer raised or gave NaN/inf (scored 0)

    @property
    def num_generations(self) -> int:
        return len(self.rollout) // len(self.items)

    def rollout_metrics(self) -> dict[str, float]:
        g = self.num_generations
        _, std = group_stats(self.rewards, g)
        return {
            "reward": self.rewards.mean().item(),
            "reward_std": std.mean().item(),
            "frac_reward_zero_std": (std == 0).float().mean().item(),
            "accuracy": self.correct.float().mean().item(),
            "format_rate": self.formatted.float().mean().item(),
            "premise_copy_rate": self.premise_copy.float().mean().item(),
            "completion_length": self.rollout.completion_mask.sum(1).mean().item(),
            "scorer_errors": float(self.scorer_errors.sum().item()) if self.scorer_errors is not None else 0.0,
        }


def sample_items(data: TaskData, n: int, rng: random.Random) -> list:
    return [data[i] for i in rng.sample(range(len(data)), min(n, len(data)))]


def collect(policy, ref, tokenizer, data: TaskData, cfg, rng: random.Random,
            rank: int = 0, world_size: int = 1) -> Experience:
    """One rollout; with ``world_size`` > 1 every rank draws the same prompts and keeps its block of them."""
    items = sample_items(data, cfg.prompts_per_rollout, rng)
    share = len(items) // world_size
    items = items[rank * share:(rank + 1) * share]
    prompts = [build_prompt(item, tokenizer) for item in items]
    rollout = generate(policy, tokenizer, prompts, cfg.num_generations, cfg.max_completion_length,
                       cfg.temperature, cfg.top_p, cfg.generation_batch_size, cfg.max_prompt_length,
                       backend=cfg.rollout_backend)
    reward_cfg = RewardConfig(format_weight=cfg.format_weight, correctness_weight=cfg.correctness_weight,
                              penalize_premise_copy=cfg.penalize_premise_copy)
    results = [score_completion(text, items[i // cfg.num_generations], data, reward_cfg)
               for i, text in enumerate(rollout.completions)]
    device = rollout.completion_ids.device
    rewards = torch.tensor([r.total for r in results], dtype=torch.float32, device=device)
    parts = {name: torch.tensor([r.parts[name] for r in results], dtype=torch.float32, device=device)
             for name in results[0].parts}
    flag = lambda attr: torch.tensor([getattr(r, attr) for r in results], dtype=torch.bool, device=device)  # noqa: E731
    advantages = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards, cfg.advantage_eps)
    # scoring holds no (N, Lc, V) logits (completion_logprobs), so the fast backend scores a whole generation batch at once
    score_batch = cfg.generation_batch_size if cfg.rollout_backend == "fast" else cfg.per_device_train_batch_size * 2
    logp_old = score_logprobs(policy, rollout, cfg.temperature, score_batch)
    logp_ref = score_logprobs(ref, rollout, cfg.temperature, score_batch) if ref is not None else None
    return Experience(items, prompts, rollout, rewards, parts, flag("correct"), flag("formatted"),
                      flag("premise_copy"), advantages, logp_old, logp_ref, flag("scorer_error"))


def trace_groups(exp: Experience, advantages: torch.Tensor) -> list[Group]:
    """The rollout's groups as trace records, with each completion's sequence-level advantage."""
    g = exp.num_generations
    mean, std = group_stats(exp.rewards, g)
    lengths = exp.rollout.completion_mask.sum(1).long().tolist()
    ids = exp.rollout.completion_ids.cpu().numpy()
    groups = []
    for p, item in enumerate(exp.items):
        rows = slice(p * g, (p + 1) * g)
        answer = item.get("answer")
        groups.append(Group(
            prompt=exp.prompts[p],
            question=item["question"],
            answer=answer if isinstance(answer, str) else None,
            completions=exp.rollout.completions[rows],
            completion_ids=[ids[i, :lengths[i]].astype(np.int64) for i in range(p * g, (p + 1) * g)],
            reward_parts={k: v[rows].cpu().numpy().astype(np.float32) for k, v in exp.parts.items()},
            rewards=exp.rewards[rows].cpu().numpy().astype(np.float32),
            mean=float(mean[p]), std=float(std[p]),
            advantages=advantages[rows].cpu().numpy().astype(np.float32),
            correct=exp.correct[rows].cpu().numpy().astype(bool),
        ))
    return groups
