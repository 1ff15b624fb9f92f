"""The RL loop shared by GRPO and PPO: rollout → buffer → several passes of optimizer steps.

    for each rollout:
        sample P prompts × G completions, score them (verifier), compute log π_old, log π_ref
        algorithm.prepare(experience)              # GRPO: z-scores; PPO: values, GAE
        for pass in range(num_iterations):
            for each chunk of per_device_train_batch_size × gradient_accumulation_steps rows:
                for each micro-batch: loss = algorithm.micro_loss(...); loss.backward()
                clip grads, optimizer.step()           # ← one optimizer update, one trace line

Subclasses (``grpo.GRPOTrainer``, ``ppo.PPOTrainer``) supply the loss; this file owns the
bookkeeping: trace, checkpoints (with the rollout in flight, so that a resumed run is the same
run), NaN guard, interrupts, out-of-memory and full-disk messages, progress.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import json
import math
import random
import shutil
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

from . import checkpoint, distributed, faults, optim, runtime
from .evaluate import evaluate
from .experience import Experience, collect, sample_items, trace_groups
from .config import unread_knobs
from .heldout import trained_before
from .models import load_model
from .probes import ProbeRecorder
from .tasks import build_prompt, load_train_eval
from .trace.reader import read_meta
from .trace.schema import Step, TraceError


class RLTrainer:
    algo = "base"
    needs_logp_old_before_update = False  # PPO: its KL-shaped rewards are computed from log π_old in prepare()
    hands_probes_hidden = False  # micro_loss passes its hidden states to probes.capture when probes.wants_hidden

    def __init__(self, cfg, out_dir: str | Path, resume: bool = False, log=print):
        cfg.validate()  # a config built in Python (dataclasses.replace) is checked as build_config checks it
        self.cfg, self.out, self.resume, self.log = cfg, Path(out_dir), resume, log
        device = runtime.pick_device(cfg.device)
        self.dist = distributed.setup("nccl" if device.type == "cuda" else "gloo")  # one rank outside a launcher
        runtime.seed_everything(cfg.seed + self.dist.rank)  # ranks sample different completions
        self.device = self.dist.device(device)
        if not self.dist.is_main:
            self.log = log = lambda *_: None
        self.dtype = runtime.pick_dtype(cfg.dtype, self.device)
        self.train_data, self.eval_data = load_train_eval(cfg.task, cfg.train_size, cfg.eval_size, cfg.seed,
                                                          also_exclude=trained_before(cfg),
                                                          **cfg.task_kwargs)
        self._ckpt = checkpoint.checkpoint_dir(self.out) if resume else None
        self.policy, self.tokenizer = load_model(str(self._ckpt or cfg.model), device=self.device, dtype=self.dtype)
        runtime.check_context(self.policy, cfg)
        if getattr(self.tokenizer, "minigrpo_note", None):
            log(self.tokenizer.minigrpo_note)
        self.policy.train(not cfg.disable_dropout)  # eval mode: every dropout off, the module's and the attention's
        # the reference is the starting model, also when the policy comes from a checkpoint
        ref = load_model(cfg.model, device=self.device, dtype=self.dtype)[0] if self._ckpt else copy.deepcopy(self.policy)
        self.ref = ref.eval().requires_grad_(False)
        self.extra_modules: dict[str, torch.nn.Module] = {}
        self.setup_algorithm()
        self._check_world()
        self.dist.broadcast_modules([self.policy, self.ref, *self.extra_modules.values()])
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for module in self.extra_modules.values():
            params += [p for p in module.parameters() if p.requires_grad and all(p is not q for q in params)]
        self.optimizer, self.scheduler = optim.make_optimizer(params, cfg, cfg.learning_rate, cfg.max_steps)
        self.rng = random.Random(cfg.seed)
        self.probes = ProbeRecorder(self.tokenizer, cfg, pick=self.dist.pick_probe_rows)
        self.step, self.rollout_id = 0, 0
        self.history: list[dict] = []
        self.step_times: list[float] = []
        self.skipped_updates, self.checkpoint_step, self.stage = 0, None, "start"
        self._inflight = None  # (experience, rollout id, first step) of the rollout being trained on
        self._resumed = None  # the same, restored from a checkpoint
        self._kept_rollout = -1  # the trace keeps rollouts up to this one when resuming
        self._stop = runtime.StopRequest(log)  # Ctrl-C / SIGTERM: stop after the update in flight
        self._pending_record = None  # the last update's trace record, written while the next rollout decodes
        self._pending_rollout = None  # the rollout's trace record, written while its first update runs backward

    # --- to be supplied by the algorithm ------------------------------------------------
    def setup_algorithm(self) -> None: ...

    def prepare(self, exp: Experience) -> None:
        """Add algorithm-specific tensors to a fresh rollout (advantages, values, ...)."""

    def micro_loss(self, exp: Experience, rows: list[int], normalizer: dict) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch (already divided for accumulation) and per-token stats to log."""
        raise NotImplementedError

    # --- the loop ------------------------------------------------------------------------
    def train(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        with runtime.run_folder_lock(self.out) if self.dist.is_main else contextlib.nullcontext():
            return self._train()

    def _train(self) -> dict:
        cfg = self.cfg
        if self.resume:
            self._restore()
        writer = self._open_trace()
        before = self.history[0]["eval"] if self.resume and self.history else None
        try:
            if before is None:
                self.stage = "evaluation before training"
                before = self._evaluate()
                self.history.append({"step": 0, "eval": before})
                self.log(_eval_line("before", before))
            started = time.time()
            with self._stop:
                while self.step < cfg.max_steps:
                    self._one_rollout(writer)
                self.flush_record()
                if self.checkpoint_step != self.step:
                    self._checkpoint()
            self.stage = "final evaluation"
            after = self._evaluate()
            self.history.append({"step": self.step, "eval": after})
            if not self.dist.in_sync([self.policy, *self.extra_modules.values()]):
                raise runtime.TrainingError("the data-parallel ranks hold different weights after training; "
                                            "this is a bug in minigrpo's gradient all-reduce, please report it")
            self.stage = "final save"
            if self.dist.is_main:
                self._save_final()
        except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint now, it would catch an update half-done
            if self.step == 0 and self.checkpoint_step is None:
                recorded = writer is not None and (writer.last_rollout is not None or self._pending_rollout is not None)
                again = "run the same command plus --resume to start over (the trace holds the first rollout)" \
                    if recorded else "run the same command again to start over"
                raise runtime.TrainingError(f"interrupted during the {self.stage}, before the first update: nothing "
                                            f"was trained; {again}") from None
            raise runtime.TrainingError(f"interrupted during the {self.stage} of step {self._stage_step()}; "
                                        f"{self._kept()}; continue with the same command plus --resume") from None
        except torch.cuda.OutOfMemoryError:
            raise runtime.TrainingError(runtime.oom_advice(self.stage, self._stage_step(), cfg, self._kept())) from None
        except BrokenPipeError:  # our output's reader went away (`| head`): main exits quietly
            raise
        except OSError as exc:  # a full disk (or a folder made read-only) while writing the trace or a checkpoint
            fix = ("free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else
                   "make it writable again" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else
                   "check the disk and the folder's permissions")
            raise runtime.TrainingError(
                f"cannot write {exc.filename or self.out} during the {self.stage} of step {self._stage_step()} "
                f"({exc.strerror or exc}); {self._kept()}; {fix}, then run the same command with --resume") from None
        finally:
            self._flush_after_error()
            if writer:
                writer.close()
        summary = self._summary(before, after, time.time() - started)
        if self.dist.is_main:
            runtime.write_summary(self.out, summary)
        self.dist.barrier()
        self.dist.close()
        return summary

    def _one_rollout(self, writer) -> None:
        cfg = self.cfg
        exp, first_step = self._resumed or (None, self.step)
        self._resumed = None
        t0 = time.perf_counter()
        if exp is None:
            self.stage = "rollout"
            self.rng.seed(cfg.seed + 7919 * self.rollout_id)
            try:
                exp = collect(self.policy, self.ref, self.tokenizer, self.train_data, cfg, self.rng,
                              self.dist.rank, self.dist.world_size, old_pass=self.needs_logp_old_before_update,
                              while_decoding=self.flush_record if self._pending_record else None,
                              all_gather=self.dist.all_gather)
            except RuntimeError as exc:  # torch.multinomial refuses NaN/inf probabilities
                if "probability tensor" not in str(exc):
                    raise
                cause = runtime.nonfinite_weight(self.policy) or "logits"
                if self.step == 0:  # no update has run: the model itself gives them
                    raise runtime.TrainingError(
                        f"non-finite probabilities while sampling the first rollout ({cause}): the model "
                        f"{self.cfg.model} gives them before any update; check its weights and dtype (--dtype "
                        f"float32)") from None
                raise runtime.TrainingError(
                    f"non-finite probabilities while sampling rollout {self.rollout_id} for step {self.step + 1} "
                    f"({cause}); stopped: {self._kept()}; lower --learning-rate, then --resume") from None
            self.prepare(exp)
            exp.truncated_prompts = runtime.truncated_prompts(self.tokenizer, exp.prompts, cfg.max_prompt_length)
            self.flush_record()  # if the generation did not: the step's record before the next rollout's
            faults.hit("rollout")
            groups = self.dist.gather(trace_groups(exp, self.sequence_advantages(exp))) if cfg.trace else None
            if writer:
                record = functools.partial(self._record_rollout, writer, self.rollout_id, groups)
                if self._may_defer_record():
                    self._pending_rollout = record  # written while the GPU runs the first update's backward
                else:
                    record()
        self._inflight = (exp, self.rollout_id, first_step)
        rollout_time = time.perf_counter() - t0
        rollout_metrics = self._rollout_metrics(exp)
        cut, prompts = self._truncated_prompts(exp)
        rollout_metrics["frac_prompts_truncated"] = cut / prompts
        if cut and not self.rollout_id and first_step == self.step:
            self.log(f"{cut:.0f} of {prompts:.0f} prompts are longer than --max-prompt-length "
                     f"{cfg.max_prompt_length}: their first tokens are cut (counted as frac_prompts_truncated)")
        done = self.step - first_step  # updates already made on this rollout (by the run that was resumed)
        n = len(exp.rollout)
        per_step = cfg.completions_per_step
        for it in range(cfg.num_iterations):
            order = _group_order(n, exp.num_generations, cfg.seed * 1000 + self.rollout_id * 31 + it)
            for start in range(0, n, per_step):
                if done:
                    done -= 1
                    continue
                if self.step >= cfg.max_steps:
                    return
                rows = order[start:start + per_step]
                self.stage = "update"
                metrics = self._update(exp, rows)
                metrics.update(rollout_metrics)
                metrics["rollout_time"] = rollout_time
                rollout_time = 0.0
                metrics["pass"] = it
                self.step += 1
                self.step_times.append(metrics["step_time"])
                evaluate_now = bool(cfg.eval_every and self.step % cfg.eval_every == 0)
                save_now = bool(cfg.save_steps and self.step % cfg.save_steps == 0)
                record = functools.partial(self._record_step, writer, exp, metrics, self.step, self.rollout_id)
                last_of_rollout = it == cfg.num_iterations - 1 and start + per_step >= n
                if last_of_rollout and self._may_defer_record() and self.step < cfg.max_steps \
                        and not (evaluate_now or save_now or self._stop.requested):  # one process: no collective
                    self._pending_record = record  # written while the next rollout decodes
                else:
                    record()
                if evaluate_now:
                    self.stage = "evaluation"
                    result = self._evaluate()
                    self.history.append({"step": self.step, "eval": result})
                    self.log(_eval_line(f"step {self.step}", result))
                stop = self._stop_agreed()  # after the record: a Ctrl-C while it is logged stops here too
                if save_now or stop:
                    self._checkpoint()
                if stop:
                    raise runtime.TrainingError(f"stopped at step {self.step} as asked; checkpoint and trace kept in "
                                                f"{self.out}: continue with the same command plus --resume",
                                                every_rank=True)  # the ranks agreed on it (_stop_agreed)
        self.rollout_id += 1

    def _truncated_prompts(self, exp: Experience) -> tuple[float, float]:
        """Prompts cut to --max-prompt-length, and prompts in all, over every rank's share of the rollout."""
        counts = self.dist.reduce_stats({"cut": float(exp.truncated_prompts), "prompts": float(len(exp.prompts))})
        return counts["cut"], counts["prompts"]

    def _stop_agreed(self) -> bool:
        """Whether a Ctrl-C / SIGTERM asked to stop after this update, agreed by every rank: a signal
        reaches the ranks at different instants, and a rank that stopped alone would pair its
        checkpoint's collectives with another rank's next ones."""
        if not self.dist.active:
            return self._stop.requested
        return self.dist.reduce_stats({"stop": float(self._stop.requested)})["stop"] > 0

    def _rollout_metrics(self, exp: Experience) -> dict[str, float]:
        """The rollout's metrics over every rank's completions: a rank's means weighted by the
        completions (or groups) it covered, which differ between ranks under dynamic sampling,
        its counts added up, and the filter's per-rank figures averaged."""
        local = exp.rollout_metrics()
        if not self.dist.active:
            return local
        groups = local.get("dynamic_sampling/groups_sampled", len(exp.rollout) / exp.num_generations)
        covered = {"__groups": groups, "__completions": groups * exp.num_generations}

        def over(key: str) -> str:  # what a rank's value of ``key`` is a mean over
            if key in ("scorer_errors", "dynamic_sampling/groups_sampled"):
                return "count"
            if key in ("reward_std", "frac_reward_zero_std"):
                return "__groups"
            return "rank" if key.startswith("dynamic_sampling/") else "__completions"

        sums = {key: value * covered[over(key)] if over(key) in covered else value for key, value in local.items()}
        total = self.dist.reduce_stats({**sums, **covered}, averaged=tuple(k for k in local if over(k) == "rank"))
        return {key: total[key] / total[over(key)] if over(key) in covered else total[key] for key in local}

    def _record_step(self, writer, exp: Experience, metrics: dict, step: int, rollout_id: int) -> None:
        """The update's probes (re-scored after its optimizer step) and its trace line, then its log line."""
        cfg = self.cfg
        t_rec = time.perf_counter()
        self.stage = "trace"
        probes = self.probes.finish(self.policy, self.ref, exp.rollout, exp.num_generations, exp.logp_old,
                                    exp.logp_ref, row_offset=self.dist.rank * len(exp.rollout),
                                    ref_hidden=exp.ref_hidden) \
            if cfg.trace and not metrics["update_skipped"] else []
        probes = self.dist.gather(probes) or []  # every rank's probes, on rank 0
        faults.hit("step")
        if writer:
            metrics["trace_time"] += time.perf_counter() - t_rec
            writer.write_step(Step(step=step, rollout=rollout_id, metrics=metrics, probes=probes))
            metrics["trace_bytes"] = writer.bytes_written
        self._log_step(metrics, step)

    def _may_defer_record(self) -> bool:
        """Whether an update's record may wait for the next rollout's decoding (``flush_record``):
        one process (the data-parallel ranks gather the probes, a collective kept in step)."""
        return not self.dist.active

    def _record_rollout(self, writer, rollout_id: int, groups) -> None:
        self.stage = "rollout record"
        writer.write_rollout(rollout_id, groups)

    def flush_record(self, rollout: bool = True) -> None:
        """Write the trace records still pending, in order: the last update's (the probes' pass
        after its optimizer step, its line; run while the next rollout decodes, ``collect``'s
        ``while_decoding``), then, with ``rollout``, the new rollout's (run while its first update's
        backward passes run on the GPU); here, before anything that must see the trace whole."""
        for name in ("_pending_record", "_pending_rollout") if rollout else ("_pending_record",):
            record = getattr(self, name)
            setattr(self, name, None)
            if record is not None:
                stage = self.stage
                record()
                self.stage = stage

    def _flush_after_error(self) -> None:
        """A record still pending when training stops on an error: written if it can be (its update
        was made), else dropped with a note (a resumed run rewinds to its checkpoint anyway)."""
        if self._pending_record is None and self._pending_rollout is None:
            return
        try:
            self.flush_record()
        except Exception as exc:  # noqa: BLE001 - the error that stopped training is the one to report
            self.log(f"trace records pending at step {self.step} were not written ({type(exc).__name__}: {exc})")

    def step_normalizer(self, exp: Experience, rows: list[int]) -> dict:
        """What ``micro_loss`` weighs a step's micro-batches by: the step's completions (``num_rows``) and, for
        dapo as TRL, the tokens of the whole rollout per optimizer step of a pass over it (``num_items_in_batch``:
        the rollout's tokens per completion × this step's completions; over all ranks, / ranks, since the
        ranks' gradients are averaged), so that every token of a rollout weighs the same in whichever step."""
        if exp.rollout_tokens is None:  # one host synchronisation (and rank mean) per rollout, not per step
            exp.rollout_tokens = self.dist.mean({"tokens": exp.rollout.completion_mask.sum().item()})["tokens"]
        return {"num_rows": len(rows), "num_items_in_batch": exp.rollout_tokens * len(rows) / len(exp.rollout)}

    def _update(self, exp: Experience, rows: list[int]) -> dict:
        cfg = self.cfg
        self.flush_record(rollout=False)  # the last update's probes, before this one picks its own
        t_probe = time.perf_counter()
        self.probes.start(self.policy, exp.rollout, rows, self.sequence_advantages(exp), self.hands_probes_hidden)
        probe_seconds = time.perf_counter() - t_probe
        t0 = time.perf_counter()
        micro = cfg.per_device_train_batch_size
        chunks = [rows[i:i + micro] for i in range(0, len(rows), micro)]
        normalizer = self.step_normalizer(exp, rows)
        sums: dict[str, float | torch.Tensor] = defaultdict(float)
        self.optimizer.zero_grad(set_to_none=True)
        bad = None  # the quantity that went NaN/inf
        # no host synchronisation per micro-batch: the losses and stats stay on the device until
        # every backward is queued (a non-finite loss only poisons gradients that are then dropped)
        losses = []
        for chunk in chunks:
            loss, stats = self.micro_loss(exp, chunk, normalizer)
            losses.append(loss.detach())
            loss.backward()
            for key, value in stats.items():
                sums[key] = sums[key] + value
        self.flush_record()  # a pending rollout record: host work while the GPU runs the backward passes
        finite = torch.isfinite(torch.stack(losses)).tolist()
        if not all(finite):
            first = finite.index(False)
            loss = losses[first].item()
            source = runtime.nonfinite_source(self.policy, exp, chunks[first], cfg.temperature)
            bad = f"loss became {loss}" if source == "loss" else f"{source} became non-finite (loss {loss})"
        sums = _as_floats(sums)
        if bad is None and self.dist.active and self.dist.mean({"bad": 0.0})["bad"] > 0:
            bad = "another rank's update became non-finite"  # every rank skips or stops together
        elif bad is not None and self.dist.active:
            self.dist.mean({"bad": 1.0})
        grad_norm = torch.tensor(math.nan)
        if bad is None:
            params = optim.optimized_params(self.optimizer)
            self.dist.average_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                bad = f"gradient norm became {grad_norm.item()}"
        lr = self.scheduler.get_last_lr()[0]
        if bad is None:
            faults.hit("update")
            self.optimizer.step()
            # over all ranks: token sums and counts add up; the losses are averaged as the gradients were
            sums = self.dist.reduce_stats(sums, averaged=tuple(k for k in sums if not k.startswith("sum:") and k != "num_tokens"))
            tokens = sums.pop("num_tokens")
            metrics = {key: value / tokens for key, value in sums.items() if key.startswith("sum:")}
            metrics = {key[4:]: value for key, value in metrics.items()}
            metrics.update({key: value for key, value in sums.items() if not key.startswith("sum:")})
            metrics["clip_ratio/region_mean"] = metrics["clip_ratio/low_mean"] + metrics["clip_ratio/high_mean"]
        else:
            self._nonfinite(bad)  # raises under nan_policy=stop
            self.optimizer.zero_grad(set_to_none=True)
            self.probes.rows = []
            tokens = normalizer["num_items_in_batch"] * self.dist.world_size  # all ranks' tokens, as when not skipped
            metrics = {key: math.nan for key in ("loss", "policy_loss", "kl", "entropy", "clip_ratio/low_mean",
                                                 "clip_ratio/high_mean", "clip_ratio/region_mean")}
        self.scheduler.step()
        metrics.update(update_skipped=float(bad is not None), skipped_updates=self.skipped_updates)
        metrics.update(grad_norm=grad_norm.item(), learning_rate=lr, num_tokens=tokens,
                       step_time=time.perf_counter() - t0, peak_memory_mb=runtime.peak_memory_mb(self.device),
                       train_state_mb=runtime.train_state_mb([self.policy, *self.extra_modules.values()], self.optimizer),
                       trace_time=probe_seconds)  # recording time so far: choosing probes, their logits before
        return metrics

    def _nonfinite(self, what: str) -> None:
        step = self.step + 1
        if self.cfg.nan_policy == "stop" and self.step == 0:  # no update has run: the model itself gives them
            raise runtime.TrainingError(
                f"{what} at step 1, before any update; stopped (--nan-policy stop): the model {self.cfg.model} "
                f"gives them; check its weights and dtype (--dtype float32)")
        if self.cfg.nan_policy == "stop":
            raise runtime.TrainingError(
                f"{what} at step {step}; stopped (--nan-policy stop): {self._kept()}; lower --learning-rate, "
                f"then --resume, or use --nan-policy skip to skip such updates")
        self.skipped_updates += 1
        self.log(f"step {step}: {what}; update skipped (--nan-policy skip, {self.skipped_updates} skipped so far)")

    def sequence_advantages(self, exp: Experience) -> torch.Tensor:
        return exp.advantages

    # --- bookkeeping ---------------------------------------------------------------------
    def _evaluate(self) -> dict:
        """Held-out accuracy, measured on rank 0 and shared with every rank."""
        self.flush_record()
        result = evaluate(self.policy, self.tokenizer, self.eval_data, self.cfg, n=self.cfg.eval_n) \
            if self.dist.is_main else None
        return self.dist.broadcast(result)

    def _check_world(self) -> None:
        prompts = min(self.cfg.prompts_per_rollout, len(self.train_data))
        if prompts % self.dist.world_size:
            raise runtime.TrainingError(
                f"{prompts} prompts per rollout (buffer_size / num_generations) do not split evenly over "
                f"{self.dist.world_size} processes; choose --buffer-size so that it does", every_rank=True)

    def _open_trace(self):
        if not self.cfg.trace or not self.dist.is_main:
            return None
        from .trace.writer import TraceWriter, holds_no_record, new_meta

        path = self.out / "trace"
        meta = new_meta(self.algo, self.cfg.model, self.cfg.task, self.cfg.to_dict(),
                        getattr(self.tokenizer, "name_or_path", "") or self.cfg.model,
                        extra={**runtime.run_facts(self.device, self.dtype),
                               **({"world_size": self.dist.world_size} if self.dist.active else {})})
        if self.resume and self.step > 0 and not (path / "meta.json").exists():
            raise runtime.TrainingError(f"{path} is missing, but the checkpoint at update {self.step} was traced: "
                                        f"restore the trace from a copy, or continue without one: --trace false")
        if not self.resume and holds_no_record(path) and not (self.out / "checkpoint").exists():
            shutil.rmtree(path)  # a run stopped before its first rollout was recorded: nothing to keep
            self.log(f"trace: {path} held no rollout or update (its run stopped before the first); starting it over")
        try:
            with warnings.catch_warnings(record=True) as notes:  # e.g. a torn last line repaired
                warnings.simplefilter("always")
                writer = TraceWriter(path, meta, resume=self.resume, compress=True)
            if self.resume:  # drop what was recorded after the checkpoint: those updates are redone
                changed = checkpoint.check_trace_config(path, writer.meta.config or {}, self.cfg.to_dict())
                writer.rewind(self.step, self._kept_rollout,
                              before_write=functools.partial(self._check_trace_reaches_checkpoint, writer))
                if changed and self.step < self.cfg.max_steps:  # a run with nothing left to train changes nothing
                    writer.note_resume(self.step, self.cfg.to_dict(), changed)
                    self.log("resumed with other knobs, noted in the trace's meta.json: "
                             + ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items()))
        except FileExistsError:
            raise runtime.TrainingError(f"{path} already holds a trace; choose a new --out, or add --resume "
                                        f"to continue that run") from None
        except ValueError as exc:  # TraceError included: a trace this run cannot continue
            raise runtime.TrainingError(f"cannot continue the trace {path}: {exc}") from None
        for note in notes:
            self.log(f"trace: {note.message}")
        return writer

    def _check_trace_reaches_checkpoint(self, writer, last_step: int, last_rollout) -> None:
        """A resumed trace must hold every update up to the checkpoint's (and the rollout in flight):
        appending after a trace cut shorter would leave a gap no later record can fill. Called by the
        rewind with what the trace would end at, before it changes anything: a refusal keeps the trace."""
        if self.step == 0:  # no checkpoint: the run starts over, and so does its trace
            return
        short = last_step < self.step
        lost_rollout = last_rollout != self._kept_rollout
        if short or lost_rollout:
            writer.close()
            held = f"ends at update {last_step}" if short else \
                f"does not hold rollout {self._kept_rollout}, which the checkpoint's next updates train on"
            raise runtime.TrainingError(f"{writer.path} {held}, but the checkpoint is at update {self.step}: "
                                        f"restore the trace from a copy, or continue without one: --trace false")

    def _restore(self) -> None:
        """Continue from OUT/checkpoint: optimizer, RNGs, step, and the rollout in flight when it was saved."""
        if self._ckpt is None:
            self.log(f"no checkpoint in {self.out} yet: starting from the beginning")
            return
        checkpoint.check_same_run(self._ckpt, self._run_facts())
        if self.cfg.trace:  # refused before anything loads, on each rank that sees the trace (_open_trace notes it)
            try:
                checkpoint.check_trace_config(self.out / "trace", read_meta(self.out / "trace").config or {},
                                              self.cfg.to_dict())
            except TraceError:
                pass  # no trace, or a damaged one: _open_trace says which
        state = checkpoint.load_checkpoint_state(self.out, self.optimizer, self.scheduler, self.extra_modules,
                                                 rank=self.dist.rank)
        optim.apply_config(self.scheduler, self.cfg, self.cfg.learning_rate)
        self.step, self.history = state["step"], state.get("history", [])
        self.skipped_updates = state.get("skipped_updates", 0)
        self.checkpoint_step = self.step
        self._kept_rollout = state["rollout_id"]
        self.rollout_id = state["rollout_id"] + 1
        # data parallel: the checkpoint holds rank 0's share of the rollout only, so every rank samples afresh,
        # also one process resuming a data-parallel run's checkpoint
        one_process = not self.dist.active and state.get("world_size", 1) == 1
        in_flight = "rollout_first_step" in state
        knobs = self._experience_knobs()
        same_knobs = {k: (state.get("knobs") or {}).get(k, ()) for k in knobs} == knobs  # older: all knobs saved
        if in_flight and same_knobs and one_process:
            self.rng.seed(self.cfg.seed + 7919 * state["rollout_id"])  # the items of that rollout, drawn again
            items = sample_items(self.train_data, self.cfg.prompts_per_rollout, self.rng)
            exp = checkpoint.load_experience(self._ckpt, items, self.device)
            if exp is not None and exp.item_indices is not None:  # dynamic sampling picked them from several draws
                exp.items = [self.train_data[i] for i in exp.item_indices]
            if exp is not None and exp.prompts == [build_prompt(item, self.tokenizer) for item in exp.items]:
                self.rollout_id = state["rollout_id"]
                self._resumed = (exp, state["rollout_first_step"])
        if self._resumed is None and in_flight and not one_process:
            self.log(f"a data-parallel run or checkpoint does not continue the checkpointed rollout (the checkpoint, "
                     f"of {state.get('world_size', 1)} process(es), holds rank 0's share only): a fresh rollout follows")
        elif self._resumed is None and in_flight:
            self.log("the checkpointed rollout does not fit this config: a fresh rollout follows")
        self.log(f"resuming {self.out} at step {self.step}")
        if self.step >= self.cfg.max_steps:
            self.log(f"the run is already at step {self.step}, at or past --max-steps {self.cfg.max_steps}: nothing "
                     f"left to train (raise --max-steps to train on)")

    def _checkpoint(self) -> None:
        self.flush_record()
        self.stage = "checkpoint"
        rng_per_rank = self.dist.gather([checkpoint.rng_state()]) if self.dist.active else None  # every rank takes part
        if not self.dist.is_main:
            self.checkpoint_step = self.step
            # wait for rank 0's write: a rank that went on to exit (a stop) made torchrun signal rank 0 mid-write
            self.dist.barrier()
            return
        state = {"step": self.step, "rollout_id": self.rollout_id - 1, "skipped_updates": self.skipped_updates,
                 "history": self.history, "run": self._run_facts(), "world_size": self.dist.world_size}
        exp = None
        if self._inflight is not None:
            exp, rollout_id, first_step = self._inflight
            state.update(rollout_id=rollout_id, rollout_first_step=first_step,
                         knobs=self._experience_knobs())
        checkpoint.save_checkpoint(self.out, self.policy, self.tokenizer, self.optimizer, self.scheduler, state,
                                self.extra_modules, experience=exp, rng_per_rank=rng_per_rank,
                                train_config=self.cfg.to_dict())
        self.checkpoint_step = self.step
        self.dist.barrier()

    def _run_facts(self) -> dict:
        """What a resumed run must share with its checkpoint (else the checkpoint cannot continue it)."""
        facts = {k: getattr(self.cfg, k) for k in ("algo", "task", "model", "trace")}
        if Path(self.cfg.model).is_dir():  # the same folder however the command spells it
            facts["model"] = str(Path(self.cfg.model).resolve())
        if self.cfg.algo == "ppo":
            facts["critic"] = self.cfg.critic
        return facts

    def _experience_knobs(self) -> dict:
        """The config a checkpointed rollout depends on: resuming reuses it only if these match (the knobs
        this algorithm does not read are left out)."""
        unread = unread_knobs(self.cfg.to_dict())
        return {k: getattr(self.cfg, k) for k in checkpoint.EXPERIENCE_KNOBS if k not in unread}

    def _stage_step(self) -> int:
        """The update the current stage belongs to (recording and checkpointing follow the step count)."""
        return self.step + 1 if self.stage in ("start", "rollout", "rollout record", "update") else self.step

    def _kept(self) -> str:
        if self.checkpoint_step is None:
            return f"no checkpoint was written yet (the trace in {self.out} is kept)"
        return f"the last checkpoint (step {self.checkpoint_step}) and the trace are kept in {self.out}"

    def _save_final(self) -> None:
        """The final policy in Hugging Face format directly in OUT (loadable with --model OUT)."""
        runtime.save_final_model(self.policy, self.tokenizer, self.out)
        runtime.atomic_write_text(self.out / "train_config.json", json.dumps(self.cfg.to_dict(), indent=2))

    def _log_step(self, m: dict, step: int) -> None:
        if self.cfg.logging_steps and step % self.cfg.logging_steps == 0:
            self.log(f"step {step:4d}/{self.cfg.max_steps}  reward {m['reward']:.3f}  acc {m['accuracy']:.3f}  "
                     f"loss {m['loss']:+.4f}  kl {m['kl']:.4f}  clip {m['clip_ratio/region_mean']:.3f}  "
                     f"{m['step_time']:.2f}s")

    def _summary(self, before: dict, after: dict, seconds: float) -> dict:
        return {"algo": self.algo, "task": self.cfg.task, "model": self.cfg.model, "steps": self.step,
                "before": before, "after": after, "train_seconds": seconds,
                "mean_step_time": sum(self.step_times) / max(1, len(self.step_times)),
                "peak_memory_mb": runtime.peak_memory_mb(self.device),
                "train_state_mb": runtime.train_state_mb([self.policy, *self.extra_modules.values()], self.optimizer)}


def _eval_line(label: str, result: dict) -> str:
    base = result.get("majority_baseline", math.nan)
    return (f"eval {label}: accuracy {result['accuracy']:.3f} (majority baseline {base:.3f}), "
            f"mean score {result['mean_score']:.3f}, format {result['format_rate']:.3f}, n={result['n']}")


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _as_floats(values: dict) -> dict[str, float]:
    """Python floats of a dict of floats and device scalars, with one host synchronisation."""
    keys = [k for k, v in values.items() if torch.is_tensor(v)]
    got = torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist() if keys else []
    return {**values, **dict(zip(keys, got))}


def _group_order(n: int, group_size: int, seed: int) -> list[int]:
    """A random order of the buffer's rows that keeps each group's rows together.

    Groups are shuffled (and rows within a group), so an optimizer step sees whole groups:
    their advantages sum to zero within the step, and rows that share a prompt share its
    forward pass (``rollout.forward_completion``).
    """
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randperm(n // group_size, generator=gen).tolist()
    return [g * group_size + r for g in groups for r in torch.randperm(group_size, generator=gen).tolist()]
