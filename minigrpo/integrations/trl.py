"""Record a ``minigrpo-trace`` from TRL's ``GRPOTrainer`` (TRL 1.16), on one device or under ``accelerate launch``.

    from trl import GRPOConfig
    from minigrpo.integrations.trl import TracingGRPOTrainer

    trainer = TracingGRPOTrainer(model=..., reward_funcs=[...], args=GRPOConfig(...), train_dataset=...,
                                 trace_dir="runs/trl/trace", task="syllogism")
    trainer.train()          # every optimizer step is one line of runs/trl/trace/steps.jsonl

The trace is written by minigrpo's own ``TraceWriter`` (same format and version as
``minigrpo train``), so ``minigrpo.trace.load``, ``minigrpo trace inspect`` and the scenes read
it unchanged. Everything but what follows is TRL's own code:

  ``_generate_and_score_completions``  after TRL's rollout: the groups (prompt, completions, ids,
                                      rewards per reward function, advantages), gathered to rank 0;
                                      each row is tagged with its index so it can be found again
                                      after TRL shuffles and splits the batch
  ``_calculate_rewards``               keeps the rewards per function (TRL gathers them already)
  ``_compute_loss``                    the per-token log-probs and entropies TRL's loss used, for
                                      ρ, the clip flags, k3 KL and the step's scalar metrics
  ``_get_grad_norm``                   the step's gradient norm
  a callback                          ``on_pre_optimizer_step``: choose the probes (over all ranks,
                                      the rule of ``minigrpo.probes``), keep their logits before the
                                      step; ``on_step_end``: logits after it, gather, write the step

Only the main process writes. What the integration cannot see is listed in docs/integrations.md.
``python -m minigrpo.integrations.trl`` trains a model on a reasoning-gym task this way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

try:
    from trl import GRPOConfig, GRPOTrainer
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the optional extra
    raise ImportError("minigrpo.integrations.trl needs TRL: pip install 'minigrpo[trl]'") from exc

from .. import runtime
from ..distributed import Dist
from ..losses import aggregate_loss, clipped_surrogate, k3_kl
from ..probes import ProbeRecorder
from ..rollout import Rollout
from ..tasks import RewardConfig, TaskData, build_prompt, score_completion
from ..trace.schema import Group, Step
from ..trace.writer import TraceWriter, holds_no_record, new_meta

ROW_KEY = "minigrpo_row"  # added to TRL's batch: each completion's index in this rank's rollout
ADVANTAGE_EPS = 1e-4  # TRL's constant in (r - mean) / (std + 1e-4)
SUPPORTED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


class TracingGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` that also writes a minigrpo trace to ``trace_dir``.

    ``task``: the reasoning-gym task name for the trace's meta (free text otherwise);
    ``probe_completions`` / ``probe_top_k`` / ``probe_moved_positions``: as in ``TrainConfig``;
    ``correct_reward``: the reward function whose score 1.0 marks a completion correct.
    """

    def __init__(self, *args, trace_dir, task: str = "", probe_completions: int = 2, probe_top_k: int = 10,
                 probe_moved_positions: int = 2, correct_reward: str = "correctness", **kwargs):
        super().__init__(*args, **kwargs)
        self._check_supported()
        acc = self.accelerator
        self.dist = Dist(acc.process_index, acc.num_processes, acc.local_process_index)
        self.trace_settings = SimpleNamespace(trace=True, probe_completions=probe_completions, probe_top_k=probe_top_k,
                                              probe_moved_positions=probe_moved_positions, temperature=self.temperature)
        self.trace_probes = ProbeRecorder(self._tokenizer, self.trace_settings, pick=self.dist.pick_probe_rows,
                                          forward=self._probe_forward)
        self.trace_task, self.correct_reward = task, correct_reward
        self.trace_rollout_id = -1
        self.trace_update: dict | None = None  # what the current optimizer step has seen so far
        self._trace_rewards_per_func: torch.Tensor | None = None
        self._trace_capturing = False
        self._trace_captured = None
        self._trace_grad_norm = math.nan
        self.trace_writer = self._open_writer(Path(trace_dir)) if self.dist.is_main else None
        self.add_callback(_TraceCallback(self))

    # ------------------------------------------------------------------ set-up
    def _check_supported(self) -> None:
        def bad(why: str) -> None:
            raise ValueError(f"TracingGRPOTrainer: {why}")

        if self.loss_type not in SUPPORTED_LOSS_TYPES:
            bad(f"loss_type {self.loss_type!r} is not recorded; use one of {', '.join(SUPPORTED_LOSS_TYPES)}")
        if self.importance_sampling_level != "token":
            bad("importance_sampling_level='sequence' is not recorded (the trace holds per-token ratios); use 'token'")
        spg, accumulation = self.args.steps_per_generation, self.args.gradient_accumulation_steps
        if spg % accumulation:  # a trace step trains on one pass over one rollout
            bad(f"steps_per_generation ({spg}) must be a multiple of gradient_accumulation_steps ({accumulation}), "
                f"so that no optimizer step mixes two passes over a rollout (the same completions twice) or two "
                f"rollouts")
        names = list(self.reward_func_names)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            bad(f"two reward functions are named {twice[0]!r}; the trace keys reward parts and weights by name, "
                f"so give each function its own __name__")
        if self.beta != 0 and self.ref_model is None:
            bad("a PEFT run's reference (the adapter switched off) is not recorded; pass a full model or beta=0")
        if getattr(self.args, "sync_ref_model", False):
            bad("sync_ref_model=True is not recorded (the reference moves during the run, and the probes' reference "
                "logits would come from a later one than the log-probs TRL used); use sync_ref_model=False")
        if getattr(self.args, "mask_truncated_completions", False):
            bad("mask_truncated_completions=True is not recorded (TRL masks a truncated completion out of the "
                "attention as well as the loss, so the trace would hold it empty); use False, or raise "
                "max_completion_length")
        aggregation = getattr(self.args, "multi_objective_aggregation", "sum_then_normalize")
        if aggregation != "sum_then_normalize":
            bad(f"multi_objective_aggregation={aggregation!r} is not recorded (the trace's group rewards are the "
                f"weighted sums the advantages are z-scores of); use 'sum_then_normalize'")

    def _open_writer(self, path: Path) -> TraceWriter:
        import transformers
        import trl

        names = list(self.reward_func_names)
        weights = list(self.args.reward_weights or [])  # as given (the float32 copy TRL keeps rounds 0.2)
        if len(weights) != len(names):
            weights = self.reward_weights.tolist()
        config = {**self.args.to_dict(), "task": self.trace_task,
                  "epsilon": self.epsilon_low, "epsilon_high": self.epsilon_high, "beta": self.beta,
                  "advantage_eps": ADVANTAGE_EPS, "scale_rewards": self.scale_rewards, "loss_type": self.loss_type,
                  "temperature": self.temperature, "num_generations": self.num_generations,
                  "reward_funcs": names, **{f"{n}_weight": w for n, w in zip(names, weights)},
                  **{k: v for k, v in vars(self.trace_settings).items() if k.startswith("probe_")}}
        model = self.accelerator.unwrap_model(self.model)
        model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        extra = {**runtime.run_facts(self.accelerator.device, model.dtype), "trainer": "trl", "trl": trl.__version__,
                 "transformers": transformers.__version__, "world_size": self.dist.world_size}
        meta = new_meta("grpo", model_name, self.trace_task, config,
                        getattr(self._tokenizer, "name_or_path", "") or model_name, extra=extra)
        if holds_no_record(path):  # a run stopped before its first rollout was recorded: nothing to keep
            shutil.rmtree(path)
        try:
            return TraceWriter(path, meta, compress=True)
        except FileExistsError:
            raise ValueError(f"{path} already holds a trace; choose a new trace_dir (a TRL run is not resumed "
                             f"into an existing trace)") from None

    def _probe_forward(self, model, batch: Rollout, temperature: float):
        """Tempered completion logits, computed the way TRL's loss computes its log-probs.

        TRL passes only input_ids and attention_mask (no position ids), so this does too:
        the probes then agree with the log-probs TRL trained on.
        """
        input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
        attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask.to(batch.prompt_mask.dtype)], dim=1)
        with self.accelerator.autocast():
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        lp, lc = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
        return out.logits[:, lp - 1: lp - 1 + lc, :].float() / temperature, None

    # ------------------------------------------------------------------ the rollout
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._trace_rewards_per_func = rewards_per_func.detach()  # (all ranks' completions, functions)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:  # evaluation batches are not recorded
            return super()._generate_and_score_completions(inputs)
        t0 = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        for key, what in (("tool_mask", "tool calls"), ("pixel_values", "images")):
            if key in out:
                raise ValueError(f"TracingGRPOTrainer: rollouts with {what} are not recorded (the probes would "
                                 f"re-score the completions without them)")
        self._record_rollout(inputs, out, time.perf_counter() - t0)
        out[ROW_KEY] = torch.arange(out["completion_ids"].shape[0], device=out["completion_ids"].device)
        return out

    def _record_rollout(self, inputs, out: dict, rollout_time: float) -> None:
        self.trace_rollout_id += 1
        tok = self._tokenizer
        ids, mask = out["completion_ids"], out["completion_mask"]
        lengths = mask.sum(1).long().tolist()
        texts = [tok.decode(ids[i, :n].tolist(), skip_special_tokens=True) for i, n in enumerate(lengths)]
        self.trace_batch = Rollout(out["prompt_ids"], out["prompt_mask"], ids, mask.float(), texts)
        self.trace_advantages = out["advantages"].detach().float()
        self.trace_row_offset = self.dist.rank * len(texts)
        self.trace_logp_ref = out.get("ref_per_token_logps")
        self.trace_logp_old = out.get("old_per_token_logps")
        if self.trace_logp_old is None:  # one pass per rollout: TRL's loss uses its own log-probs (kept in _capture)
            self.trace_logp_old = torch.zeros_like(mask, dtype=torch.float32)
        rows = []
        for i, x in enumerate(inputs):
            prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
            answer = x.get("answer")
            rows.append({"prompt": tok.decode(prompt, skip_special_tokens=False), "question": _question(x),
                         "answer": answer if isinstance(answer, str) else None, "completion": texts[i],
                         "ids": ids[i, :lengths[i]].cpu().numpy().astype(np.int64),
                         "advantage": float(self.trace_advantages[i])})
        everyone = self.dist.gather(rows)
        if self.trace_writer is not None:
            groups = self._groups(everyone, self._trace_rewards_per_func)
            self.trace_rollout_metrics = _rollout_metrics(groups, self.correct_reward)
            self.trace_rollout_metrics["rollout_time"] = rollout_time
            self.trace_writer.write_rollout(self.trace_rollout_id, groups)

    def _groups(self, rows: list[dict], rewards_per_func: torch.Tensor) -> list[Group]:
        g = self.num_generations
        names = list(self.reward_func_names)
        all_rewards, means, stds = trl_baselines(rewards_per_func, self.reward_weights, g)
        per_func_all = rewards_per_func.float().cpu().numpy()
        groups = []
        for start in range(0, len(rows), g):
            block = rows[start:start + g]
            per_func = per_func_all[start:start + g]
            parts = {n: per_func[:, k].astype(np.float32) for k, n in enumerate(names)}
            rewards = all_rewards[start:start + g]
            mean, std = float(means[start // g]), float(stds[start // g])
            correct = parts[self.correct_reward] == 1.0 if self.correct_reward in parts else np.zeros(g, bool)
            groups.append(Group(
                prompt=block[0]["prompt"], question=block[0]["question"], answer=block[0]["answer"],
                completions=[row["completion"] for row in block], completion_ids=[row["ids"] for row in block],
                reward_parts=parts, rewards=rewards, mean=mean, std=std,
                advantages=np.array([row["advantage"] for row in block], np.float32), correct=correct))
        return groups

    # ------------------------------------------------------------------ each micro-batch
    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._trace_capturing:
            self._trace_captured = result
        return result

    def _compute_loss(self, model, inputs):
        if not self.model.training:
            return super()._compute_loss(model, inputs)
        if self.trace_update is None:
            self.trace_update = {"t0": time.perf_counter(), "rows": [], "per_row": {}, "sums": {},
                                 "pass": (self._step % (self.args.steps_per_generation * self.num_iterations))
                                 // self.args.steps_per_generation}
        self._trace_capturing = True
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._trace_capturing = False
        self._capture(inputs, loss)
        return loss

    @torch.no_grad()
    def _capture(self, inputs: dict, loss: torch.Tensor) -> None:
        """ρ, clip flags and KL of this micro-batch, from the log-probs TRL's loss used (same formulas)."""
        logp, entropy = self._trace_captured[0].detach().float(), self._trace_captured[1]
        self._trace_captured = None
        mask = inputs["completion_mask"].float()
        rows = inputs[ROW_KEY].tolist()
        advantages = inputs["advantages"]
        advantages = (advantages.unsqueeze(1) if advantages.dim() == 1 else advantages).expand_as(logp).float()
        logp_old = inputs.get("old_per_token_logps")
        if logp_old is None:
            logp_old = logp
            self.trace_logp_old[rows] = logp
        logp_ref = inputs.get("ref_per_token_logps")
        surrogate, ratio, low, high = clipped_surrogate(logp, logp_old.float(), advantages,
                                                        self.epsilon_low, self.epsilon_high)
        # β = 0: TRL loads no reference model, so there is no KL to record (NaN: not measured, not 0)
        kl = k3_kl(logp, logp_ref.float()) if logp_ref is not None else torch.full_like(logp, math.nan)
        update = self.trace_update
        update["rows"] += rows
        for i, row in enumerate(rows):
            update["per_row"][row] = dict(logp=logp[i], ratio=ratio[i], clipped_low=low[i], clipped_high=high[i],
                                          kl=kl[i], advantage=advantages[i])
        sums = {"loss": loss.detach().item(), "policy_loss": self._aggregate(surrogate, mask, inputs).item(),
                "num_tokens": mask.sum().item(),
                "sum:clip_ratio/low_mean": (low.float() * mask).sum().item(),
                "sum:clip_ratio/high_mean": (high.float() * mask).sum().item(),
                "sum:ratio_mean": (ratio * mask).sum().item()}
        if logp_ref is not None:
            sums["sum:kl"] = (kl * mask).sum().item()
        if logp_ref is not None and self.args.use_bias_correction_kl:  # TRL's loss (and its "kl" log) use ρ·kl
            sums["sum:kl/ratio_weighted"] = (ratio * kl * mask).sum().item()
        if entropy is not None:
            sums["sum:entropy"] = (entropy.detach().float() * mask).sum().item()
        for key, value in sums.items():
            update["sums"][key] = update["sums"].get(key, 0.0) + value

    def _aggregate(self, per_token: torch.Tensor, mask: torch.Tensor, inputs: dict) -> torch.Tensor:
        """A per-token quantity reduced to a scalar exactly as TRL reduces its loss (for ``policy_loss``)."""
        accumulation = self.current_gradient_accumulation_steps
        if self.loss_type == "dapo":
            tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            return aggregate_loss(per_token, mask, "dapo",
                                  num_items_in_batch=tokens * accumulation / self.args.steps_per_generation)
        return aggregate_loss(per_token, mask, self.loss_type, self.max_completion_length) / accumulation

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._trace_grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        return grad_norm

    # ------------------------------------------------------------------ each optimizer step
    def _before_optimizer_step(self) -> None:
        update = self.trace_update
        t0 = time.perf_counter()
        policy = self.accelerator.unwrap_model(self.model)
        self.trace_probes.start(policy, self.trace_batch, update["rows"], self.trace_advantages)
        for row in self.trace_probes.rows:
            self.trace_probes.capture(row, **update["per_row"][row])
        update["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        update["trace_time"] = time.perf_counter() - t0

    def _after_optimizer_step(self) -> None:
        update = self.trace_update
        update["step_time"] = time.perf_counter() - update["t0"] - update["trace_time"]

    def _write_step(self, step: int) -> None:
        update, self.trace_update = self.trace_update, None
        t0 = time.perf_counter()
        policy = self.accelerator.unwrap_model(self.model)
        ref = self.accelerator.unwrap_model(self.ref_model) if self.ref_model is not None else None
        probes = self.trace_probes.finish(policy, ref, self.trace_batch, self.num_generations, self.trace_logp_old,
                                          self.trace_logp_ref, row_offset=self.trace_row_offset)
        probes = self.dist.gather(probes)
        sums = self.dist.reduce_stats(update["sums"], averaged=("loss", "policy_loss"))
        if self.trace_writer is None:
            return
        tokens = sums.pop("num_tokens")
        metrics = {k[4:]: v / tokens for k, v in sums.items() if k.startswith("sum:")}
        metrics.update(loss=sums["loss"], policy_loss=sums["policy_loss"], num_tokens=tokens)
        metrics["clip_ratio/region_mean"] = metrics["clip_ratio/low_mean"] + metrics["clip_ratio/high_mean"]
        metrics.update(self.trace_rollout_metrics)
        self.trace_rollout_metrics["rollout_time"] = 0.0
        model = self.accelerator.unwrap_model(self.model)
        metrics.update(grad_norm=self._trace_grad_norm, learning_rate=update["learning_rate"],
                       step_time=update["step_time"],
                       peak_memory_mb=runtime.peak_memory_mb(self.accelerator.device),
                       train_state_mb=runtime.train_state_mb([model], self.optimizer),
                       trace_time=update["trace_time"] + time.perf_counter() - t0)
        metrics["pass"] = update["pass"]
        self.trace_writer.write_step(Step(step=step, rollout=self.trace_rollout_id, metrics=metrics, probes=probes))

    def _close_trace(self) -> None:
        if self.trace_writer is not None:
            self.trace_writer.close()


class _TraceCallback(TrainerCallback):
    """Hooks at the optimizer step: probes before it, the trace line after it (every rank takes part)."""

    def __init__(self, trainer: TracingGRPOTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.trace_update is not None:
            self.trainer._before_optimizer_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.trace_update is not None:
            self.trainer._after_optimizer_step()

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.trace_update is not None:
            self.trainer._write_step(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._close_trace()


def _question(example: dict) -> str:
    """The question to show: the dataset's ``question`` column, else the prompt's (last) text."""
    if isinstance(example.get("question"), str):
        return example["question"]
    prompt = example.get("prompt", "")
    if isinstance(prompt, list) and prompt:
        content = prompt[-1].get("content", "")
        return content if isinstance(content, str) else str(content)
    return str(prompt)


def trl_baselines(rewards_per_func: torch.Tensor, weights: torch.Tensor, num_generations: int):
    """(rewards, group means, group stds) as TRL's ``_generate_and_score_completions`` computes them, with its
    own ops on the same device: the weighted ``nansum`` (NaN where every function said None), float32
    ``nanmean`` and TRL's ``nanstd`` of each group. Equal rewards can get a std of ~1e-7 from float32
    rounding, and TRL's advantages with it (a few 1e-3): the trace's mean and std are those advantages' own."""
    from trl.trainer.utils import nanstd

    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = torch.nan
    grouped = rewards.view(-1, num_generations)
    means, stds = torch.nanmean(grouped, dim=1), nanstd(grouped, dim=1)
    return rewards.float().cpu().numpy(), means.float().cpu().numpy(), stds.float().cpu().numpy()


def _rollout_metrics(groups: list[Group], correct_reward: str) -> dict[str, float]:
    """Rollout-level metrics with minigrpo's definitions (docs/trace-format.md §3); a group's std counts as
    zero as TRL counts it (``isclose(std, 0)``); no ``correct_reward`` function: accuracy not recorded (NaN)."""
    rewards = np.concatenate([g.rewards for g in groups]).astype(np.float64)
    stds = np.array([g.std for g in groups])
    scored_by = correct_reward in groups[0].reward_parts
    metrics = {"reward": float(np.nanmean(rewards)), "reward_std": float(np.nanmean(stds)),
               "frac_reward_zero_std": float(np.mean(np.abs(stds) <= 1e-8)),
               "accuracy": float(np.mean(np.concatenate([g.correct for g in groups]))) if scored_by else math.nan,
               "completion_length": float(np.mean([len(ids) for g in groups for ids in g.completion_ids]))}
    for name in groups[0].reward_parts:
        values = np.concatenate([g.reward_parts[name] for g in groups]).astype(np.float64)
        metrics[f"rewards/{name}/mean"] = float(np.nanmean(values))
        if name == "format":
            metrics["format_rate"] = float(np.mean(values == 1.0))
    return metrics


# ----------------------------------------------------------------------------- reasoning-gym tasks for TRL
def task_dataset(data: TaskData, tokenizer):
    """A ``datasets.Dataset`` of a task's items: ``prompt`` (minigrpo's prompt text), ``question``,
    ``answer`` and ``item`` (the index into ``data``, which the reward functions use)."""
    from datasets import Dataset

    answers = [item.get("answer") for item in data.items]
    return Dataset.from_dict({
        "prompt": [build_prompt(item, tokenizer) for item in data.items],
        "question": [item["question"] for item in data.items],
        "answer": [a if isinstance(a, str) else None for a in answers],
        "item": list(range(len(data))),
    })


def task_reward_funcs(data: TaskData, reward_cfg: RewardConfig | None = None) -> tuple[list, list[float]]:
    """TRL reward functions ``format`` and ``correctness`` (minigrpo's verifier) and their weights.

    Pass the functions as ``reward_funcs`` and the weights as ``GRPOConfig(reward_weights=...)``:
    TRL's total reward is then minigrpo's ``format_weight · format + correctness_weight · correctness``.
    """
    reward_cfg = reward_cfg or RewardConfig()

    def part(name: str):
        def reward(completions, item, **_):
            return [score_completion(_completion_text(c), data[i], data, reward_cfg).parts[name]
                    for c, i in zip(completions, item)]

        reward.__name__ = name
        return reward

    return [part("format"), part("correctness")], [reward_cfg.format_weight, reward_cfg.correctness_weight]


def _completion_text(completion) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else completion


# ----------------------------------------------------------------------------- command line
TINY_DEFAULTS = dict(learning_rate=3e-4, lr_scheduler_type="constant", temperature=1.0, num_generations=8, per_device_train_batch_size=16,
                     gradient_accumulation_steps=2, num_iterations=2, max_completion_length=48, beta=0.04,
                     loss_type="grpo", max_steps=100, logging_steps=1)


def main(argv: list[str] | None = None) -> int:
    """``python -m minigrpo.integrations.trl --model runs/sft --out runs/trl [--set key=value ...]``"""
    parser = argparse.ArgumentParser(prog="python -m minigrpo.integrations.trl",
                                     description="Train with TRL's GRPOTrainer on a reasoning-gym task and record "
                                                 "a minigrpo trace (OUT/trace). Runs under accelerate launch too.")
    parser.add_argument("--model", required=True, help="a folder (e.g. runs/sft from `minigrpo sft`), "
                                                       "smollm2-135m, or a hub id")
    parser.add_argument("--out", required=True, help="output folder: OUT/trace, OUT/trl (TRL's output_dir)")
    parser.add_argument("--task", default="syllogism")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe-completions", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any GRPOConfig field (JSON value or plain text), e.g. --set max_steps=20")
    args = parser.parse_args(argv)
    from ..models import ModelLoadError

    try:
        return _train(args)
    except (ValueError, ModelLoadError, runtime.TrainingError) as exc:  # bad input: one line, exit 2
        print(f"minigrpo: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


def parse_sets(items: list[str]) -> dict:
    """``--set KEY=VALUE`` options as GRPOConfig overrides (a VALUE is JSON, else plain text)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} is not KEY=VALUE, e.g. --set max_steps=20")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"--set {unknown[0]}: not a GRPOConfig field (see trl.GRPOConfig)")
    if overrides.get("remove_unused_columns") not in (None, False):
        raise ValueError("--set remove_unused_columns: the task's reward functions read the dataset's item column, "
                         "which it would drop; leave it false")
    return overrides


def cli_config(out: str | Path, seed: int, weights: list[float], overrides: dict) -> GRPOConfig:
    """The CLI's GRPOConfig: its own defaults (TRL's output under OUT/trl, no checkpoints, bf16 on a GPU that
    has it, the task's reward weights, ``TINY_DEFAULTS``), every one of which ``--set`` overrides."""
    cuda = torch.cuda.is_available()
    base = dict(output_dir=str(Path(out) / "trl"), report_to=[], save_strategy="no", seed=seed, use_cpu=not cuda,
                bf16=cuda and torch.cuda.is_bf16_supported(), reward_weights=weights)
    return GRPOConfig(**{**base, **TINY_DEFAULTS, **overrides})


def _train(args) -> int:
    from ..models import load_model
    from ..tasks import load_train_eval

    overrides = parse_sets(args.set)
    data, _ = load_train_eval(args.task, args.train_size, 1, args.seed)
    model, tokenizer = load_model(args.model, device=torch.device("cpu"), dtype=torch.float32)
    funcs, weights = task_reward_funcs(data)
    config = cli_config(args.out, args.seed, weights, overrides)
    trainer = TracingGRPOTrainer(model=model, reward_funcs=funcs, args=config, processing_class=tokenizer,
                                 train_dataset=task_dataset(data, tokenizer), trace_dir=Path(args.out) / "trace",
                                 task=args.task, probe_completions=args.probe_completions)
    trainer.train()
    if trainer.dist.is_main:
        print(f"trace written to {Path(args.out) / 'trace'}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # leave together: a rank that exits while the other still holds gloo's threads can abort
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
