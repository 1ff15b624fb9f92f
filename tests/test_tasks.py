import math

import pytest

from minigrpo.tasks import (
    EVAL_SEED_OFFSET,
    TAGS,
    RewardConfig,
    TaskData,
    TaskError,
    build_prompt,
    extract_answer,
    format_reward,
    is_premise_copy,
    load_split,
    load_train_eval,
    score_completion,
)
from minigrpo.sft_targets import sft_target, task_corpus


def wrap(answer: str, think: str = "ok") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


@pytest.fixture(scope="module")
def syllogism():
    return load_split("syllogism", "train", 60, seed=3)


@pytest.fixture(scope="module")
def logic():
    return load_split("propositional_logic", "train", 60, seed=3)


# ----------------------------------------------------------------------------- extraction / format


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>x</think><answer> Yes </answer>", "Yes"),
        ("<answer>a</answer> junk <answer>b</answer>", "b"),  # last block wins
        ("<answer>a<answer>b</answer>", "b"),  # innermost opening before the last close
        ("<answer>\n(P ∨ Q)\n</answer>", "(P ∨ Q)"),
        ("<answer></answer>", ""),
        ("<think>no answer</think>", None),
        ("<answer>unterminated", None),
        ("stray </answer> only", None),
        ("<answer>Yes</answer></answer>", "Yes"),  # a stray closing tag is not part of the answer
        ("<answer>Yes</answer> done.</answer>", "Yes"),
        ("<answer>Yes</answer><answer>No", "Yes"),  # an unclosed last block does not hide the closed one
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion",
    [
        "<think>reason</think><answer>Yes</answer>",
        "  <think>multi\nline</think>\n\n<answer>No</answer>\n",
        "<think></think><answer>(P ∧ Q)</answer>",
    ],
)
def test_format_reward_positive(completion):
    assert format_reward(completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>Yes</answer>",  # no think
        "<think>x</think>",  # no answer
        "<answer>Yes</answer><think>x</think>",  # wrong order
        "Sure! <think>x</think><answer>Yes</answer>",  # text before
        "<think>x</think><answer>Yes</answer> done",  # text after
        "<think>x</think> between <answer>Yes</answer>",  # text between
        "<think>x</think><answer>Yes</answer><answer>No</answer>",  # two answers
        "<think>a</think><think>b</think><answer>Yes</answer>",  # two thinks
        "<think>a<think>b</think></think><answer>Yes</answer>",  # nested
        "<think>x <answer>Yes</answer></think><answer>Yes</answer>",  # answer tag inside think
        "<think>x</think><answer>  </answer>",  # blank answer
        "<think>x</think><answer>Yes",  # truncated
    ],
)
def test_format_reward_negative(completion):
    assert format_reward(completion) == 0.0


# ----------------------------------------------------------------------------- syllogism scoring


def test_syllogism_normalisation(syllogism):
    cfg = RewardConfig()
    item = next(i for i in syllogism if i["answer"] == "Yes")
    assert syllogism.dataset.score_answer("Yes.", item) < 1.0  # rg alone is picky about surface form
    reference = score_completion(wrap("Yes"), item, syllogism, cfg)
    for variant in ["yes.", "YES", " yes ", "Yes!", '"yes"']:
        result = score_completion(wrap(variant), item, syllogism, cfg)
        assert result.parts == reference.parts == {"format": 1.0, "correctness": 1.0}
        assert result.correct and result.formatted
    wrong = score_completion(wrap("no."), item, syllogism, cfg)
    assert wrong.parts["correctness"] == 0.0 and not wrong.correct
    assert wrong.total == pytest.approx(cfg.format_weight)
    assert not wrong.premise_copy


def test_reward_weights_and_missing_answer(syllogism):
    item = syllogism[0]
    cfg = RewardConfig(format_weight=0.5, correctness_weight=2.0)
    good = score_completion(wrap(item["answer"]), item, syllogism, cfg)
    assert good.total == pytest.approx(2.5) and good.answer == item["answer"]
    unformatted = score_completion(f"The answer is <answer>{item['answer']}</answer>", item, syllogism, cfg)
    assert unformatted.parts == {"format": 0.0, "correctness": 1.0} and unformatted.total == pytest.approx(2.0)
    missing = score_completion("<think>hmm</think>", item, syllogism, cfg)
    assert missing.answer is None and missing.total == 0.0 and not missing.correct


# ----------------------------------------------------------------------------- propositional logic scoring


