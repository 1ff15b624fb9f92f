"""Fuzzing the trace reader: damaged, reordered, oversized or mistyped traces.

Every example starts from a small valid trace (tests/trace_factory.py), damages it one or
more ways, then reads it every way a user can (``load`` lazy and eager, every probe,
``validate``, ``read_index``, ``minigrpo trace inspect``, the scenes' loader, and a writer
resuming it). The only exception allowed is the documented ``TraceError`` (one line); a
torn last line may give a ``TraceWarning``. A trace that loads must hold increasing steps
whose rollouts are loaded. ``MINIGRPO_FUZZ_EXAMPLES`` sets the budget (default 150),
``MINIGRPO_FUZZ_REPORT=FILE`` logs each example's damages and outcome.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile

import harness  # noqa: F401 - puts the repo root and tests/ on sys.path
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from minigrpo.trace import load, read_index, validate  # noqa: E402
from minigrpo.trace.schema import TraceError  # noqa: E402
from minigrpo.trace.writer import TraceWriter, new_meta  # noqa: E402
from trace_factory import make_synthetic_trace  # noqa: E402

EXAMPLES = int(os.environ.get("MINIGRPO_FUZZ_EXAMPLES", "150"))
REPORT = os.environ.get("MINIGRPO_FUZZ_REPORT")  # a file: one JSON line per example (damages, outcome)
FILES = ["meta.json", "rollouts.jsonl", "steps.jsonl", "payloads/rollout_000000.npz",
         "payloads/rollout_000001.npz", "payloads/step_000001.npz", "payloads/step_000003.npz"]
JSONL = ["rollouts.jsonl", "steps.jsonl"]


@pytest.fixture(scope="module")
def base_traces(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz_base")
    return {algo: make_synthetic_trace(base / algo, algo, n_steps=3, G=3, n_groups=2, T=6, K=4,
                                       fsync=False) for algo in ("grpo", "ppo")}


# ----------------------------------------------------------------------------- damage
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from([10**400, -1, 0, 2**63, 1e308]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=6)


def _paths(obj, prefix=()):
    """Every (path to a value) inside a JSON object."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return obj


@st.composite
def damage(draw):
    """One damage: (kind, file, parameters) applied by ``apply``."""
    kind = draw(st.sampled_from(["truncate", "bytes", "reorder", "duplicate", "drop_line", "retype", "delete_key",
                                 "oversized", "nested", "bad_payload", "npz_array", "delete", "symlink"]))
    file = draw(st.sampled_from(JSONL + ["meta.json"] if kind in ("retype", "delete_key", "reorder", "duplicate",
                                                                   "drop_line", "oversized", "nested")
                                else FILES))
    return kind, file, draw(st.randoms(use_true_random=False)), draw(json_values)


def apply(root: str, kind: str, rel: str, rnd, value) -> None:
    path = os.path.join(root, rel)
    if not os.path.exists(path):
        return
    data = open(path, "rb").read()
    lines = data.split(b"\n")
    if kind == "truncate":
        data = data[:rnd.randrange(len(data) + 1)]
    elif kind == "bytes":
        buf = bytearray(data)
        for _ in range(rnd.randint(1, 8)):
            if buf:
                buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        data = bytes(buf)
    elif kind == "reorder":
        rnd.shuffle(lines)
        data = b"\n".join(lines)
    elif kind == "duplicate":
        i = rnd.randrange(len(lines))
        lines.insert(rnd.randrange(len(lines) + 1), lines[i])
        data = b"\n".join(lines)
    elif kind == "drop_line":
        del lines[rnd.randrange(len(lines))]
        data = b"\n".join(lines)
    elif kind in ("retype", "delete_key"):
        candidates = []
        for i, ln in enumerate(lines):
            try:
                candidates.append((i, json.loads(ln)))
            except (ValueError, RecursionError):
                pass  # a line an earlier damage broke already
        if not candidates:
            return
        i, obj = rnd.choice(candidates)
        paths = list(_paths(obj))
        where = rnd.choice(paths[1:] if len(paths) > 1 else paths)
        if kind == "retype" or not where:
            obj = _set(obj, where, value)
        else:
            parent = obj
            for key in where[:-1]:
                parent = parent[key]
            del parent[where[-1]]
        text = json.dumps(obj, allow_nan=True)
        lines[i] = text.encode() if rel != "meta.json" else text.encode()
        data = b"\n".join(lines) if rel != "meta.json" else text.encode()
    elif kind == "oversized":
        size = rnd.choice([2**20, 3 * 2**20])
        junk = rnd.choice([b"x" * size, b'{"step": ' + b"9" * size + b"}", b'{"a": "' + b"y" * size + b'"}'])
        data = data + junk + rnd.choice([b"\n", b""])
    elif kind == "nested":
        depth = rnd.choice([100, 5000, 200000])
        data = data + b"[" * depth + b"]" * depth + b"\n"
    elif kind == "bad_payload":
        buf = io.BytesIO()
        choice = rnd.randrange(3)
        if choice == 0:  # an object array: numpy would pickle it
            np.savez(buf, completion_ids=np.array([{"x": 1}, None], dtype=object))
        elif choice == 1:  # a single .npy, not an archive
            np.save(buf, np.arange(3))
        else:  # a zip whose member is not an npy file
            with zipfile.ZipFile(buf, "w") as z:
                z.writestr("completion_ids.npy", b"not an npy header at all")
        data = buf.getvalue()
    elif kind == "npz_array":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception:  # noqa: BLE001 - an earlier damage broke it already
            return
        if not arrays:
            return
        key = rnd.choice(sorted(arrays))
        arrays[key] = rnd.choice([np.zeros((2, 2)), np.array(["a", "b"]), np.arange(5, dtype=np.float16),
                                  np.array([], dtype=np.int64), np.full(3, 2**40, dtype=np.int64),
                                  np.array([True]), -np.ones(len(arrays[key]), dtype=np.int64)])
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
    elif kind == "delete":
        os.remove(path)
        return
    elif kind == "symlink":  # a file replaced by a link to something outside the trace
        outside = os.path.join(os.path.dirname(root), "outside" + os.path.splitext(rel)[1])
        with open(outside, "wb") as f:
            f.write(data)
        os.remove(path)
        os.symlink(outside, path)
        return
    with open(path, "wb") as f:
        f.write(data)


