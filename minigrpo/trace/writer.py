"""Crash-safe writer of a minigrpo trace directory (format ``minigrpo-trace`` version 1).

Layout (see ``docs/trace-format.md``)::

    TRACE/
      meta.json            Meta, written once, atomically (tmp + os.replace)
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
import enum
import json
import math
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from .. import faults
from .schema import FORMAT_NAME, FORMAT_VERSION, Group, Meta, Probe, ProbePosition, Step, TraceError

__all__ = ["TraceWriter", "new_meta"]

# ----------------------------------------------------------------------------- layout
META_FILE = "meta.json"
ROLLOUTS_FILE = "rollouts.jsonl"
STEPS_FILE = "steps.jsonl"
PAYLOAD_DIR = "payloads"
TMP_PREFIX = "."  # temp files are hidden: ".step_000012.npz.tmp"
TMP_SUFFIX = ".tmp"

# Array kinds: "i" -> int64 ids, "b" -> bool flags, "f" -> float (float32 or float64 as given).
PROBE_ARRAYS: dict[str, str] = {
    "token_ids": "i",
    "logp_old": "f",
    "logp": "f",
    "logp_new": "f",
    "logp_ref": "f",
    "ratio": "f",
    "clipped_low": "b",
    "clipped_high": "b",
    "advantage": "f",
    "kl": "f",
}
OPTIONAL_PROBE_ARRAYS: dict[str, str] = {"values": "f", "returns": "f"}
POSITION_ARRAYS: dict[str, str] = {
    "token_ids": "i",
    "logits_before": "f",
    "probs_before": "f",
    "logits_after": "f",
    "probs_after": "f",
    "logits_ref": "f",
    "probs_ref": "f",
}
POSITION_SCALARS = ("other_before", "other_after", "other_ref")


def probe_key(i: int, name: str) -> str:
    """npz key of probe ``i``'s per-token array ``name``: ``p0.logp_old``."""
    return f"p{i}.{name}"


def position_key(i: int, j: int, name: str) -> str:
    """npz key of array ``name`` of the j-th position of probe i: ``p0.pos1.logits_before``."""
    return f"p{i}.pos{j}.{name}"


# Rollout payload keys: every completion of the rollout, groups in order, completions in
# group order, concatenated into one flat int64 array, and their lengths.
ROLLOUT_IDS_KEY = "completion_ids"
ROLLOUT_LENGTHS_KEY = "lengths"


def step_payload_name(step: int) -> str:
    return f"{PAYLOAD_DIR}/step_{step:06d}.npz"


def rollout_payload_name(rollout: int) -> str:
    return f"{PAYLOAD_DIR}/rollout_{rollout:06d}.npz"


# ----------------------------------------------------------------------------- JSON
def json_number(x: Any) -> Optional[float]:
    """A finite float, or None (JSON null) for NaN / +inf / -inf / None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj: Any, where: str = "value") -> Any:
    """Plain JSON values from config-like objects; non-finite floats become null (strict JSON has no NaN)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return json_number(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string (JSON keys must be strings)")
            out[k] = jsonable(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj), where)
    if isinstance(obj, enum.Enum):
        return jsonable(obj.value, where)
    raise ValueError(f"{where}: {type(obj).__name__} value {obj!r} cannot be stored in JSON")


