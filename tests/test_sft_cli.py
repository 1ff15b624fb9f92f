"""`minigrpo sft` on bad input: one line on stderr, exit 2, and no partial output left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from minigrpo.cli import main
from minigrpo.runtime import TrainingError

SMALL = ["--train-size", "60", "--eval-size", "20", "--eval-n", "20"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error:"), err
    return err[0]


def test_task_without_sft_target_fails_before_writing(tmp_path, capsys, monkeypatch):
    import minigrpo.sft

    monkeypatch.setattr(minigrpo.sft, "build_tiny", lambda *a, **k: pytest.fail("built the model for nothing"))
    out = tmp_path / "runs" / "sft"
    assert main(["sft", "--task", "graph_color", "--preset", "tiny", "--out", str(out), *SMALL]) == 2
    assert "no SFT target" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_bad_task_config_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["sft", "--task", "composite", "--out", str(out)]) == 2
    one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("inside", ["trace", "checkpoint"])
def test_refuses_an_rl_run_folder(tmp_path, capsys, inside):
    run = tmp_path / "grpo"
    (run / inside).mkdir(parents=True)
    (run / "summary.json").write_text("rl")
    assert main(["sft", "--preset", "tiny", "--out", str(run), *SMALL]) == 2
    assert "choose a new --out" in one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == sorted([inside, "summary.json"])
    assert (run / "summary.json").read_text() == "rl"


@pytest.mark.parametrize("exists", [False, True])
def test_failure_after_building_the_model_cleans_up(tmp_path, capsys, monkeypatch, exists):
    """A new --out is removed whole; in an existing one only what this run wrote (.tiny-base) goes."""
    import minigrpo.sft

    def fail(*a, **k):
        raise TrainingError("eval failed")

    monkeypatch.setattr(minigrpo.sft, "evaluate", fail)
    out = tmp_path / "new" / "sft"
    if exists:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("keep")
    assert main(["sft", "--preset", "tiny", "--out", str(out), *SMALL]) == 2
    assert "eval failed" in one_error_line(capsys)
    if exists:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not (tmp_path / "new").exists()


class CharTokenizer:
    """One id per character (ord), EOS 0: lengths and labels are countable by hand."""
    eos_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_sft_examples_leave_out_targets_that_do_not_fit():
    """A target cut at max_completion_length would lose its </answer> and EOS: such items are left out."""
    from types import SimpleNamespace

    from minigrpo.sft import sft_examples

    item = {"question": "q?", "answer": "a", "metadata": {}}
    cfg = SimpleNamespace(max_completion_length=6, max_prompt_length=4, task="t")
    examples, too_long = sft_examples([(item, "abcde"), (item, "abcdef"), (item, "xy")], CharTokenizer(), cfg)
    assert too_long == 1  # "abcdef" + EOS is 7 tokens
    assert [t for _, t in examples] == [[97, 98, 99, 100, 101, 0], [120, 121, 0]]  # whole, EOS last
    assert all(len(p) == 4 for p, _ in examples)  # prompts cut from the left
    cfg.max_completion_length = 2
    with pytest.raises(TrainingError, match="fits --max-completion-length 2"):
        sft_examples([(item, "abcde")], CharTokenizer(), cfg)


def test_collate_labels_only_the_target_and_its_eos():
    import torch

    from minigrpo.sft import collate

    ids, attention, labels = collate([([5, 6, 7], [8, 0]), ([9], [10, 11, 0])], pad_id=3, device="cpu")
    assert ids.tolist() == [[5, 6, 7, 8, 0], [9, 10, 11, 0, 3]]
    assert attention.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert labels.tolist() == [[-100, -100, -100, 8, 0], [-100, 10, 11, 0, -100]]
    # run_sft's shift: the logits at t predict labels[t + 1]; a model that puts all mass on the right
    # next token has loss 0 exactly on these labels, and the prompt's and pad's predictions do not count
    logits = torch.full((2, 5, 12), -1e4)
    for b in range(2):
        for t in range(4):
            logits[b, t, ids[b, t + 1]] = 0.0

    def loss():
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 12), labels[:, 1:].reshape(-1)).item()

    logits[0, :2] = 0.0  # uniform where row 0 predicts its prompt's tokens 6 and 7: not in the loss
    logits[1, 3] = 0.0  # uniform where row 1's EOS predicts the padding after it: not in the loss
    assert loss() == 0.0
    logits[1, 0] = 0.0  # uniform where row 1's last prompt token predicts its first target token
    assert loss() == pytest.approx(torch.log(torch.tensor(12.0)).item() / 5)  # 5 labelled tokens


@pytest.mark.parametrize("command", ["sft", "train"])
def test_an_out_that_holds_a_model_is_not_overwritten(tmp_path, capsys, command):
    """A finished run or an SFT model in --out would be replaced without a word: refused in one line,
    before any work, the folder untouched."""
    out = tmp_path / "done"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "llama"}')
    (out / "checkpoint").mkdir()
    extra = ["--model", str(tmp_path / "elsewhere")] if command == "train" else []
    assert main([command, "--preset", "tiny", "--out", str(out), *extra, *SMALL]) == 2
    line = one_error_line(capsys)
    assert "already holds a model" in line and ("--resume" in line) == (command == "train")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json"]
    assert (out / "config.json").read_text() == '{"model_type": "llama"}'


def test_a_closed_output_pipe_is_not_an_error(monkeypatch, capsys):
    """`minigrpo trace inspect RUN | head -1`: the reader went away; exit 141 quietly, no error line."""
    from pathlib import Path

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    trace = Path(__file__).resolve().parents[1] / "traces" / "demo-grpo-syllogism"
    assert main(["trace", "inspect", str(trace)]) == 141
    assert capsys.readouterr().err == ""


def test_a_bad_config_is_said_once_in_a_data_parallel_run(tmp_path, capsys, monkeypatch):
    """Every rank fails alike on a bad config: rank 0 prints the line, the others only exit 2."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "--preset", "tiny", "--num-generations", "1", "--out", str(tmp_path / "x")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == lines
    monkeypatch.setenv("WORLD_SIZE", "1")  # a RANK left in the environment of a one-process command
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--preset", "tiny", "--num-generations", "1", "--out", str(tmp_path / "x")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_trls_generation_batch_size_is_not_taken_for_ours(tmp_path, capsys):
    """TRL's generation_batch_size is the rollout size; ours was the rows per generate call: renamed
    sampling_batch_size, and the old name (flag or config field) says where it went."""
    from minigrpo.config import ConfigError, build_config

    with pytest.raises(SystemExit):
        main(["train", "--preset", "tiny", "--generation-batch-size", "96"])
    assert "now --sampling-batch-size" in one_error_line(capsys)
    with pytest.raises(ConfigError, match="'generation_batch_size' is now 'sampling_batch_size'.*buffer_size"):
        build_config("tiny", overrides={"generation_batch_size": 96})
    assert build_config("tiny", overrides={"sampling_batch_size": 96}).sampling_batch_size == 96