def read_every_way(root: str) -> None:
    """Everything that reads a trace; returns normally or raises TraceError."""
    trace = load(root)
    for s in trace.steps:
        _ = s.probes
    index = read_index(root)
    steps = [s.step for s in trace.steps]
    assert steps == sorted(set(steps)) == [r.step for r in index.steps]
    assert all(s.rollout in trace.rollouts for s in trace.steps)
    load(root, lazy=False)
    assert isinstance(validate(root), list)


def check_other_readers(root: str, capsys) -> None:
    from minigrpo.cli import main
    from scenes.components import data as D

    assert main(["trace", "inspect", root]) in (0, 2)
    err = capsys.readouterr().err.strip().splitlines()
    # `trace inspect`'s one-line form
    assert all(line.startswith(("minigrpo: error:", "minigrpo: warning:")) for line in err), err
    assert sum(line.startswith("minigrpo: error:") for line in err) <= 1, err
    try:
        D.load_trace(root)
    except D.SceneInputError as e:
        assert "\n" not in str(e)
    meta = new_meta("grpo", "m", "syllogism", {}, "t", git_commit=None)
    try:
        with TraceWriter(root, meta, resume=True, fsync=False) as writer:
            writer.rewind(1)
    except (TraceError, ValueError) as e:  # ValueError: the writer's documented refusal (e.g. algo mismatch)
        assert "\n" not in str(e)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(algo=st.sampled_from(["grpo", "ppo"]), damages=st.lists(damage(), min_size=1, max_size=3))
def test_damaged_trace_loads_or_raises_trace_error(base_traces, capsys, algo, damages):
    tmp = tempfile.mkdtemp(prefix="fuzz")
    try:
        root = os.path.join(tmp, "trace")
        shutil.copytree(base_traces[algo], root)
        for kind, rel, rnd, value in damages:
            apply(root, kind, rel, rnd, value)
            event(f"damage: {kind}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TraceWarning, and the writer's note on a torn line it repairs
            try:
                read_every_way(root)
                outcome = "loaded"
            except TraceError as e:
                assert "\n" not in str(e)
                outcome = "refused with TraceError"
            event(outcome)
            if REPORT:
                with open(REPORT, "a") as f:
                    f.write(json.dumps({"outcome": outcome, "damages": [d[0] for d in damages]}) + "\n")
            check_other_readers(root, capsys)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_each_kind_of_damage_is_refused(base_traces, tmp_path):
    """Damages the reader must refuse (so the fuzzer's damages do reach its checks)."""
    import random

    cases = {
        "retype": ("steps.jsonl", lambda root: _rewrite_line(root, "steps.jsonl", 0, lambda d: {**d, "step": "1"})),
        "huge int": ("steps.jsonl", lambda root: _rewrite_line(root, "steps.jsonl", 0, lambda d: {
            **d, "metrics": {**d["metrics"], "loss": 10**400}})),
        "reorder": ("steps.jsonl", lambda root: _rewrite_lines(root, "steps.jsonl", lambda ls: ls[::-1])),
        "object array": ("payloads/rollout_000000.npz", None),
        "symlink out": ("payloads/step_000001.npz", None),
        "deep nesting": ("steps.jsonl", lambda root: _rewrite_lines(root, "steps.jsonl",
                                                                   lambda ls: [b"[" * 10**5 + b"]" * 10**5] + ls)),
    }
    for name, (rel, edit) in cases.items():
        root = str(tmp_path / name.replace(" ", "_"))
        shutil.copytree(base_traces["grpo"], root)
        if edit is None:
            kind = "bad_payload" if name == "object array" else "symlink"
            rnd = random.Random(0)  # any of the three bad payloads is refused
            apply(root, kind, rel, rnd, None)
        else:
            edit(root)
        with pytest.raises(TraceError):
            read_every_way(root)


def _rewrite_lines(root, rel, edit):
    path = os.path.join(root, rel)
    lines = open(path, "rb").read().split(b"\n")[:-1]
    open(path, "wb").write(b"\n".join(edit(lines)) + b"\n")


def _rewrite_line(root, rel, i, edit):
    def one(lines):
        lines[i] = json.dumps(edit(json.loads(lines[i]))).encode()
        return lines
    _rewrite_lines(root, rel, one)
