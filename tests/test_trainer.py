"""The trainer end to end on the tiny model: outputs, CLI, bad input, NaN guard, resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minigrpo.cli import main
from minigrpo.config import ConfigError, build_config
from minigrpo.trace import load

from conftest import FAST, fast_config


def run_cli(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "minigrpo.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)


def test_grpo_run_writes_model_trace_and_summary(grpo_run):
    out, cfg, summary = grpo_run
    assert (out / "config.json").is_file() and (out / "summary.json").is_file()
    assert summary["steps"] == 3 and "accuracy" in summary["after"]
    assert 0 <= summary["after"]["majority_baseline"] <= 1
    trace = load(out / "trace")
    assert len(trace.steps) == 3
    for key in ("loss", "policy_loss", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
                "clip_ratio/region_mean", "grad_norm", "reward", "reward_std", "frac_reward_zero_std",
                "learning_rate", "step_time", "num_tokens", "peak_memory_mb"):
        assert key in trace.steps[0].metrics, key


def test_final_model_is_loadable_by_model_flag(grpo_run):
    from minigrpo.models import load_model

    out, _, _ = grpo_run
    model, tok = load_model(str(out))
    assert model.config.vocab_size == len(tok)


def test_ppo_has_a_critic_and_costs_more_state(ppo_run, grpo_run):
    _, _, ppo = ppo_run
    _, _, grpo = grpo_run
    # separate value model: parameters, grads and Adam state of a second network
    assert ppo["train_state_mb"] > 1.8 * grpo["train_state_mb"]


def test_eval_json_prints_one_object(sft_model):
    result = run_cli("eval", "--task", "syllogism", "--model", sft_model, "--n", "20", "--json",
                     "--train-size", "300", "--max-completion-length", "24")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1], parse_constant=_no_constants)
    for key in ("accuracy", "mean_score", "format_rate", "majority_baseline", "n"):
        assert key in data
    assert data["n"] == 20


def test_eval_names_the_flags_it_ignores_in_one_line(sft_model, monkeypatch, capsys):
    import minigrpo.evaluate
    from minigrpo.cli import EVAL_FIELDS, main
    from minigrpo.config import field_names

    monkeypatch.setattr(minigrpo.evaluate, "evaluate", lambda *a, **k: {"accuracy": 0.0, "n": 1})
    assert main(["eval", "--task", "syllogism", "--model", sft_model, "--n", "3", "--temperature", "0.5",
                 "--num-generations", "8", "--max-completion-length", "24", "--json"]) == 0
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 1 and notes[0].endswith("--num-generations, --temperature have no effect")
    assert main(["eval", "--task", "syllogism", "--model", sft_model, "--n", "3", "--max-steps", "3",
                 "--max-completion-length", "24", "--json"]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("so --max-steps has no effect")
    assert main(["eval", "--task", "syllogism", "--model", sft_model, "--n", "3", "--preset", "tiny",
                 "--max-completion-length", "24", "--json"]) == 0
    assert capsys.readouterr().err == ""  # a preset's training fields are no surprise
    assert EVAL_FIELDS <= set(field_names())  # a renamed field would silently count as unused


def test_eval_scores_a_model_as_its_own_run_did(sft_model, tmp_path, monkeypatch, capsys):
    """Without --preset or --config, eval takes the task, lengths and reward weights of the model's run
    (train_config.json): a plain `minigrpo eval --model runs/grpo` decoded 300 tokens where the run used 48."""
    import minigrpo.evaluate
    from minigrpo.cli import main

    seen = []
    monkeypatch.setattr(minigrpo.evaluate, "evaluate", lambda model, tok, data, cfg, n=None: seen.append(cfg) or {})
    recorded = json.loads(Path(sft_model, "train_config.json").read_text())
    assert main(["eval", "--model", sft_model, "--n", "2", "--json"]) == 0
    cfg = seen[-1]
    for key in ("task", "max_prompt_length", "max_completion_length", "format_weight", "penalize_premise_copy"):
        assert getattr(cfg, key) == recorded[key], key
    assert recorded["max_completion_length"] != 300  # the default it replaces
    assert main(["eval", "--model", sft_model, "--n", "2", "--max-completion-length", "30", "--json"]) == 0
    assert seen[-1].max_completion_length == 30  # a flag wins
    import shutil

    knobbed = tmp_path / "knobbed"
    shutil.copytree(sft_model, knobbed)
    (knobbed / "train_config.json").write_text(json.dumps({**recorded, "task_kwargs": {"allow_some": False}}))
    assert main(["eval", "--model", str(knobbed), "--n", "2", "--json"]) == 0
    assert seen[-1].task_kwargs == {"allow_some": False}
    assert main(["eval", "--model", str(knobbed), "--n", "2", "--task", "propositional_logic", "--json"]) == 0
    assert seen[-1].task == "propositional_logic" and seen[-1].task_kwargs == {}  # not syllogism's knobs
    assert main(["eval", "--model", sft_model, "--n", "2", "--preset", "smollm2-135m", "--json"]) == 0
    assert seen[-1].max_completion_length == 300  # a preset says what to use


def _no_constants(name):
    raise AssertionError(f"{name} is not JSON")


def test_eval_json_writes_null_for_a_missing_baseline():
    from minigrpo.cli import json_line

    line = json_line({"accuracy": 0.5, "majority_baseline": float("nan"), "x": float("inf"), "n": 3})
    assert json.loads(line, parse_constant=_no_constants) == {"accuracy": 0.5, "majority_baseline": None,
                                                              "x": None, "n": 3}


@pytest.mark.parametrize("argv, needle", [
    (["train", "--task", "no_such_task", "--model", "x"], "unknown task"),
    (["train", "--preset", "tiny", "--model", "/nonexistent/model"], "cannot load model"),
    (["train", "--preset", "tiny", "--num-generations", "1"], "num-generations"),
    (["train", "--preset", "tiny", "--epsilon", "0"], "epsilon"),
    (["train", "--preset", "tiny", "--learning-rate", "-1e-5"], "learning-rate"),
    (["train", "--preset", "tiny", "--loss-type", "foo"], "grpo, dr_grpo, dapo, bnpo"),
    (["train", "--preset", "nope"], "unknown preset"),
    (["train", "--preset", "tiny", "--model", "Qwen/Qwen3-0.6B"], "cannot load model"),
    (["train", "--preset", "tiny"], "minigrpo sft"),
])
def test_bad_input_is_one_clear_line(argv, needle, capsys, tmp_path):
    code = main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("minigrpo: error:")
    assert needle in err


def test_config_precedence_and_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('num_generations = 5\nlearning_rate = 2e-5\n[task_kwargs]\nallow_some = false\n')
    cfg = build_config("tiny", str(path), {"learning_rate": "3e-5"})
    assert cfg.num_generations == 5 and cfg.learning_rate == 3e-5 and cfg.task_kwargs == {"allow_some": False}
    with pytest.raises(ConfigError, match="unknown config field"):
        build_config(None, None, {"no_such_field": 1})


def test_nan_loss_stops_and_keeps_last_good_checkpoint(sft_model, tmp_path, monkeypatch):
    from minigrpo import grpo
    from minigrpo.runtime import TrainingError

    real = grpo.GRPOTrainer.micro_loss

    def poisoned(self, exp, rows, normalizer):
        loss, stats = real(self, exp, rows, normalizer)
        return (loss * float("nan"), stats) if self.step >= 2 else (loss, stats)

    monkeypatch.setattr(grpo.GRPOTrainer, "micro_loss", poisoned)
    cfg = fast_config(model=sft_model, max_steps=4, save_steps=1)
    with pytest.raises(TrainingError, match="loss became nan at step 3"):
        grpo.GRPOTrainer(cfg, tmp_path, log=lambda *_: None).train()
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    assert [s.step for s in load(tmp_path / "trace").steps] == [1, 2]
    assert all(torch.isfinite(p).all() for p in
               __import__("minigrpo.models", fromlist=["x"]).load_model(str(tmp_path / "checkpoint"))[0].parameters())


def test_resume_continues_the_trace(sft_model, tmp_path):
    from minigrpo.grpo import GRPOTrainer

    cfg = fast_config(model=sft_model, max_steps=2, save_steps=1)
    GRPOTrainer(cfg, tmp_path, log=lambda *_: None).train()
    with pytest.raises(Exception, match="already holds a trace"):
        GRPOTrainer(fast_config(model=sft_model, max_steps=3), tmp_path, log=lambda *_: None).train()
    cfg3 = fast_config(model=sft_model, max_steps=4, save_steps=1)
    GRPOTrainer(cfg3, tmp_path, resume=True, log=lambda *_: None).train()
    steps = load(tmp_path / "trace").steps
    assert [s.step for s in steps] == [1, 2, 3, 4]
    # the checkpoint carries the rollout in flight: steps 3-4 train on the same buffer as 1-2
    assert [s.rollout for s in steps] == [0, 0, 0, 0]
    # the checkpoint is a model folder with the run's config, as OUT is: eval takes its defaults and chain
    from minigrpo.cli import _model_eval_defaults
    from minigrpo.heldout import training_runs

    assert json.loads((tmp_path / "checkpoint" / "train_config.json").read_text()) == cfg3.to_dict()
    assert training_runs(str(tmp_path / "checkpoint"))[0] == cfg3.to_dict()
    assert _model_eval_defaults(str(tmp_path / "checkpoint"))["task"] == cfg3.task


def test_a_resume_with_nothing_left_to_train_leaves_the_trace_as_it_was(sft_model, tmp_path):
    from minigrpo.grpo import GRPOTrainer

    GRPOTrainer(fast_config(model=sft_model, max_steps=2, save_steps=1), tmp_path, log=lambda *_: None).train()
    meta, steps = (tmp_path / "trace" / "meta.json").read_bytes(), (tmp_path / "trace" / "steps.jsonl").read_bytes()
    said = []
    GRPOTrainer(fast_config(model=sft_model, max_steps=1, save_steps=1), tmp_path, resume=True, log=said.append).train()
    assert any("nothing left to train" in line for line in said)
    assert not any("resumed with other knobs" in line for line in said)
    assert (tmp_path / "trace" / "meta.json").read_bytes() == meta
    assert (tmp_path / "trace" / "steps.jsonl").read_bytes() == steps


def test_dapos_normaliser_is_taken_once_per_rollout():
    """The rollout's token count (a host synchronisation and a rank mean) is the same for each of its
    steps: it is taken at the first and reused."""
    from types import SimpleNamespace

    from minigrpo.experience import Experience
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.rollout import Rollout

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    rollout = Rollout(torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 2), torch.zeros(4, 4, dtype=torch.long),
                      mask, ["a"] * 4)
    zeros = torch.zeros(4)
    exp = Experience(items=[0, 1], prompts=["p", "q"], rollout=rollout, rewards=zeros, parts={}, correct=zeros.bool(),
                     formatted=zeros.bool(), premise_copy=zeros.bool(), advantages=zeros, logp_old=mask.float(),
                     logp_ref=None)
    calls = []
    trainer = object.__new__(GRPOTrainer)
    trainer.dist = SimpleNamespace(mean=lambda values: calls.append(values) or values)
    first = trainer.step_normalizer(exp, [0, 1])
    second = trainer.step_normalizer(exp, [2, 3, 1])
    assert len(calls) == 1
    assert first == {"num_rows": 2, "num_items_in_batch": 10 * 2 / 4}
    assert second == {"num_rows": 3, "num_items_in_batch": 10 * 3 / 4}


def test_a_run_stopped_before_its_first_update_starts_over_with_the_same_command(sft_model, tmp_path, monkeypatch):
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.runtime import TrainingError
    from minigrpo.trace.validate import validate

    def ctrl_c(self):
        raise KeyboardInterrupt

    cfg = fast_config(model=sft_model, max_steps=1)
    with monkeypatch.context() as patch:
        patch.setattr(GRPOTrainer, "_evaluate", ctrl_c)
        with pytest.raises(TrainingError, match="before the first update: nothing was trained; run the same command"):
            GRPOTrainer(cfg, tmp_path, log=lambda *_: None).train()
    assert (tmp_path / "trace" / "meta.json").is_file() and not (tmp_path / "checkpoint").exists()
    lines = []
    GRPOTrainer(cfg, tmp_path, log=lines.append).train()
    assert any("starting it over" in line for line in lines)
    assert [s.step for s in load(tmp_path / "trace").steps] == [1]
    assert validate(tmp_path / "trace") == []


def test_a_stop_in_the_first_update_says_resume_since_its_rollout_is_recorded(sft_model, tmp_path, monkeypatch):
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.runtime import TrainingError

    real = GRPOTrainer._update

    def update_then_ctrl_c(self, exp, rows):
        real(self, exp, rows)
        raise KeyboardInterrupt

    cfg = fast_config(model=sft_model, max_steps=1, eval_n=4)
    with monkeypatch.context() as patch:
        patch.setattr(GRPOTrainer, "_update", update_then_ctrl_c)
        with pytest.raises(TrainingError, match="nothing was trained; run the same command plus --resume"):
            GRPOTrainer(cfg, tmp_path, log=lambda *_: None).train()
    GRPOTrainer(cfg, tmp_path, resume=True, log=lambda *_: None).train()
    assert [s.step for s in load(tmp_path / "trace").steps] == [1]


@pytest.mark.parametrize("leftover", ["rollout line", "stray file"])
def test_a_trace_with_anything_recorded_is_never_started_over(sft_model, tmp_path, leftover):
    from minigrpo.grpo import GRPOTrainer

    cfg = fast_config(model=sft_model, max_steps=1)
    trace = tmp_path / "trace"
    trace.mkdir()
    (trace / "meta.json").write_text("{}")
    (trace / "steps.jsonl").write_text("")
    if leftover == "rollout line":
        (trace / "rollouts.jsonl").write_text('{"rollout": 0}\n')
    else:
        (trace / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in trace.iterdir()}
    with pytest.raises(Exception, match="already holds a trace"):
        GRPOTrainer(cfg, tmp_path, log=lambda *_: None).train()
    assert {p.name: p.read_bytes() for p in trace.iterdir()} == before


def test_training_is_deterministic_on_cpu(sft_model, tmp_path):
    from minigrpo.grpo import GRPOTrainer

    losses = []
    for name in ("a", "b"):
        cfg = fast_config(model=sft_model, max_steps=2, eval_n=4)
        GRPOTrainer(cfg, tmp_path / name, log=lambda *_: None).train()
        losses.append(load(tmp_path / name / "trace").metric("loss").tolist())
    assert losses[0] == losses[1]


def test_fast_preset_values_are_valid():
    assert fast_config().num_generations == FAST["num_generations"]


# ----------------------------------------------------------------------------- log π_old from the update
ONE_UPDATE = dict(num_iterations=1, buffer_size=8, per_device_train_batch_size=4, gradient_accumulation_steps=2)


def test_collect_scores_logp_old_only_when_the_update_cannot(sft_model):
    import random

    from minigrpo.experience import collect
    from minigrpo.models import load_model
    from minigrpo.rollout import score_logprobs
    from minigrpo.tasks import load_train_eval

    model, tok = load_model(sft_model)
    for overrides, old_pass, scored in ((ONE_UPDATE, False, False), (ONE_UPDATE, True, True),
                                        ({**ONE_UPDATE, "num_iterations": 2}, False, True),
                                        ({**ONE_UPDATE, "gradient_accumulation_steps": 1}, False, True)):
        cfg = fast_config(model=sft_model, **overrides)
        data, _ = load_train_eval(cfg.task, 20, 1, cfg.seed)
        torch.manual_seed(0)
        exp = collect(model, model, tok, data, cfg, random.Random(0), old_pass=old_pass)
        assert exp.logp_old_from_update is not scored
        if scored:
            expected = score_logprobs(model, exp.rollout, cfg.temperature, 4)
            torch.testing.assert_close(exp.logp_old, expected, rtol=0, atol=1e-6)
            assert exp.logp_old.abs().sum() > 0
        else:
            assert torch.equal(exp.logp_old, torch.zeros_like(exp.rollout.completion_mask))


def test_one_update_per_rollout_takes_logp_old_from_the_update(sft_model, tmp_path, monkeypatch):
    """No π_old scoring pass when each row is trained on once, in the step right after sampling:
    ρ = 1 exactly, the trace records the update's log-probs as log π_old, and training matches
    the same run with the pass forced."""
    import numpy as np

    from minigrpo import experience, grpo

    scored = []
    for name in ("score_logprobs", "score_logprobs_and_hidden"):  # log π_old, log π_ref (with its hidden states)
        real = getattr(experience, name)
        monkeypatch.setattr(experience, name, lambda model, *a, real=real, **k: scored.append(model) or real(model, *a, **k))
    runs = {}
    for name, forced in (("from-update", False), ("pass", True)):
        monkeypatch.setattr(grpo.GRPOTrainer, "needs_logp_old_before_update", forced)
        scored.clear()
        trainer = grpo.GRPOTrainer(fast_config(model=sft_model, max_steps=2, **ONE_UPDATE), tmp_path / name,
                                   log=lambda *_: None)
        trainer.train()
        runs[name] = load(tmp_path / name / "trace"), [m is trainer.ref for m in scored]
    (fresh, fresh_scored), (forced, forced_scored) = runs["from-update"], runs["pass"]
    assert fresh_scored == [True, True]  # two rollouts, only the reference scored
    assert forced_scored == [False, True, False, True]
    probes = [p for step in fresh.steps for p in step.probes]
    assert probes
    for p in probes:
        assert np.array_equal(p.logp_old, p.logp) and np.all(p.ratio == 1.0)
    assert fresh.metric("ratio_mean").tolist() == [1.0, 1.0]
    for key in ("loss", "kl", "entropy"):
        np.testing.assert_allclose(fresh.metric(key), forced.metric(key), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_probe_logits_come_from_the_update_and_reference_passes(sft_model, tmp_path, monkeypatch, algo):
    """The probes' logits before the step are the output layer of the update's own hidden states,
    the reference's come from π_ref's scoring pass: one forward pass per update (after the step)
    instead of three, and the same numbers as the three passes give."""
    import numpy as np

    from minigrpo import experience, grpo, ppo, probes

    trainer_cls = grpo.GRPOTrainer if algo == "grpo" else ppo.PPOTrainer
    passes = []
    real = probes.ProbeRecorder._logits
    monkeypatch.setattr(probes.ProbeRecorder, "_logits", lambda self, model, batch: passes.append(1) or
                        real(self, model, batch))
    runs = {}
    for name, from_hidden in (("hidden", True), ("passes", False)):
        monkeypatch.setattr(trainer_cls, "hands_probes_hidden", from_hidden)
        if not from_hidden:
            monkeypatch.setattr(experience, "keep_ref_hidden", lambda *a: False)
        passes.clear()
        cfg = fast_config(model=sft_model, algo=algo, max_steps=2, beta=0.1, probe_completions=3, **ONE_UPDATE)
        trainer_cls(cfg, tmp_path / name, log=lambda *_: None).train()
        runs[name] = load(tmp_path / name / "trace"), len(passes)
    (fast, fast_passes), (slow, slow_passes) = runs["hidden"], runs["passes"]
    assert (fast_passes, slow_passes) == (2, 6)  # 2 updates: "after" only, against before + after + ref
    pairs = [(a, b) for sa, sb in zip(fast.steps, slow.steps) for a, b in zip(sa.probes, sb.probes)]
    assert len(pairs) == 6
    for a, b in pairs:
        assert np.array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.logp_new, b.logp_new, atol=1e-5)
        assert [p.pos for p in a.positions] == [p.pos for p in b.positions]
        for pa, pb in zip(a.positions, b.positions):
            assert np.array_equal(pa.token_ids, pb.token_ids)
            for which in ("before", "after", "ref"):
                np.testing.assert_allclose(getattr(pa, f"logits_{which}"), getattr(pb, f"logits_{which}"), atol=1e-4)
                np.testing.assert_allclose(getattr(pa, f"probs_{which}"), getattr(pb, f"probs_{which}"), atol=1e-6)


def test_ref_hidden_is_kept_only_for_probes_within_the_budget(sft_model, monkeypatch):
    from minigrpo import experience
    from minigrpo.models import load_model
    from minigrpo.rollout import Rollout

    model, _ = load_model(sft_model)
    hidden = model.get_output_embeddings().weight.shape[1]
    rollout = Rollout(torch.zeros(4, 3, dtype=torch.long), torch.ones(4, 3), torch.zeros(4, 5, dtype=torch.long),
                      torch.ones(4, 5), [""] * 4)
    assert experience.keep_ref_hidden(fast_config(), model, rollout)
    assert not experience.keep_ref_hidden(fast_config(trace=False), model, rollout)
    assert not experience.keep_ref_hidden(fast_config(probe_completions=0), model, rollout)
    monkeypatch.setattr(experience, "REF_HIDDEN_BUDGET", 4 * 5 * hidden * 4 - 1)  # float32: one byte short
    assert not experience.keep_ref_hidden(fast_config(), model, rollout)


def test_probes_refuse_an_update_that_does_not_hand_its_hidden_states(sft_model):
    from minigrpo.models import load_model
    from minigrpo.probes import ProbeRecorder
    from minigrpo.rollout import Rollout

    model, tok = load_model(sft_model)
    rec = ProbeRecorder(tok, fast_config(probe_completions=1))
    rollout = Rollout(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), torch.zeros(2, 4, dtype=torch.long),
                      torch.ones(2, 4), ["", ""])
    rec.start(model, rollout, [0, 1], torch.tensor([1.0, -1.0]), hidden_from_update=True)
    assert rec.rows == [0] and rec.wants_hidden([1, 0]) and not rec.wants_hidden([1])
    with pytest.raises(RuntimeError, match="hidden states"):
        rec.capture(0, logp=torch.zeros(4))


def test_an_update_is_recorded_while_the_next_rollout_decodes(sft_model, tmp_path, monkeypatch):
    """The probes' pass after the step and the trace line of update t run inside rollout t+1's
    generation (the last update's at the end), a rollout's record once its first update's
    backward passes are queued; the trace is the one written right away."""
    import numpy as np

    from minigrpo import experience, grpo
    from minigrpo.trace import writer as trace_writer

    events = []
    real_generate, real_loss = experience.generate, grpo.GRPOTrainer.micro_loss
    real_step, real_rollout = trace_writer.TraceWriter.write_step, trace_writer.TraceWriter.write_rollout

    def generate(*a, **k):
        events.append("generate")
        try:
            return real_generate(*a, **k)
        finally:
            events.append("generated")

    monkeypatch.setattr(experience, "generate", generate)
    monkeypatch.setattr(grpo.GRPOTrainer, "micro_loss", lambda *a: events.append("loss") or real_loss(*a))
    monkeypatch.setattr(trace_writer.TraceWriter, "write_step", lambda self, s: events.append(s.step) or real_step(self, s))
    monkeypatch.setattr(trace_writer.TraceWriter, "write_rollout",
                        lambda self, r, g: events.append(f"r{r}") or real_rollout(self, r, g))
    cfg = fast_config(model=sft_model, max_steps=3, rollout_backend="fast", beta=0.1, **ONE_UPDATE)
    grpo.GRPOTrainer(cfg, tmp_path / "deferred", log=lambda *_: None).train()
    update = ["loss", "loss"]  # two micro-batches
    assert events == ["generate", "generated", *update, "r0",
                      "generate", 1, "generated", *update, "r1",
                      "generate", 2, "generated", *update, "r2", 3]
    events.clear()
    monkeypatch.setattr(grpo.GRPOTrainer, "_may_defer_record", lambda self: False)
    grpo.GRPOTrainer(cfg, tmp_path / "direct", log=lambda *_: None).train()
    assert events == [e for r in range(3) for e in ("generate", "generated", f"r{r}", *update, r + 1)]
    deferred, direct = load(tmp_path / "deferred" / "trace"), load(tmp_path / "direct" / "trace")
    assert len(deferred.steps) == len(direct.steps) == 3
    for a, b in zip(deferred.steps, direct.steps):
        for key in ("loss", "kl", "entropy", "grad_norm", "reward"):
            assert a.metrics[key] == pytest.approx(b.metrics[key], rel=1e-6, abs=1e-9)
        assert len(a.probes) == len(b.probes) > 0
        for pa, pb in zip(a.probes, b.probes):
            np.testing.assert_array_equal(pa.token_ids, pb.token_ids)
            np.testing.assert_allclose(pa.logp_new, pb.logp_new, atol=1e-6)
            assert [p.pos for p in pa.positions] == [p.pos for p in pb.positions]
    assert sorted(deferred.rollouts) == sorted(direct.rollouts) == [0, 1, 2]
    assert [g.completions for r in sorted(deferred.rollouts) for g in deferred.rollouts[r]] == \
        [g.completions for r in sorted(direct.rollouts) for g in direct.rollouts[r]]


def test_a_pending_record_is_written_before_evaluation_checkpoint_and_stop(sft_model, tmp_path, monkeypatch):
    """Evaluations and checkpoints see the trace whole: the update before them is recorded
    before them, and a run that fails in the next rollout still records the update it made."""
    from minigrpo import experience, grpo

    cfg = fast_config(model=sft_model, max_steps=3, rollout_backend="fast", eval_every=2, save_steps=2, **ONE_UPDATE)
    trainer = grpo.GRPOTrainer(cfg, tmp_path / "run", log=lambda *_: None)
    seen = []
    real_eval, real_ckpt = trainer._evaluate, trainer._checkpoint
    trainer._evaluate = lambda: seen.append(("eval", trainer._pending_record is None)) or real_eval()
    trainer._checkpoint = lambda: seen.append(("checkpoint", trainer._pending_record is None)) or real_ckpt()
    trainer.train()
    assert all(flushed for _, flushed in seen) and ("checkpoint", True) in seen
    assert [s.step for s in load(tmp_path / "run" / "trace").steps] == [1, 2, 3]

    real_generate = experience.generate
    calls = []

    def failing_generate(*a, **k):  # the second rollout fails after its decoding started
        calls.append(1)
        if len(calls) == 2:
            k["while_decoding"]()
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_generate(*a, **k)

    monkeypatch.setattr(experience, "generate", failing_generate)
    cfg = fast_config(model=sft_model, max_steps=3, rollout_backend="fast", **ONE_UPDATE)
    with pytest.raises(RuntimeError, match="illegal memory"):
        grpo.GRPOTrainer(cfg, tmp_path / "failed", log=lambda *_: None).train()
    assert [s.step for s in load(tmp_path / "failed" / "trace").steps] == [1]
    calls.clear()

    def failing_before_decoding(*a, **k):  # fails before it ran the pending record: written on the way out
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: out of resources")
        return real_generate(*a, **k)

    monkeypatch.setattr(experience, "generate", failing_before_decoding)
    with pytest.raises(RuntimeError, match="out of resources"):
        grpo.GRPOTrainer(cfg, tmp_path / "failed2", log=lambda *_: None).train()
    assert [s.step for s in load(tmp_path / "failed2" / "trace").steps] == [1]


def _update_batch(sft_model, tmp_path, algo="grpo", end_early=False, **overrides):
    """A trainer and one collected rollout, prepared as the trainer prepares it (π_old scored).

    ``end_early``: every row's completion ends (EOS, then padding) after 3 to 10 tokens, and
    π_old and π_ref are scored again, as if the model had sampled EOS there.
    """
    import random

    from minigrpo.experience import collect
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.ppo import PPOTrainer
    from minigrpo.rollout import score_logprobs

    cfg = fast_config(model=sft_model, algo=algo, trace=False, num_iterations=2, **overrides)
    trainer = (PPOTrainer if algo == "ppo" else GRPOTrainer)(cfg, tmp_path, log=lambda *_: None)
    torch.manual_seed(0)
    exp = collect(trainer.policy, trainer.ref, trainer.tokenizer, trainer.train_data, cfg, random.Random(0),
                  old_pass=True)
    if end_early:
        r, eos = exp.rollout, trainer.tokenizer.eos_token_id
        for i in range(len(r)):
            n = 3 + i % 8
            r.completion_ids[i, n - 1:] = eos  # EOS, then padding (the pad id is EOS for this tokenizer)
            r.completion_mask[i, n:] = 0
        r.sampling_logprobs = None
        exp.logp_old = score_logprobs(trainer.policy, r, cfg.temperature, 8)
        exp.logp_ref = score_logprobs(trainer.ref, r, cfg.temperature, 8)
    trainer.prepare(exp)
    return trainer, exp


def _step_gradient(trainer, exp, rows, micro):
    """The gradient one optimizer step would apply, and its loss, with micro-batches of ``micro`` rows."""
    trainer.policy.zero_grad(set_to_none=True)
    normalizer = {"num_rows": len(rows), "num_items_in_batch": exp.rollout.completion_mask[rows].sum().item()}
    total = 0.0
    for start in range(0, len(rows), micro):
        loss, _ = trainer.micro_loss(exp, rows[start:start + micro], normalizer)
        loss.backward()
        total += loss.item()
    grads = torch.cat([p.grad.flatten() for p in trainer.policy.parameters() if p.grad is not None])
    return grads, total


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_kl_at_padding_stays_finite_where_log_pi_of_the_pad_token_underflows(sft_model, tmp_path, algo):
    """Stored log π_ref is 0 at padding; the update's log π(pad) at a low temperature is far below −88,
    where exp(ref − logp) of the k3 KL overflowed to inf and inf · mask 0 made the loss and gradient NaN."""
    from minigrpo.rollout import forward_completion, logprobs_from_logits

    trainer, exp = _update_batch(sft_model, tmp_path, algo, end_early=True, temperature=0.02, beta=0.1)
    mask = exp.rollout.completion_mask.bool()
    with torch.no_grad():
        logits, _ = forward_completion(trainer.policy, exp.rollout, 0.02)
        raw = logprobs_from_logits(logits, exp.rollout.completion_ids)
    assert (~mask).any() and (raw[~mask] < -88.8).any(), "no padding position that would overflow exp()"
    rows = list(range(len(exp.rollout)))
    grads, loss = _step_gradient(trainer, exp, rows, 4)
    assert math.isfinite(loss) and torch.isfinite(grads).all()
    _, stats = trainer.micro_loss(exp, rows, {"num_rows": len(rows), "num_items_in_batch": mask.sum().item()})
    assert torch.isfinite(stats["sum:kl"]) and torch.isfinite(stats["policy_loss"])


def test_without_beta_the_policy_loss_is_the_loss_even_where_the_kl_overflows(sft_model, tmp_path):
    """β = 0: the KL is only logged, and a token whose k3 overflows float32 (log π_ref − log π > 88.7)
    left 0 · inf = NaN in the policy loss while the loss itself was finite (recorded as null)."""
    trainer, exp = _update_batch(sft_model, tmp_path, beta=0.0)
    exp.logp_ref = exp.logp_ref.clone()
    exp.logp_ref[0, 0] = exp.logp_old[0, 0] + 100.0  # k3 = e^100 - 101: inf in float32
    rows = list(range(8))
    loss, stats = trainer.micro_loss(exp, rows, {"num_rows": 8, "num_items_in_batch": 1.0})
    assert torch.isinf(stats["sum:kl"])  # the KL is what it is ...
    assert torch.isfinite(loss) and stats["policy_loss"] == loss  # ... and costs the loss nothing


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_a_step_loss_does_not_depend_on_its_micro_batches(sft_model, tmp_path, loss_type):
    """12 rows as 3 × 4, as 5 + 5 + 2 and as one micro-batch: the same gradient (bnpo: the same
    whenever the micro-batches hold equal numbers of tokens: its token mean is per micro-batch by
    definition, as TRL's)."""
    trainer, exp = _update_batch(sft_model, tmp_path, loss_type=loss_type, beta=0.1)
    if loss_type == "bnpo":  # equal micro-batches for a per-micro-batch token mean: equal token counts too
        exp.rollout.completion_mask[:] = 1
    exp.logp_old = exp.logp_old + 0.1 * torch.randn_like(exp.logp_old) * exp.rollout.completion_mask  # ρ ≠ 1
    rows = list(range(12))
    whole, loss = _step_gradient(trainer, exp, rows, 12)
    for micro in (4, 5) if loss_type != "bnpo" else (4, 6):
        grads, split_loss = _step_gradient(trainer, exp, rows, micro)
        assert (grads - whole).norm() <= 1e-5 * whole.norm(), (loss_type, micro)
        assert split_loss == pytest.approx(loss, rel=1e-4, abs=1e-8)



def test_batch_scaled_advantages_divide_by_the_std_of_every_ranks_rewards(sft_model):
    """scale_rewards="batch" in a data-parallel run: the std of the whole generation batch (every
    rank's rewards, gathered), as TRL computes it, not of this rank's share."""
    import random

    from minigrpo.experience import collect
    from minigrpo.models import load_model
    from minigrpo.tasks import load_train_eval

    model, tok = load_model(sft_model)
    cfg = fast_config(model=sft_model, scale_rewards="batch")
    data, _ = load_train_eval(cfg.task, 20, 1, cfg.seed)
    other_rank = [0.0, 1.2, 1.2, 0.2, 5.0, 0.0, 0.0, 0.0]
    gathered = []

    def all_gather(items):
        gathered.append(list(items))
        return [list(items), other_rank]

    torch.manual_seed(0)
    exp = collect(model, None, tok, data, cfg, random.Random(0), rank=0, world_size=2, all_gather=all_gather)
    rewards = exp.rewards.double()
    assert gathered == [exp.rewards.tolist()]
    both = torch.tensor(exp.rewards.tolist() + other_rank, dtype=torch.float64)
    grouped = rewards.view(-1, cfg.num_generations)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (both.std() + cfg.advantage_eps)
    expected[(grouped == grouped[:, :1]).all(1)] = 0.0
    torch.testing.assert_close(exp.advantages.double(), expected.reshape(-1), rtol=1e-6, atol=1e-7)
    assert both.std() != rewards.std()  # the test tells the two apart


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_experience_rederived_with_plain_loops(sft_model, tmp_path, critic):
    """PPO's prepared rollout against an independent derivation: V(s_t) from a full forward of the
    critic at the positions that predict each completion token; KL-shaped token rewards, GAE(γ, λ)
    with V = 0 after the last token, returns A + V, and advantages whitened over the whole rollout
    (population variance), each by a plain Python loop."""
    import math
    import random

    from minigrpo.experience import collect
    from minigrpo.ppo import PPOTrainer

    cfg = fast_config(model=sft_model, algo="ppo", trace=False, critic=critic, gamma=0.97, lam=0.9, kl_coef=0.3)
    trainer = PPOTrainer(cfg, tmp_path, log=lambda *_: None)
    exp = collect(trainer.policy, trainer.ref, trainer.tokenizer, trainer.train_data, cfg, random.Random(0),
                  old_pass=True)
    trainer.prepare(exp)
    ro, mask = exp.rollout, exp.rollout.completion_mask
    n, t_len = mask.shape
    lp = ro.prompt_ids.shape[1]
    lm = trainer.value_model.lm if critic == "separate" else trainer.policy
    with torch.no_grad():
        ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
        attention = torch.cat([ro.prompt_mask, mask.long()], 1)
        out = lm(input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(1) - 1).clamp(min=0),
                 output_hidden_states=True)
        hidden = out.hidden_states[-1][:, lp - 1: lp - 1 + t_len]
        head = trainer.value_model.head
        values = (hidden @ head.weight.T + head.bias).squeeze(-1) * mask
    assert torch.allclose(values, exp.values * mask, atol=1e-5)

    logp_old, logp_ref, v = exp.logp_old.tolist(), exp.logp_ref.tolist(), exp.values.tolist()
    lengths = mask.sum(1).long().tolist()
    adv = [[0.0] * t_len for _ in range(n)]
    ret = [[0.0] * t_len for _ in range(n)]
    for i in range(n):
        k = lengths[i]
        rewards = [-cfg.kl_coef * (logp_old[i][t] - logp_ref[i][t]) for t in range(k)]
        rewards[-1] += float(exp.rewards[i])
        last = 0.0
        for t in reversed(range(k)):
            next_v = v[i][t + 1] if t + 1 < k else 0.0
            last = rewards[t] + cfg.gamma * next_v - v[i][t] + cfg.gamma * cfg.lam * last
            adv[i][t], ret[i][t] = last, last + v[i][t]
    flat = [adv[i][t] for i in range(n) for t in range(lengths[i])]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((a - mean) ** 2 for a in flat) / len(flat) + 1e-8)
    whitened = [[(adv[i][t] - mean) / std if t < lengths[i] else 0.0 for t in range(t_len)] for i in range(n)]
    assert torch.allclose(exp.returns * mask, torch.tensor(ret), atol=1e-5)
    assert torch.allclose(exp.token_advantages * mask, torch.tensor(whitened), atol=1e-4)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys):
    """safetensors reports a full disk as SafetensorError, not OSError: raised as the OSError it is
    (which the trainer and `main` turn into one line), the previous checkpoint (and the previous
    final model) untouched, no temp folder left; a bug is not dressed up as a full disk."""
    from minigrpo import checkpoint, runtime

    class SafetensorError(Exception):
        pass

    class FullDisk:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"part")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text('{"step": 3}')
    with pytest.raises(OSError, match=r"SafetensorError: .*No space left") as err:
        checkpoint.save_checkpoint(tmp_path, FullDisk(), None, None, None, {"step": 6})
    assert err.value.filename == str(tmp_path / "checkpoint.tmp")
    assert (tmp_path / "checkpoint" / "state.json").read_text() == '{"step": 3}'
    assert not (tmp_path / "checkpoint.tmp").exists()
    (tmp_path / "model.safetensors").write_bytes(b"final")
    with pytest.raises(OSError, match="SafetensorError"):
        runtime.save_final_model(FullDisk(), None, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == b"final" and not (tmp_path / ".final.tmp").exists()
    with pytest.raises(ZeroDivisionError):
        checkpoint.save_checkpoint(tmp_path, type("Buggy", (), {"save_pretrained": lambda self, d: 1 / 0})(), None,
                                   None, None, {})


def test_resume_refuses_a_trace_that_does_not_reach_the_checkpoint(sft_model, tmp_path):
    """A trace cut before the checkpoint (as the reader's advice for a damaged line does) or removed
    cannot be continued: appending would leave updates missing for good. A whole trace resumes,
    and a temp file a killed write left in its root is removed."""
    import shutil

    from minigrpo.files import temp_name
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.runtime import TrainingError
    from minigrpo.trace import load, validate

    out = tmp_path / "run"
    one_step_rollouts = dict(buffer_size=8, num_iterations=1)  # rollouts 0, 1, 2: one update each
    GRPOTrainer(fast_config(model=sft_model, max_steps=3, save_steps=1, **one_step_rollouts), out,
                log=lambda *_: None).train()
    whole = tmp_path / "whole"
    shutil.copytree(out / "trace", whole)
    steps = (out / "trace" / "steps.jsonl").read_text().splitlines(keepends=True)
    (out / "trace" / "steps.jsonl").write_text(steps[0])
    cut = {p.relative_to(out): p.read_bytes() for p in (out / "trace").rglob("*") if p.is_file()}
    more = fast_config(model=sft_model, max_steps=4, save_steps=1, **one_step_rollouts)
    with pytest.raises(TrainingError, match="ends at update 1, but the checkpoint is at update 3.*--trace false"):
        GRPOTrainer(more, out, resume=True, log=lambda *_: None).train()
    # refused before the rewind: rollouts 1 and 2 (lines and payloads) are still there to restore from
    assert {p.relative_to(out): p.read_bytes() for p in (out / "trace").rglob("*") if p.is_file()} == cut
    shutil.rmtree(out / "trace")
    with pytest.raises(TrainingError, match="trace is missing, but the checkpoint at update 3 was traced"):
        GRPOTrainer(more, out, resume=True, log=lambda *_: None).train()
    assert not (out / "trace").exists()
    shutil.copytree(whole, out / "trace")
    (out / "trace" / temp_name("steps.jsonl")).write_text("torn")
    GRPOTrainer(more, out, resume=True, log=lambda *_: None).train()
    assert [s.step for s in load(out / "trace").steps] == [1, 2, 3, 4] and validate(out / "trace") == []
    assert not (out / "trace" / temp_name("steps.jsonl")).exists()


def test_bias_corrected_kl_changes_the_gradient_and_is_logged(sft_model, tmp_path):
    """use_bias_correction_kl: the same rollout, a different KL gradient (ρ·k3 instead of k3), and
    the KL the loss used logged as kl/ratio_weighted (as TRL logs it)."""
    grads = {}
    for corrected in (False, True):
        trainer, exp = _update_batch(sft_model, tmp_path / str(corrected), beta=0.5,
                                     use_bias_correction_kl=corrected)
        # a reference apart from the policy: at π = π_ref, k3 and so ∇ρ·k3 are 0 (up to rounding)
        exp.logp_ref = exp.logp_ref - 0.5 * exp.rollout.completion_mask
        rows = list(range(8))
        grads[corrected], _ = _step_gradient(trainer, exp, rows, 4)
        _, stats = trainer.micro_loss(exp, rows, {"num_rows": 8, "num_items_in_batch": 1.0})
        assert ("sum:kl/ratio_weighted" in stats) == corrected
    assert (grads[True] - grads[False]).norm() > 1e-3 * grads[False].norm()


def test_each_data_parallel_rank_resumes_its_own_random_stream(tmp_path):
    """The checkpoint keeps every rank's RNG state (gathered on rank 0); rank r restores state r
    (all ranks restored rank 0's, so they drew the same numbers after a resume); a checkpoint
    without them gives rank 0 the saved one and the other ranks streams of their own."""
    from minigrpo import checkpoint

    class Saves:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)

    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    states = []
    for seed in (11, 22):
        torch.manual_seed(seed)
        states.append(checkpoint.rng_state())
    expected = []
    for state in states:
        checkpoint.set_rng_state(state)
        expected.append(torch.rand(3))
    checkpoint.save_checkpoint(tmp_path, Saves(), Saves(), opt, sched, {"step": 1}, rng_per_rank=states)
    for rank in (0, 1):
        torch.manual_seed(999)
        checkpoint.load_checkpoint_state(tmp_path, opt, sched, rank=rank)
        assert torch.equal(torch.rand(3), expected[rank])
    # a one-process checkpoint: rank 0 resumes its stream; a rank it did not have gets a stream of its own
    # (it drew rank 0's numbers, so two ranks sampled the same completions), the same on every resume
    torch.manual_seed(22)
    checkpoint.save_checkpoint(tmp_path, Saves(), Saves(), opt, sched, {"step": 2})
    drawn = {}
    for rank in (0, 1, 1):
        torch.manual_seed(999)
        checkpoint.load_checkpoint_state(tmp_path, opt, sched, rank=rank)
        draw = torch.rand(3)
        assert torch.equal(draw, drawn.setdefault(rank, draw))
    assert torch.equal(drawn[0], expected[1])  # the saved state: seed 22 here
    assert not torch.equal(drawn[1], drawn[0])