def make_logic_item(premises, variables):
    return {
        "question": "Given: " + "; ".join(premises),
        "answer": None,
        "metadata": {
            "source_dataset": "propositional_logic",
            "premises": premises,
            "variables": variables,
            "example_answer": "(P ∧ Q)",
        },
    }


def test_propositional_logic_scores_match_rg(logic):
    item = make_logic_item(["P", "Q"], ["P", "Q"])
    cfg = RewardConfig()
    cases = {
        "(P ∧ Q)": 1.0,  # valid, non-trivial
        "(Q ∨ P)": 1.0,  # a different valid conclusion
        "(P ∨ ¬P)": 0.25,  # tautology: trivial
        "(P ∧ ¬Q)": 0.05,  # not entailed
        "banana": 0.05,  # parses as an unknown atom: rg pays the non-entailed floor
        "BANANA": 0.0,  # variables not in the problem
        "(P ∧": 0.0,  # unparseable
    }
    for answer, expected in cases.items():
        assert logic.dataset.score_answer(answer, item) == expected  # pins rg's behaviour
        result = score_completion(wrap(answer), item, logic, cfg)
        assert result.parts["correctness"] == expected, answer
        assert result.correct == (expected == 1.0)
        assert not result.premise_copy


def test_premise_copy_detected_and_penalised(logic):
    item = make_logic_item(["(P ∨ P)", "(P → Q)"], ["P", "Q"])
    assert logic.dataset.score_answer("(P ∨ P)", item) == 1.0  # the hack rg pays for
    for copy in ["(P ∨ P)", "P∨P", "((P ∨ P))", " ( P ∨ P ) ", "(P → Q)."]:
        assert is_premise_copy(copy, item), copy
    for fresh in ["Q", "(P ∧ Q)", "(Q ∨ P)", None, ""]:
        assert not is_premise_copy(fresh, item), fresh

    penalised = score_completion(wrap("(P ∨ P)"), item, logic, RewardConfig(penalize_premise_copy=True))
    assert penalised.premise_copy and penalised.parts["correctness"] == 0.0 and not penalised.correct
    paid = score_completion(wrap("(P ∨ P)"), item, logic, RewardConfig(penalize_premise_copy=False))
    assert paid.premise_copy and paid.parts["correctness"] == 1.0 and paid.correct
    honest = score_completion(wrap("(P ∧ Q)"), item, logic, RewardConfig())
    assert not honest.premise_copy and honest.correct


def test_premise_copy_false_for_other_tasks(syllogism):
    item = syllogism[0]
    assert not is_premise_copy(item["metadata"]["premise1"], item)


# ----------------------------------------------------------------------------- splits / baseline / errors


@pytest.mark.parametrize("name", ["syllogism", "propositional_logic"])
def test_train_eval_disjoint(name):
    train, evaluation = load_train_eval(name, 400, 150, seed=7)
    assert len(train) == 400 and len(evaluation) == 150
    assert train.split == "train" and evaluation.split == "eval"
    assert not set(train.questions()) & set(evaluation.questions())
    assert evaluation.dataset.seed == 7 + EVAL_SEED_OFFSET


def test_load_split_is_deterministic_and_passes_knobs():
    a = load_split("syllogism", "train", 20, seed=1, inversion_probability=0.0, invalid_ratio=0.0)
    b = load_split("syllogism", "train", 20, seed=1, inversion_probability=0.0, invalid_ratio=0.0)
    assert a.questions() == b.questions()
    assert all(i["metadata"]["type"] == "syllogism" for i in a)
    p = load_split("propositional_logic", "eval", 10, seed=1, min_vars=2, max_vars=2, max_statements=2)
    assert all(len(i["metadata"]["variables"]) == 2 and len(i["metadata"]["premises"]) <= 2 for i in p)


def test_majority_baseline(syllogism):
    items = [{"question": str(k), "answer": a, "metadata": {}} for k, a in enumerate("Yes Yes Yes No".split())]
    task = TaskData(name="syllogism", items=items, dataset=syllogism.dataset)
    assert task.majority_baseline() == pytest.approx(0.75)
    assert math.isnan(TaskData("syllogism", [], syllogism.dataset).majority_baseline())


