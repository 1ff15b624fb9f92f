"""Reasoning-gym tasks: prompts, answer extraction and rewards (SFT targets: ``sft_targets.py``).

Output format. The model reasons inside ``<think>...</think>`` and then answers
inside ``<answer>...</answer>``. ``format_reward`` pays 1.0 only for exactly
that shape: one think block, then one non-empty answer block, nothing else
outside them except whitespace, and no tags nested inside.

Correctness. Scoring always uses reasoning-gym's own scorer,
``dataset.score_answer(answer, entry)``, on the answer taken from the LAST
``<answer>`` block. First the answer is normalised, so that the reward
measures logic rather than spelling: surrounding whitespace is always
stripped, and for syllogism a bare yes/no in any case, with or without
closing punctuation or quotes (``yes.``, ``"NO"``), becomes ``Yes``/``No``.
Without this, rg would score ``Yes.`` 0.75 and ``yes`` 0.0. For
propositional_logic one trailing full stop is dropped. The ``correctness``
part is the rg score itself, partial credit included (propositional_logic:
valid non-trivial 1.0, trivial 0.25, non-entailed 0.05; rg's parser reads almost any text
without capitals as a formula, so junk such as ``hello`` scores 0.05 too, and 0.25 on items
whose premises contradict each other; only text it cannot read at all scores 0.0).
``correct`` means that score == 1.0. Correctness does not depend on format,
and a scorer that raises, returns NaN/inf or runs past ``scoring.SCORE_TIMEOUT_S`` counts
as 0.0 (``scorer_error``).

Premise copying. The propositional_logic scorer pays 1.0 for a conclusion
that just restates a premise. ``is_premise_copy`` detects this, comparing
with whitespace removed and redundant parentheses ignored. Under
``RewardConfig.penalize_premise_copy`` (on by default) a copy gets
correctness 0.0. Every result reports ``premise_copy``, so a
premise_copy_rate can be logged. Copies that are only logically equivalent
to a premise, such as ``(Q ∧ Q)`` given ``Q``, are not caught.

Splits. rg item ``i`` of a dataset with seed ``s`` is drawn from
``Random(s + i)``. The train split uses ``seed`` and the eval split uses
``seed + EVAL_SEED_OFFSET``, so their random streams do not overlap while
``size < EVAL_SEED_OFFSET``. Small task spaces still repeat questions by
chance: with propositional_logic at default settings, about 10% of eval
questions also appear in a 2000-item train set. ``load_train_eval`` (or
``load_split(..., exclude_questions=...)``) therefore skips eval items whose
question occurs in train, and takes replacements from further along the
eval stream. The runs a model came from trained on their own train splits:
``heldout.trained_questions`` collects them, for ``also_exclude``.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import re
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import reasoning_gym
from reasoning_gym.factory import DATASETS
from reasoning_gym.logic.propositional_logic import parse_expr

from . import scoring
from .config import field_default

EVAL_SEED_OFFSET = 1_000_003
FIRST_CLASS_TASKS = ("syllogism", "propositional_logic")
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
INSTRUCTION = "Answer with <think>reasoning</think> then <answer>answer</answer>."

_INNER = r"(?:(?!</?think>|</?answer>).)*"  # text containing no tag
_FORMAT_RE = re.compile(rf"\s*<think>{_INNER}</think>\s*<answer>({_INNER})</answer>\s*", re.DOTALL)


class TaskError(ValueError):
    """Bad task name, bad task config knob, or a task feature that is not supported."""


# ----------------------------------------------------------------------------- data


@dataclass
class TaskData:
    """A fixed list of rg entries plus the rg dataset that scores them."""

    name: str
    items: list[dict[str, Any]]
    dataset: Any  # reasoning_gym ProceduralDataset; used for score_answer
    split: str = "train"

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    def questions(self) -> list[str]:
        return [item["question"] for item in self.items]

    def majority_baseline(self, penalize_premise_copy: bool = True) -> float:
        """The accuracy (counted as the eval counts it) of always giving the most common reference answer.

        An item's reference answer is its ``answer``; propositional_logic has ``answer = None``,
        and there it is the valid conclusion in ``metadata["example_answer"]`` (the one SFT
        teaches). For syllogism this is the share of the majority label; for
        propositional_logic, the share of items that one fixed conclusion answers correctly
        (a policy that ignores the premises scores that much). A premise copy counts as wrong
        when ``penalize_premise_copy``, as in the eval. NaN for an empty split or an item with
        no reference answer at all. Ties go to the answer seen first.
        """
        answers = [item.get("answer") if item.get("answer") is not None
                   else (item.get("metadata") or {}).get("example_answer") for item in self.items]
        if not answers or any(a is None for a in answers):
            return float("nan")
        majority = Counter(answers).most_common(1)[0][0]
        hits = sum(_rg_score(self.dataset, majority, item) == 1.0
                   and not (penalize_premise_copy and is_premise_copy(majority, item)) for item in self.items)
        return hits / len(self.items)


def _check_task(name: str, task_kwargs: dict[str, Any]) -> dict[str, dataclasses.Field]:
    """Refuse an unknown task, an unknown knob or a knob of the wrong kind; the task's knob fields."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.6)
        choices = list(dict.fromkeys([*close, *FIRST_CLASS_TASKS, *sorted(DATASETS)[:3]]))
        raise TaskError(
            f"unknown task {name!r}: choose one of {', '.join(choices)}, ... "
            f"({len(DATASETS)} tasks; see reasoning_gym.factory.DATASETS)"
        )
    config_cls = DATASETS[name][1]
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")}
    for key, value in task_kwargs.items():
        if key not in fields:
            raise TaskError(f"unknown config knob {key!r} for task {name!r}: valid knobs are {', '.join(fields)}")
        expected = _knob_kind(fields[key])
        if expected and not _is_kind(value, expected):
            raise TaskError(f"invalid --task-kwargs: knob {key!r} of task {name!r} is {expected}, got {value!r} "
                            f"({type(value).__name__}); its default is {field_default(fields[key])!r}")
    return fields


