"""Traces recorded from TRL's GRPOTrainer (minigrpo.integrations.trl) pass the truth checks of our own.

One in-process TRL run of the embedded tiny model on syllogism (2 optimizer updates over one
rollout, every completion probed), then: the GRPO truth checks of trace_checks.py, the
trace's own validation, the step metrics against TRL's own logs, a ``-ql`` render of
ppo_logits, and a two-process run (torchrun, gloo) that must write exactly one valid trace.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from minigrpo.render import render  # noqa: E402
from minigrpo.trace import load, validate  # noqa: E402
from trace_checks import GRPO_CHECKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def trl_args(out: Path, weights, **overrides):
    from trl import GRPOConfig

    settings = dict(output_dir=str(out / "trl"), use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                    disable_tqdm=True, logging_steps=1, seed=0, max_steps=2, per_device_train_batch_size=8,
                    gradient_accumulation_steps=1, num_generations=4, num_iterations=2, max_completion_length=24,
                    learning_rate=1e-3, beta=0.1, loss_type="grpo", reward_weights=weights)
    return GRPOConfig(**{**settings, **overrides})


def make_trainer(sft_model: str, out: Path, probe_completions: int = -1, wrap_reward=None, trace_subdir="trace",
                 **overrides):
    from minigrpo.integrations.trl import TracingGRPOTrainer, task_dataset, task_reward_funcs
    from minigrpo.models import load_model
    from minigrpo.tasks import load_train_eval

    data, _ = load_train_eval("syllogism", 300, 1, 0)
    model, tokenizer = load_model(sft_model, device=torch.device("cpu"))
    funcs, weights = task_reward_funcs(data)
    funcs = [wrap_reward(f) for f in funcs] if wrap_reward else funcs
    return TracingGRPOTrainer(model=model, reward_funcs=funcs, args=trl_args(out, weights, **overrides),
                              processing_class=tokenizer, train_dataset=task_dataset(data, tokenizer),
                              trace_dir=out / trace_subdir, task="syllogism", probe_completions=probe_completions)


@pytest.fixture(scope="module")
def trl_run(tmp_path_factory, sft_model):
    """2 updates on one rollout (2 prompts × G = 4, num_iterations = 2): the second is off-policy."""
    out = tmp_path_factory.mktemp("trl")
    trainer = make_trainer(sft_model, out)
    trainer.train()
    return out / "trace", trainer


@pytest.fixture(scope="module")
def trl_trace(trl_run):
    return load(trl_run[0])


@pytest.mark.parametrize("check", GRPO_CHECKS, ids=lambda check: check.__name__[len("check_"):])
def test_trl_trace(trl_trace, check):
    check(trl_trace)


def test_trl_trace_is_valid_and_complete(trl_run, trl_trace):
    path, trainer = trl_run
    assert validate(path) == []
    meta = trl_trace.meta
    assert (meta.format, meta.algo, meta.task) == ("minigrpo-trace", "grpo", "syllogism")
    assert meta.extra["trainer"] == "trl" and meta.extra["world_size"] == 1
    assert meta.config["epsilon"] == trainer.epsilon_low and meta.config["beta"] == 0.1
    assert meta.config["format_weight"] == pytest.approx(0.2) and meta.config["correctness_weight"] == 1.0
    assert [s.step for s in trl_trace.steps] == [1, 2]
    assert [s.rollout for s in trl_trace.steps] == [0, 0]
    assert [s.metrics["pass"] for s in trl_trace.steps] == [0, 1]
    for step in trl_trace.steps:
        assert len(step.groups) == 2 and all(len(g.completions) == 4 for g in step.groups)
        assert set(step.groups[0].reward_parts) == {"format", "correctness"}
        assert sorted((p.group, p.index) for p in step.probes) == [(g, i) for g in range(2) for i in range(4)]
    # the second update is off-policy: some ratio moved away from 1
    assert max(float(np.abs(p.ratio - 1).max()) for p in trl_trace.steps[1].probes) > 1e-3


def test_trl_metrics_agree_with_trls_own_logs(trl_run, trl_trace):
    """One micro-batch per update, so TRL's per-micro-batch means are the token-weighted means we record."""
    _, trainer = trl_run
    logs = {entry["step"]: entry for entry in trainer.state.log_history if "grad_norm" in entry}
    ours_to_trl = {"clip_ratio/low_mean": "clip_ratio/low_mean", "clip_ratio/high_mean": "clip_ratio/high_mean",
                   "clip_ratio/region_mean": "clip_ratio/region_mean", "entropy": "entropy",
                   "kl/ratio_weighted": "kl", "grad_norm": "grad_norm", "learning_rate": "learning_rate",
                   "reward": "reward", "frac_reward_zero_std": "frac_reward_zero_std",
                   "completion_length": "completions/mean_length", "rewards/format/mean": "rewards/format/mean",
                   "rewards/correctness/mean": "rewards/correctness/mean"}
    compared = 0
    for step in trl_trace.steps:
        for ours, theirs in ours_to_trl.items():
            if theirs in logs[step.step]:  # rollout metrics are logged by TRL on the rollout's first update only
                assert step.metrics[ours] == pytest.approx(float(logs[step.step][theirs]), rel=1e-4, abs=1e-6), ours
                compared += 1
    assert compared >= 18


