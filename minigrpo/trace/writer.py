"""Crash-safe writer of a minigrpo trace directory (format ``minigrpo-trace`` version 1).

Layout (names in ``layout.py``; documented in ``docs/trace-format.md``)::

    TRACE/
      meta.json            Meta, written atomically (tmp + os.replace) at the start, and again
                           when a resumed run changes knobs (``note_resume``)
      rollouts.jsonl       one JSON line per rollout (its groups; token ids in a payload)
      steps.jsonl          one JSON line per optimizer update (metrics + probe descriptions)
      payloads/*.npz       numpy arrays (no pickle): rollout_NNNNNN.npz, step_NNNNNN.npz

Crash safety: every payload is written to a hidden temp name, fsynced and renamed into
place (os.replace) BEFORE the JSON line that refers to it is appended with one write
followed by os.fsync. A run killed at any instant (kill -9) therefore leaves a trace whose
every complete line refers to complete payloads; at worst the last line is torn (no
trailing newline), which the reader drops with a warning and ``TraceWriter(resume=True)``
repairs before appending.

This module never imports torch; tensors are accepted duck-typed (``.detach()``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import faults, files
from ..files import is_temp
from .encode import as_array, dumps_line, json_number, jsonable, to_numpy
from .layout import (
    META_FILE,
    OPTIONAL_PROBE_ARRAYS,
    PAYLOAD_DIR,
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
    rollout_payload_name,
    step_payload_name,
)
from .schema import FORMAT_NAME, FORMAT_VERSION, Group, Meta, Probe, ProbePosition, Step, TraceError

__all__ = ["TraceWriter", "new_meta"]


# ----------------------------------------------------------------------------- meta
def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def new_meta(algo: str, model: str, task: str, config: Any, tokenizer: str,
             extra: Optional[dict] = None, git_commit: Any = "auto") -> Meta:
    """A Meta for a new trace: format/version/minigrpo_version/created filled in.

    ``config`` is a dict or a dataclass (e.g. TrainConfig); ``git_commit="auto"`` asks git.
    """
    from minigrpo import __version__

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return Meta(
        format=FORMAT_NAME,
        version=FORMAT_VERSION,
        algo=algo,
        model=model,
        task=task,
        config=dict(config),
        tokenizer=tokenizer,
        minigrpo_version=__version__,
        git_commit=_git_commit() if git_commit == "auto" else git_commit,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        extra=dict(extra or {}),
    )


def meta_to_json(meta: Meta) -> dict:
    return jsonable(dataclasses.asdict(meta), "meta")


# ----------------------------------------------------------------------------- writer
class TraceWriter:
    """Append-only, crash-safe writer of one trace directory.

    ``TraceWriter(path, meta)`` creates ``path`` (or uses an existing EMPTY directory) and
    writes ``meta.json``; an existing non-empty directory is refused (FileExistsError)
    unless ``resume=True``, which repairs a torn last line, keeps the existing meta.json
    (its algo must match ``meta.algo``) and appends after the last recorded step.

    ``write_rollout(rollout_id, groups)`` before the steps that train on it, then
    ``write_step(step)`` once per optimizer update (``step.groups`` is not written again:
    the line refers to ``step.rollout``). Step numbers must increase strictly, rollout ids
    too. ``bytes_written`` counts every byte this writer put on disk.
    """

    def __init__(self, path: str | os.PathLike, meta: Meta, *, resume: bool = False,
                 compress: bool = False, fsync: bool = True):
        self.path = os.fspath(path)
        self.compress = compress
        self.fsync = fsync
        self.bytes_written = 0
        self.last_step = 0  # last recorded optimizer step (0: none)
        self.last_rollout: Optional[int] = None
        self.resumed = False
        self._group_sizes: dict[int, list[int]] = {}  # rollout id -> G of each group
        self._fds: dict[str, int] = {}
        self._closed = False

        if meta.format != FORMAT_NAME or meta.version != FORMAT_VERSION:
            raise ValueError(f"meta must have format={FORMAT_NAME!r} and version={FORMAT_VERSION} "
                             f"(got {meta.format!r}, {meta.version!r}); build it with new_meta()")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise FileExistsError(f"{self.path} exists and is not a directory; choose another trace path")
        existing = os.path.isdir(self.path) and not _effectively_empty(self.path)
        if existing and not resume:
            raise FileExistsError(f"{self.path} already holds files; refusing to overwrite a trace "
                                  f"(pass resume=True to append to it, or choose an empty directory)")
        if existing:
            self._resume(meta)
        else:
            os.makedirs(os.path.join(self.path, PAYLOAD_DIR), exist_ok=True)
            self.meta = meta
            text = json.dumps(meta_to_json(meta), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
            self.bytes_written += files.atomic_write(os.path.join(self.path, META_FILE),
                                                     lambda f: f.write(text.encode()))
        for name in (ROLLOUTS_FILE, STEPS_FILE):
            self._open(name)

    # ------------------------------------------------------------------ internals
    def _open(self, name: str) -> None:
        self._fds[name] = os.open(os.path.join(self.path, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _resume(self, meta: Meta) -> None:
        from .reader import read_index  # the reader imports this module: import late

        if not os.path.exists(os.path.join(self.path, META_FILE)):
            raise TraceError(f"{os.path.join(self.path, META_FILE)}: missing, so {self.path} is not a minigrpo "
                             f"trace; resume needs a trace directory (or pass an empty directory)")
        for name in (ROLLOUTS_FILE, STEPS_FILE):
            note = files.repair_tail(os.path.join(self.path, name))
            if note:
                warnings.warn(note, stacklevel=3)
        index = read_index(self.path)
        if index.meta.algo != meta.algo:
            raise ValueError(f"cannot resume {self.path}: it records algo {index.meta.algo!r}, this run is "
                             f"{meta.algo!r}; use a new trace directory")
        self.meta = index.meta
        self._group_sizes = {rid: [len(g["completions"]) for g in rec.groups] for rid, rec in index.rollouts.items()}
        self.last_rollout = max(index.rollouts) if index.rollouts else None
        self.last_step = index.steps[-1].step if index.steps else 0
        self.resumed = True
        payloads = os.path.join(self.path, PAYLOAD_DIR)
        os.makedirs(payloads, exist_ok=True)
        for folder in (self.path, payloads):  # what a write killed before its rename left (rewind's too)
            for name in os.listdir(folder):
                if is_temp(name) and os.path.isfile(os.path.join(folder, name)):
                    os.remove(os.path.join(folder, name))

    def note_resume(self, after_step: int, config: dict, changed: dict) -> None:
        """A resumed run that changed some knobs (``{name: [old, new]}``) from the update after
        ``after_step`` on: meta.json (rewritten atomically) gets its config, and ``extra["resumed"]``
        one entry per such resume, so that the earlier steps' values stay on record."""
        self._check_open()
        extra = dict(self.meta.extra or {})
        extra["resumed"] = [*extra.get("resumed", []), {"after_step": after_step, "changed": changed}]
        self.meta = dataclasses.replace(self.meta, config=config, extra=extra)
        text = json.dumps(meta_to_json(self.meta), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        self.bytes_written += files.atomic_write(os.path.join(self.path, META_FILE), lambda f: f.write(text.encode()))

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"TraceWriter({self.path!r}) is closed")

    def _write_payload(self, rel: str, arrays: dict[str, np.ndarray]) -> None:
        save = np.savez_compressed if self.compress else np.savez

        def write(f):
            save(f, **arrays)

        full = os.path.join(self.path, rel)
        try:
            self.bytes_written += files.atomic_write(full, write, durable=self.fsync)
        except OSError as e:
            raise OSError(e.errno, e.strerror, e.filename or full) from e
        faults.hit("trace-payload")

    def _append(self, name: str, record: dict) -> None:
        data = dumps_line(record)
        fd = self._fds[name]
        end = os.lseek(fd, 0, os.SEEK_END)
        faults.hit("trace-line", lambda: files.write_all(fd, data[:len(data) // 2]))
        try:
            files.write_all(fd, data)  # one write(2) for any line a regular file accepts whole
            if self.fsync:
                os.fsync(fd)
        except OSError as e:  # e.g. a full disk after a short write: cut the torn line off again
            try:
                os.ftruncate(fd, end)
            except OSError:
                pass  # the reader still drops a torn last line
            raise OSError(e.errno, e.strerror, os.path.join(self.path, name)) from e
        self.bytes_written += len(data)

    # ------------------------------------------------------------------ public API
    def write_rollout(self, rollout_id: int, groups: list[Group]) -> None:
        """Record one rollout: its groups (JSON) and their completion token ids (npz)."""
        self._check_open()
        if not isinstance(rollout_id, (int, np.integer)) or isinstance(rollout_id, bool) or rollout_id < 0:
            raise ValueError(f"rollout id must be an integer >= 0, got {rollout_id!r}")
        rollout_id = int(rollout_id)
        if self.last_rollout is not None and rollout_id <= self.last_rollout:
            raise ValueError(f"rollout id {rollout_id} is not greater than the last recorded rollout "
                             f"{self.last_rollout}; rollout ids must increase")
        all_ids: list[np.ndarray] = []
        groups_json = []
        for i, g in enumerate(groups):
            where = f"rollout {rollout_id} group {i}"
            G = len(g.completions)
            ids = [as_array(c, "i", f"{where}.completion_ids[{k}]") for k, c in enumerate(g.completion_ids)]
            if len(ids) != G:
                raise ValueError(f"{where}: {len(ids)} completion_ids for {G} completions")
            per_completion = {
                "rewards": as_array(g.rewards, "f", f"{where}.rewards"),
                "advantages": as_array(g.advantages, "f", f"{where}.advantages"),
                "correct": as_array(g.correct, "b", f"{where}.correct"),
            }
            parts = {}
            for name, v in g.reward_parts.items():
                if not isinstance(name, str):
                    raise ValueError(f"{where}.reward_parts: key {name!r} is not a string")
                parts[name] = as_array(v, "f", f"{where}.reward_parts[{name!r}]")
            for name, a in list(per_completion.items()) + [(f"reward_parts[{n!r}]", a) for n, a in parts.items()]:
                if a.shape != (G,):
                    raise ValueError(f"{where}.{name}: shape {a.shape}, expected ({G},) (one per completion)")
            for name in ("prompt", "question"):
                if not isinstance(getattr(g, name), str):
                    raise ValueError(f"{where}.{name} must be a string")
            if g.answer is not None and not isinstance(g.answer, str):
                raise ValueError(f"{where}.answer must be a string or None")
            if not all(isinstance(c, str) for c in g.completions):
                raise ValueError(f"{where}.completions must be strings")
            all_ids.extend(ids)
            groups_json.append({
                "prompt": g.prompt,
                "question": g.question,
                "answer": g.answer,
                "completions": list(g.completions),
                "reward_parts": {n: [json_number(x) for x in a.tolist()] for n, a in parts.items()},
                "rewards": [json_number(x) for x in per_completion["rewards"].tolist()],
                "mean": json_number(g.mean),
                "std": json_number(g.std),
                "advantages": [json_number(x) for x in per_completion["advantages"].tolist()],
                "correct": [bool(x) for x in per_completion["correct"].tolist()],
            })
        arrays = {
            ROLLOUT_IDS_KEY: np.concatenate(all_ids) if all_ids else np.zeros(0, np.int64),
            ROLLOUT_LENGTHS_KEY: np.array([a.shape[0] for a in all_ids], dtype=np.int64),
        }
        rel = rollout_payload_name(rollout_id)
        self._write_payload(rel, arrays)
        self._append(ROLLOUTS_FILE, {"rollout": rollout_id, "groups": groups_json, "payload": rel})
        self._group_sizes[rollout_id] = [len(g.completions) for g in groups]
        self.last_rollout = rollout_id

    def write_step(self, step: Step) -> None:
        """Record one optimizer update: metrics + probes (JSON) and the probes' arrays (npz)."""
        self._check_open()
        n = step.step
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"step.step must be an integer >= 1, got {n!r}")
        n = int(n)
        if n <= self.last_step:
            raise ValueError(f"step {n} is not greater than the last recorded step {self.last_step}; steps must "
                             f"increase (after resuming from an earlier checkpoint, call rewind({n - 1}) first)")
        rollout = int(step.rollout)
        if rollout not in self._group_sizes:
            raise ValueError(f"step {n} trains on rollout {rollout}, which was not written; "
                             f"call write_rollout({rollout}, groups) first")
        metrics = {}
        for name, value in step.metrics.items():
            if not isinstance(name, str):
                raise ValueError(f"step {n}: metric name {name!r} is not a string")
            try:
                metrics[name] = json_number(to_numpy(value).item() if not isinstance(value, (int, float)) else value)
            except (TypeError, ValueError):
                raise ValueError(f"step {n}: metric {name!r} = {value!r} is not a number") from None
        arrays: dict[str, np.ndarray] = {}
        probes_json = []
        for i, pr in enumerate(step.probes):
            where = f"step {n} probe {i}"
            coerced = {name: as_array(getattr(pr, name), kind, f"{where}.{name}") for name, kind in PROBE_ARRAYS.items()}
            for name, kind in OPTIONAL_PROBE_ARRAYS.items():
                value = getattr(pr, name)
                coerced[name] = None if value is None else as_array(value, kind, f"{where}.{name}")
            positions = []
            for j, p in enumerate(pr.positions):
                pa = {name: as_array(getattr(p, name), kind, f"{where}.positions[{j}].{name}")
                      for name, kind in POSITION_ARRAYS.items()}
                positions.append(ProbePosition(pos=int(p.pos), kind=p.kind, sampled_token_id=int(p.sampled_token_id),
                                               tokens=list(p.tokens), other_before=p.other_before,
                                               other_after=p.other_after, other_ref=p.other_ref, **pa))
            checked = Probe(group=int(pr.group), index=int(pr.index), text=pr.text, tokens=list(pr.tokens),
                            positions=positions, **coerced)
            problems = probe_shape_problems(checked, self._group_sizes[rollout])
            if problems:
                field, msg = problems[0]
                raise ValueError(f"{where}.{field}: {msg}")
            if not isinstance(pr.text, str) or not all(isinstance(t, str) for t in checked.tokens):
                raise ValueError(f"{where}: text and tokens must be strings")
            for name, a in coerced.items():
                if a is not None:
                    arrays[probe_key(i, name)] = a
            pos_json = []
            for j, p in enumerate(positions):
                if not isinstance(p.kind, str) or not all(isinstance(t, str) for t in p.tokens):
                    raise ValueError(f"{where}.positions[{j}]: kind and tokens must be strings")
                for name in POSITION_ARRAYS:
                    arrays[position_key(i, j, name)] = getattr(p, name)
                pos_json.append({"pos": p.pos, "kind": p.kind, "sampled_token_id": p.sampled_token_id,
                                 "tokens": p.tokens, **{s: json_number(getattr(p, s)) for s in POSITION_SCALARS}})
            probes_json.append({"group": checked.group, "index": checked.index, "text": checked.text,
                                "tokens": checked.tokens, "positions": pos_json})
        rel = None
        if step.probes:
            rel = step_payload_name(n)
            self._write_payload(rel, arrays)
        self._append(STEPS_FILE, {"step": n, "rollout": rollout, "metrics": metrics,
                                  "probes": probes_json, "payload": rel})
        self.last_step = n

    def rewind(self, step: int, rollout: Optional[int] = None, before_write=None) -> None:
        """Forget every update after ``step`` and every rollout after ``rollout``.

        ``rollout`` defaults to the rollout of the last kept update (none kept: all rollouts
        are dropped). For a run resumed from a checkpoint older than the trace's last step.
        The two jsonl files are rewritten atomically; dropped payloads are deleted.
        ``before_write(last_step, last_rollout)``, called with what the rewound trace would end at
        before anything changes, may refuse by raising: the trace is then left as it was.
        """
        self._check_open()
        kept_steps, dropped = [], []
        last_kept_rollout = None
        for line in files.complete_lines(os.path.join(self.path, STEPS_FILE)):
            rec = json.loads(line)
            if rec["step"] <= step:
                kept_steps.append(line)
                last_kept_rollout = rec["rollout"]
            elif rec.get("payload"):
                dropped.append(rec["payload"])
        if rollout is not None and last_kept_rollout is not None and rollout < last_kept_rollout:
            raise ValueError(f"rewind({step}, rollout={rollout}): kept step {step} trains on rollout "
                             f"{last_kept_rollout}, which would be dropped")
        limit = rollout if rollout is not None else last_kept_rollout
        kept_rollouts, dropped_rollouts = [], []
        for line in files.complete_lines(os.path.join(self.path, ROLLOUTS_FILE)):
            rec = json.loads(line)
            if limit is not None and rec["rollout"] <= limit:
                kept_rollouts.append(line)
            else:
                dropped.append(rec["payload"])
                dropped_rollouts.append(rec["rollout"])
        new_last_step = json.loads(kept_steps[-1])["step"] if kept_steps else 0
        new_last_rollout = json.loads(kept_rollouts[-1])["rollout"] if kept_rollouts else None
        if before_write is not None:
            before_write(new_last_step, new_last_rollout)
        for rollout_id in dropped_rollouts:
            self._group_sizes.pop(rollout_id, None)
        for name, lines in ((STEPS_FILE, kept_steps), (ROLLOUTS_FILE, kept_rollouts)):
            os.close(self._fds.pop(name))
            files.atomic_write(os.path.join(self.path, name), lambda f, lines=lines: f.write(b"".join(lines)))
            self._open(name)
        for rel in dropped:
            try:
                os.remove(os.path.join(self.path, rel))
            except FileNotFoundError:
                pass
        self.last_step, self.last_rollout = new_last_step, new_last_rollout

    def close(self) -> None:
        if self._closed:
            return
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceWriter({self.path!r}, last_step={self.last_step}, bytes_written={self.bytes_written})"


def holds_no_record(path: str | os.PathLike) -> bool:
    """A trace directory with its meta.json and nothing recorded: no rollout line, no update line, no payload,
    no other file (a run stopped before its first rollout record; unlike :func:`_effectively_empty`, a temp
    file of a write in progress counts as something)."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, META_FILE)):
        return False
    try:  # another tool's meta.json is not ours to replace
        with open(os.path.join(path, META_FILE), encoding="utf-8") as f:
            if json.load(f).get("format") != FORMAT_NAME:
                return False
    except (OSError, ValueError, AttributeError):
        return False
    names = set(os.listdir(path))
    if not names <= {META_FILE, ROLLOUTS_FILE, STEPS_FILE, PAYLOAD_DIR}:
        return False
    payloads = os.path.join(path, PAYLOAD_DIR)
    if os.path.exists(payloads) and (not os.path.isdir(payloads) or os.listdir(payloads)):
        return False
    return all(os.path.getsize(os.path.join(path, name)) == 0 for name in (ROLLOUTS_FILE, STEPS_FILE) if name in names)


def _effectively_empty(path: str) -> bool:
    """True for a directory holding nothing but what a writer killed before meta.json leaves."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if is_temp(name):
            continue
        if name in (ROLLOUTS_FILE, STEPS_FILE) and os.path.isfile(full) and os.path.getsize(full) == 0:
            continue
        if name == PAYLOAD_DIR and os.path.isdir(full) and all(is_temp(n) for n in os.listdir(full)):
            continue
        return False
    return True