_KINDS = {bool: "a true/false value", int: "an integer", float: "a number", str: "a string"}


def _knob_kind(fld: dataclasses.Field) -> str | None:
    """What a task knob takes, from its annotation where that is plainly bool, int, float or str (a
    string under ``from __future__ import annotations``) and its default agrees; None for anything
    else (Optional, Literal, tuples, enums), which reasoning-gym then checks itself."""
    annotation = fld.type
    if isinstance(annotation, str):
        annotation = {"bool": bool, "int": int, "float": float, "str": str}.get(annotation.strip())
    kind = _KINDS.get(annotation)
    default = field_default(fld)
    if kind and default not in (None, dataclasses.MISSING) and not _is_kind(default, kind):
        return None  # the task's own default disagrees with its annotation (rearc's diff_ub: int = 0.2)
    return kind


def _is_kind(value, kind: str) -> bool:
    """A JSON/TOML value fits ``kind`` ("false" is not false; True is not an integer; 3 is a number)."""
    if kind == "a true/false value":
        return isinstance(value, bool)
    if kind == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _create_dataset(name: str, size: int, seed: int, task_kwargs: dict[str, Any]):
    try:  # how the scoring worker builds the same verifier (the task's config is plain JSON from a config)
        spec = (name, seed, json.dumps(task_kwargs, sort_keys=True))
    except (TypeError, ValueError):
        spec = None  # a config of Python objects (a caller's DatasetSpec): scored in this process
    rg_kwargs = _rg_kwargs(name, task_kwargs)
    try:
        dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **rg_kwargs)
    except _CONFIG_ERRORS as err:
        raise TaskError(f"invalid config for task {name!r} {task_kwargs}: {_describe(err)}") from None
    if spec is not None:
        _DATASET_SPECS[dataset] = spec
    return dataset


