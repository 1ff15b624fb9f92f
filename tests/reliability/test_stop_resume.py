"""Ctrl-C (SIGINT) stops after the update in flight with a checkpoint; --resume then gives the run an
uninterrupted one would have given -- here for PPO (critic, GAE, value head) in process. And what a
resume with other settings does: new optimizer knobs apply, another kind of run is refused."""

from __future__ import annotations

import os
import re
import signal

import harness as H
import numpy as np
import pytest
import torch

from minigrpo.grpo import GRPOTrainer
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


def _resumed(sft_model, out, algo="grpo", **kw):
    cls = PPOTrainer if algo == "ppo" else GRPOTrainer
    trainer, _ = H.trainer(sft_model, out, algo=algo, **kw)
    return cls(trainer.cfg, out, resume=True, log=lambda *_: None)


def test_resume_trains_with_the_learning_rate_and_schedule_it_is_given(sft_model, tmp_path):
    """The error messages say "lower --learning-rate, then --resume": the resumed updates must use
    the new rate (and a longer --max-steps stretches the schedule), not the checkpoint's."""
    first, _ = H.trainer(sft_model, tmp_path, max_steps=2, save_steps=1, learning_rate=3e-4,
                         lr_scheduler_type="cosine")
    first.train()
    resumed = _resumed(sft_model, tmp_path, max_steps=4, save_steps=1, learning_rate=1e-4, lr_scheduler_type="cosine")
    resumed.train()
    lrs = load(tmp_path / "trace").metric("learning_rate").tolist()
    expected = [3e-4 * 0.5 * (1 + np.cos(np.pi * s / 2)) for s in (0, 1)] + \
               [1e-4 * 0.5 * (1 + np.cos(np.pi * s / 4)) for s in (2, 3)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6, atol=1e-12)
    assert all(g["lr"] == pytest.approx(1e-4 * 0.5 * (1 + np.cos(np.pi * 4 / 4)), abs=1e-12)
               for g in resumed.scheduler.optimizer.param_groups)


@pytest.mark.parametrize("change, message", [
    (dict(algo="ppo"), "its run has --algo grpo, this command --algo ppo; resume with --algo grpo"),
    (dict(task="propositional_logic"), "its run has --task syllogism"),
    (dict(trace=True), "its run has --trace false"),
])
def test_resume_refuses_a_run_of_another_kind_in_one_line(sft_model, tmp_path, change, message):
    first, _ = H.trainer(sft_model, tmp_path, max_steps=1, save_steps=1, trace=False)
    first.train()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TrainingError, match=re.escape(message)):
        _resumed(sft_model, tmp_path, **{"max_steps": 2, "trace": False, **change}).train()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no trace/ started


@pytest.mark.parametrize("change, flag", [
    (dict(epsilon=0.3), "--epsilon 0.2"), (dict(beta=0.2), "--beta"), (dict(temperature=0.5), "--temperature"),
    (dict(loss_type="dapo"), "--loss-type"), (dict(probe_top_k=3), "--probe-top-k"),
])
def test_a_traced_run_refuses_to_resume_with_knobs_its_records_are_read_with(sft_model, tmp_path, change, flag):
    """meta.config describes every step of a trace (validate, the scenes and the figures read ε, β, τ
    and the rest from it): resuming with another value would make the earlier steps wrong. Refused in
    one line before the trace or the checkpoint is touched (the run went on silently before)."""
    first, _ = H.trainer(sft_model, tmp_path, max_steps=1, save_steps=1)
    first.train()
    meta = (tmp_path / "trace" / "meta.json").read_bytes()
    with pytest.raises(TrainingError, match=f"its trace was recorded with {re.escape(flag)}.*resume with {flag}"):
        _resumed(sft_model, tmp_path, max_steps=2, save_steps=1, **change).train()
    assert (tmp_path / "trace" / "meta.json").read_bytes() == meta
    assert [s.step for s in load(tmp_path / "trace").steps] == [1]


def test_knobs_a_resume_may_change_are_noted_in_the_trace(sft_model, tmp_path):
    """--max-steps and --learning-rate may change (they apply from the first resumed update): meta.json
    then holds the new config, and extra["resumed"] the old values and the step after which they changed."""
    from minigrpo.trace import validate

    first, _ = H.trainer(sft_model, tmp_path, max_steps=1, save_steps=1, learning_rate=3e-4)
    first.train()
    _resumed(sft_model, tmp_path, max_steps=2, save_steps=1, learning_rate=1e-4).train()
    trace = load(tmp_path / "trace")
    assert trace.meta.config["max_steps"] == 2 and trace.meta.config["learning_rate"] == 1e-4
    assert trace.meta.extra["resumed"] == [{"after_step": 1, "changed": {"learning_rate": [3e-4, 1e-4],
                                                                         "max_steps": [1, 2]}}]
    assert [s.step for s in trace.steps] == [1, 2] and validate(tmp_path / "trace") == []


def test_an_untraced_run_resumed_with_another_temperature_samples_a_fresh_rollout(sft_model, tmp_path):
    """The checkpointed rollout's log π_old and advantages belong to its temperature (and rewards,
    scaling, β): a resume that changes one of them samples afresh instead of training on them."""
    first, _ = H.trainer(sft_model, tmp_path, max_steps=1, save_steps=1, trace=False, num_iterations=2)
    first.train()
    logs = []
    trainer, _ = H.trainer(sft_model, tmp_path, max_steps=2, save_steps=1, trace=False, num_iterations=2,
                           temperature=0.5)
    GRPOTrainer(trainer.cfg, tmp_path, resume=True, log=logs.append).train()
    assert any("does not fit this config: a fresh rollout follows" in line for line in logs)


def test_summary_json_is_strict_json(sft_model, tmp_path, monkeypatch):
    import json

    from minigrpo import grpo

    real = grpo.GRPOTrainer._summary
    monkeypatch.setattr(grpo.GRPOTrainer, "_summary",
                        lambda self, *a: {**real(self, *a), "majority_baseline": float("nan")})
    trainer, _ = H.trainer(sft_model, tmp_path, max_steps=1)
    trainer.train()
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))["majority_baseline"] is None
