"""Every mistake a user can make gets one line, ``minigrpo: error: ...`` and exit code 2 -- or, where
the input is usable, a run that works and says what it did (a tokenizer without a pad token,
prompts longer than --max-prompt-length, a task scorer that raises or returns NaN)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import harness  # noqa: F401 - paths
import pytest
from harness import trainer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigrpo.cli import main
from minigrpo.config import ConfigError, TrainConfig, build_config, field_names
from minigrpo.trace import load

from harness import one_thread  # noqa: E402,F401 - the fixture below

pytestmark = pytest.mark.usefixtures("one_thread")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error: "), err
    return err[0]


# ----------------------------------------------------------------------------- CLI and config
@pytest.mark.parametrize("argv, needle", [
    (["train", "--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
    (["render", "-q", "z"], "invalid choice: 'z'"),
    (["train", "--out"], "expected one argument"),
    ([], "required: command"),
    (["trace"], "required: trace_command"),
    (["train", "--preset", "tiny", "--nan-policy", "maybe"], "invalid --nan-policy: 'maybe' is not one of stop, skip"),
    (["train", "--preset", "tiny", "--seed", "-1"], "invalid --seed"),
    (["train", "--preset", "tiny", "--num-generations", "four"], "'four' is not an integer"),
    (["train", "--preset", "tiny", "--trace", "maybe"], "is not a true/false"),
    (["train", "--preset", "tiny", "--task-kwargs", "[1, 2]"], "not a JSON object"),
    (["train", "--preset", "tiny", "--model", "/no/model", "--task", "sylogism"], "unknown task 'sylogism': choose one of syllogism"),
    (["train", "--preset", "tiny", "--model", "/no/model", "--task-kwargs", '{"allow_every": true}'], "unknown config knob 'allow_every'"),
    (["train", "--preset", "tiny", "--temperature", "nan"], "invalid --temperature"),
    (["train", "--preset", "tiny", "--top-p", "inf"], "invalid --top-p"),
    (["train", "--preset", "tiny", "--learning-rate", "fast"], "invalid --learning-rate: 'fast' is not a number"),
    (["train", "--preset", "tiny", "--epsilon-high", "wide"], "invalid --epsilon-high: 'wide' is not a number"),
    (["train", "--preset", "tiny", "--trace", "maybe"], "'maybe' is not a true/false value"),
    (["eval", "--model", "/no/model", "--n", "0"], "invalid --n: 0 must be >= 1"),
    (["eval", "--model", "/no/model", "--out", "x"], "eval prints its result and writes no files"),
    (["eval", "--model", "/no/model", "--eval-n", "5"], "eval counts its items with --n"),
])
def test_bad_arguments_are_one_line(argv, needle, capsys, tmp_path):
    assert run_main([*argv, *(["--out", str(tmp_path / "o")] if argv[:1] == ["train"] else [])]) == 2
    assert needle in one_error_line(capsys)


@pytest.mark.parametrize("command", ["sft", "train"])
def test_out_that_is_a_file_is_refused_and_kept(command, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert run_main([command, "--preset", "tiny", "--model", "/no/model", "--out", str(target)]) == 2
    assert f"--out {target} is a file" in one_error_line(capsys)
    assert target.read_text() == "keep me"


def run_main(argv) -> int:
    """main()'s exit code (argparse's usage errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("text, suffix, needle", [
    ("num_generations = 'four'\n", ".toml", "invalid --num-generations: 'four' is not an integer"),
    ("num_generations = 2.5\n", ".toml", "invalid --num-generations: 2.5 is not an integer"),
    ("learning_rate = true\n", ".toml", "invalid --learning-rate: True is not a number"),
    ("trace = 1\n", ".toml", "invalid --trace: 1 is not true/false"),
    ("task = 3\n", ".toml", "invalid --task: 3 is not a string"),
    ("nope = 1\n", ".toml", "unknown config field 'nope'"),
    ("num_generations = \n", ".toml", "cannot parse config file"),
    ('[1, 2]', ".json", "must hold a table of fields"),
    ('{"learning_rate": 1e999}', ".json", "invalid --learning-rate: inf must be a finite number > 0"),
    ('{"beta": ' + "9" * 400 + "}", ".json", "invalid --beta"),
])
def test_bad_config_files_are_one_line(text, suffix, needle, capsys, tmp_path):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    assert main(["train", "--preset", "tiny", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert needle in one_error_line(capsys)


_values = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
           | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(field_names()), _values | _values.map(str), max_size=4))