def test_a_closed_output_pipe_stops_training_as_a_broken_pipe(sft_model, tmp_path):
    """`minigrpo train ... | head`: the log's write fails with BrokenPipeError, which reaches `main`
    (a quiet exit 141), not the full-disk message the trainer gives other OSErrors."""
    from minigrpo.grpo import GRPOTrainer

    def closed_pipe(line):
        if line.startswith("step"):
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        GRPOTrainer(fast_config(model=sft_model, max_steps=2, logging_steps=1), tmp_path, log=closed_pipe).train()


@pytest.fixture(scope="module")
def dropout_model(sft_model, tmp_path_factory):
    """A two-layer GPT-2 with GPT-2's dropout (0.1 on embeddings, attention and residuals), the tiny tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(sft_model)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                       bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))
    assert model.config.resid_pdrop == model.config.attn_pdrop == 0.1
    out = tmp_path_factory.mktemp("gpt2-dropout")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_disable_dropout_makes_the_first_update_start_at_the_reference(dropout_model, tmp_path, disable_dropout):
    """π_old, π_ref and the probes are computed without dropout; the update's forward too with
    disable_dropout (the default): the first update then has KL = 0 and ρ = 1. With dropout on (TRL's
    default) a model that has dropout starts away from its own reference."""
    from minigrpo.grpo import GRPOTrainer

    cfg = fast_config(model=dropout_model, max_steps=1, disable_dropout=disable_dropout, trace=True)
    GRPOTrainer(cfg, tmp_path / "run", log=lambda *_: None).train()
    metrics = load(tmp_path / "run" / "trace").steps[0].metrics
    if disable_dropout:
        assert abs(metrics["kl"]) < 1e-6 and abs(metrics["ratio_mean"] - 1) < 1e-5
    else:
        assert metrics["kl"] > 1e-4 and abs(metrics["ratio_mean"] - 1) > 1e-4, metrics


def test_torchruns_sigterm_after_a_ctrl_c_is_the_same_stop_request():
    """torchrun passes Ctrl-C to its workers as SIGINT, then SIGTERM a millisecond later: read as
    "Ctrl-C again", every rank stopped at once without its checkpoint. A second Ctrl-C, or a second
    SIGTERM, still stops at once."""
    import signal

    from minigrpo.runtime import StopRequest

    said = []
    stop = StopRequest(said.append)
    stop._handle(signal.SIGINT, None)
    stop._handle(signal.SIGTERM, None)  # torchrun's follow-up: no interruption
    assert stop.requested and len(said) == 1
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)
    stop = StopRequest(said.append)
    stop._handle(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGTERM, None)


def test_one_process_does_not_continue_a_data_parallel_checkpoints_rollout(sft_model, tmp_path):
    """A data-parallel checkpoint holds rank 0's share of its rollout: one process resuming it trained on
    that half (with dynamic sampling its prompts matched) and never on rank 1's; it samples afresh."""
    from minigrpo.grpo import GRPOTrainer

    cfg = fast_config(model=sft_model, max_steps=1, save_steps=1, num_iterations=2, trace=False)
    GRPOTrainer(cfg, tmp_path, log=lambda *_: None).train()
    state_file = tmp_path / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["world_size"] == 1 and "rollout_first_step" in state
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    said = []
    trainer = GRPOTrainer(build_config("tiny", overrides={**FAST, "model": sft_model, "max_steps": 2, "save_steps": 1,
                                                          "num_iterations": 2, "trace": False}),
                          tmp_path, resume=True, log=said.append)
    trainer._restore()
    assert trainer._resumed is None and any("holds rank 0's share only" in line for line in said)