def test_trl_trace_renders_ppo_logits(trl_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRPO_FOLLOW", "1")
    rc = render("ppo_logits", str(trl_run[0]), quality="l", steps="1:3", media_dir=str(tmp_path / "media"))
    assert rc == 0
    mp4 = tmp_path / "media" / "videos" / "ppo_logits" / "480p15" / "PPOLogits.mp4"
    assert mp4.is_file() and mp4.stat().st_size > 10_000


@pytest.mark.parametrize("option,message", [
    (dict(loss_type="cispo"), "loss_type 'cispo' is not recorded"),
    (dict(sync_ref_model=True, ref_model_sync_steps=1), "sync_ref_model=True is not recorded"),
    (dict(mask_truncated_completions=True), "mask_truncated_completions=True is not recorded"),
    (dict(multi_objective_aggregation="normalize_then_sum"), "multi_objective_aggregation='normalize_then_sum'"),
    (dict(gradient_accumulation_steps=2, steps_per_generation=1), "no optimizer step mixes two passes"),
    (dict(gradient_accumulation_steps=2, steps_per_generation=3), r"steps_per_generation \(3\) must be a multiple"),
    (dict(wrap_reward=lambda f: (lambda completions, **kw: f(completions, **kw))), "two reward functions are named"),
], ids=["cispo", "sync-ref", "mask-truncated", "normalize-then-sum", "step-spans-two-passes", "step-spans-passes",
        "same-name"])
def test_options_the_trace_cannot_hold_are_refused_before_writing(sft_model, tmp_path, option, message):
    """Each of these made TRL train on numbers the trace would record otherwise (a moved reference,
    truncated completions recorded empty, rewards that are not the advantages' source)."""
    with pytest.raises(ValueError, match=message):
        make_trainer(sft_model, tmp_path, **option)
    assert not (tmp_path / "trace").exists()


@pytest.mark.parametrize("parts", [[[0.2, 1.0]] * 8, [[0.2, 0.0]] * 8, [[0.2, 1.0]] * 6,
                                   [[0.0, 0.0], [0.2, 1.0], [0.2, 0.0], [0.2, 1.0]],
                                   [[0.2, 1.0], [None, None], [0.2, 1.0], [0.2, 1.0]],
                                   [[None, None], [0.2, 0.0], [None, 0.0], [0.2, 1.0]]])
def test_a_groups_baseline_is_the_one_trls_advantages_came_from(parts):
    """Eight rewards of 1.2 have a float32 std of 1.3e-7 in TRL, and advantages of +0.0012 from it: the trace
    held std 0 (float64) beside those advantages, and the scene said "σ = 0, every A = 0". The recorded mean and
    std now give TRL's advantages back, as TRL computes them (float32, on the group's view)."""
    from minigrpo.integrations.trl import trl_baselines

    per_func = torch.tensor([[math.nan if v is None else v for v in row] for row in parts], dtype=torch.float32)
    rewards, means, stds = trl_baselines(per_func, torch.ones(2), len(parts))  # the parts come weighted
    r = torch.tensor(rewards)
    trl_advantages = (r - torch.tensor(means).repeat_interleave(len(parts))) / (
        torch.tensor(stds).repeat_interleave(len(parts)) + 1e-4)  # TRL's own line, from the recorded numbers
    ours = (r - means[0]) / (stds[0] + np.float32(1e-4))
    scored = ~torch.isnan(r)
    assert torch.equal(trl_advantages[scored], ours[scored])
    if len(set(r[scored].tolist())) == 1 and int(scored.sum()) == 8 and r[0] == np.float32(1.2):
        assert stds[0] > 0 and abs(float(trl_advantages[0])) > 1e-4  # TRL's float32 residue, recorded as it is


def test_accuracy_without_a_correctness_function_is_not_recorded_as_zero():
    from minigrpo.integrations.trl import _rollout_metrics
    from minigrpo.trace.schema import Group

    group = Group(prompt="p", question="q", answer="a", completions=["x", "y"],
                  completion_ids=[np.array([1]), np.array([2])], reward_parts={"acc": np.array([1.0, 0.0])},
                  rewards=np.array([1.0, 0.0]), mean=0.5, std=0.7, advantages=np.array([0.7, -0.7]),
                  correct=np.zeros(2, bool))
    assert math.isnan(_rollout_metrics([group], "correctness")["accuracy"])
    group.correct = np.array([True, False])
    assert _rollout_metrics([group], "acc")["accuracy"] == 0.5


def test_the_cli_lets_set_override_its_own_defaults_and_refuses_what_breaks_the_task(capsys):
    from minigrpo.integrations.trl import cli_config, main, parse_sets

    config = cli_config("o", 0, [0.2, 1.0], parse_sets(["save_strategy=steps", "seed=3", "output_dir=elsewhere",
                                                        "reward_weights=[1, 1]", "max_steps=5"]))
    assert (config.save_strategy, config.seed, config.output_dir, config.reward_weights, config.max_steps) == \
        ("steps", 3, "elsewhere", [1, 1], 5)
    assert main(["--model", "tiny", "--out", "o", "--set", "remove_unused_columns=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minigrpo: error: --set remove_unused_columns") and "\n" not in err


def test_a_trace_that_holds_no_record_is_started_over(sft_model, tmp_path):
    """A run stopped before its first rollout was recorded left meta.json alone, and its rerun was refused."""
    (tmp_path / "trace").mkdir()
    (tmp_path / "trace" / "meta.json").write_text('{"format": "minigrpo-trace"}')
    make_trainer(sft_model, tmp_path, max_steps=1)
    assert json.loads((tmp_path / "trace" / "meta.json").read_text())["format"] == "minigrpo-trace"
    (tmp_path / "trace" / "steps.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="already holds a trace"):
        make_trainer(sft_model, tmp_path, max_steps=1)
    other = tmp_path / "other"  # another tool's folder with a meta.json of its own is not deleted
    other.mkdir()
    (other / "meta.json").write_text('{"tool": "not minigrpo"}')
    with pytest.raises(ValueError, match="already holds a trace"):
        make_trainer(sft_model, tmp_path, max_steps=1, trace_subdir="other")
    assert (other / "meta.json").read_text() == '{"tool": "not minigrpo"}'


def test_unscorable_completions_leave_the_group_baseline_as_trl_computes_it():
    """A completion every reward function scored None is NaN for TRL, left out of the group's
    nanmean and nanstd (nansum would count it as a reward of 0)."""
    from types import SimpleNamespace

    from minigrpo.integrations.trl import TracingGRPOTrainer

    fake = SimpleNamespace(num_generations=4, reward_func_names=["format", "correctness"],
                           reward_weights=torch.tensor([0.2, 1.0]), correct_reward="correctness")
    rows = [{"prompt": "p", "question": "q", "answer": "Yes", "completion": f"c{i}", "ids": np.array([i]),
             "advantage": 0.0} for i in range(4)]
    per_func = torch.tensor([[0.0, 0.0], [np.nan, np.nan], [1.0, 0.0], [0.0, 0.0]])
    (group,) = TracingGRPOTrainer._groups(fake, rows, per_func)
    assert np.isnan(group.rewards[1]) and group.rewards[2] == pytest.approx(0.2)
    scored = np.array([0.0, 0.2, 0.0])
    assert group.mean == pytest.approx(scored.mean()) and group.std == pytest.approx(scored.std(ddof=1))


def _none_for_every_third(func):
    """A reward function that cannot score every third completion (TRL: None)."""
    def scored(completions, **kwargs):
        return [None if i % 3 == 0 else v for i, v in enumerate(func(completions, **kwargs))]

    scored.__name__ = func.__name__
    return scored


def test_beta_0_records_no_kl_and_unscorable_rewards_render(sft_model, tmp_path):
    """β = 0: TRL loads no reference model, so there is no KL: it was recorded as 0 (and the probes'
    reference as the policy before the step), which kl_penalty showed as measured. Now NaN, no step
    ``kl``, and the trace says so (``kl_recorded``). Unscorable completions (None) crashed grpo_advantage."""
    tempconfig = pytest.importorskip("manim").tempconfig
    from scenes.grpo_advantage import GRPOAdvantage

    trainer = make_trainer(sft_model, tmp_path, wrap_reward=_none_for_every_third, beta=0.0)
    assert trainer.ref_model is None
    trainer.train()
    path = tmp_path / "trace"
    trace = load(path)
    assert validate(path) == []
    assert not trace.meta.kl_recorded
    assert all("kl" not in s.metrics for s in trace.steps) and trace.steps
    probes = [p for s in trace.steps for p in s.probes]
    assert probes and all(np.isnan(p.kl).all() and np.isnan(p.logp_ref).all() for p in probes)
    assert all(np.isnan(q.probs_ref).all() for p in probes for q in p.positions)
    rewards = np.concatenate([g.rewards for g in trace.steps[0].groups])
    assert np.isnan(rewards).any() and np.isfinite(rewards).any()
    for g in trace.steps[0].groups:  # the recorded baseline is the one TRL's advantages came from
        r = np.asarray(g.rewards, np.float32)
        ok = np.isfinite(r)
        expected = (r[ok] - np.float32(g.mean)) / (np.float32(g.std) + np.float32(1e-4))
        np.testing.assert_allclose(np.asarray(g.advantages, np.float32)[ok], expected, rtol=1e-6, atol=1e-7)
    os.environ["MINIGRPO_TRACE"] = str(path)
    try:
        with tempconfig({"dry_run": True, "progress_bar": "none", "verbosity": "ERROR",
                         "media_dir": str(tmp_path / "media"), "disable_caching": True}):
            scene = GRPOAdvantage(skip_animations=True)
            scene.render()
    finally:
        del os.environ["MINIGRPO_TRACE"]
    assert len(scene.shown["rewards"]) > 0


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_two_processes_write_one_trace(sft_model, tmp_path):
    """torchrun, 2 CPU processes (gloo): 3 groups of 4 over 2 × 6 completions, so group 1 straddles the ranks."""
    out = tmp_path / "run"
    sets = ["max_steps=2", "per_device_train_batch_size=3", "gradient_accumulation_steps=2", "num_generations=4",
            "max_completion_length=24", "learning_rate=1e-3", "beta=0.1", "disable_tqdm=true", "logging_steps=1"]
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "minigrpo.integrations.trl",
           "--model", sft_model, "--out", str(out), "--train-size", "300", "--probe-completions", "-1",
           *[arg for s in sets for arg in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trace written to") == 1  # only the main process reports
    assert [p.name for p in out.rglob("meta.json")] == ["meta.json"]
    assert validate(out / "trace") == []
    trace = load(out / "trace")
    assert trace.meta.extra["world_size"] == 2
    for step in trace.steps:
        assert len(step.groups) == 3
        # every completion of the update, from both ranks, is a probe
        assert sorted((p.group, p.index) for p in step.probes) == [(g, i) for g in range(3) for i in range(4)]
    for check in GRPO_CHECKS:
        check(trace)
    json.dumps(trace.meta.config)  # the config TRL handed over is plain JSON