def test_config_fuzz_gives_a_valid_config_or_config_error(overrides):
    """Any values a config file or the command line can hold: either ConfigError (one line) or a
    config whose every field has its declared type and passes validation."""
    try:
        cfg = build_config("tiny", None, overrides)
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    defaults = TrainConfig()
    for name in field_names():
        value, default = getattr(cfg, name), getattr(defaults, name)
        if name == "epsilon_high":
            assert value is None or isinstance(value, float)
        elif isinstance(default, bool):
            assert isinstance(value, bool), name
        elif isinstance(default, (int, float, str, dict)):
            assert type(value) is type(default), (name, value)
    assert cfg.validate() is cfg


# ----------------------------------------------------------------------------- models
def _broken_model(kind: str, sft_model: str, tmp_path) -> str:
    if kind == "a file":
        path = tmp_path / "model.bin"
        path.write_bytes(b"not a model")
        return str(path)
    path = tmp_path / "model"
    if kind == "empty folder":
        path.mkdir()
    elif kind == "garbage config":
        shutil.copytree(sft_model, path)
        (path / "config.json").write_text("{ this is not json")
    elif kind == "truncated weights":
        shutil.copytree(sft_model, path)
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif kind == "no weights":
        shutil.copytree(sft_model, path)
        (path / "model.safetensors").unlink()
    return str(path)


@pytest.mark.parametrize("kind", ["a file", "empty folder", "garbage config", "truncated weights", "no weights"])
def test_a_model_path_that_is_not_a_model_is_one_line(kind, sft_model, capsys, tmp_path):
    model = _broken_model(kind, sft_model, tmp_path)
    assert main(["train", "--preset", "tiny", "--model", model, "--out", str(tmp_path / "o"), "--max-steps", "1",
                 "--train-size", "16", "--eval-size", "4"]) == 2
    assert "cannot load model" in one_error_line(capsys)
    assert not (tmp_path / "o" / "trace").exists()


def test_a_tokenizer_without_pad_token_pads_with_eos_and_says_so(sft_model, tmp_path):
    from minigrpo.models import load_model

    folder = tmp_path / "nopad"
    shutil.copytree(sft_model, folder)
    for name, key in (("tokenizer_config.json", "pad_token"), ("config.json", "pad_token_id"),
                      ("generation_config.json", "pad_token_id")):
        data = json.loads((folder / name).read_text())
        data.pop(key, None)
        (folder / name).write_text(json.dumps(data))
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    tokenizer_json["padding"] = None  # the fast tokenizer's own padding config names the pad token too
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    _, tok = load_model(str(folder))
    assert tok.pad_token == tok.eos_token and "no pad token" in tok.minigrpo_note
    t, logs = trainer(str(folder), tmp_path / "run", max_steps=1)
    t.train()
    assert any("no pad token: padding with its eos token" in line for line in logs), logs
    assert [s.step for s in load(tmp_path / "run" / "trace").steps] == [1]


# ----------------------------------------------------------------------------- prompts, rewards
def test_prompts_longer_than_max_prompt_length_are_cut_from_the_left_and_counted(sft_model, tmp_path):
    t, logs = trainer(sft_model, tmp_path, max_steps=1, max_prompt_length=24)
    t.train()
    step = load(tmp_path / "trace").steps[0]
    assert step.metrics["frac_prompts_truncated"] == 1.0
    assert any("longer than --max-prompt-length 24: their first tokens are cut" in line for line in logs), logs
    ids = t.tokenizer(step.groups[0].prompt, add_special_tokens=False)["input_ids"]
    assert len(ids) > 24  # the trace keeps the whole prompt text; the model saw its last 24 tokens


def test_a_prompt_and_completion_beyond_the_model_context_is_one_line(sft_model, capsys, tmp_path):
    assert main(["train", "--preset", "tiny", "--model", sft_model, "--out", str(tmp_path / "o"),
                 "--max-prompt-length", "500", "--max-completion-length", "100", "--train-size", "16",
                 "--eval-size", "4"]) == 2
    assert "exceed the model's context of 512" in one_error_line(capsys)


@pytest.mark.parametrize("bad", [ValueError("scorer bug"), math.nan, math.inf, "not a number"])
def test_a_scorer_that_raises_or_returns_nan_scores_zero_and_is_counted(bad):
    from minigrpo.tasks import RewardConfig, TaskData, score_completion

    class Dataset:
        def score_answer(self, answer, entry):
            if isinstance(bad, Exception):
                raise bad
            return bad

    result = score_completion("<think>x</think><answer>Yes</answer>", {"answer": "Yes"},
                              TaskData("syllogism", [], Dataset()), RewardConfig())
    assert result.parts["correctness"] == 0.0 and result.total == pytest.approx(0.2) and result.scorer_error


