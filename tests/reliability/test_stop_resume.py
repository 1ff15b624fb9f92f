"""Ctrl-C (SIGINT) stops after the update in flight with a checkpoint; --resume then gives the run an
uninterrupted one would have given -- here for PPO (critic, GAE, value head) in process."""

from __future__ import annotations

import os
import re
import signal

import harness as H
import numpy as np
import pytest
import torch

from minigrpo.ppo import PPOTrainer
from minigrpo.runtime import TrainingError
from minigrpo.trace import load

from harness import one_thread  # noqa: E402,F401 - the fixture below

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ctrl_c_stops_cleanly_and_resume_is_the_same_ppo_run(sft_model, tmp_path):
    ref, _ = H.trainer(sft_model, tmp_path / "ref", algo="ppo", max_steps=3, save_steps=1000)
    ref.train()

    run, logs = H.trainer(sft_model, tmp_path / "run", algo="ppo", max_steps=3, save_steps=1000)

    def log(line: str) -> None:
        logs.append(line)
        if re.match(r"step\s+2/", line):  # Ctrl-C while update 2 is being logged (mid-rollout)
            os.kill(os.getpid(), signal.SIGINT)

    run.log = log
    with pytest.raises(TrainingError, match=r"stopped at step 2 as asked; .*--resume"):
        run.train()
    assert any(line.startswith("SIGINT: stopping after the update in flight") for line in logs), logs
    assert [s.step for s in load(tmp_path / "run" / "trace").steps] == [1, 2]

    resumed = PPOTrainer(run.cfg, tmp_path / "run", resume=True, log=lambda *_: None)
    resumed.train()
    for name, module in (("policy", "policy"), ("critic", "value_model")):
        a, b = getattr(ref, module).state_dict(), getattr(resumed, module).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} weights differ"
    ta, tb = load(tmp_path / "ref" / "trace"), load(tmp_path / "run" / "trace")
    assert [(s.step, s.rollout) for s in ta.steps] == [(s.step, s.rollout) for s in tb.steps]
    for sa, sb in zip(ta.steps, tb.steps):
        for key, value in sa.metrics.items():
            if key not in H.TIMING:
                assert value == sb.metrics[key] or (np.isnan(value) and np.isnan(sb.metrics[key])), (sa.step, key)
