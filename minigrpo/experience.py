"""One rollout: sample G completions per prompt, score them with the verifier, keep the reward parts."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .losses import constant_groups, group_advantages, group_stats
from .rollout import (Rollout, concat_rollouts, generate, pad_token_id, score_logprobs,
                      score_logprobs_and_hidden)
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
    item_indices: list | None = None  # dynamic sampling: indices of ``items`` in the training split (for --resume)
    generation_metrics: dict | None = None  # dynamic sampling: rollout metrics over every sampled group (0-d tensors)
    logp_old_from_update: bool = False  # logp_old is filled by the update itself (see one_update_per_rollout)
    ref_hidden: torch.Tensor | None = None  # (N, Lc, H) π_ref's last hidden states for the probes (keep_ref_hidden)
    rollout_tokens: float | None = None  # completion tokens, mean over ranks (dapo's normaliser; the first update's)

    @property
    def num_generations(self) -> int:
        return len(self.rollout) // len(self.items)

    def rollout_metrics(self) -> dict[str, float]:
        """Means over the rollout's completions; with dynamic sampling, over every group sampled
        (the policy's behaviour), plus the ``dynamic_sampling/*`` counts of the filter."""
        if self.generation_metrics is not None:
            return {k: float(v) for k, v in self.generation_metrics.items()}
        return completion_stats(self.num_generations, self.rewards, self.correct, self.formatted, self.premise_copy,
                                self.rollout.completion_mask.sum(1), self.scorer_errors)


def completion_stats(g: int, rewards, correct, formatted, premise_copy, lengths, scorer_errors=None) -> dict[str, float]:
    """The rollout metrics of N = P·G completions (rows grouped by prompt): per-completion tensors in."""
    _, std = group_stats(rewards, g)
    return {
        "reward": rewards.mean().item(),
        "reward_std": std.mean().item(),
        "frac_reward_zero_std": (std == 0).float().mean().item(),
        "accuracy": correct.float().mean().item(),
        "format_rate": formatted.float().mean().item(),
        "premise_copy_rate": premise_copy.float().mean().item(),
        "completion_length": lengths.float().mean().item(),
        "scorer_errors": float(scorer_errors.sum().item()) if scorer_errors is not None else 0.0,
    }


def sample_items(data: TaskData, n: int, rng: random.Random) -> list:
    return [data[i] for i in draw_indices(len(data), n, rng)]


def draw_indices(size: int, n: int, rng: random.Random, exclude: set | None = None) -> list[int]:
    """``n`` distinct indices of a split of ``size`` items; those in ``exclude`` only once the others ran out."""
    n = min(n, size)
    if not exclude:
        return rng.sample(range(size), n)
    fresh = [i for i in range(size) if i not in exclude]
    if len(fresh) >= n:
        return rng.sample(fresh, n)
    return rng.sample(fresh, len(fresh)) + rng.sample([i for i in range(size) if i in exclude], n - len(fresh))


def one_update_per_rollout(cfg, rows: int) -> bool:
    """Each of the rollout's ``rows`` (this rank's) is trained on once, in the first optimizer step
    after sampling: then π_old is the policy of that very step, and log π_old is the update's own
    log-prob, detached (ρ = 1 exactly), with no scoring pass of its own (TRL does the same)."""
    return cfg.num_iterations == 1 and rows <= cfg.completions_per_step


def collect(policy, ref, tokenizer, data: TaskData, cfg, rng: random.Random,
            rank: int = 0, world_size: int = 1, old_pass: bool = False, while_decoding=None,
            all_gather=None) -> Experience:
    """One rollout; with ``world_size`` > 1 every rank draws the same prompts and keeps its block of them.

    With ``cfg.dynamic_sampling`` (DAPO), groups whose rewards are all equal (zero advantage) are
    set aside and more prompts are sampled, up to ``cfg.max_num_gen_batches`` generation batches,
    until the buffer holds only groups whose rewards differ; if it is still short, set-aside
    groups fill it (in sampling order), so every rollout trains on the same number of groups.

    log π_old: a scoring pass when ``old_pass`` (PPO's rewards need it before the update) or when a
    row is trained on more than once or after another step; otherwise zeros, with
    ``logp_old_from_update`` set, for the update to fill (``one_update_per_rollout``).
    ``while_decoding()``: host work to run once while the first completions are decoded (``generate``).
    ``all_gather(list)``: every rank's list (``Dist.all_gather``); with ``scale_rewards="batch"`` the
    advantages are divided by the std of every rank's rewards, not of this rank's share.
    """
    indices = draw_indices(len(data), cfg.prompts_per_rollout, rng)
    batch = _sample_and_score(policy, tokenizer, data, cfg, _share(indices, rank, world_size), while_decoding)
    generation_metrics = None
    if cfg.dynamic_sampling:
        batch, generation_metrics = _refill(batch, policy, tokenizer, data, cfg, rng, rank, world_size, indices)
    batch_rewards = None
    if cfg.scale_rewards == "batch" and world_size > 1 and all_gather is not None:
        batch_rewards = torch.tensor([r for part in all_gather(batch.rewards.tolist()) for r in part])
    advantages = group_advantages(batch.rewards, cfg.num_generations, cfg.scale_rewards, cfg.advantage_eps,
                                  batch_rewards)
    # scoring holds no (N, Lc, V) logits (completion_logprobs), so the fast backend scores a whole generation batch at once
    score_batch = cfg.sampling_batch_size if cfg.rollout_backend == "fast" else cfg.per_device_train_batch_size * 2
    from_update = not old_pass and one_update_per_rollout(cfg, len(batch.rollout))
    logp_old = torch.zeros_like(batch.rollout.completion_mask, dtype=torch.float32) if from_update else \
        score_logprobs(policy, batch.rollout, cfg.temperature, score_batch)
    logp_ref, ref_hidden = score_logprobs_and_hidden(ref, batch.rollout, cfg.temperature, score_batch,
                                                     keep_ref_hidden(cfg, ref, batch.rollout)) \
        if ref is not None else (None, None)
    return Experience(batch.items, batch.prompts, batch.rollout, batch.rewards, batch.parts, batch.correct,
                      batch.formatted, batch.premise_copy, advantages, logp_old, logp_ref, batch.scorer_errors,
                      item_indices=batch.indices if cfg.dynamic_sampling else None,
                      generation_metrics=generation_metrics, logp_old_from_update=from_update, ref_hidden=ref_hidden)


# the most bytes of π_ref hidden states a rollout keeps for the probes (SmolLM-135M at the seed recipe: 17 MB)
REF_HIDDEN_BUDGET = 2 ** 28


def keep_ref_hidden(cfg, ref, rollout: Rollout) -> bool:
    """Keep π_ref's hidden states from its scoring pass, so that the probes read the reference's
    logits from them instead of running π_ref again: when the trace has probes and they fit
    ``REF_HIDDEN_BUDGET``."""
    if not (cfg.trace and cfg.probe_completions != 0):
        return False
    n, lc = rollout.completion_ids.shape
    head = getattr(ref.get_output_embeddings(), "weight", None)  # (V, H)
    return head is not None and n * lc * head.shape[1] * head.element_size() <= REF_HIDDEN_BUDGET


def _share(indices: list[int], rank: int, world_size: int) -> list[int]:
    share = len(indices) // world_size
    return indices[rank * share:(rank + 1) * share]


@dataclass
class _Scored:
    """Sampled and scored groups, before any log-prob pass (rows grouped by prompt, G per group)."""
    indices: list[int]
    items: list
    prompts: list[str]
    rollout: Rollout
    rewards: torch.Tensor
    parts: dict[str, torch.Tensor]
    correct: torch.Tensor
    formatted: torch.Tensor
    premise_copy: torch.Tensor
    scorer_errors: torch.Tensor

    def rows(self, group: int, g: int) -> list[int]:
        return list(range(group * g, (group + 1) * g))

    def informative(self, g: int) -> list[bool]:
        """Per group: do its rewards differ (a non-zero advantage somewhere)?"""
        return (~constant_groups(self.rewards.view(-1, g))).tolist()


def _sample_and_score(policy, tokenizer, data: TaskData, cfg, indices: list[int], while_decoding=None) -> _Scored:
    items = [data[i] for i in indices]
    prompts = [build_prompt(item, tokenizer) for item in items]
    rollout = generate(policy, tokenizer, prompts, cfg.num_generations, cfg.max_completion_length,
                       cfg.temperature, cfg.top_p, cfg.sampling_batch_size, cfg.max_prompt_length,
                       backend=cfg.rollout_backend, compile_decode=cfg.compile_decode,
                       fused_decode=cfg.fused_decode, while_decoding=while_decoding)
    reward_cfg = RewardConfig(format_weight=cfg.format_weight, correctness_weight=cfg.correctness_weight,
                              penalize_premise_copy=cfg.penalize_premise_copy)
    results = [score_completion(text, items[i // cfg.num_generations], data, reward_cfg)
               for i, text in enumerate(rollout.completions)]
    device = rollout.completion_ids.device
    rewards = torch.tensor([r.total for r in results], dtype=torch.float32, device=device)
    parts = {name: torch.tensor([r.parts[name] for r in results], dtype=torch.float32, device=device)
             for name in results[0].parts}
    flag = lambda attr: torch.tensor([getattr(r, attr) for r in results], dtype=torch.bool, device=device)  # noqa: E731
    return _Scored(list(indices), items, prompts, rollout, rewards, parts, flag("correct"), flag("formatted"),
                   flag("premise_copy"), flag("scorer_error"))


def _refill(first: _Scored, policy, tokenizer, data: TaskData, cfg, rng: random.Random, rank: int, world_size: int,
            drawn: list[int]) -> tuple[_Scored, dict]:
    """Dynamic sampling: the buffer (groups whose rewards differ first, then set-aside ones if short, kept
    in sampling order) and the rollout metrics over every sampled group, as 0-d tensors."""
    g, wanted = cfg.num_generations, len(first.items)
    batches, informative = [first], [first.informative(g)]  # per batch, per group: do its rewards differ?
    used = set(drawn)
    while sum(map(sum, informative)) < wanted and len(batches) < cfg.max_num_gen_batches:
        indices = draw_indices(len(data), cfg.prompts_per_rollout, rng, exclude=used)
        used.update(indices)
        batches.append(_sample_and_score(policy, tokenizer, data, cfg, _share(indices, rank, world_size)))
        informative.append(batches[-1].informative(g))
    groups = [(b, j, ok) for b, flags in enumerate(informative) for j, ok in enumerate(flags)]
    chosen = sorted(([(b, j) for b, j, ok in groups if ok] + [(b, j) for b, j, ok in groups if not ok])[:wanted])

    def pick(field: str) -> list:
        return [getattr(batches[b], field)[j] for b, j in chosen]

    def take(t_of) -> torch.Tensor:
        """The chosen groups' rows of a per-completion tensor."""
        return torch.cat([t_of(batches[b])[j * g:(j + 1) * g] for b, j in chosen])

    def every(t_of) -> torch.Tensor:
        """A per-completion tensor over every sampled batch."""
        return torch.cat([t_of(x) for x in batches])

    merged = _Scored(pick("indices"), pick("items"), pick("prompts"),
                     concat_rollouts([batches[b].rollout.select(batches[b].rows(j, g)) for b, j in chosen],
                                     pad_token_id(policy, tokenizer)),
                     take(lambda x: x.rewards), {name: take(lambda x, n=name: x.parts[n]) for name in first.parts},
                     take(lambda x: x.correct), take(lambda x: x.formatted), take(lambda x: x.premise_copy),
                     take(lambda x: x.scorer_errors))
    metrics = completion_stats(g, every(lambda x: x.rewards), every(lambda x: x.correct),
                               every(lambda x: x.formatted), every(lambda x: x.premise_copy),
                               every(lambda x: x.rollout.completion_mask.sum(1)), every(lambda x: x.scorer_errors))
    metrics["dynamic_sampling/gen_batches"] = float(len(batches))
    metrics["dynamic_sampling/groups_sampled"] = float(len(groups))
    metrics["dynamic_sampling/frac_buffer_zero_std"] = sum(not informative[b][j] for b, j in chosen) / len(chosen)
    return merged, {k: torch.tensor(v, dtype=torch.float64) for k, v in metrics.items()}


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