def test_scorer_errors_are_counted_in_the_trace(sft_model, tmp_path, monkeypatch):
    from minigrpo import tasks

    calls = []

    def flaky(dataset, answer, item):
        calls.append(1)
        return (0.0, True) if len(calls) % 2 else (1.0, False)

    monkeypatch.setattr(tasks, "_checked_score", flaky)
    t, _ = trainer(sft_model, tmp_path, max_steps=1)
    t.train()
    m = load(tmp_path / "trace").steps[0].metrics
    assert m["scorer_errors"] >= 1 and math.isfinite(m["reward"]) and math.isfinite(m["loss"])


def test_config_file_that_is_not_utf8_or_a_folder_is_one_line(tmp_path, capsys):
    latin1 = tmp_path / "run.toml"
    latin1.write_bytes('task = "caf\xe9"\n'.encode("latin-1"))
    assert main(["train", "--preset", "tiny", "--config", str(latin1), "--out", str(tmp_path / "o")]) == 2
    assert "is not UTF-8 text" in one_error_line(capsys)
    assert main(["train", "--preset", "tiny", "--config", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_a_config_files_preset_applies_unless_a_flag_names_one(tmp_path):
    from minigrpo.config import PRESETS, build_config

    path = tmp_path / "run.toml"
    path.write_text('preset = "smollm2-135m"\nlearning_rate = 2e-6\n')
    cfg = build_config(None, str(path), {})
    assert (cfg.num_generations, cfg.max_completion_length, cfg.learning_rate) == (6, 300, 2e-6)
    cfg = build_config("tiny", str(path), {})  # --preset tiny on the command line wins
    assert cfg.max_completion_length == PRESETS["tiny"]["max_completion_length"] and cfg.learning_rate == 2e-6
    path.write_text('preset = "huge"\n')
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        build_config(None, str(path), {})


@pytest.mark.parametrize("command", ["sft", "train"])
def test_out_that_cannot_be_created_is_refused_before_any_work(command, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    out = tmp_path / "notes.txt" / "run"
    assert run_main([command, "--preset", "tiny", "--model", "/no/model", "--out", str(out)]) == 2
    assert f"{tmp_path / 'notes.txt'} is a file" in one_error_line(capsys)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):  # root ignores the mode
        return
    assert run_main([command, "--preset", "tiny", "--model", "/no/model", "--out", str(locked / "run")]) == 2
    assert "no permission to write" in one_error_line(capsys)


def test_out_that_is_the_model_folder_is_refused_and_the_model_kept(sft_model, tmp_path, capsys):
    before = sorted(p.name for p in Path(sft_model).iterdir())
    spelled = os.path.join(sft_model, "..", os.path.basename(sft_model))
    assert run_main(["train", "--preset", "tiny", "--model", sft_model, "--out", spelled]) == 2
    assert "is the --model folder" in one_error_line(capsys)
    assert sorted(p.name for p in Path(sft_model).iterdir()) == before


def test_the_config_api_checks_types_as_the_cli_does():
    from minigrpo.config import ConfigError, TrainConfig

    for bad_kw, message in ((dict(trace="false"), "--trace: 'false' is not true/false"),
                            (dict(num_generations=2.5), "--num-generations: 2.5 is not an integer"),
                            (dict(beta=None), "--beta: None is not a number"),
                            (dict(task_kwargs=[1]), "--task-kwargs")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**bad_kw).validate()
    cfg = TrainConfig(beta=0, num_generations=4.0).validate()
    assert (cfg.beta, cfg.num_generations) == (0.0, 4) and isinstance(cfg.num_generations, int)


def test_the_trainers_check_a_config_built_in_python(tmp_path):
    import dataclasses

    from minigrpo.config import ConfigError, build_config
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.sft import run_sft

    odd = dataclasses.replace(build_config("tiny"), trace="false")
    for start in (lambda: GRPOTrainer(odd, tmp_path / "rl"), lambda: run_sft(odd, tmp_path / "sft")):
        with pytest.raises(ConfigError, match="--trace: 'false' is not true/false"):
            start()
    assert not (tmp_path / "rl").exists() and not (tmp_path / "sft").exists()
