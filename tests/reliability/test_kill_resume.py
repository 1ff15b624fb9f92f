"""kill -9 a training run anywhere, resume it, and get the same run as if nothing had happened.

Two harnesses drive ``python -m minigrpo train`` (tiny model, 6 updates, a checkpoint after every
update) in subprocesses:

* deterministic: ``MINIGRPO_FAULT=stage:n`` (minigrpo/faults.py) kills the process with
  ``os._exit`` at a chosen point of each stage: sampling a rollout, between backward and
  optimizer step, between optimizer step and trace line, inside a payload write, half-way
  through a trace line, inside a checkpoint write, between the checkpoint renames, while
  moving the final model;
* random: SIGKILL after a seeded random delay, counted from a randomly chosen progress line
  (``MINIGRPO_KILL_TRIALS`` kills per run, default 5; one run per seed of ``MINIGRPO_KILL_SEEDS``,
  default ``0``; ``MINIGRPO_KILL_REPORT=FILE`` logs what each kill left).

After every death: the trace loads up to the last complete update, the checkpoint loads and
is at most one update behind. After the last ``--resume``: the final weights are bit-identical
(``torch.equal``) to an uninterrupted run's, and so are the trace's steps, metrics (timings
aside) and probes.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time

import harness as H
import pytest

from minigrpo.faults import FAULT_EXIT

KILL_TRIALS = int(os.environ.get("MINIGRPO_KILL_TRIALS", "5"))  # kills per run
KILL_SEEDS = [int(x) for x in os.environ.get("MINIGRPO_KILL_SEEDS", "0").split(",")]  # one run per seed
KILL_REPORT = os.environ.get("MINIGRPO_KILL_REPORT")  # a file: one JSON line per kill (what was found)

# (fault, what the run has done when it dies, what it leaves: (updates in the trace, checkpoint
# step, the trace / checkpoint debris found)). Each line resumes the previous one's output.
FAULT_CHAIN = [
    ("rollout:1", "first rollout sampled, nothing recorded: no checkpoint yet, resume starts over", (0, None, ())),
    ("update:2", "update 1 done and checkpointed; update 2 has gradients, no optimizer step yet", (1, 1, ())),
    ("step:1", "optimizer step of update 2 taken, its trace line not written", (1, 1, ())),
    ("trace-line:1", "half of update 2's trace line written", (1, 1, ("torn_line",))),
    ("trace-payload:1", "update 2's payload written, its trace line not", (1, 1, ())),
    ("checkpoint:1", "update 2 recorded; its checkpoint half written", (2, 1, ("partial_checkpoint",))),
    ("checkpoint-swap:2", "checkpoint 2 done; checkpoint 3 written, the old one moved aside, the new one not "
                          "renamed in", (3, 2, ("partial_checkpoint", "old_checkpoint_only"))),
    ("rollout:1", "resumed at 2: updates 3-4 finish rollout 0; rollout 1 sampled, not recorded", (4, 4, ())),
    ("final:1", "all 6 updates done; the final model half moved into OUT", (6, 6, ())),
]
DEBRIS = ("torn_line", "partial_checkpoint", "old_checkpoint_only")


@pytest.fixture(scope="module")
def reference(sft_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    result = H.run_train(sft_model, out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.timeout(1800)  # ~1 min on an idle 2-core machine; generous for a loaded CI box
def test_fault_at_every_stage_then_resume_is_the_same_run(sft_model, reference, tmp_path):
    out = tmp_path / "run"
    for fault, what, (trace_steps, checkpoint_step, debris) in FAULT_CHAIN:
        result = H.run_train(sft_model, out, "--resume", fault=fault)
        assert result.returncode == FAULT_EXIT, f"{fault} ({what}) was not reached: {result.stderr[-1500:]}"
        facts = H.kill_facts(out)
        assert (facts["trace_steps"], facts["checkpoint_step"]) == (trace_steps, checkpoint_step), (fault, facts)
        assert tuple(k for k in DEBRIS if facts[k]) == debris, (fault, facts)
    final = H.run_train(sft_model, out, "--resume")
    assert final.returncode == 0, final.stderr[-2000:]
    assert not H.leftovers(out), H.leftovers(out)
    H.assert_same_run(reference, out)


def _kill_at_random(cmd, rng: random.Random, done: int, timeout: float = 600) -> bool:
    """Start ``cmd`` (a run resuming after update ``done``); after the progress line of a random
    later update (or of the start), wait a random fraction of a second and SIGKILL it. Returns
    False if the run finished first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=H.ROOT,
                            env=H.env(), start_new_session=True)
    target = min(done + rng.randint(0, 1), H.MAX_STEPS)  # after this step's line (done: the run's first line)
    # half the time within 0.25 s of the line: the checkpoint written right after it
    delay = rng.uniform(0.0, 0.25) if rng.random() < 0.5 else rng.uniform(0.0, 1.5)
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            m = re.match(r"\s*step\s+(\d+)/", line)
            started = line.startswith(("eval before", "resuming"))
            if (m and int(m.group(1)) >= target) or (started and target <= done) or time.monotonic() > deadline:
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
@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_random_kills_then_resume_is_the_same_run(sft_model, reference, tmp_path, seed):
    rng = random.Random(seed)
    out = tmp_path / "run"
    kills, done = 0, 0
    for trial in range(KILL_TRIALS):
        if _kill_at_random(H.train_cmd(sft_model, out, "--resume"), rng, done):
            kills += 1
            facts = H.kill_facts(out)
            done = facts["checkpoint_step"] or 0
            if KILL_REPORT:
                with open(KILL_REPORT, "a") as f:
                    f.write(json.dumps({"seed": seed, "trial": trial, **facts}) + "\n")
    final = H.run_train(sft_model, out, "--resume")
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= min(KILL_TRIALS, 1)
    assert not H.leftovers(out), H.leftovers(out)
    H.assert_same_run(reference, out)


@pytest.mark.timeout(900)
def test_dynamic_sampling_run_killed_mid_rollout_resumes_the_same(sft_model, tmp_path):
    """With --dynamic-sampling the buffer's items come from several draws: the checkpoint keeps their
    indices, so a run killed inside a rollout resumes on the very same buffer."""
    ds = ("--dynamic-sampling", "true", "--max-num-gen-batches", "3")
    reference = tmp_path / "reference"
    result = H.run_train(sft_model, reference, *ds)
    assert result.returncode == 0, result.stderr[-2000:]
    from minigrpo.trace import load

    batches = [s.metrics["dynamic_sampling/gen_batches"] for s in load(reference / "trace").steps]
    assert max(batches) >= 2, "the small run should need a second generation batch at least once"
    out = tmp_path / "run"
    killed = H.run_train(sft_model, out, *ds, fault="update:3")  # updates 1-2 checkpointed, inside rollout 0
    assert killed.returncode == FAULT_EXIT, killed.stderr[-1500:]
    final = H.run_train(sft_model, out, *ds, "--resume")
    assert final.returncode == 0, final.stderr[-2000:]
    assert "a fresh rollout follows" not in final.stdout  # the checkpointed buffer was reused
    H.assert_same_run(reference, out)