@pytest.mark.parametrize("command", ["eval", "sft"])
def test_a_completion_length_past_the_models_context_is_one_line(sft_model, tmp_path, capsys, command):
    """eval and sft generate too (their evaluations): a length past the model's positions is refused
    (--max-completion-length 100000 decoded for minutes), the default 300 on the tiny model is not."""
    args = ["--task", "syllogism", "--max-completion-length", "100000"]
    if command == "eval":
        args += ["--model", sft_model, "--n", "1"]
    else:
        args += ["--preset", "tiny", "--out", str(tmp_path / "sft"), *SMALL]
    assert main([command, *args]) == 2
    assert "the model's context of 512" in one_error_line(capsys)
    assert main(["eval", "--task", "syllogism", "--model", sft_model, "--n", "1", "--json"]) == 0


def test_flag_mistakes_point_at_the_commands_own_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--bogus", "1"])
    assert one_error_line(capsys).endswith("see `minigrpo train --help`")
    assert main(["sft", "--max-steps", "2", "--sft-steps", "5"]) == 2
    assert "give one" in one_error_line(capsys)


def test_a_data_parallel_error_is_said_once_or_with_its_rank(tmp_path, capsys, monkeypatch):
    """An error every rank meets alike (an agreed stop, a buffer that does not split) is said by rank 0
    alone; one another rank met on its own keeps its line, with its rank."""
    from minigrpo import cli
    from minigrpo.runtime import TrainingError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for every_rank in (True, False):
        monkeypatch.setattr(cli, "_run", lambda args: (_ for _ in ()).throw(TrainingError("stopped", every_rank)))
        for rank in ("0", "1"):
            monkeypatch.setenv("RANK", rank)
            assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "x")]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            if rank == "0":
                assert err == ["minigrpo: error: stopped"]
            else:
                assert err == ([] if every_rank else ["minigrpo: error: [rank 1] stopped"])


