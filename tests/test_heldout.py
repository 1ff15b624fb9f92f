"""An eval leaves out what the evaluated model trained on, up its whole chain of runs."""

from __future__ import annotations

import json

import pytest

from minigrpo.heldout import trained_questions, training_runs
from minigrpo.tasks import TaskError, load_split, load_train_eval


def _model_folder(path, **config):
    path.mkdir(parents=True)
    (path / "train_config.json").write_text(json.dumps(config))
    return str(path)


def _train_questions(size, seed, task="syllogism", **knobs):
    return set(load_split(task, "train", size, seed, **knobs).questions())


def test_a_chain_collects_the_train_splits_of_every_run_on_the_task(tmp_path):
    sft = _model_folder(tmp_path / "sft", task="syllogism", train_size=60, seed=3, task_kwargs={}, model="tiny")
    other = _model_folder(tmp_path / "other", task="propositional_logic", train_size=40, seed=0, task_kwargs={},
                          model=sft)
    grpo = _model_folder(tmp_path / "grpo", task="syllogism", train_size=25, seed=0, task_kwargs={}, model=other)

    assert [run["train_size"] for run in training_runs(grpo)] == [25, 40, 60]
    expected = _train_questions(25, 0) | _train_questions(60, 3)  # the propositional_logic run adds none
    assert trained_questions("syllogism", grpo) == expected
    assert len(expected) > 60  # the two splits are not the same items

    _, evaluation = load_train_eval("syllogism", 10, 80, 0, also_exclude=trained_questions("syllogism", grpo))
    assert not set(evaluation.questions()) & expected
    assert len(evaluation) == 80


def test_the_same_eval_without_the_chain_would_hold_trained_items(tmp_path):
    # the guard is needed where the task space is small: a plain eval set at train_size 10 meets
    # a 2000-item train set of the same seed
    _, plain = load_train_eval("propositional_logic", 10, 300, 0)
    assert set(plain.questions()) & _train_questions(2000, 0, "propositional_logic")


def test_models_without_a_record_and_loops_end_the_chain(tmp_path):
    assert trained_questions("syllogism", "tiny") == set()
    assert trained_questions("syllogism", "HuggingFaceTB/SmolLM2-135M") == set()
    assert trained_questions("syllogism", str(tmp_path / "missing")) == set()
    a, b = tmp_path / "a", tmp_path / "b"
    _model_folder(a, task="syllogism", train_size=5, seed=0, task_kwargs={}, model=str(b))
    _model_folder(b, task="syllogism", train_size=7, seed=1, task_kwargs={}, model=str(a))
    assert [run["train_size"] for run in training_runs(str(a))] == [5, 7]
    assert trained_questions("syllogism", str(a)) == _train_questions(5, 0) | _train_questions(7, 1)


@pytest.mark.parametrize("text, needle", [
    ("{not json", "cannot be read"),
    ('{"task": "syllogism", "train_size": "many", "seed": 0}', "lacks a valid train_size"),
])
def test_a_broken_record_is_a_clear_error(tmp_path, text, needle):
    (tmp_path / "train_config.json").write_text(text)
    with pytest.raises(TaskError, match=needle) as info:
        trained_questions("syllogism", str(tmp_path))
    assert "\n" not in str(info.value)


def test_cli_eval_leaves_out_the_models_training_items(sft_model, tmp_path, monkeypatch):
    """A model that trained on 2000 items: eval at a smaller --train-size still skips all 2000."""
    import shutil

    import minigrpo.evaluate
    from minigrpo.cli import main

    model = tmp_path / "model"
    shutil.copytree(sft_model, model)
    config = json.loads((model / "train_config.json").read_text())
    config.update(task="propositional_logic", train_size=2000, seed=0, task_kwargs={})
    (model / "train_config.json").write_text(json.dumps(config))
    seen = {}

    def fake_evaluate(model, tokenizer, data, cfg, n=None):
        seen["questions"] = set(data.questions())
        return {"accuracy": 0.0, "n": len(data)}

    monkeypatch.setattr(minigrpo.evaluate, "evaluate", fake_evaluate)
    assert main(["eval", "--task", "propositional_logic", "--model", str(model), "--n", "300", "--train-size", "10",
                 "--seed", "0", "--json"]) == 0
    trained = _train_questions(2000, 0, "propositional_logic")
    assert len(seen["questions"]) == 300
    assert not seen["questions"] & trained


def test_a_run_whose_split_is_a_prefix_of_the_callers_adds_nothing(tmp_path, monkeypatch):
    """SFT then RL with one preset: the SFT split is the RL run's own; it is not generated a second time."""
    import minigrpo.heldout as heldout

    sft = _model_folder(tmp_path / "sft", task="syllogism", train_size=30, seed=0, task_kwargs={}, model="tiny")
    calls = []
    real = heldout.load_split
    monkeypatch.setattr(heldout, "load_split", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert trained_questions("syllogism", sft, own=(30, 0, {})) == set()
    assert calls == []
    assert trained_questions("syllogism", sft, own=(20, 0, {})) == _train_questions(30, 0)  # more than own
    assert trained_questions("syllogism", sft, own=(30, 1, {})) == _train_questions(30, 0)  # another seed
    assert trained_questions("syllogism", sft, own=(50, 0, {})) == _train_questions(30, 0)  # not always a prefix:
    assert len(calls) == 3
    assert set(load_split("acre", "train", 3, 0).questions()) - set(load_split("acre", "train", 5, 0).questions())


def test_another_tools_train_config_ends_the_chain(tmp_path):
    for text in ('[{"lr": 1}]', '{"learning_rate": 1e-5, "task": "x"}'):
        folder = tmp_path / str(len(text))
        folder.mkdir()
        (folder / "train_config.json").write_text(text)
        assert training_runs(str(folder)) == [] and trained_questions("syllogism", str(folder)) == set()
