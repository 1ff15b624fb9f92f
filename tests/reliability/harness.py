"""Shared helpers of the reliability suite: the tiny CLI run, killing it, and comparing runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# A run of 6 updates on 2 rollouts (4 updates per rollout: buffer 16 = 8 per update x 2 passes),
# checkpointed after every update: every kind of moment (mid-rollout, rollout boundary) is hit.
MAX_STEPS = 6
TRAIN_FLAGS = ["--preset", "tiny", "--train-size", "64", "--eval-size", "8", "--eval-n", "8", "--buffer-size", "16",
               "--num-generations", "4", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2",
               "--max-completion-length", "24", "--max-prompt-length", "160", "--logging-steps", "1",
               "--save-steps", "1", "--max-steps", str(MAX_STEPS), "--probe-completions", "2"]
# metrics that measure time or memory, not the run
TIMING = {"step_time", "rollout_time", "trace_time", "peak_memory_mb"}


def env(**extra) -> dict:
    # one torch thread: the tiny model gains nothing from two, and two OpenMP threads on a busy
    # 2-core machine spin-wait each other (a 3-update run: 5 s of CPU with one thread, 42 s with two)
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out.pop("MINIGRPO_FAULT", None)
    out.update({k: str(v) for k, v in extra.items()})
    return out


def train_cmd(model: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "minigrpo", "train", *TRAIN_FLAGS, "--model", model, "--out", str(out), *extra]


def run_train(model: str, out: Path, *extra: str, fault: str | None = None, timeout: int = 600):
    return subprocess.run(train_cmd(model, out, *extra), capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=env(**({"MINIGRPO_FAULT": fault} if fault else {})))


def check_after_kill(out: Path) -> tuple[int, int | None]:
    """What a killed run leaves: a trace that loads (steps 1..k, no gap) and a checkpoint (if any)
    that loads and lies at most one update behind the trace. Returns (k, checkpoint step)."""
    facts = kill_facts(out)
    return facts["trace_steps"], facts["checkpoint_step"]


def kill_facts(out: Path) -> dict:
    """check_after_kill's checks, and what was found (for docs/reliability.md's table)."""
    from minigrpo.models import load_model
    from minigrpo.checkpoint import checkpoint_dir
    from minigrpo.trace import load

    facts = {"old_checkpoint_only": (out / "checkpoint.old").exists() and not (out / "checkpoint").exists(),
             "partial_checkpoint": (out / "checkpoint.tmp").exists(),
             "temp_payloads": len(list((out / "trace" / "payloads").glob(".*.tmp"))) if (out / "trace").exists() else 0}
    steps, notes = [], []
    if (out / "trace" / "meta.json").exists():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a torn last line is dropped with a warning
            steps = [s.step for s in load(out / "trace", lazy=False).steps]
        notes = [str(w.message) for w in caught]
    facts["torn_line"] = any("torn" in n for n in notes)
    assert steps == list(range(1, len(steps) + 1)), steps
    facts["trace_steps"] = len(steps)
    ckpt = checkpoint_dir(out)
    if ckpt is None:
        assert len(steps) <= 1, f"trace holds steps {steps} but no checkpoint survived"
        facts["checkpoint_step"] = None
        return facts
    step = json.loads((ckpt / "state.json").read_text())["step"]
    assert len(steps) - 1 <= step <= len(steps), (step, steps)  # save_steps = 1: only the update in flight is lost
    load_model(str(ckpt))
    facts["checkpoint_step"] = step
    return facts


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights; the same trace (steps, rollouts, metrics, probes) but for timings."""
    from safetensors.torch import load_file

    from minigrpo.trace import load

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"final weight {key} differs"
    ta, tb = load(a / "trace", lazy=False), load(b / "trace", lazy=False)
    assert [(s.step, s.rollout) for s in ta.steps] == [(s.step, s.rollout) for s in tb.steps]
    for sa, sb in zip(ta.steps, tb.steps):
        ma = {k: v for k, v in sa.metrics.items() if k not in TIMING}
        mb = {k: v for k, v in sb.metrics.items() if k not in TIMING}
        assert ma.keys() == mb.keys()
        for key in ma:
            assert ma[key] == mb[key] or (np.isnan(ma[key]) and np.isnan(mb[key])), (sa.step, key, ma[key], mb[key])
        assert len(sa.probes) == len(sb.probes)
        for pa, pb in zip(sa.probes, sb.probes):
            for name in ("token_ids", "logp_old", "logp", "logp_new", "logp_ref", "ratio", "advantage", "kl"):
                assert np.array_equal(getattr(pa, name), getattr(pb, name)), (sa.step, name)
    for rid in ta.rollouts:
        for ga, gb in zip(ta.rollouts[rid], tb.rollouts[rid]):
            assert ga.completions == gb.completions and np.array_equal(ga.rewards, gb.rewards)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sa["after"] == sb["after"] and sa["before"] == sb["before"] and sa["steps"] == sb["steps"]


def leftovers(out: Path) -> list[str]:
    """Temp files and folders a finished run must not leave behind."""
    names = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    return [n for n in names if n.endswith((".tmp", ".old")) or "/." in "/" + n and n.split("/")[-1].startswith(".")]


# In-process runs: the FAST config of tests/conftest.py, smaller still (4 updates per rollout, eval on 4 items).
SMALL = dict(train_size=64, eval_size=8, eval_n=4, max_steps=2, save_steps=1, logging_steps=1)


def trainer(model: str, out, algo: str = "grpo", **kw):
    """(trainer, log lines) of a small run; ``kw`` overrides config fields."""
    from conftest import fast_config
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.ppo import PPOTrainer

    logs: list[str] = []
    cls = GRPOTrainer if algo == "grpo" else PPOTrainer
    return cls(fast_config(model=model, algo=algo, **{**SMALL, **kw}), out, log=logs.append), logs


@pytest.fixture
def one_thread():
    """In-process runs on one torch thread (see env()), the thread count restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