def test_a_run_folder_in_use_is_refused_and_loses_nothing(sft_model, tmp_path, capsys):
    """Two runs into one --out: the second rewound the first's trace under it (train --resume) or, when
    stopped, deleted the model the other had saved (sft's clean-up). A run holds a lock on its folder;
    a second one is refused in one line and touches nothing."""
    from minigrpo.runtime import run_folder_lock

    out = tmp_path / "busy"
    out.mkdir()
    (out / "note.txt").write_text("the other run's")
    with run_folder_lock(out):
        for command in (["sft", "--preset", "tiny", "--sft-steps", "1"],
                        ["train", "--preset", "tiny", "--model", sft_model, "--max-steps", "1"]):
            assert main([*command, "--train-size", "40", "--eval-size", "4", "--eval-n", "4", "--out", str(out)]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err[-1].startswith("minigrpo: error: --out") and "in use by another minigrpo run" in err[-1]
    assert sorted(p.name for p in out.iterdir()) == ["note.txt"]


def test_resume_into_a_model_folder_without_a_checkpoint_is_refused(sft_model, tmp_path, capsys):
    """`train --resume` into an SFT model's folder started from scratch and replaced the model."""
    import shutil

    out = tmp_path / "sft-copy"
    shutil.copytree(sft_model, out)
    before = (out / "model.safetensors").read_bytes()
    assert main(["train", "--preset", "tiny", "--model", sft_model, "--out", str(out), "--resume", "--max-steps", "1"]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_a_ctrl_c_while_the_libraries_import_is_one_line(monkeypatch, capsys):
    """torch, transformers and reasoning-gym take a second or two to import; a Ctrl-C then printed a
    25-line traceback."""
    import builtins

    real_import = builtins.__import__

    def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 1 and name == "models":
            raise KeyboardInterrupt
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert main(["eval", "--preset", "tiny"]) == 130
    assert capsys.readouterr().err.strip() == "minigrpo: interrupted"


def test_a_killed_final_save_leaves_no_config_next_to_missing_weights(tmp_path, monkeypatch):
    """The final model's files move from a temp folder one by one; config.json, which marks a folder
    as a model, moved first, so a kill then left a "model" without weights that no run would replace."""
    from minigrpo import faults, runtime

    class Saves:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "generation_config.json", "model.safetensors"):
                (Path(folder) / name).write_text(name)

    monkeypatch.setattr(faults, "hit", lambda where: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        runtime.save_final_model(Saves(), Saves(), tmp_path)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("flags, epochs, steps", [
    (["--sft-steps", "5"], 0, 5),  # the steps asked for replace a preset's or a file's epochs (were ignored)
    (["--max-steps", "5"], 0, 5),
    (["--sft-epochs", "2"], 2, None),
])
def test_sft_steps_replace_epochs_from_a_preset_or_file(tmp_path, flags, epochs, steps):
    from minigrpo.cli import _config_from_args, _parser

    config = tmp_path / "run.toml"
    config.write_text("sft_epochs = 3\n")
    args, _ = _parser().parse_known_args(["sft", "--preset", "tiny", "--config", str(config), *flags])
    cfg = _config_from_args(args, "sft")
    assert cfg.sft_epochs == epochs and (steps is None or cfg.sft_steps == steps)


def test_sft_steps_and_epochs_together_are_refused(capsys):
    assert main(["sft", "--preset", "tiny", "--sft-epochs", "1", "--sft-steps", "5"]) == 2
    assert "give one" in capsys.readouterr().err


def test_values_in_messages_paste_back_as_flags(tmp_path, capsys):
    """A resume refusal printed Python reprs (--task-kwargs {'allow_some': False}, --epsilon-high None),
    the final line an unquoted path with a space; --epsilon-high null (JSON's word) and an empty --out."""
    from minigrpo.config import build_config
    from minigrpo.checkpoint import _flag_value

    assert _flag_value({"allow_some": False}) == """'{"allow_some": false}'"""
    assert (_flag_value(None), _flag_value(True), _flag_value(0.2)) == ("none", "true", "0.2")
    assert build_config("tiny", None, {"epsilon_high": "null"}).epsilon_high is None
    assert main(["sft", "--preset", "tiny", "--out", " "]) == 2
    assert "--out is empty" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ('num_generations = "4"\n', "is not an integer"),
    ('trace = "off"\n', "is not true/false"),
    ('beta = "0.5"\n', "is not a number"),
])
def test_a_config_files_strings_are_not_parsed_as_numbers_or_switches(tmp_path, text, message):
    """TOML/JSON type their values: "4" in a file is a string, refused as the docs say (it was parsed as if
    typed on a command line, unlike the Python API's TrainConfig(num_generations="4"))."""
    from minigrpo.config import ConfigError, build_config

    config = tmp_path / "run.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(None, str(config))
    config.write_text('epsilon_high = "none"\n')  # TOML has no null: its word for one
    assert build_config(None, str(config)).epsilon_high is None