@pytest.mark.parametrize("old_state", [True, False])
def test_a_checkpoint_old_left_after_the_swap_is_removed(tmp_path, old_state):
    """A kill after checkpoint.tmp became checkpoint, while checkpoint.old was being deleted, left checkpoint.old
    for good when no later checkpoint was written (seen once in the random-kill test); the complete checkpoint
    stays, the leftover goes."""
    from minigrpo.checkpoint import checkpoint_dir

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text('{"step": 6}')
    (tmp_path / "checkpoint.old").mkdir()
    if old_state:
        (tmp_path / "checkpoint.old" / "state.json").write_text('{"step": 3}')
    assert checkpoint_dir(tmp_path) == tmp_path / "checkpoint"
    assert not (tmp_path / "checkpoint.old").exists()
    assert (tmp_path / "checkpoint" / "state.json").read_text() == '{"step": 6}'
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # killed between the renames: the old is put back
    assert checkpoint_dir(tmp_path) == tmp_path / "checkpoint" and not (tmp_path / "checkpoint.old").exists()


def test_non_finite_probabilities_in_the_first_rollout_blame_the_model_not_the_rate(sft_model, tmp_path,
                                                                                   monkeypatch):
    """No update has run before the first rollout: "lower --learning-rate, then --resume" was wrong advice."""
    import minigrpo.trainer as T
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.runtime import TrainingError

    def nan_sampling(*args, **kwargs):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    monkeypatch.setattr(T, "collect", nan_sampling)
    with pytest.raises(TrainingError, match="first rollout .* before any update; check its weights") as err:
        GRPOTrainer(fast_config(model=sft_model, max_steps=1), tmp_path, log=lambda *_: None).train()
    assert "--learning-rate" not in str(err.value)


