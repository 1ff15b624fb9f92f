"""Reading minigrpo traces (format ``minigrpo-trace`` version 1); ``validate.py`` checks their numbers.

Nothing is unpickled or evaluated: JSON goes through ``json.loads`` only and arrays through
``np.load(..., allow_pickle=False)``. Every problem raises :class:`TraceError` with one line
``FILE[ line N]: field F: what is wrong; what to do``. A last line of a ``.jsonl`` file that
has no trailing newline and does not parse is a torn write (the writer was killed): it is
dropped with a :class:`TraceWarning`, so a crashed run loads up to its last complete update.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import numpy as np

from .fields import (
    FIX_DAMAGED,
    FIX_MIDDLE,
    FIX_PAYLOAD,
    FIX_WRITER,
    Where,
    bad,
    bool_array,
    dict_at,
    int_at,
    is_int,
    is_num,
    list_at,
    need,
    num_array,
    num_at,
    one_line,
    parse_json,
    payload_at,
    str_at,
    str_list_at,
    type_name,
)
from .layout import (
    META_FILE,
    OPTIONAL_PROBE_ARRAYS,
    POSITION_ARRAYS,
    POSITION_SCALARS,
    PROBE_ARRAYS,
    ROLLOUT_IDS_KEY,
    ROLLOUT_LENGTHS_KEY,
    ROLLOUTS_FILE,
    STEPS_FILE,
    position_key,
    probe_key,
    probe_shape_problems,
)
from .npz import Npz, inside, payload_problem
from .schema import FORMAT_NAME, FORMAT_VERSION, Group, Meta, Probe, ProbePosition, Step, Trace, TraceError

__all__ = ["TraceWarning", "trace_warnings_as_lines", "LazyStep", "load", "read_meta", "read_index", "probe_counts",
           "StepSelection", "trace_dir"]

StepSelection = Union[None, int, slice, range, Iterable[int]]


class TraceWarning(UserWarning):
    """A recoverable problem (e.g. a torn last line dropped after a crash)."""


@contextlib.contextmanager
def trace_warnings_as_lines(prefix: str = "minigrpo: warning: "):
    """Inside the block, a TraceWarning is shown as one line on stderr (``prefix`` + the message),
    not as Python's two-line warning that points into the reader; other warnings as usual."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TraceWarning):
            print(f"{prefix}{message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


# ----------------------------------------------------------------------------- files
def _check_dir(path: str) -> None:
    if not os.path.exists(path):
        raise TraceError(one_line(f"{path}: no such trace directory; check the path "
                                  f"(a trace is the directory a run recorded into)"))
    if not os.path.isdir(path):
        raise TraceError(one_line(f"{path}: is a file, not a trace directory; pass the directory "
                                  f"that holds meta.json"))
    try:
        entries = os.listdir(path)
    except OSError as e:
        raise TraceError(one_line(f"{path}: cannot list the directory ({e.strerror}); check its permissions"))
    if not entries:
        raise TraceError(one_line(f"{path}: the directory is empty, not a trace; pass a directory "
                                  f"written by a minigrpo run (a run killed before it wrote meta.json "
                                  f"leaves nothing to read)"))
    if META_FILE not in entries:
        if "train_config.json" in entries and "state.json" in entries:  # OUT/checkpoint
            raise TraceError(one_line(f"{path}: a training checkpoint, not a trace; its run's trace is "
                                      f"{os.path.join(os.path.dirname(os.path.abspath(path)), 'trace')}"))
        if "train_config.json" in entries and "trace" not in entries:  # `minigrpo sft`, or `train --trace false`
            raise TraceError(one_line(f"{path}: a run folder with no trace in it (an SFT run, or `minigrpo train "
                                      f"--trace false`); traces are recorded by `minigrpo train` (--trace true, "
                                      f"the default)"))
        raise TraceError(one_line(f"{os.path.join(path, META_FILE)}: missing, so {path} is not a minigrpo "
                                  f"trace; pass the directory that holds meta.json"))


def _read_bytes(file: str) -> bytes:
    inside(file)
    try:
        with open(file, "rb") as f:
            return f.read()
    except OSError as e:
        raise TraceError(one_line(f"{file}: cannot read ({e.strerror}); check that it is a readable file"))


def _read_jsonl(file: str, notes: list[str]) -> list[tuple[int, dict]]:
    """(line number, object) for every complete line; a torn last line is dropped with a warning."""
    if not os.path.exists(file):  # a run killed right after meta.json: no records yet
        return []
    parts = _read_bytes(file).split(b"\n")
    out: list[tuple[int, dict]] = []
    for n, raw in enumerate(parts[:-1], start=1):
        w = Where(file, n)
        obj = parse_json(raw, w)
        if not isinstance(obj, dict):
            raise w.error(None, f"is {type_name(obj)}, not a JSON object", FIX_MIDDLE)
        out.append((n, obj))
    tail = parts[-1]
    if tail:  # no trailing newline: complete only if it parses
        n = len(parts)
        try:
            obj = parse_json(tail, Where(file, n))
            if not isinstance(obj, dict):
                raise ValueError
            out.append((n, obj))
        except (TraceError, ValueError):
            note = (f"{file} line {n}: dropped a torn last line ({len(tail)} bytes without a trailing newline: "
                    f"the writer was killed mid-write); the trace is read up to line {n - 1}")
            notes.append(note)
            warnings.warn(note, TraceWarning, stacklevel=4)
    return out


# ----------------------------------------------------------------------------- index (JSON only)
@dataclass
class RolloutRecord:
    rollout: int
    line: int
    groups: list[dict]  # validated group fields (arrays as numpy), without completion_ids
    payload: str


@dataclass
class StepRecord:
    step: int
    rollout: int
    line: int
    metrics: dict[str, float]
    probes: list[dict]  # validated probe descriptions (JSON part)
    payload: Optional[str]


@dataclass
class TraceIndex:
    """The JSON part of a trace (no payload read): enough to list steps, metrics, probes."""

    path: str
    meta: Meta
    rollouts: dict[int, RolloutRecord]
    steps: list[StepRecord]
    notes: list[str] = field(default_factory=list)  # recoverable problems (torn lines dropped)


def trace_dir(path: str | os.PathLike) -> str:
    """``path`` itself, or ``path/trace`` when ``path`` is a run folder (``minigrpo train --out``)."""
    path = os.fspath(path)
    inner = os.path.join(path, "trace")
    if not os.path.isfile(os.path.join(path, META_FILE)) and os.path.isfile(os.path.join(inner, META_FILE)):
        return inner
    return path


def read_meta(path: str | os.PathLike) -> Meta:
    """The Meta of a trace directory (format and version checked)."""
    path = os.fspath(path)
    _check_dir(path)
    file = os.path.join(path, META_FILE)
    w = Where(file)
    d = parse_json(_read_bytes(file), w)
    if not isinstance(d, dict):
        raise w.error(None, f"is {type_name(d)}, not a JSON object", FIX_DAMAGED)
    fmt = d.get("format")
    if fmt != FORMAT_NAME:
        raise w.error("format", f"{fmt!r} is not {FORMAT_NAME!r}, so this is not a minigrpo trace",
                      "pass a directory written by a minigrpo run")
    version = need(d, "version", w, "")
    if not is_int(version) or version < 1:
        raise w.error("version", f"{version!r} is not a trace version (an integer >= 1)", FIX_DAMAGED)
    if version > FORMAT_VERSION:
        raise TraceError(f"{file}: field version: trace version {version} is newer than this minigrpo reads "
                         f"({FORMAT_VERSION}): upgrade minigrpo")
    extra = d.get("extra", {})
    if not isinstance(extra, dict):
        raise bad(w, "extra", "an object", extra)
    _check_config_numbers(d.get("config"), w)
    return Meta(
        format=fmt,
        version=version,
        algo=str_at(d, "algo", w),
        model=str_at(d, "model", w),
        task=str_at(d, "task", w),
        config=dict_at(d, "config", w),
        tokenizer=str_at(d, "tokenizer", w),
        minigrpo_version=str_at(d, "minigrpo_version", w),
        git_commit=str_at(d, "git_commit", w, nullable=True),
        created=str_at(d, "created", w),
        extra=extra,
    )


# config fields the scenes, plots and validate compute with: each is a finite number (or null) when present
CONFIG_NUMBERS = ("epsilon", "epsilon_high", "beta", "kl_coef", "advantage_eps", "format_weight", "correctness_weight",
                  "temperature", "top_p", "learning_rate", "vf_coef", "cliprange_value", "gamma", "lam",
                  "max_completion_length", "max_prompt_length", "num_generations", "train_size", "eval_size",
                  "eval_n", "seed", "max_steps")


def _check_config_numbers(config: Any, w: Where) -> None:
    if not isinstance(config, dict):
        return  # dict_at says what is wrong with it
    for key in CONFIG_NUMBERS:
        value = config.get(key)
        if value is None:
            continue
        try:
            finite = is_num(value) and math.isfinite(float(value))
        except OverflowError:  # an integer of 400 digits
            finite = False
        if not finite:
            raise w.error(f"config.{key}", f"{value!r} is not a finite number", FIX_DAMAGED)


def _parse_group(g: Any, w: Where, prefix: str) -> dict:
    if not isinstance(g, dict):
        raise bad(w, prefix.rstrip("."), "an object", g)
    completions = str_list_at(g, "completions", w, prefix)
    G = len(completions)
    out = {
        "prompt": str_at(g, "prompt", w, prefix),
        "question": str_at(g, "question", w, prefix),
        "answer": str_at(g, "answer", w, prefix, nullable=True),
        "completions": completions,
        "mean": num_at(g, "mean", w, prefix),
        "std": num_at(g, "std", w, prefix),
    }
    for name in ("rewards", "advantages"):
        out[name] = num_array(need(g, name, w, prefix), w, prefix + name)
    out["correct"] = bool_array(need(g, "correct", w, prefix), w, prefix + "correct")
    parts = dict_at(g, "reward_parts", w, prefix)
    out["reward_parts"] = {k: num_array(v, w, f"{prefix}reward_parts.{k}") for k, v in parts.items()}
    for name, a in [(n, out[n]) for n in ("rewards", "advantages", "correct")] + [
            (f"reward_parts.{k}", v) for k, v in out["reward_parts"].items()]:
        if a.shape != (G,):
            raise w.error(prefix + name, f"has {a.shape[0]} entries but completions has {G}", FIX_WRITER)
    return out


def _parse_probe(p: Any, w: Where, prefix: str) -> dict:
    if not isinstance(p, dict):
        raise bad(w, prefix.rstrip("."), "an object", p)
    positions = []
    for j, q in enumerate(list_at(p, "positions", w, prefix)):
        qp = f"{prefix}positions[{j}]."
        if not isinstance(q, dict):
            raise bad(w, qp.rstrip("."), "an object", q)
        positions.append({
            "pos": int_at(q, "pos", w, qp),
            "kind": str_at(q, "kind", w, qp),
            "sampled_token_id": int_at(q, "sampled_token_id", w, qp),
            "tokens": str_list_at(q, "tokens", w, qp),
            **{s: num_at(q, s, w, qp) for s in POSITION_SCALARS},
        })
    return {
        "group": int_at(p, "group", w, prefix, minimum=0),
        "index": int_at(p, "index", w, prefix, minimum=0),
        "text": str_at(p, "text", w, prefix),
        "tokens": str_list_at(p, "tokens", w, prefix),
        "positions": positions,
    }


def read_index(path: str | os.PathLike) -> TraceIndex:
    """Meta plus every rollout and step record, from the JSON files only (no npz is opened)."""
    path = os.fspath(path)
    meta = read_meta(path)
    notes: list[str] = []
    rfile, sfile = os.path.join(path, ROLLOUTS_FILE), os.path.join(path, STEPS_FILE)
    # steps first: a run writes a rollout's line before the lines of its steps, so the rollouts read
    # after the steps hold every rollout they name, also while the run is writing
    step_lines = _read_jsonl(sfile, notes)
    rollouts: dict[int, RolloutRecord] = {}
    for n, d in _read_jsonl(rfile, notes):
        w = Where(rfile, n)
        rid = int_at(d, "rollout", w, minimum=0)
        if rid in rollouts:
            raise w.error("rollout", f"rollout {rid} is recorded twice (first on line {rollouts[rid].line})",
                          FIX_MIDDLE)
        groups = [_parse_group(g, w, f"groups[{i}].") for i, g in enumerate(list_at(d, "groups", w))]
        rollouts[rid] = RolloutRecord(rid, n, groups, payload_at(d, "payload", w))
    if rollouts and not os.path.isfile(sfile):  # the writer creates both files at once: this one was lost
        raise TraceError(one_line(f"{sfile}: is missing (or not a readable file), but {ROLLOUTS_FILE} holds "
                                  f"{len(rollouts)} rollouts; restore {STEPS_FILE} from a copy of the whole trace"))
    steps: list[StepRecord] = []
    for n, d in step_lines:
        w = Where(sfile, n)
        k = int_at(d, "step", w, minimum=1)
        if steps and k <= steps[-1].step:
            raise w.error("step", f"step {k} does not follow step {steps[-1].step} (steps must increase)", FIX_MIDDLE)
        rid = int_at(d, "rollout", w, minimum=0)
        if rid not in rollouts:
            raise w.error("rollout", f"step {k} trains on rollout {rid}, which {ROLLOUTS_FILE} does not hold",
                          FIX_DAMAGED)
        metrics = {}
        for name, v in dict_at(d, "metrics", w).items():
            if not is_num(v):
                raise bad(w, f"metrics.{name}", "a number or null", v)
            metrics[name] = math.nan if v is None else float(v)
        probes = [_parse_probe(p, w, f"probes[{i}].") for i, p in enumerate(list_at(d, "probes", w))]
        payload = payload_at(d, "payload", w, nullable=True)
        if payload is None and probes:
            raise w.error("payload", f"is null but the step has {len(probes)} probes", FIX_WRITER)
        steps.append(StepRecord(k, rid, n, metrics, probes, payload))
    return TraceIndex(path, meta, rollouts, steps, notes)


# ----------------------------------------------------------------------------- payloads
def _load_groups(path: str, rec: RolloutRecord) -> list[Group]:
    w = Where(os.path.join(path, ROLLOUTS_FILE), rec.line)
    sizes = [len(g["completions"]) for g in rec.groups]
    with Npz(path, rec.payload, w, "payload") as npz:
        flat = npz.get(ROLLOUT_IDS_KEY, "i")
        lengths = npz.get(ROLLOUT_LENGTHS_KEY, "i")
    if lengths.shape != (sum(sizes),) or (lengths < 0).any() or int(lengths.sum()) != flat.shape[0]:
        raise TraceError(one_line(
            f"{npz.full}: key {ROLLOUT_LENGTHS_KEY}: {lengths.shape[0]} lengths summing to {int(lengths.sum())} do "
            f"not split {flat.shape[0]} token ids into the rollout's {sum(sizes)} completions; {FIX_DAMAGED}"))
    ids = np.split(flat, np.cumsum(lengths)[:-1]) if lengths.size else []
    groups, start = [], 0
    for g, G in zip(rec.groups, sizes):
        groups.append(Group(completion_ids=list(ids[start:start + G]), **g))
        start += G
    return groups


def _load_probes(path: str, rec: StepRecord, groups: list[Group]) -> list[Probe]:
    if not rec.probes:
        return []
    sfile = os.path.join(path, STEPS_FILE)
    probes = []
    with Npz(path, rec.payload, Where(sfile, rec.line), "payload") as npz:
        for i, pj in enumerate(rec.probes):
            arrays = {name: npz.get(probe_key(i, name), kind) for name, kind in PROBE_ARRAYS.items()}
            for name, kind in OPTIONAL_PROBE_ARRAYS.items():
                key = probe_key(i, name)
                arrays[name] = npz.get(key, kind) if key in npz.keys else None
            positions = [
                ProbePosition(**q, **{name: npz.get(position_key(i, j, name), kind)
                                      for name, kind in POSITION_ARRAYS.items()})
                for j, q in enumerate(pj["positions"])
            ]
            probe = Probe(group=pj["group"], index=pj["index"], text=pj["text"], tokens=pj["tokens"],
                          positions=positions, **arrays)
            problems = probe_shape_problems(probe, [len(g.completions) for g in groups])
            if problems:
                name, msg = problems[0]
                raise TraceError(one_line(f"{npz.full}: field probes[{i}].{name} (step {rec.step}, {sfile} line "
                                          f"{rec.line}): {msg}; {FIX_DAMAGED}"))
            probes.append(probe)
    return probes


def _select(index: TraceIndex, steps: StepSelection) -> list[StepRecord]:
    records = index.steps
    if steps is None:
        return list(records)
    if isinstance(steps, slice):
        return records[steps]
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        found = [r for r in records if r.step == int(steps)]
        if not found:
            held = f"steps {records[0].step}..{records[-1].step}" if records else "no steps"
            raise TraceError(one_line(f"{os.path.join(index.path, STEPS_FILE)}: step {int(steps)} is not recorded "
                                      f"(the trace holds {held}); ask for a recorded step"))
        return found
    wanted = steps if isinstance(steps, range) else {int(s) for s in steps}
    return [r for r in records if r.step in wanted]


class LazyStep(Step):
    """A Step whose probes are read from their npz payload on first access of ``.probes``.

    It is a :class:`Step` in every respect (fields, equality, ``dataclasses.replace``); a
    payload problem raises :class:`TraceError` at that first access. Pickles as a plain Step.
    """

    @property  # type: ignore[override]
    def probes(self) -> list[Probe]:
        d = self.__dict__
        if "_probes" not in d:
            d["_probes"] = d["_loader"]()
            del d["_loader"]
        return d["_probes"]

    @probes.setter
    def probes(self, value: list[Probe]) -> None:
        self.__dict__["_probes"] = value
        self.__dict__.pop("_loader", None)

    @property
    def probes_loaded(self) -> bool:
        return "_probes" in self.__dict__

    def __eq__(self, other):
        if not isinstance(other, Step):
            return NotImplemented
        return ((self.step, self.rollout, self.metrics, self.probes, self.groups)
                == (other.step, other.rollout, other.metrics, other.probes, other.groups))

    __hash__ = None  # type: ignore[assignment]  # as the dataclass: mutable, unhashable

    def __reduce__(self):
        return (Step, (self.step, self.rollout, self.metrics, self.probes, self.groups))


def probe_counts(step: Step) -> list[int]:
    """Number of positions of each probe of ``step``, without reading an unloaded payload."""
    if isinstance(step, LazyStep) and not step.probes_loaded:
        return list(step.__dict__["_position_counts"])
    return [len(p.positions) for p in step.probes]


def _make_step(path: str, rec: StepRecord, groups: list[Group], lazy: bool) -> Step:
    if not lazy:
        return Step(step=rec.step, rollout=rec.rollout, metrics=rec.metrics,
                    probes=_load_probes(path, rec, groups), groups=groups)
    full = os.path.join(path, rec.payload or "")
    problem = payload_problem(full) if rec.probes else None  # found now, as the strict load finds it
    if problem:
        raise Where(os.path.join(path, STEPS_FILE), rec.line).error(
            "payload", f"payload file {rec.payload} {problem} ({full})", FIX_PAYLOAD)
    step = LazyStep.__new__(LazyStep)
    step.__dict__.update(step=rec.step, rollout=rec.rollout, metrics=rec.metrics, groups=groups,
                         _loader=lambda: _load_probes(path, rec, groups),
                         _position_counts=[len(p["positions"]) for p in rec.probes])
    return step


def _load(path: str | os.PathLike, steps: StepSelection = None, lazy: bool = True) -> tuple[Trace, TraceIndex]:
    path = os.fspath(path)
    index = read_index(path)
    selected = _select(index, steps)
    needed = sorted(index.rollouts) if steps is None else sorted({r.rollout for r in selected})
    rollouts = {rid: _load_groups(path, index.rollouts[rid]) for rid in needed}
    out = [_make_step(path, r, rollouts[r.rollout], lazy) for r in selected]
    return Trace(path=path, meta=index.meta, steps=out, rollouts=rollouts), index


def load(path: str | os.PathLike, steps: StepSelection = None, lazy: bool = True) -> Trace:
    """Load a trace directory into schema objects (arrays as numpy).

    ``steps`` selects which updates to load: ``None`` all; a ``slice`` indexes the recorded
    steps in order (``slice(-10, None)``: the last ten); an ``int`` is one step number
    (TraceError if absent); a ``range`` or any other iterable is a set of step numbers
    (absent ones are skipped). Only the rollouts the selected steps train on are loaded
    (all of them when ``steps`` is None).

    All JSON, meta and rollout payloads are read and checked here, and the step payload
    files must exist. With ``lazy=True`` (default) each step's probe arrays are read on
    first access of ``step.probes`` (a damaged payload raises TraceError then); with
    ``lazy=False`` every payload is read and checked now.
    """
    return _load(path, steps, lazy)[0]
