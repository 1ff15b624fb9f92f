"""Plumbing shared by the loops: device, seeds, optimiser, checkpoints, memory, run facts."""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
from pathlib import Path

import numpy as np
import torch



class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, ...); the message is one line saying what to do."""


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


def make_optimizer(params, cfg, lr: float, total_steps: int):
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if cfg.lr_scheduler_type == "linear":
            return 1.0 - progress
        if cfg.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch. CPU: peak resident set size of this process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 1024 if sys.platform != "darwin" else rss_kb / 2**20


def train_state_mb(modules, optimizer) -> float:
    """Bytes held by parameters, their gradients and the optimiser state (an exact count)."""
    total = 0
    for module in modules:
        for p in module.parameters():
            total += p.numel() * p.element_size() * (2 if p.requires_grad else 1)
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.numel() * value.element_size()
    return total / 2**20


def save_final_model(model, tokenizer, out_dir: Path) -> None:
    """save_pretrained into OUT/.final.tmp, then move the files into OUT (loadable with --model OUT).

    A kill during saving leaves the previous files in OUT untouched (only the temp folder is partial).
    """
    out_dir = Path(out_dir)
    tmp = out_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for item in tmp.iterdir():
        os.replace(item, out_dir / item.name)
    tmp.rmdir()


def save_checkpoint(out_dir: Path, model, tokenizer, optimizer, scheduler, state: dict, extra_modules=None) -> None:
    """OUT/checkpoint: the model (HF format) + training state, written atomically."""
    ckpt = Path(out_dir) / "checkpoint"
    tmp = ckpt.with_name("checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
                "extra": {k: m.state_dict() for k, m in (extra_modules or {}).items()}}, tmp / "trainer_state.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    old = ckpt.with_name("checkpoint.old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint_state(out_dir: Path, optimizer, scheduler, extra_modules=None) -> dict:
    ckpt = Path(out_dir) / "checkpoint"
    # Our own file, written by save_checkpoint above (never a file from someone else).
    blob = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    np.random.set_state(blob["numpy_rng"])
    random.setstate(blob["python_rng"])
    for key, module in (extra_modules or {}).items():
        module.load_state_dict(blob["extra"][key])
    return json.loads((ckpt / "state.json").read_text())


def run_facts(device: torch.device, dtype: torch.dtype) -> dict:
    """Where a run ran, for the trace's meta.extra (version and git commit are new_meta's)."""
    return {"device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
