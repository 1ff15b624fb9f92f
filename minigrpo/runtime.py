"""Plumbing shared by the loops: device, seeds, atomic writes, the run folder's lock, stop requests,
faults, memory, run facts (checkpoints: ``checkpoint.py``)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import resource
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


def fsync_tree(folder: Path) -> None:
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
        fsync_tree(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_as_os_error(exc, tmp)
        raise
    # config.json moves last: a folder holding it is a model (loaders, `--out` refusals), so a kill while
    # moving must not leave it next to missing weights
    for i, item in enumerate(sorted(tmp.iterdir(), key=lambda f: (f.name == "config.json", f.name))):
        if i == 1:
            faults.hit("final")
        os.replace(item, out_dir / item.name)
    tmp.rmdir()


def raise_as_os_error(exc: BaseException, path: Path) -> None:
    """A failed write of model or state files that its writer reports as something other than an
    OSError (safetensors' SafetensorError on a full disk; torch.save's "file write failed"), raised
    as the OSError it is, so that it ends as one line naming the file (the trainer's and main's
    handling of a full disk). Other exceptions (bugs) are left alone."""
    if isinstance(exc, OSError):
        return
    if type(exc).__name__ == "SafetensorError" or (isinstance(exc, RuntimeError) and "write" in str(exc).lower()):
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise OSError(errno.ENOSPC if "No space left" in text else errno.EIO, text, str(path)) from None


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
        from .decode_support import unsupported

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