def dumps_line(obj: dict) -> bytes:
    """One compact JSON line (UTF-8, strict JSON: no NaN/Infinity literals) ending in \\n."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text + "\n").encode("utf-8")


# ----------------------------------------------------------------------------- arrays
def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        t = x.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":
            t = t.float()
        x = t.numpy()
    return np.asarray(x)


def as_array(x: Any, kind: str, where: str) -> np.ndarray:
    """A 1-D numpy array of the canonical dtype for ``kind`` ("i", "b", "f"), or ValueError."""
    a = _to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D array, got shape {a.shape}")
    if a.dtype == object:
        raise ValueError(f"{where}: object arrays cannot be stored (numbers only)")
    if kind == "i":
        if a.size and a.dtype.kind not in "iu":
            raise ValueError(f"{where}: token ids must be integers, got dtype {a.dtype}")
        return a.astype(np.int64, copy=False)
    if kind == "b":
        if a.dtype != np.bool_:
            if a.dtype.kind not in "iu" or (a.size and not np.isin(a, (0, 1)).all()):
                raise ValueError(f"{where}: flags must be bool (or 0/1 integers), got dtype {a.dtype}")
            a = a.astype(np.bool_)
        return a
    if a.dtype.kind == "f":
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
    if a.dtype.kind in "iub":
        return a.astype(np.float32)
    raise ValueError(f"{where}: expected floats, got dtype {a.dtype}")


def probe_shape_problems(probe: Probe, group_sizes: Optional[list[int]]) -> list[tuple[str, str]]:
    """(field, problem) pairs for a probe whose arrays do not fit together.

    ``group_sizes`` are the G of each group of the probe's rollout (None: not checked).
    Used by the writer (refuse to write) and by the reader (refuse to load).
    """
    problems: list[tuple[str, str]] = []
    T = int(probe.token_ids.shape[0])
    if len(probe.tokens) != T:
        problems.append(("tokens", f"has {len(probe.tokens)} entries but token_ids has {T}"))
    for name in list(PROBE_ARRAYS) + list(OPTIONAL_PROBE_ARRAYS):
        a = getattr(probe, name)
        if a is not None and a.shape != (T,):
            problems.append((name, f"has shape {a.shape} but token_ids has length {T} (expected ({T},))"))
    if group_sizes is not None:
        if not 0 <= probe.group < len(group_sizes):
            problems.append(("group", f"{probe.group} is out of range: the rollout has {len(group_sizes)} groups"))
        elif not 0 <= probe.index < group_sizes[probe.group]:
            problems.append(("index", f"{probe.index} is out of range: group {probe.group} has "
                                      f"{group_sizes[probe.group]} completions"))
    for j, p in enumerate(probe.positions):
        K = int(p.token_ids.shape[0])
        if not 0 <= p.pos < T:
            problems.append((f"positions[{j}].pos", f"{p.pos} is outside the completion (0..{T - 1})"))
        if len(p.tokens) != K:
            problems.append((f"positions[{j}].tokens", f"has {len(p.tokens)} entries but token_ids has {K}"))
        for name in POSITION_ARRAYS:
            a = getattr(p, name)
            if a.shape != (K,):
                problems.append((f"positions[{j}].{name}", f"has shape {a.shape} but token_ids has length {K}"))
    return problems


# ----------------------------------------------------------------------------- files
def _fsync_dir(path: str) -> None:
    """Make a rename durable (power loss); harmless no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _atomic_write(path: str, write) -> int:
    """``write(fileobj)`` into a hidden temp file next to ``path``, fsync, rename; returns bytes."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, TMP_PREFIX + name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
    except BaseException:  # a full disk, an interrupt: leave no partial temp file behind
        _remove_quietly(tmp)
        raise
    os.replace(tmp, path)
    _fsync_dir(directory or ".")
    return size


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _repair_tail(path: str) -> Optional[str]:
    """Make ``path`` end at a line boundary; returns a note when something was repaired.

    A torn last line (killed mid-write) that is not valid JSON is cut off; a complete JSON
    object that only lacks its newline gets the newline.
    """
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    try:
        ok = isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError):
        ok = False
    if ok:
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return None
    with open(path, "r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return f"{path}: dropped a torn last line of {len(tail)} bytes (the writer was killed mid-write)"


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
            self.bytes_written += _atomic_write(os.path.join(self.path, META_FILE),
                                                lambda f: f.write(json.dumps(meta_to_json(meta), indent=1,
                                                                             ensure_ascii=False,
                                                                             allow_nan=False).encode() + b"\n"))
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
            note = _repair_tail(os.path.join(self.path, name))
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
        for name in os.listdir(payloads):
            if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
                os.remove(os.path.join(payloads, name))

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"TraceWriter({self.path!r}) is closed")

    def _write_payload(self, rel: str, arrays: dict[str, np.ndarray]) -> None:
        save = np.savez_compressed if self.compress else np.savez

        def write(f):
            save(f, **arrays)

        full = os.path.join(self.path, rel)
        try:
            if self.fsync:
                self.bytes_written += _atomic_write(full, write)
            else:
                tmp = os.path.join(os.path.dirname(full), TMP_PREFIX + os.path.basename(full) + TMP_SUFFIX)
                try:
                    with open(tmp, "wb") as f:
                        write(f)
                        size = f.tell()
                except BaseException:
                    _remove_quietly(tmp)
                    raise
                os.replace(tmp, full)
                self.bytes_written += size
        except OSError as e:
            raise OSError(e.errno, e.strerror, e.filename or full) from e
        faults.hit("trace-payload")

    def _append(self, name: str, record: dict) -> None:
        data = dumps_line(record)
        fd = self._fds[name]
        end = os.lseek(fd, 0, os.SEEK_END)
        faults.hit("trace-line", lambda: _write_all(fd, data[:len(data) // 2]))
        try:
            _write_all(fd, data)  # one write(2) for any line a regular file accepts whole
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
                metrics[name] = json_number(_to_numpy(value).item() if not isinstance(value, (int, float)) else value)
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

    def rewind(self, step: int, rollout: Optional[int] = None) -> None:
        """Forget every update after ``step`` and every rollout after ``rollout``.

        ``rollout`` defaults to the rollout of the last kept update (none kept: all rollouts
        are dropped). For a run resumed from a checkpoint older than the trace's last step.
        The two jsonl files are rewritten atomically; dropped payloads are deleted.
        """
        self._check_open()
        kept_steps, dropped = [], []
        last_kept_rollout = None
        for line in _complete_lines(os.path.join(self.path, STEPS_FILE)):
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
        kept_rollouts = []
        for line in _complete_lines(os.path.join(self.path, ROLLOUTS_FILE)):
            rec = json.loads(line)
            if limit is not None and rec["rollout"] <= limit:
                kept_rollouts.append(line)
            else:
                dropped.append(rec["payload"])
                self._group_sizes.pop(rec["rollout"], None)
        for name, lines in ((STEPS_FILE, kept_steps), (ROLLOUTS_FILE, kept_rollouts)):
            os.close(self._fds.pop(name))
            _atomic_write(os.path.join(self.path, name), lambda f, lines=lines: f.write(b"".join(lines)))
            self._open(name)
        for rel in dropped:
            try:
                os.remove(os.path.join(self.path, rel))
            except FileNotFoundError:
                pass
        self.last_step = json.loads(kept_steps[-1])["step"] if kept_steps else 0
        self.last_rollout = json.loads(kept_rollouts[-1])["rollout"] if kept_rollouts else None

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


def _complete_lines(path: str) -> Iterable[bytes]:
    """The newline-terminated lines of a jsonl file (a torn tail is skipped)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return [line + b"\n" for line in data.split(b"\n")[:-1] if line.strip()]


def _effectively_empty(path: str) -> bool:
    """True for a directory holding nothing but what a writer killed before meta.json leaves."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX):
            continue
        if name in (ROLLOUTS_FILE, STEPS_FILE) and os.path.isfile(full) and os.path.getsize(full) == 0:
            continue
        if name == PAYLOAD_DIR and os.path.isdir(full) and all(
                n.startswith(TMP_PREFIX) and n.endswith(TMP_SUFFIX) for n in os.listdir(full)):
            continue
        return False
    return True
