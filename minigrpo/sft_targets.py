"""SFT targets: a deterministic reference completion ``<think>..</think><answer>..</answer>`` per
item, and the texts the tiny model's tokenizer is trained on.

For syllogism the reasoning is the argument's abstract form (``form``, the tiny model's) or a
check of reasoning-gym's validity rules in words (``rules``, for pretrained models); either
stops before the verdict, which is left to the first answer token (the decision the lecture
scenes zoom in on).
"""

from __future__ import annotations

import re
from typing import Any

from .tasks import INSTRUCTION, TAGS, TaskError, build_prompt, load_split

_STATEMENT = re.compile(r"^(All|No|Some) (.+?) are (not )?(.+?)\.?$")


def _abstract_form(statements: list[str]) -> list[str]:
    """'Some teachers are not parents' -> 'some-not A-B', terms lettered in order of appearance."""
    letters: dict[str, str] = {}
    out = []
    for text in statements:
        match = _STATEMENT.match(text.strip())
        if match is None:
            return [text]  # unknown wording: keep it verbatim
        quantifier, subject, negated, predicate = match.groups()
        code = quantifier.lower() + ("-not" if negated else "")
        terms = [letters.setdefault(term, "ABCDEFGH"[len(letters)]) for term in (subject, predicate)]
        out.append(f"{code} {terms[0]}-{terms[1]}")
    return out


def _syllogism_reasoning(metadata: dict[str, Any]) -> str:
    """The argument's abstract form; validity depends on the form alone, so the answer is a
    function of this short string. The verdict is left to the answer token on purpose: the
    decision the lecture scenes zoom in on is the first token inside <answer>."""
    p1, p2, conclusion = _abstract_form([metadata["premise1"], metadata["premise2"], metadata["conclusion"]])
    return f"Form: {p1}, {p2}; conclusion {conclusion}."


_KIND = {"all": "universal affirmative", "no": "universal negative",
         "some": "particular affirmative", "some-not": "particular negative"}
_NEGATIVE, _PARTICULAR, _UNIVERSAL = {"no", "some-not"}, {"some", "some-not"}, {"all", "no"}
# conversion ("No A are B" -> "No B are A"): what each premise kind converts to
_CONVERTS_TO = {"no": "no", "all": "some", "some": "some", "some-not": None}


def _parse_statement(text: str) -> tuple[str, str, str] | None:
    """'Some teachers are not parents' -> ('some-not', 'teachers', 'parents'); None for other wording."""
    match = _STATEMENT.match(text.strip())
    if match is None:
        return None
    quantifier, subject, negated, predicate = match.groups()
    return quantifier.lower() + ("-not" if negated else ""), subject, predicate


def _broken_rule(p1: tuple[str, str, str], p2: tuple[str, str, str], c: tuple[str, str, str]) -> str | None:
    """The first of reasoning-gym's syllogism rules that ``p1, p2 => c`` breaks, in words; None if valid.

    Mirrors ``SyllogismDataset._is_valid_syllogism`` for rg's layout (p1 = A-B, p2 = B-C, c = A-C:
    p1 is the minor premise, p2 the major), check for check and in its order.
    """
    (q1, a, _), (q2, _, c_pred), (q3, _, _) = p1, p2, c
    if q1 in _NEGATIVE and q2 in _NEGATIVE:
        return "both premises are negative"
    if q1 in _PARTICULAR and q2 in _PARTICULAR:
        return "both premises are particular"
    if q3 in _UNIVERSAL and (q1 in _PARTICULAR or q2 in _PARTICULAR):
        return "the conclusion is universal but a premise is particular"
    if q3 in _NEGATIVE and not (q1 in _NEGATIVE or q2 in _NEGATIVE):
        return "the conclusion is negative but neither premise is"
    if q3 in _UNIVERSAL and q1 not in _UNIVERSAL:  # the conclusion's subject is distributed
        return f"{a} is distributed in the conclusion but not in premise 1"
    if q3 in _NEGATIVE and q2 not in _NEGATIVE:  # the conclusion's predicate is distributed
        return f"{c_pred} is distributed in the conclusion but not in premise 2"
    if (q1 in _NEGATIVE or q2 in _NEGATIVE) and q3 not in _NEGATIVE:
        return "a premise is negative but the conclusion is not"
    return None


def _syllogism_rules(metadata: dict[str, Any]) -> str | None:
    """A short chain of thought in words that checks reasoning-gym's rules, for a pretrained model.

    It names the kind of each statement and the rule that decides, and stops there: the verdict
    itself is left to the answer token, as in the abstract form. None when the wording is unknown.
    """
    p1, p2, c = (_parse_statement(metadata[k]) for k in ("premise1", "premise2", "conclusion"))
    if p1 is None or p2 is None or c is None:
        return None
    if metadata.get("type") == "inversion":
        k = metadata["selected_premise"]
        q = (p1, p2)[k - 1][0]
        into = _CONVERTS_TO[q]
        rule = (f"A {_KIND[q]} converts only to a {_KIND[into]}." if into
                else f"A {_KIND[q]} does not convert.")
        return (f"The conclusion swaps the terms of premise {k}, which is {_KIND[q]}; "
                f"the conclusion is {_KIND[c[0]]}. {rule}")
    broken = _broken_rule(p1, p2, c)
    verdict = f"Rule broken: {broken}." if broken else "Every rule holds."
    return (f"The middle term is {p1[2]}. Premise 1 is {_KIND[p1[0]]}, premise 2 is {_KIND[p2[0]]}, "
            f"the conclusion is {_KIND[c[0]]}. {verdict}")


SFT_STYLES = ("form", "rules")


def sft_target(item: dict[str, Any], task_name: str, style: str = "form") -> str:
    """A deterministic reference completion ``<think>..</think><answer>..</answer>``.

    ``style`` matters for syllogism only: ``form`` (the tiny model's) states the argument's
    abstract form; ``rules`` checks reasoning-gym's rules in words (for pretrained models).
    """
    if style not in SFT_STYLES:
        raise TaskError(f"unknown SFT style {style!r}: choose one of {', '.join(SFT_STYLES)}")
    metadata = item.get("metadata", {})
    if task_name == "composite":  # each item is taught as the task it comes from
        task_name = metadata.get("source_dataset", task_name)
    if task_name == "syllogism":
        reasoning = _syllogism_rules(metadata) if style == "rules" else None
        reasoning = reasoning or _syllogism_reasoning(metadata)
        return f"<think>{reasoning}</think><answer>{item['answer']}</answer>"
    if task_name == "propositional_logic":
        conclusion = metadata["example_answer"]
        return f"<think>Checking the premises, {conclusion} holds whenever they all do.</think><answer>{conclusion}</answer>"
    if isinstance(item.get("answer"), str):
        return f"<think>Solve step by step.</think><answer>{item['answer']}</answer>"
    raise TaskError(f"no SFT target for task {task_name!r}: its items have no string answer")


def task_corpus(name: str, n: int, seed: int, **task_kwargs: Any) -> list[str]:
    """Texts for training a small BPE tokenizer: plain prompts, SFT targets (where defined) and the tags."""
    task = load_split(name, "train", n, seed, **task_kwargs)
    texts = list(TAGS) + [INSTRUCTION]
    for item in task.items:
        texts.append(build_prompt(item))
        try:
            texts.append(sft_target(item, name))
        except TaskError:
            pass
    return texts