def test_majority_baseline_of_propositional_logic_uses_the_example_answers(logic):
    """No item has an ``answer``: the constant answer is the most common example answer, (P ∧ Q) here."""
    def item(premises, example):
        return {**make_logic_item(premises, ["P", "Q"]), "metadata": {
            **make_logic_item(premises, ["P", "Q"])["metadata"], "example_answer": example}}

    items = [item(["P", "Q"], "(P ∧ Q)"),          # entailed: 1.0
             item(["(P ∧ Q)"], "(P ∧ Q)"),          # entailed, but it restates the premise
             item(["P", "¬Q"], "(P ∧ ¬Q)"),         # (P ∧ Q) not entailed
             item(["(P ∨ Q)"], "P")]                # (P ∧ Q) not entailed
    task = TaskData("propositional_logic", items, logic.dataset)
    assert task.majority_baseline() == pytest.approx(1 / 4)  # the premise copy counts as wrong, as in the eval
    assert task.majority_baseline(penalize_premise_copy=False) == pytest.approx(2 / 4)
    no_reference = {**items[0], "metadata": {k: v for k, v in items[0]["metadata"].items() if k != "example_answer"}}
    assert math.isnan(TaskData("propositional_logic", [no_reference], logic.dataset).majority_baseline())


def test_unknown_task_and_knob_errors():
    with pytest.raises(TaskError) as err:
        load_split("syllogsm", "train", 5, seed=0)
    message = str(err.value)
    assert "\n" not in message and "unknown task 'syllogsm'" in message
    assert "syllogism" in message and "propositional_logic" in message
    with pytest.raises(TaskError) as err:
        load_split("propositional_logic", "train", 5, seed=0, max_var=3)
    message = str(err.value)
    assert "\n" not in message and "'max_var'" in message and "max_vars" in message and "min_complexity" in message
    with pytest.raises(TaskError, match="invalid config"):
        load_split("propositional_logic", "train", 5, seed=0, min_vars=3, max_vars=2)
    with pytest.raises(TaskError, match="unknown split"):
        load_split("syllogism", "test", 5, seed=0)
    assert issubclass(TaskError, ValueError)


@pytest.mark.parametrize("name, knobs", [
    ("letter_jumble", {"min_word_len": 40, "max_word_len": 50}),  # reasoning-gym fails only when it generates
    ("propositional_logic", {"min_vars": 2.5, "max_vars": 3.5}),
])
def test_knobs_that_fail_at_generation_are_task_errors(name, knobs):
    with pytest.raises(TaskError) as err:
        load_split(name, "train", 3, seed=0, **knobs)
    assert "\n" not in str(err.value) and "--task-kwargs" in str(err.value)


def test_seed_and_size_are_not_task_knobs():
    from minigrpo.config import ConfigError, build_config

    for knob in ("seed", "size"):
        with pytest.raises(ConfigError, match=f"'{knob}' is set by --"):
            build_config("tiny", None, {"task_kwargs": {knob: 3}})


def test_a_composite_item_is_tidied_as_the_task_it_comes_from(syllogism):
    """'yes' is tidied to 'Yes' for a syllogism item also when the task is a composite of tasks."""
    from dataclasses import replace

    item = next(i for i in syllogism.items if i["answer"] == "Yes")
    composite = replace(syllogism, name="composite")
    item = {**item, "metadata": {**item["metadata"], "source_dataset": "syllogism"}}
    cfg = RewardConfig()
    for task in (syllogism, composite):
        assert score_completion("<think>t</think><answer>yes</answer>", item, task, cfg).parts["correctness"] == 1.0


# ----------------------------------------------------------------------------- prompts / SFT


def tiny_tokenizer(chat_template=None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<eos>": 1}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<eos>")
    tok.chat_template = chat_template
    return tok


def test_build_prompt_plain_and_chat(syllogism):
    item = syllogism[0]
    plain = build_prompt(item)
    assert plain == build_prompt(item, tiny_tokenizer())  # no chat template -> plain text
    assert plain.startswith(item["question"].strip()) and plain.endswith("\nAssistant:\n")
    assert "<think>" in plain and "<answer>" in plain

    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    chat = build_prompt(item, tiny_tokenizer(template))
    assert chat.startswith("<|user|>" + item["question"].strip()) and chat.endswith("<|end|><|assistant|>")


@pytest.mark.parametrize("name", ["syllogism", "propositional_logic"])
def test_sft_target_round_trip(name, syllogism, logic):
    task = syllogism if name == "syllogism" else logic
    for item in task:
        target = sft_target(item, name)
        assert target.startswith("<think>") and format_reward(target) == 1.0
        expected = item["answer"] if name == "syllogism" else item["metadata"]["example_answer"]
        assert extract_answer(target) == expected
        assert target == sft_target(item, name)  # deterministic
        if name == "syllogism":
            assert len(target.split()) <= 35
            assert score_completion(target, item, task, RewardConfig()).correct


def test_sft_target_other_tasks():
    item = {"question": "1+1?", "answer": "2", "metadata": {}}
    assert extract_answer(sft_target(item, "basic_arithmetic")) == "2"
    with pytest.raises(TaskError):
        sft_target({"question": "?", "answer": None, "metadata": {}}, "some_task")