def test_a_config_files_sft_steps_replace_a_presets_epochs(tmp_path):
    from minigrpo.config import build_config

    config = tmp_path / "run.toml"
    config.write_text('preset = "smollm-135m"\nsft_steps = 5\n')
    cfg = build_config(None, str(config))
    assert (cfg.sft_steps, cfg.sft_epochs) == (5, 0)
    # a file with both (every train_config.json holds both) is taken as written: epochs > 0 win, as in the config
    config.write_text('preset = "tiny"\nsft_steps = 5\nsft_epochs = 2\n')
    assert (build_config(None, str(config)).sft_epochs, build_config(None, str(config)).sft_steps) == (2, 5)
    config.write_text('preset = "smollm-135m"\nsft_steps = 5\n')
    assert build_config(None, str(config), {"sft_epochs": "2"}).sft_epochs == 2  # a flag decides
    dumped = tmp_path / "train_config.json"
    dumped.write_text(__import__("json").dumps(build_config("smollm2-135m").to_dict()))
    assert build_config(None, str(dumped)).to_dict() == build_config("smollm2-135m").to_dict()


@pytest.mark.parametrize("flag, value, message", [
    ("learning_rate", "1e39", "beyond float32's range"), ("sft_learning_rate", "1e39", "beyond float32's range"),
    ("temperature", "1e-38", "must be >= 1e-06"),
])
def test_values_float32_cannot_hold_are_refused(flag, value, message):
    """A rate of 1e39 crashed inside AdamW (a traceback); a temperature of 1e-38 overflowed the logits."""
    from minigrpo.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=message):
        build_config("tiny", None, {flag: value})


def test_sft_of_zero_steps_is_refused(tmp_path, capsys):
    assert main(["sft", "--preset", "tiny", "--max-steps", "0", "--out", str(tmp_path / "o"), *SMALL]) == 2
    assert "0 steps" in one_error_line(capsys) and not (tmp_path / "o").exists()


def test_sft_has_no_warm_up_of_rls():
    """SFT took RL's warmup_steps: 1000 of them kept its rate near 0 for a whole short run."""
    import torch

    from minigrpo import optim
    from minigrpo.config import build_config

    cfg = build_config("tiny", None, {"warmup_steps": "1000"})
    params = [torch.nn.Parameter(torch.zeros(2))]
    _, rl = optim.make_optimizer(params, cfg, 1.0, 10)
    _, sft = optim.make_optimizer(params, cfg, 1.0, 10, schedule="constant", warmup_steps=0)
    assert rl.get_last_lr()[0] == pytest.approx(1 / 1000) and sft.get_last_lr()[0] == 1.0


def test_sft_builds_its_optimizer_without_rls_warm_up(sft_model, tmp_path, monkeypatch):
    import minigrpo.sft as sft
    from minigrpo.config import build_config

    seen = {}

    class Seen(Exception):
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Seen

    monkeypatch.setattr(sft.optim, "make_optimizer", spy)
    cfg = build_config("tiny", None, {"model": sft_model, "warmup_steps": "1000", "max_steps": "1", "eval_n": "2",
                                      "eval_size": "4", "train_size": "40", "sft_size": "8"})
    with pytest.raises(Seen):
        sft.run_sft(cfg, tmp_path / "o", log=lambda *_: None)
    assert seen.get("warmup_steps") == 0


@pytest.mark.parametrize("argv, expected", [
    (["train", "--kl-coef", "0.9", "--gamma", "0.5", "--sft-steps", "7", "--max-num-gen-batches", "9"],
     ["RL training does not read the SFT knobs --sft-steps", "GRPO run does not read --gamma, --kl-coef",
      "without --dynamic-sampling nothing reads --max-num-gen-batches"]),
    (["train", "--algo", "ppo", "--beta", "0.7", "--scale-rewards", "none", "--kl-coef", "0.1"],
     ["PPO run does not read --beta, --scale-rewards"]),
    (["sft", "--learning-rate", "0.5", "--beta", "9", "--max-steps", "5", "--sft-learning-rate", "1e-3"],
     ["SFT does not read --beta, --learning-rate"]),
    (["train", "--beta", "0.1", "--learning-rate", "1e-3"], []),
])
def test_flags_a_run_does_not_read_get_a_note(argv, expected, capsys):
    from minigrpo.cli import _config_from_args, _note_unused_run_flags, _parser

    args = _parser().parse_args([*argv, "--preset", "tiny"])
    _note_unused_run_flags(args, _config_from_args(args, args.command))
    err = capsys.readouterr().err.strip()
    lines = err.splitlines() if err else []
    assert len(lines) == len(expected) and all(line.startswith("minigrpo: note: ") for line in lines), lines
    for line, want in zip(lines, expected):
        assert want in line and line.endswith("no effect"), line
