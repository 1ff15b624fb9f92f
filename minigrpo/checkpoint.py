"""Checkpoints: what a run needs to continue, written so that a kill at any instant leaves the last one whole.

OUT/checkpoint holds the policy (HF format, safetensors), trainer_state.pt (optimizer, scheduler,
RNG states, extra modules: tensors and plain numbers only, loaded with weights_only=True),
experience.safetensors + experience.json (the rollout in flight) and state.json (step, ...).
Which knobs a resumed run may change (``RESUMABLE_KNOBS``) and which start a fresh rollout
(``EXPERIENCE_KNOBS``) are here too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shlex
import shutil
from pathlib import Path

import numpy as np
import torch

from . import faults
from .files import fsync_dir
from .runtime import TrainingError, fsync_tree, raise_as_os_error, seed_everything

def checkpoint_dir(out_dir: Path) -> Path | None:
    """OUT/checkpoint if a complete one exists (after putting back the previous checkpoint when a
    kill fell between the two renames of save_checkpoint, or removing it when the kill fell after
    them), else None."""
    out = Path(out_dir)
    ckpt, old = out / "checkpoint", out / "checkpoint.old"
    if not (ckpt / "state.json").is_file() and (old / "state.json").is_file():
        shutil.rmtree(ckpt, ignore_errors=True)
        os.replace(old, ckpt)
    elif (ckpt / "state.json").is_file() and old.exists():  # a kill after the swap, before (or while) deleting it
        shutil.rmtree(old, ignore_errors=True)
    return ckpt if (ckpt / "state.json").is_file() else None


def save_checkpoint(out_dir: Path, model, tokenizer, optimizer, scheduler, state: dict, extra_modules=None,
                    experience=None, rng_per_rank: list | None = None, train_config: dict | None = None) -> None:
    """OUT/checkpoint: the model (HF format) + training state + the rollout in flight, written atomically.

    ``train_config`` (the run's config) is written beside the model as ``train_config.json``, as in OUT:
    ``minigrpo eval --model OUT/checkpoint`` then scores as the run does and leaves out its train items.

    Everything goes to OUT/checkpoint.tmp and is fsynced; then the old checkpoint is renamed to
    checkpoint.old, checkpoint.tmp to checkpoint, and checkpoint.old is deleted. At every instant
    one complete checkpoint is on disk (checkpoint_dir() finds it).
    """
    out = Path(out_dir)
    ckpt, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    checkpoint_dir(out)  # a checkpoint.old left by an earlier kill is the good one: put it back first
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        faults.hit("checkpoint")
        blob = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), "extra": {k: m.state_dict() for k, m in (extra_modules or {}).items()}}
        if rng_per_rank:  # data parallel: every rank's RNG, so that each resumes its own stream
            blob["rng_per_rank"] = rng_per_rank
        torch.save(blob, tmp / "trainer_state.pt")
        if experience is not None:
            save_experience(tmp, experience)
        if train_config is not None:
            (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2))
        (tmp / "state.json").write_text(json.dumps(state, indent=2))  # written last: marks it complete
        fsync_tree(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_as_os_error(exc, tmp)
        raise
    if ckpt.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt, old)
    faults.hit("checkpoint-swap")
    os.replace(tmp, ckpt)
    fsync_dir(out)
    shutil.rmtree(old, ignore_errors=True)


def check_same_run(ckpt: Path, facts: dict) -> None:
    """Refuse, in one line, to continue a checkpoint with another algo, task, model, critic or
    trace setting: its optimizer state, reference model or trace would not fit this run."""
    try:
        saved = json.loads((Path(ckpt) / "state.json").read_text()).get("run", {})
    except (OSError, ValueError, AttributeError):
        return  # load_checkpoint_state reports a damaged checkpoint
    for key, value in facts.items():
        if key == "trace" and not value:
            continue  # a traced run may go on untraced; an untraced one cannot start its trace midway
        if key == "model" and Path(str(saved.get(key, ""))).is_absolute() and not Path(saved[key]).exists():
            continue  # the starting model's folder has moved since: nothing to compare against
        if key in saved and saved[key] != value:
            flag = f"--{key.replace('_', '-')}"
            raise TrainingError(f"cannot resume {Path(ckpt).parent}: its run has {flag} {_flag_value(saved[key])}, "
                                f"this command {flag} {_flag_value(value)}; resume with {flag} "
                                f"{_flag_value(saved[key])}, or start a new run in a new --out")


def _flag_value(value) -> str:
    """A config value as it is typed after its flag: true/false, none, JSON for a table or list."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, (dict, list)):
        return shlex.quote(json.dumps(value))
    return str(value)


def load_checkpoint_state(out_dir: Path, optimizer, scheduler, extra_modules=None, rank: int = 0) -> dict:
    """Restore optimizer, scheduler, RNG states and extra modules from OUT/checkpoint; returns state.json.
    Data parallel: ``rank`` gets its own RNG state where the checkpoint holds one per rank; a rank the
    checkpoint's run did not have gets rank 0's, re-seeded by its rank (else it drew rank 0's numbers).

    trainer_state.pt is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and
    containers only, so a checkpoint from someone else cannot run code.
    """
    ckpt = Path(out_dir) / "checkpoint"
    file = ckpt / "trainer_state.pt"
    try:
        blob = torch.load(file, weights_only=True, map_location="cpu")
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        per_rank = blob.get("rng_per_rank") or []
        set_rng_state(per_rank[rank] if rank < len(per_rank) else blob["rng"])
        if rank >= max(1, len(per_rank)):  # more ranks than the checkpoint's run had: a stream of its own
            seed_everything(random.getrandbits(31) + 1_000_003 * rank)
        for key, module in (extra_modules or {}).items():
            module.load_state_dict(blob["extra"][key])
        state = json.loads((ckpt / "state.json").read_text())
    except pickle.UnpicklingError as exc:
        raise TrainingError(f"{file} holds Python objects other than tensors and numbers, which minigrpo never "
                            f"writes; refused to load it ({str(exc).splitlines()[0][:120]}). Use a checkpoint "
                            f"written by minigrpo, or start without --resume") from None
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise TrainingError(f"cannot load the checkpoint {ckpt} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); it is damaged or from another "
                            f"minigrpo version: start again without --resume in a new --out") from None
    return state


def rng_state() -> dict:
    """Every RNG the loop draws from (python, numpy, torch CPU and CUDA), as tensors and plain values."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    torch.set_rng_state(state["torch"])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# The config knobs that shape a rollout buffer (its completions, rewards, advantages, log-probs)
# and the updates made on it: a checkpointed rollout is only continued by a run with the same values.
EXPERIENCE_KNOBS = ("num_generations", "buffer_size", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "num_iterations", "seed", "algo", "train_size", "task_kwargs",
                    "temperature", "top_p", "max_prompt_length", "max_completion_length", "format_weight",
                    "correctness_weight", "penalize_premise_copy", "scale_rewards", "advantage_eps", "beta",
                    "dynamic_sampling", "max_num_gen_batches", "kl_coef", "gamma", "lam", "whiten_advantages")

# The knobs a resumed run may change: how long and how fast it trains, where and how it samples,
# what it logs, the batch shapes (a fresh rollout follows, above). Every other knob says what a
# traced run's records mean (meta.config describes every step of a trace: ε, β, the loss, τ, the
# rewards, the probes, ...): a traced run refuses to resume with another value of it.
RESUMABLE_KNOBS = frozenset({
    "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2",
    "max_grad_norm", "nan_policy", "disable_dropout", "save_steps", "logging_steps", "eval_every", "eval_n",
    "device", "dtype", "rollout_backend", "compile_decode", "fused_decode", "sampling_batch_size", "trace",
    "num_generations", "buffer_size", "per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
    "sft_steps", "sft_epochs", "sft_learning_rate", "sft_lr_scheduler_type", "sft_batch_size", "sft_size", "sft_style",
})


def check_trace_config(trace_path: Path, recorded: dict, config: dict) -> dict:
    """The knobs this resumed run changes against the config its trace recorded, ``{name: [old, new]}``;
    a change of a knob outside RESUMABLE_KNOBS is refused in one line (the trace's earlier steps
    were recorded under the old value, and its readers take meta.config for every step)."""
    from .config import unread_knobs

    unread = unread_knobs(config)  # no record depends on them
    changed = {k: [recorded[k], v] for k, v in config.items()
               if k in recorded and recorded[k] != v and k not in unread}
    for key, (old, new) in changed.items():
        if key not in RESUMABLE_KNOBS and key not in ("model", "task", "algo", "critic"):  # check_same_run's
            flag = f"--{key.replace('_', '-')}"
            raise TrainingError(f"cannot resume {Path(trace_path).parent}: its trace was recorded with {flag} "
                                f"{_flag_value(old)}, this command has {flag} {_flag_value(new)}; resume with {flag} "
                                f"{_flag_value(old)}, or start a new run in a new --out")
    return changed


def save_experience(folder: Path, exp) -> None:
    """The rollout in flight: its tensors (safetensors) and texts/numbers (JSON); not its task items,
    which the resumed run draws again from the same seeded generator (or, after dynamic sampling,
    looks up by the saved ``item_indices``)."""
    from safetensors.torch import save_file

    r = exp.rollout
    tensors = {f"rollout.{k}": getattr(r, k) for k in ("prompt_ids", "prompt_mask", "completion_ids",
                                                      "completion_mask")}
    plain: dict = {"completions": r.completions, "dicts": []}
    for name, value in vars(exp).items():
        if name in ("items", "rollout"):
            continue
        if torch.is_tensor(value):
            tensors[name] = value
        elif isinstance(value, dict):
            tensors.update({f"{name}.{k}": v for k, v in value.items()})
            plain["dicts"].append(name)
        else:
            plain[name] = value  # prompts, None, floats
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / "experience.safetensors"))
    (folder / "experience.json").write_text(json.dumps(plain))


def load_experience(folder: Path, items: list, device):
    """The Experience save_experience wrote (``items`` drawn again by the caller), or None if there is none."""
    from safetensors.torch import load_file

    from .experience import Experience
    from .rollout import Rollout

    if not (folder / "experience.json").is_file():
        return None
    tensors = load_file(str(folder / "experience.safetensors"), device=str(device))
    plain = json.loads((folder / "experience.json").read_text())
    rollout = Rollout(*(tensors.pop(f"rollout.{k}") for k in ("prompt_ids", "prompt_mask", "completion_ids",
                                                             "completion_mask")), plain.pop("completions"))
    values: dict = {name: {} for name in plain.pop("dicts")}
    for key, value in tensors.items():
        name, _, sub = key.partition(".")
        if sub:
            values[name][sub] = value
        else:
            values[name] = value
    values.update(plain)
    fields = {f.name for f in dataclasses.fields(Experience)}
    exp = Experience(items=items, rollout=rollout, **{k: v for k, v in values.items() if k in fields})
    for key, value in values.items():
        if key not in fields:
            setattr(exp, key, value)  # algorithm extras (PPO: values, returns, token_advantages, ...)
    return exp