def test_task_corpus():
    texts = task_corpus("syllogism", 5, seed=0)
    assert set(TAGS) <= set(texts)
    assert sum(t.startswith("<think>") and t.endswith("</answer>") for t in texts) == 5
    assert task_corpus("syllogism", 5, seed=0) == texts


def test_composite_task_from_plain_tables():
    """--task-kwargs / a config file can only hold tables: each sub-task {name, weight, config}."""
    specs = [{"name": "syllogism", "weight": 1.0, "config": {}}, {"name": "basic_arithmetic"}]
    train, evaluation = load_train_eval("composite", 8, 4, 0, datasets=specs)
    sources = {item["metadata"]["source_dataset"] for item in train.items}
    assert sources == {"syllogism", "basic_arithmetic"}
    for item in train.items:
        assert score_completion(wrap(str(item["answer"])), item, train, RewardConfig()).parts["correctness"] == 1.0
    with pytest.raises(TaskError, match="name, weight and config"):
        load_split("composite", "train", 2, seed=0, datasets=[{"task": "syllogism"}])


def test_a_verifier_that_never_returns_is_stopped(monkeypatch):
    """countdown's verifier evaluates 9**9**9**9 for good (holding the GIL): the scoring worker is
    killed after SCORE_TIMEOUT_S, the answer scores 0 as a scorer error, and scoring goes on."""
    import time

    from minigrpo import scoring

    monkeypatch.setattr(scoring, "SCORE_TIMEOUT_S", 2.0)
    task = load_split("countdown", "train", 2, seed=0)
    item = task.items[0]
    right = score_completion(wrap(str(item["answer"])), item, task, RewardConfig())
    assert right.parts["correctness"] == 1.0 and not right.scorer_error
    started = time.monotonic()
    hang = score_completion(wrap("9**9**9**9"), item, task, RewardConfig())
    assert hang.parts["correctness"] == 0.0 and hang.scorer_error
    assert time.monotonic() - started < 30
    again = score_completion(wrap(str(item["answer"])), item, task, RewardConfig())
    assert again.parts["correctness"] == 1.0 and not again.scorer_error


def test_scoring_worker_bench_agrees_at_a_small_size(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "scoring_worker.py"
    spec = importlib.util.spec_from_file_location("scoring_worker_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tasks", "4", "--items", "1"]) == 0
    out = capsys.readouterr().out
    assert "mismatches                           0" in out and "items scored by the worker" in out


@pytest.mark.parametrize("name, knobs, expected", [
    ("syllogism", {"allow_some": "false"}, "a true/false value"),  # a truthy string: "Some" premises stayed
    ("chain_sum", {"min_digits": True}, "an integer"),
    ("propositional_logic", {"min_vars": 2.5}, "an integer"),
])
def test_a_task_knob_of_the_wrong_type_is_one_line(name, knobs, expected):
    with pytest.raises(TaskError) as err:
        load_split(name, "train", 3, seed=0, **knobs)
    assert "\n" not in str(err.value) and expected in str(err.value) and "--task-kwargs" in str(err.value)


def test_task_knobs_of_the_right_type_pass():
    """A float knob takes an integer; knobs whose annotation is not plain (Literal, Optional) are left to
    reasoning-gym."""
    assert len(load_split("syllogism", "train", 3, seed=0, allow_some=False)) == 3
    assert len(load_split("basic_arithmetic", "train", 3, seed=0, format_style="natural")) == 3
    assert len(load_split("manipulate_matrix", "train", 3, seed=0, w_rotate=2)) == 3  # a float knob


def test_a_composite_task_is_scored_by_the_worker_like_any_task(monkeypatch):
    """A composite's verifier spec was lost (its sub-tasks, once DatasetSpecs, are not JSON), so its answers were
    scored in the trainer's own process: countdown's 9**9**9**9 then hung the run with no cut-off."""
    import time

    from minigrpo import scoring
    from minigrpo.tasks import rebuild_verifier, verifier_spec

    monkeypatch.setattr(scoring, "SCORE_TIMEOUT_S", 2.0)
    task = load_split("composite", "train", 2, seed=0, datasets=[{"name": "countdown"}])
    spec = verifier_spec(task.dataset)
    assert spec == ("composite", 0, '{"datasets": [{"name": "countdown"}]}')
    item = task.items[0]
    assert rebuild_verifier(spec).score_answer(str(item["answer"]), item) == 1.0
    started = time.monotonic()
    hang = score_completion(wrap("9**9**9**9"), item, task, RewardConfig())
    assert hang.parts["correctness"] == 0.0 and hang.scorer_error
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("entry, needle", [
    ({"name": "syllogism", "config": {"allow_some": "false"}}, "knob 'allow_some' of task 'syllogism'"),
    ({"name": "syllogism", "config": {"no_such_knob": 1}}, "unknown config knob 'no_such_knob'"),
    ({"name": "syllogism", "config": [1]}, "must be a table"),
    ({"name": "syllogism", "weight": "heavy"}, "must be a number"),
    ({"name": 3}, "name, weight and config"),
])
def test_a_composite_checks_each_sub_tasks_knobs(entry, needle):
    with pytest.raises(TaskError, match=needle) as err:
        load_split("composite", "train", 2, seed=0, datasets=[entry])
    assert "\n" not in str(err.value)


