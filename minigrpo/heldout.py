"""Held-out items stay held out along a chain of runs.

A run's eval split already skips the questions of its own train split (``tasks.load_train_eval``). But a
model that minigrpo wrote was trained by earlier runs too: ``minigrpo sft`` made it, ``minigrpo train``
went on from there, maybe with another ``--train-size``, seed or task knobs. Every model folder that
minigrpo writes holds ``train_config.json``: the task, ``train_size``, ``seed`` and ``task_kwargs`` of the
run that wrote it, and ``model``, the model that run started from. ``trained_questions`` follows that chain
and collects the train questions of every run on it for the same task, so that an eval (``minigrpo
eval``, or a run's own evaluation) can leave them out.

The chain ends at a model that is not a folder with ``train_config.json`` (a hub id, the embedded
``tiny``, a folder minigrpo did not write, whose ``train_config.json`` lacks task, train_size and
seed) or that can no longer be found (a relative path is read from the current folder, as the run
that recorded it read it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tasks import TaskError, load_split

MAX_CHAIN = 64  # runs followed up a chain; a longer one is surely a loop the path check missed


def training_runs(model: str) -> list[dict[str, Any]]:
    """The ``train_config.json`` of ``model``'s folder, then of the model that run started from, and so on."""
    runs: list[dict[str, Any]] = []
    seen: set[Path] = set()
    spec: Any = model
    while isinstance(spec, str) and spec and len(runs) < MAX_CHAIN:
        file = Path(spec) / "train_config.json"
        if not file.is_file() or file.resolve() in seen:
            break
        seen.add(file.resolve())
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise TaskError(f"{file} cannot be read ({exc}); it records what the model in {spec} was trained on: "
                            f"restore it, or delete it to evaluate without leaving those items out") from None
        if not isinstance(config, dict) or not {"task", "train_size", "seed"} <= set(config):
            break  # another tool's train_config.json: not a record of a minigrpo run
        runs.append(config)
        spec = config.get("model")
    return runs


def trained_questions(task: str, model: str, own: tuple | None = None) -> set[str]:
    """Every train question of ``task`` that the runs up ``model``'s chain trained on. ``own`` is the caller's
    own (train_size, seed, task_kwargs): a run with exactly that split adds nothing and is not generated again
    (a smaller one is not always a prefix: reasoning-gym's acre draws another set at another size)."""
    questions: set[str] = set()
    for config in training_runs(model):
        if config.get("task") != task:
            continue
        try:
            size, seed = int(config["train_size"]), int(config["seed"])
            knobs = dict(config.get("task_kwargs") or {})
        except (KeyError, TypeError, ValueError):
            raise TaskError(f"a train_config.json up the chain of {model} lacks a valid train_size, seed or "
                            f"task_kwargs; restore it, or delete it to evaluate without leaving those items out"
                            ) from None
        if own is not None and (size, seed, knobs) == (own[0], own[1], dict(own[2] or {})):
            continue  # the caller's own split (SFT then RL on one preset), which it leaves out already
        questions.update(load_split(task, "train", size, seed, **knobs).questions())
    return questions


def trained_before(cfg) -> set[str]:
    """What the model a run (or an eval) with config ``cfg`` starts from trained on, beyond ``cfg``'s own split."""
    return trained_questions(cfg.task, cfg.model, (cfg.train_size, cfg.seed, cfg.task_kwargs))
