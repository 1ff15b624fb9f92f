"""kill -9 a training run anywhere, resume it, and get the same run as if nothing had happened.

Two harnesses drive ``python -m minigrpo train`` (tiny model, 6 updates, a checkpoint after every
update) in subprocesses:

* deterministic: ``MINIGRPO_FAULT=stage:n`` (minigrpo/faults.py) kills the process with
  ``os._exit`` at a chosen point of each stage: sampling a rollout, between backward and
  optimizer step, between optimizer step and trace line, inside a payload write, half-way
  through a trace line, inside a checkpoint write, between the checkpoint renames, while
  moving the final model;
* random: SIGKILL after a seeded random delay, counted from a randomly chosen progress line
  (``MINIGRPO_KILL_TRIALS`` kills, default 5).

After every death: the trace loads up to the last complete update, the checkpoint loads and
is at most one update behind. After the last ``--resume``: the final weights are bit-identical
(``torch.equal``) to an uninterrupted run's, and so are the trace's steps, metrics (timings
aside) and probes.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time

import harness as H
import pytest

from minigrpo.faults import FAULT_EXIT

KILL_TRIALS = int(os.environ.get("MINIGRPO_KILL_TRIALS", "5"))
KILL_SEED = int(os.environ.get("MINIGRPO_KILL_SEED", "0"))

# (fault, what the run has done when it dies). Each line resumes the previous one's output.
FAULT_CHAIN = [
    ("rollout:1", "first rollout sampled, nothing recorded: no checkpoint yet, resume starts over"),
    ("update:2", "update 1 done and checkpointed; update 2 has gradients, no optimizer step yet"),
    ("step:1", "optimizer step of update 2 taken, its trace line not written"),
    ("trace-line:1", "half of update 2's trace line written"),
    ("trace-payload:1", "update 2's payload written, its trace line not"),
    ("checkpoint:1", "update 2 recorded; its checkpoint half written"),
    ("checkpoint-swap:2", "checkpoint 2 done; checkpoint 3 written, old one moved aside, new one not renamed in"),
    ("rollout:1", "mid-run: rollout 0 finished after the resume, rollout 1 sampled, not recorded"),
    ("final:1", "all 6 updates done; the final model half moved into OUT"),
]


@pytest.fixture(scope="module")
def reference(sft_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = H.run_train(sft_model, out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.timeout(1800)  # ~1 min on an idle 2-core machine; generous for a loaded CI box
def test_fault_at_every_stage_then_resume_is_the_same_run(sft_model, reference, tmp_path):
    out = tmp_path / "run"
    progress = []
    for fault, what in FAULT_CHAIN:
        result = H.run_train(sft_model, out, "--resume", fault=fault)
        assert result.returncode == FAULT_EXIT, f"{fault} ({what}) was not reached: {result.stderr[-1500:]}"
        progress.append(H.check_after_kill(out))
    final = H.run_train(sft_model, out, "--resume")
    assert final.returncode == 0, final.stderr[-2000:]
    assert progress[0] == (0, None) and progress[-1] == (H.MAX_STEPS, H.MAX_STEPS)
    assert not H.leftovers(out), H.leftovers(out)
    H.assert_same_run(reference, out)


def _kill_at_random(cmd, rng: random.Random, timeout: float = 300) -> bool:
    """Start ``cmd``; after the progress line of a random update (or the start), wait a random
    fraction of a second and SIGKILL it. Returns False if the run finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=H.ROOT,
                            env=H.env(), start_new_session=True)
    target = rng.randint(0, H.MAX_STEPS)  # kill after the line of this step (0: the run's first line)
    delay = rng.uniform(0.0, 1.5)
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            m = re.match(r"\s*step\s+(\d+)/", line)
            started = line.startswith(("eval before", "resuming"))
            if (m and int(m.group(1)) >= target) or (started and target == 0) or time.monotonic() > deadline:
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode == -signal.SIGKILL


@pytest.mark.timeout(1800)
def test_random_kills_then_resume_is_the_same_run(sft_model, reference, tmp_path):
    rng = random.Random(KILL_SEED)
    out = tmp_path / "run"
    kills = 0
    for _ in range(KILL_TRIALS):
        if _kill_at_random(H.train_cmd(sft_model, out, "--resume"), rng):
            kills += 1
            H.check_after_kill(out)
    final = H.run_train(sft_model, out, "--resume")
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= min(KILL_TRIALS, 1)
    assert not H.leftovers(out), H.leftovers(out)
    H.assert_same_run(reference, out)