def test_a_composite_inside_a_composite_is_built():
    inner = {"name": "composite", "config": {"datasets": [{"name": "syllogism"}]}}
    task = load_split("composite", "train", 3, seed=0, datasets=[inner])
    assert len(task) == 3 and all(item["question"] for item in task.items)


@pytest.mark.parametrize("name, knobs, needle", [
    ("calendar_arithmetic", {"offset_upper_bound": 10**9}, "OverflowError"),  # an ArithmeticError was a traceback
    ("gsm_symbolic", {"difficulty": 5.0}, "AssertionError (no message)"),  # a bare assert left "...: " and nothing
    ("kakurasu", {"max_retries": 0}, "gave no question for item 0"),  # rg returned None: a TypeError traceback
])
def test_what_reasoning_gym_raises_or_returns_for_a_bad_knob_is_one_line(name, knobs, needle):
    with pytest.raises(TaskError) as err:
        load_train_eval(name, 3, 2, 0, **knobs)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert "change --task-kwargs" in message or message.startswith("invalid config for task")


def test_date_knobs_are_iso_strings():
    """time_intervals types min_date/max_date as dates: a JSON config holds them as ISO strings."""
    task = load_split("time_intervals", "train", 4, seed=0, min_date="2000-01-01", max_date="2000-12-31",
                      task_types=["date"])
    assert all("2000" in item["question"] and "1999" not in item["question"] for item in task.items)
    with pytest.raises(TaskError, match="is a date, got '2000-13-01'; write it as an ISO string"):
        load_split("time_intervals", "train", 2, seed=0, min_date="2000-13-01")


def test_a_toml_date_is_refused_before_any_work(tmp_path):
    """A TOML date reached reasoning-gym, and a finished SFT then failed writing train_config.json (and removed
    its folder); it is refused at once, in one line."""
    from minigrpo.config import ConfigError, build_config

    file = tmp_path / "run.toml"
    file.write_text('task = "time_intervals"\n[task_kwargs]\nmin_date = 2000-01-01\n')
    with pytest.raises(ConfigError, match=r'write a date as a string, "2000-01-01"') as err:
        build_config("tiny", str(file))
    assert "\n" not in str(err.value)


def test_sft_teaches_each_composite_item_as_its_own_task():
    """SFT on a composite used the generic target for every item, and stopped at the first sub-task item without
    a text answer; each item now gets its sub-task's target, and items without one are left out."""
    from types import SimpleNamespace

    from minigrpo.sft import sft_items

    specs = [{"name": "syllogism"}, {"name": "boxnet"}]
    task = load_split("composite", "train", 40, seed=0, datasets=specs)
    sources = [item["metadata"]["source_dataset"] for item in task.items]
    assert {"syllogism", "boxnet"} <= set(sources)
    cfg = SimpleNamespace(sft_size=100, sft_style="form", penalize_premise_copy=True, task="composite")
    chosen = sft_items(task, cfg)
    assert [item["metadata"]["source_dataset"] for item, _ in chosen] == ["syllogism"] * sources.count("syllogism")
    for item, target in chosen:
        assert target == sft_target(item, "syllogism") and "Solve step by step" not in target
    with pytest.raises(TaskError, match="no SFT target for task 'boxnet'"):
        sft_items(load_split("composite", "train", 5, seed=0, datasets=[{"name": "boxnet"}]), cfg)


def test_the_scoring_worker_ends_with_its_process():
    """A process that scored through the worker left it running at exit, with ResourceWarnings about it."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from minigrpo.tasks import RewardConfig, load_split, score_completion\n"
            "t = load_split('countdown', 'train', 1, seed=0)\n"
            "score_completion('<think>x</think><answer>1+1</answer>', t.items[0], t, RewardConfig())\n")
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr
