"""Supervised warm-up: teach the format (and some of the task) before RL.

The loss is the next-token cross-entropy on the target completion only (prompt tokens are
masked out). With ``--model tiny`` the embedded model is first built from scratch: a
byte-level BPE tokenizer trained on the task's own text and a small random Llama.

Two schedules: ``sft_steps`` optimizer steps on random batches (``sft_epochs == 0``, the
tiny preset), or ``sft_epochs`` shuffled passes over the ``sft_size`` examples in batches
of ``sft_batch_size`` (the last batch of a pass may be smaller), as the seed recipe counts.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import optim, runtime
from .config import ConfigError
from .evaluate import evaluate
from .heldout import trained_before
from .models import load_model
from .sft_targets import sft_target, task_corpus
from .tasks import RewardConfig, TaskError, build_prompt, load_train_eval, score_completion
from .tiny import build_tiny


def sft_items(data, cfg) -> list[tuple[dict, str]]:
    """(item, target) of the first items whose target the verifier accepts; needs no model."""
    reward_cfg = RewardConfig(penalize_premise_copy=cfg.penalize_premise_copy)
    chosen, no_target = [], None
    for item in data.items:
        if len(chosen) >= cfg.sft_size:
            break
        try:
            target = sft_target(item, data.name, cfg.sft_style)
        except TaskError as e:  # an item without a text answer (a composite's sub-task may have none): left out
            no_target = no_target or e
            continue
        # the verifier rejects e.g. propositional_logic example answers that only restate a premise
        if score_completion(target, item, data, reward_cfg).correct:
            chosen.append((item, target))
    if not chosen and no_target is not None:
        raise TaskError(f"{no_target}; `minigrpo sft` needs a task with text answers, e.g. --task syllogism")
    if not chosen:
        raise runtime.TrainingError(f"no usable SFT targets for task {cfg.task!r}; try a larger --sft-size")
    return chosen


def sft_examples(items, tokenizer, cfg) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(prompt ids, target ids + EOS) of every (item, target) of :func:`sft_items` whose target and
    EOS fit ``max_completion_length``, and how many did not fit (they are left out: cut, they would
    teach the model to stop writing before ``</answer>`` and never to end). Prompts are cut from
    the left to ``max_prompt_length``, as in RL."""
    examples, too_long = [], 0
    for item, target in items:
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(target_ids) > cfg.max_completion_length:
            too_long += 1
            continue
        prompt_ids = tokenizer(build_prompt(item, tokenizer), add_special_tokens=False)["input_ids"]
        examples.append((prompt_ids[-cfg.max_prompt_length:], target_ids))
    if not examples:
        raise runtime.TrainingError(f"no SFT target of task {cfg.task!r} fits --max-completion-length "
                                    f"{cfg.max_completion_length} (with its EOS); raise it")
    return examples, too_long


def collate(examples, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(p) + len(t) for p, t in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for i, (p, t) in enumerate(examples):
        seq = p + t
        input_ids[i, :len(seq)] = torch.tensor(seq)
        attention[i, :len(seq)] = 1
        labels[i, len(p):len(seq)] = torch.tensor(t)
    return input_ids.to(device), attention.to(device), labels.to(device)


def sft_batches(num_examples: int, cfg, rng: random.Random) -> list[list[int]]:
    """Example indices of every SFT step: epochs of shuffled passes, or sft_steps random batches."""
    size = min(cfg.sft_batch_size, num_examples)
    if cfg.sft_epochs == 0:
        return [rng.sample(range(num_examples), size) for _ in range(cfg.sft_steps)]
    batches = []
    for _ in range(cfg.sft_epochs):
        order = list(range(num_examples))
        rng.shuffle(order)
        batches += [order[i:i + size] for i in range(0, num_examples, size)]
    return batches


def check_sft_out(out: Path) -> None:
    """Refuse an ``--out`` that holds an RL run: SFT would replace its model but keep its trace and checkpoint."""
    rl = [name for name in ("trace", "checkpoint") if (out / name).exists()]
    if rl:
        raise ConfigError(f"--out {out} holds an RL run ({' and '.join(rl)}/); "
                          f"choose a new --out for the SFT model")


def run_sft(cfg, out_dir: str | Path, log=print) -> dict:
    """SFT into ``out_dir``; bad input fails before anything is written, and a failure removes what this run wrote."""
    out = Path(out_dir)
    cfg.validate()
    if cfg.sft_epochs == 0 and cfg.sft_steps == 0:
        raise ConfigError("SFT would run 0 steps (sft_steps 0, sft_epochs 0); give --max-steps N (or --sft-steps N) "
                          "or --sft-epochs N")
    check_sft_out(out)
    runtime.seed_everything(cfg.seed)
    device = runtime.pick_device(cfg.device)
    dtype = runtime.pick_dtype(cfg.dtype, device)
    train, eval_data = load_train_eval(cfg.task, cfg.train_size, cfg.eval_size, cfg.seed,
                                       also_exclude=trained_before(cfg), **cfg.task_kwargs)
    items = sft_items(train, cfg)
    first_new = None  # the outermost folder this run creates, removed again if it fails
    for folder in (out, *out.parents):
        if folder.exists():
            break
        first_new = folder
    out.mkdir(parents=True, exist_ok=True)
    with runtime.run_folder_lock(out):  # refused before the clean-up below could remove another run's files
        try:
            return _train_sft(cfg, out, device, dtype, eval_data, items, log)
        except BaseException:
            shutil.rmtree(first_new or out / ".tiny-base", ignore_errors=True)
            shutil.rmtree(out / ".final.tmp", ignore_errors=True)
            raise


def _train_sft(cfg, out: Path, device, dtype, eval_data, items, log) -> dict:
    model_spec = cfg.model
    if cfg.model == "tiny":
        base = out / ".tiny-base"
        shutil.rmtree(base, ignore_errors=True)
        corpus = task_corpus(cfg.task, 2000, cfg.seed, **cfg.task_kwargs)
        model_spec = build_tiny(str(base), corpus, seed=cfg.seed)
        log(f"built the tiny model (BPE tokenizer + random Llama) from {len(corpus)} task texts")
    model, tokenizer = load_model(model_spec, device=device, dtype=dtype)
    examples, too_long = sft_examples(items, tokenizer, cfg)
    if too_long:
        log(f"left out {too_long} of {len(items)} SFT targets longer than max_completion_length "
            f"{cfg.max_completion_length} (with EOS); {len(examples)} remain")
    before = evaluate(model, tokenizer, eval_data, cfg, n=cfg.eval_n)
    log(f"eval before SFT: accuracy {before['accuracy']:.3f} (majority {before['majority_baseline']:.3f}), "
        f"format {before['format_rate']:.3f}")
    batches = sft_batches(len(examples), cfg, random.Random(cfg.seed))
    total = len(batches)
    optimizer, scheduler = optim.make_optimizer(model.parameters(), cfg, cfg.sft_learning_rate, total,
                                                schedule=cfg.sft_lr_scheduler_type, warmup_steps=0)
    model.train()
    started = time.time()
    for step, indices in enumerate(batches, start=1):
        batch = [examples[i] for i in indices]
        input_ids, attention, labels = collate(batch, tokenizer.pad_token_id, device)
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            raise runtime.TrainingError(f"SFT loss became {loss.item()} at step {step}; lower --sft-learning-rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if step % max(1, total // 10) == 0 or step == total:
            log(f"sft step {step:4d}/{total}  loss {loss.item():.4f}")
    model.eval()
    after = evaluate(model, tokenizer, eval_data, cfg, n=cfg.eval_n)
    log(f"eval after SFT: accuracy {after['accuracy']:.3f} (majority {after['majority_baseline']:.3f}), "
        f"format {after['format_rate']:.3f}")
    runtime.save_final_model(model, tokenizer, out)
    shutil.rmtree(out / ".tiny-base", ignore_errors=True)
    summary = {"algo": "sft", "task": cfg.task, "model": cfg.model, "steps": total, "epochs": cfg.sft_epochs,
               "examples": len(examples), "targets_too_long": too_long,
               "before": before, "after": after, "train_seconds": time.time() - started,
               "peak_memory_mb": runtime.peak_memory_mb(device)}
    runtime.write_summary(out, summary)
    runtime.atomic_write_text(out / "train_config.json", json.dumps(cfg.to_dict(), indent=2))
    return summary
