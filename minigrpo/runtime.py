"""Plumbing shared by the loops: device, seeds, checkpoints, faults, memory, run facts."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import pickle
import random
import resource
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from . import faults
from .config import ConfigError
from .files import atomic_write, fsync_dir
from .optim import state_tensors


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, ...); the message is one line saying what to do.
    ``every_rank``: raised alike on every data-parallel rank (an agreed stop), so rank 0 alone says it."""

    def __init__(self, message: str, every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch. CPU: peak resident set size of this process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20


def train_state_mb(modules, optimizer) -> float:
    """Bytes held by parameters, their gradients and the optimiser state, masters included (an exact count)."""
    total = 0
    for module in modules:
        for p in module.parameters():
            total += p.numel() * p.element_size() * (2 if p.requires_grad else 1)
    for value in state_tensors(optimizer):
        total += value.numel() * value.element_size()
    return total / 2**20


def write_summary(out_dir: Path, summary: dict) -> None:
    """OUT/summary.json, strict JSON (a NaN, e.g. a task without a majority baseline, written as null)."""
    from .trace.encode import jsonable

    text = json.dumps(jsonable(summary, "summary"), indent=2, allow_nan=False)
    atomic_write_text(Path(out_dir) / "summary.json", text)


def atomic_write_text(path: Path, text: str) -> None:
    """``path`` holds either its old content or all of ``text``, never a part (temp file + rename)."""
    atomic_write(os.fspath(path), lambda f: f.write(text.encode("utf-8")))


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself to disk (survives a power cut, not just a kill)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def save_final_model(model, tokenizer, out_dir: Path) -> None:
    """save_pretrained into OUT/.final.tmp, then move the files into OUT (loadable with --model OUT).

    A kill during saving leaves the previous files in OUT untouched (only the temp folder is partial);
    a kill while moving leaves a mix that the resumed run (--resume) overwrites.
    """
    out_dir = Path(out_dir)
    tmp = out_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _fsync_tree(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_as_os_error(exc, tmp)
        raise
    # config.json moves last: a folder holding it is a model (loaders, `--out` refusals), so a kill while
    # moving must not leave it next to missing weights
    for i, item in enumerate(sorted(tmp.iterdir(), key=lambda f: (f.name == "config.json", f.name))):
        if i == 1:
            faults.hit("final")
        os.replace(item, out_dir / item.name)
    tmp.rmdir()


def _raise_as_os_error(exc: BaseException, path: Path) -> None:
    """A failed write of model or state files that its writer reports as something other than an
    OSError (safetensors' SafetensorError on a full disk; torch.save's "file write failed"), raised
    as the OSError it is, so that it ends as one line naming the file (the trainer's and main's
    handling of a full disk). Other exceptions (bugs) are left alone."""
    if isinstance(exc, OSError):
        return
    if type(exc).__name__ == "SafetensorError" or (isinstance(exc, RuntimeError) and "write" in str(exc).lower()):
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise OSError(errno.EIO, text, str(path)) from None


# --- checkpoints -----------------------------------------------------------------------------
# OUT/checkpoint holds the policy (HF format, safetensors), trainer_state.pt (optimizer, scheduler,
# RNG states, extra modules: tensors and plain numbers only, loaded with weights_only=True),
# experience.safetensors + experience.json (the rollout in flight) and state.json (step, ...).

def checkpoint_dir(out_dir: Path) -> Path | None:
    """OUT/checkpoint if a complete one exists (after putting back the previous checkpoint when a
    kill fell between the two renames of save_checkpoint), else None."""
    out = Path(out_dir)
    ckpt, old = out / "checkpoint", out / "checkpoint.old"
    if not (ckpt / "state.json").is_file() and (old / "state.json").is_file():
        shutil.rmtree(ckpt, ignore_errors=True)
        os.replace(old, ckpt)
    return ckpt if (ckpt / "state.json").is_file() else None


def save_checkpoint(out_dir: Path, model, tokenizer, optimizer, scheduler, state: dict, extra_modules=None,
                    experience=None, rng_per_rank: list | None = None) -> None:
    """OUT/checkpoint: the model (HF format) + training state + the rollout in flight, written atomically.

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
        (tmp / "state.json").write_text(json.dumps(state, indent=2))  # written last: marks it complete
        _fsync_tree(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_as_os_error(exc, tmp)
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
    changed = {k: [recorded[k], v] for k, v in config.items() if k in recorded and recorded[k] != v}
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


# --- faults the loop reports ---------------------------------------------------------------------
@contextlib.contextmanager
def run_folder_lock(out: Path):
    """An exclusive lock on the run folder ``out`` (flock on the folder itself, released when the process
    ends however it ends) while a run writes into it: a second minigrpo run into the same --out is
    refused in one line, where it rewound the first one's trace under it, or an SFT run's clean-up
    deleted the model another run had just saved. Where there is no flock (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"--out {out} is in use by another minigrpo run (train or sft) right now; wait "
                                f"for it to end, or choose another --out") from None
        yield
    finally:
        os.close(fd)


class StopRequest:
    """Ctrl-C or SIGTERM during training: the first asks the loop to stop after the update in flight
    (where it checkpoints and exits); a second Ctrl-C interrupts at once (the last checkpoint is kept).

    A SIGTERM that follows a SIGINT is the same request, not a second one: torchrun, given Ctrl-C,
    passes SIGINT to its workers and then, a millisecond later, SIGTERM (and SIGKILL after 30 s),
    which read as "Ctrl-C again" stopped every rank without its checkpoint."""

    def __init__(self, log):
        self.requested, self.log, self._old, self._first = False, log, {}, None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if (self._first, signum) == (signal.SIGINT, signal.SIGTERM):
                return
            raise KeyboardInterrupt
        self.requested, self._first = True, signum
        self.log(f"{signal.Signals(signum).name}: stopping after the update in flight "
                 f"(Ctrl-C again stops at once, keeping the last checkpoint)")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


MEMORY_KNOBS = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
                "max_completion_length", "sampling_batch_size")


def oom_advice(stage: str, step: int, cfg, last_checkpoint: str) -> str:
    """One line for a CUDA out-of-memory error: where it happened and the knobs that need less memory."""
    def flag(name: str) -> str:
        return f"--{name.replace('_', '-')} (now {getattr(cfg, name)})"

    if stage == "update":
        tips = (f"lower {flag('per_device_train_batch_size')} and raise {flag('gradient_accumulation_steps')} "
                f"by the same factor (same batch, less memory), or lower {flag('max_completion_length')} or "
                f"{flag('num_generations')}")
    else:
        tips = (f"lower {flag('sampling_batch_size')}, {flag('num_generations')} or "
                f"{flag('max_completion_length')}; log-probabilities are scored in micro-batches of "
                f"2 x {flag('per_device_train_batch_size')}")
    return (f"CUDA out of memory during the {stage} of step {step}: {tips}. {last_checkpoint}; "
            f"change the knobs and run the same command with --resume")


def nonfinite_source(policy, exp, rows: list[int], temperature: float) -> str:
    """Which quantity is NaN/inf for these rows, looking upstream first: the weights, the rollout's
    tensors, then the logits of a fresh forward pass; "loss" when all of those are finite."""
    from .rollout import forward_completion

    bad_weight = nonfinite_weight(policy)
    if bad_weight:
        return bad_weight
    for name in ("rewards", "advantages", "logp_old", "logp_ref", "values", "returns", "token_advantages"):
        value = getattr(exp, name, None)
        if torch.is_tensor(value) and not torch.isfinite(value[rows]).all():
            return name
    with torch.no_grad():
        logits, _ = forward_completion(policy, exp.rollout.select(rows), temperature)
    return "logits" if not torch.isfinite(logits).all() else "loss"


def nonfinite_weight(model) -> str | None:
    """``policy weights (NAME)`` for the first parameter holding NaN/inf, else None."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return f"policy weights ({name})"
    return None


def check_context(model, cfg) -> None:
    """A prompt plus its completion must fit the model's positions; the fast backend needs a model
    whose attention it can run over that whole context (at start, not at the first rollout whose
    prompts are long enough to find out); fused_decode needs a model it can fuse."""
    if getattr(cfg, "rollout_backend", "hf") == "fast":
        from .decode import unsupported

        reason = unsupported(model, cfg.max_prompt_length + cfg.max_completion_length)
        if reason:
            raise ConfigError(f"invalid --rollout-backend fast: {reason} (prompt + completion = --max-prompt-length "
                              f"+ --max-completion-length)")
    if getattr(cfg, "fused_decode", False):
        from .fused_step import unsupported

        reason = unsupported(model)
        if reason:
            raise ConfigError(f"invalid --fused-decode: {reason}; leave it off for this model")
    n_ctx = getattr(model.config, "max_position_embeddings", None)
    if isinstance(n_ctx, int) and cfg.max_prompt_length + cfg.max_completion_length > n_ctx:
        raise ConfigError(f"invalid --max-prompt-length/--max-completion-length: {cfg.max_prompt_length} + "
                          f"{cfg.max_completion_length} tokens exceed the model's context of {n_ctx} "
                          f"(max_position_embeddings); lower one of them, or use a preset made for this model "
                          f"(--preset tiny for the tiny model `minigrpo sft` builds)")


def truncated_prompts(tokenizer, prompts: list[str], max_prompt_length: int) -> int:
    """How many prompts are longer than max_prompt_length (the rollout keeps their last tokens)."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return sum(len(x) > max_prompt_length for x in ids)


def run_facts(device: torch.device, dtype: torch.dtype) -> dict:
    """Where a run ran, for the trace's meta.extra (version and git commit are new_meta's)."""
    return {"device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