def _rg_kwargs(name: str, task_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``task_kwargs`` checked (``_check_task``) and, for a composite, its sub-task tables turned into
    reasoning-gym's ``DatasetSpec``s, each sub-task's config checked the same way (nested composites too)."""
    task_kwargs = _iso_knobs(name, task_kwargs, _check_task(name, task_kwargs))
    if name != "composite" or not isinstance(task_kwargs.get("datasets"), list):
        return task_kwargs
    return {**task_kwargs, "datasets": [_dataset_spec(entry) for entry in task_kwargs["datasets"]]}


# a knob's annotation (a class, or its name under ``from __future__ import annotations``) -> the ISO type
_ISO_TYPES = {datetime.date: datetime.date, "date": datetime.date, "datetime.date": datetime.date,
              datetime.time: datetime.time, "time": datetime.time, "datetime.time": datetime.time}


def _iso_knobs(name: str, task_kwargs: dict[str, Any], fields: dict[str, dataclasses.Field]) -> dict[str, Any]:
    """Knobs that reasoning-gym types as a date or a time (time_intervals' ``min_date``, ...), given as the ISO
    strings a JSON config can hold, made the objects reasoning-gym compares them as."""
    converted = dict(task_kwargs)
    for key, value in task_kwargs.items():
        kind = _ISO_TYPES.get(fields[key].type)
        if kind is None or not isinstance(value, str):
            continue
        try:
            converted[key] = kind.fromisoformat(value)
        except ValueError:
            example = "2000-01-01" if kind is datetime.date else "08:30:00"
            raise TaskError(f"invalid --task-kwargs: knob {key!r} of task {name!r} is a {kind.__name__}, got "
                            f"{value!r}; write it as an ISO string, e.g. {example!r}") from None
    return converted


def _dataset_spec(entry):
    """A composite task's sub-task from a config file or --task-kwargs (a table ``{name, weight, config}``)."""
    from reasoning_gym.composite import DatasetSpec

    if not isinstance(entry, dict):
        return entry
    unknown = set(entry) - {"name", "weight", "config"}
    if unknown or not isinstance(entry.get("name"), str):
        raise TaskError(f"a composite sub-task is a table with name, weight and config; got {entry}")
    config, weight = entry.get("config", {}), entry.get("weight", 1.0)
    if not isinstance(config, dict):
        raise TaskError(f"the config of composite sub-task {entry['name']!r} is {config!r}; it must be a table of "
                        f"that task's knobs")
    if not _is_kind(weight, "a number"):
        raise TaskError(f"the weight of composite sub-task {entry['name']!r} is {weight!r}; it must be a number")
    return DatasetSpec(name=entry["name"], weight=weight, config=_rg_kwargs(entry["name"], config))


# what reasoning-gym raises for a config it cannot use, at creation or only when it generates an item
_CONFIG_ERRORS = (AssertionError, TypeError, ValueError, AttributeError, KeyError, IndexError, ArithmeticError)


def _describe(err: BaseException) -> str:
    """An exception as one line; a bare ``assert`` in reasoning-gym has no message, only its type."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else f"{type(err).__name__} (no message)"


def _generate(dataset, index: int, name: str, task_kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        item = dataset[index]
    except _CONFIG_ERRORS as err:
        raise TaskError(f"task {name!r} cannot generate its items with {task_kwargs or 'its defaults'} "
                        f"({_describe(err)}); change --task-kwargs") from None
    if not isinstance(item, dict) or not isinstance(item.get("question"), str):
        raise TaskError(f"task {name!r} gave no question for item {index} with {task_kwargs or 'its defaults'} "
                        f"(reasoning-gym returned {type(item).__name__}); change --task-kwargs")
    return item


def load_split(
    name: str,
    split: str,
    size: int,
    seed: int,
    *,
    exclude_questions: Iterable[str] = (),
    **task_kwargs: Any,
) -> TaskData:
    """Load ``size`` rg entries for ``split`` ("train" or "eval").

    Train uses ``seed`` and eval uses ``seed + EVAL_SEED_OFFSET``. Entries whose
    question is in ``exclude_questions`` are skipped, and replacements come from
    further along the same seeded stream. ``task_kwargs`` go to the task's rg
    config; unknown knobs raise TaskError.
    """
    if split not in ("train", "eval"):
        raise TaskError(f"unknown split {split!r}: choose one of train, eval")
    if size < 0:
        raise TaskError(f"split size must be >= 0, got {size}")
    excluded = set(exclude_questions)
    stream_seed = seed if split == "train" else seed + EVAL_SEED_OFFSET
    # Make the stream long enough to replace every excluded question once (and then some).
    stream_len = size + (len(excluded) + 16 if excluded else 0)
    dataset = _create_dataset(name, stream_len, stream_seed, task_kwargs)
    items: list[dict[str, Any]] = []
    for index in range(stream_len):
        if len(items) == size:
            break
        item = _generate(dataset, index, name, task_kwargs)
        if item["question"] not in excluded:
            items.append(item)
    if len(items) < size:
        raise TaskError(
            f"task {name!r} produced only {len(items)} {split} items outside the excluded questions "
            f"(wanted {size}); the task space is too small for these settings"
        )
    return TaskData(name=name, items=items, dataset=dataset, split=split)


def load_train_eval(name: str, train_size: int, eval_size: int, seed: int, *,
                    also_exclude: Iterable[str] = (), **task_kwargs: Any):
    """(train, eval), where no eval question is a train question or one of ``also_exclude`` (what the model
    trained on before: ``heldout.trained_questions``). The eval set depends on train_size."""
    train = load_split(name, "train", train_size, seed, **task_kwargs)
    excluded = set(train.questions()) | set(also_exclude)
    evaluation = load_split(name, "eval", eval_size, seed, exclude_questions=excluded, **task_kwargs)
    return train, evaluation


# ----------------------------------------------------------------------------- prompt / parsing


def build_prompt(item: dict[str, Any], tokenizer: Any = None) -> str:
    """The question plus a one-line format instruction.

    If the tokenizer has a chat template, both go in a single user message, with
    no system role because some templates reject one, and the template adds the
    generation prompt. Otherwise the result is plain text ending in "Assistant:\\n".
    """
    user_text = f"{item['question'].strip()}\n{INSTRUCTION}"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user_text}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{user_text}\nAssistant:\n"


def extract_answer(completion: str) -> str | None:
    """Stripped text of the last ``<answer>...</answer>`` block, or None when there is no closed block.

    The block is the last ``<answer>`` that a ``</answer>`` follows, up to the first ``</answer>``
    after it: a stray closing tag after the block is not part of the answer (as reasoning-gym's
    ``extract_answer``), and an opening tag left unclosed at the end does not hide the block before it.
    """
    last_end = completion.rfind("</answer>")
    if last_end < 0:
        return None
    start = completion.rfind("<answer>", 0, last_end)
    if start < 0:
        return None
    body = start + len("<answer>")
    return completion[body : completion.find("</answer>", body)].strip()


def format_reward(completion: str) -> float:
    """1.0 iff the completion is exactly ``<think>..</think><answer>..</answer>`` (whitespace allowed around)."""
    match = _FORMAT_RE.fullmatch(completion)
    return 1.0 if match is not None and match.group(1).strip() else 0.0


def normalize_answer(answer: str | None, task_name: str) -> str | None:
    """Tidy the answer before rg scores it (see the module docstring)."""
    if answer is None:
        return None
    answer = answer.strip()
    if task_name == "syllogism":
        bare = answer.strip(" \t\n.!?\"'`*").lower()
        if bare in ("yes", "no"):
            return bare.capitalize()
    elif task_name == "propositional_logic" and answer.endswith("."):
        answer = answer[:-1].rstrip()
    return answer


# ----------------------------------------------------------------------------- premise copying


def _strip_outer_parens(text: str) -> str:
    while text.startswith("(") and text.endswith(")"):
        depth = 0
        for position, char in enumerate(text):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0 and position < len(text) - 1:
                return text  # the first "(" closes before the end: "(P) ∧ (Q)"
        text = text[1:-1]
    return text


def _canonical_formula(text: str) -> str:
    squashed = _strip_outer_parens(re.sub(r"\s+", "", text))
    try:  # rg's own parser: also ignores redundant parentheses inside the formula
        return str(parse_expr(squashed))
    except (ValueError, IndexError, RecursionError):
        return squashed


def is_premise_copy(answer: str | None, item: dict[str, Any]) -> bool:
    """True iff a propositional_logic answer equals one of the premises (up to whitespace and parentheses)."""
    metadata = item.get("metadata", {})
    if answer is None or metadata.get("source_dataset") != "propositional_logic":
        return False
    candidate = normalize_answer(answer, "propositional_logic")
    if not candidate:
        return False
    target = _canonical_formula(candidate)
    return any(_canonical_formula(premise) == target for premise in metadata.get("premises", []))


# ----------------------------------------------------------------------------- rewards


@dataclass
class RewardConfig:
    format_weight: float = 0.2
    correctness_weight: float = 1.0
    penalize_premise_copy: bool = True


@dataclass
class RewardResult:
    parts: dict[str, float]  # unweighted: {"format": 0/1, "correctness": rg score in [0, 1]}
    total: float  # format_weight * format + correctness_weight * correctness
    correct: bool  # rg score == 1.0 (and not a penalised premise copy)
    formatted: bool
    premise_copy: bool
    answer: str | None  # the extracted answer before normalisation
    scorer_error: bool = False  # the task's scorer raised, returned NaN/inf or timed out: scored 0.0


def _rg_score(dataset: Any, answer: str | None, item: dict[str, Any]) -> float:
    return _checked_score(dataset, answer, item)[0]


def _checked_score(dataset: Any, answer: str | None, item: dict[str, Any]) -> tuple[float, bool]:
    """(score, failed): a scorer that raises, returns something other than a finite number, or takes
    longer than scoring.SCORE_TIMEOUT_S scores 0.0, and ``failed`` says so (counted as
    ``scorer_errors`` in the trace's step metrics). Datasets this module created are scored in the
    scoring worker (``minigrpo/scoring.py``), which a verifier that never returns cannot stall."""
    spec = verifier_spec(dataset) if scoring.AVAILABLE else None
    score = scoring.SCORER.score(spec, answer, item) if spec is not None else scoring.NOT_SENT
    if score is scoring.NOT_SENT:
        score = score_here(dataset, answer, item)
    return (score, False) if score is not None and math.isfinite(score) else (0.0, True)


def score_here(dataset: Any, answer: str | None, item: dict[str, Any]) -> float | None:
    try:
        return float(dataset.score_answer(answer, item))
    except Exception:  # noqa: BLE001 - model output must never crash training; it just scores 0
        return None


_DATASET_SPECS: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def verifier_spec(dataset: Any) -> tuple | None:
    """(name, seed, config) a dataset this module created was built from; None for any other object."""
    try:
        return _DATASET_SPECS.get(dataset)
    except TypeError:  # not weak-referenceable (None, a test's stand-in): not ours
        return None


def rebuild_verifier(spec: tuple):
    """The dataset that scores a task's answers, from the (name, seed, config) it was created with."""
    name, seed, config = spec
    return _create_dataset(name, 1, seed, json.loads(config))


def score_completion(completion: str, item: dict[str, Any], task: TaskData, cfg: RewardConfig) -> RewardResult:
    formatted = format_reward(completion)
    answer = extract_answer(completion)
    # a composite task's item is tidied as the task it comes from (its verifier is that task's)
    normalized = normalize_answer(answer, (item.get("metadata") or {}).get("source_dataset", task.name))
    correctness, scorer_error = (_checked_score(task.dataset, normalized, item) if normalized is not None
                                 else (0.0, False))
    premise_copy = is_premise_copy(answer, item)
    if premise_copy and cfg.penalize_premise_copy:
        correctness = 0.0
    total = cfg.format_weight * formatted + cfg.correctness_weight * correctness
    return RewardResult(
        parts={"format": formatted, "correctness": correctness},
        total=total,
        correct=correctness == 1.0,
        formatted=formatted == 1.0,
        premise_copy=premise_copy,
        answer=answer,
        scorer_error=scorer_error,
    )