def test_a_non_finite_update_at_step_1_blames_the_model():
    """The fast backend does not check while decoding: bad log-probs of the first rollout meet the update's
    check, which said "lower --learning-rate" of a run no update had touched."""
    from types import SimpleNamespace

    from minigrpo.grpo import GRPOTrainer
    from minigrpo.runtime import TrainingError

    trainer = object.__new__(GRPOTrainer)
    trainer.cfg, trainer.step = SimpleNamespace(nan_policy="stop", model="runs/sft"), 0
    with pytest.raises(TrainingError, match="at step 1, before any update.*the model runs/sft") as err:
        trainer._nonfinite("logp_old became non-finite")
    assert "--learning-rate" not in str(err.value)


def test_a_knob_the_algorithm_does_not_read_neither_refuses_nor_restarts_a_resume(sft_model, tmp_path):
    """A GRPO run resumed with another --kl-coef (a PPO knob) was refused ("its trace was recorded with
    --kl-coef ...") or, untraced, restarted its rollout, while the command line said it had no effect."""
    from minigrpo.grpo import GRPOTrainer

    GRPOTrainer(fast_config(model=sft_model, max_steps=2, save_steps=1), tmp_path, log=lambda *_: None).train()
    said = []
    more = fast_config(model=sft_model, max_steps=4, save_steps=1, kl_coef=0.9, gamma=0.5)
    GRPOTrainer(more, tmp_path, resume=True, log=said.append).train()
    assert not any("fresh rollout" in line or "kl_coef" in line or "gamma" in line for line in said), said
    assert [s.rollout for s in load(tmp_path / "trace").steps] == [0, 0, 0, 0]
