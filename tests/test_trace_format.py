"""The trace format: round trip, crash safety, validation errors, CLI helpers, CSV export."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

from minigrpo.trace import (
    FORMAT_VERSION,
    Group,
    Probe,
    Step,
    TraceError,
    TraceWarning,
    TraceWriter,
    load,
    new_meta,
    read_index,
    validate,
)
from minigrpo.trace.inspect import cli_export, cli_inspect, cli_validate, export_csv, metric_names, summary

sys.path.insert(0, os.path.dirname(__file__))
from trace_factory import build_synthetic, make_synthetic_trace, write_synthetic  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers
def assert_array_same(a, b, what):
    assert a is not None and b is not None, what
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), what


def assert_float_same(a, b, what):
    assert (math.isnan(a) and math.isnan(b)) or a == b, f"{what}: {a} != {b}"


def assert_groups_same(got: list[Group], want: list[Group], where: str):
    assert len(got) == len(want), where
    for gi, (g, w) in enumerate(zip(got, want)):
        at = f"{where} group {gi}"
        for name in ("prompt", "question", "answer", "completions"):
            assert getattr(g, name) == getattr(w, name), f"{at}.{name}"
        assert_float_same(g.mean, w.mean, f"{at}.mean")
        assert_float_same(g.std, w.std, f"{at}.std")
        for name in ("rewards", "advantages", "correct"):
            assert_array_same(getattr(g, name), getattr(w, name), f"{at}.{name}")
        assert list(g.reward_parts) == list(w.reward_parts)
        for k in w.reward_parts:
            assert_array_same(g.reward_parts[k], w.reward_parts[k], f"{at}.reward_parts[{k}]")
        assert len(g.completion_ids) == len(w.completion_ids)
        for i, (a, b) in enumerate(zip(g.completion_ids, w.completion_ids)):
            assert_array_same(a, b, f"{at}.completion_ids[{i}]")


def assert_probes_same(got: list[Probe], want: list[Probe], where: str):
    assert len(got) == len(want), where
    for i, (p, w) in enumerate(zip(got, want)):
        at = f"{where} probe {i}"
        for name in ("group", "index", "text", "tokens"):
            assert getattr(p, name) == getattr(w, name), f"{at}.{name}"
        for name in ("token_ids", "logp_old", "logp", "logp_new", "logp_ref", "ratio", "clipped_low",
                     "clipped_high", "advantage", "kl"):
            assert_array_same(getattr(p, name), getattr(w, name), f"{at}.{name}")
        for name in ("values", "returns"):
            if getattr(w, name) is None:
                assert getattr(p, name) is None, f"{at}.{name}"
            else:
                assert_array_same(getattr(p, name), getattr(w, name), f"{at}.{name}")
        assert len(p.positions) == len(w.positions), at
        for j, (q, v) in enumerate(zip(p.positions, w.positions)):
            pat = f"{at} position {j}"
            for name in ("pos", "kind", "sampled_token_id", "tokens"):
                assert getattr(q, name) == getattr(v, name), f"{pat}.{name}"
            for name in ("token_ids", "logits_before", "probs_before", "logits_after", "probs_after",
                         "logits_ref", "probs_ref"):
                assert_array_same(getattr(q, name), getattr(v, name), f"{pat}.{name}")
            for name in ("other_before", "other_after", "other_ref"):
                assert_float_same(getattr(q, name), getattr(v, name), f"{pat}.{name}")


def assert_one_line_error(excinfo, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg and "\r" not in msg, msg
    assert len(msg.splitlines()) == 1, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def read_lines(path):
    return pathlib.Path(path).read_bytes().split(b"\n")


def rewrite_line(file, n, edit):
    """Apply ``edit(dict) -> dict`` to the JSON on line n (1-based) of a jsonl file."""
    lines = pathlib.Path(file).read_bytes().split(b"\n")
    obj = json.loads(lines[n - 1])
    lines[n - 1] = json.dumps(edit(obj)).encode()
    pathlib.Path(file).write_bytes(b"\n".join(lines))


def rewrite_npz(file, edit):
    """Apply ``edit(dict of arrays) -> dict`` to an npz payload (saved without pickle)."""
    with np.load(file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(file, **edit(arrays))


@pytest.fixture
def trace_dir(tmp_path):
    return make_synthetic_trace(tmp_path / "trace", n_steps=5)


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_round_trip_is_exact(tmp_path, algo):
    meta, rollouts, steps = build_synthetic(algo=algo, n_steps=6, G=3, n_groups=3, T=9, K=5, seed=3)
    write_synthetic(tmp_path / "t", meta, rollouts, steps)
    for lazy in (True, False):
        trace = load(tmp_path / "t", lazy=lazy)
        assert dataclasses.asdict(trace.meta) == dataclasses.asdict(meta)
        assert trace.path == os.fspath(tmp_path / "t")
        assert sorted(trace.rollouts) == sorted(rollouts)
        for rid in rollouts:
            assert_groups_same(trace.rollouts[rid], rollouts[rid], f"rollout {rid}")
        assert [s.step for s in trace.steps] == [s.step for s in steps]
        for got, want in zip(trace.steps, steps):
            assert isinstance(got, Step)
            assert got.rollout == want.rollout
            assert got.metrics == want.metrics  # floats survive JSON exactly
            assert got.groups is trace.rollouts[got.rollout]  # shared, not copied per step
            assert_probes_same(got.probes, want.probes, f"step {got.step}")
        np.testing.assert_array_equal(trace.step_numbers, np.arange(1, 7))
        np.testing.assert_array_equal(trace.metric("reward"), [s.metrics["reward"] for s in steps])


def test_synthetic_traces_are_consistent(tmp_path):
    for algo in ("grpo", "ppo"):
        path = make_synthetic_trace(tmp_path / algo, algo=algo, n_steps=6, seed=1)
        assert validate(path) == []
        trace = load(path)
        assert trace.meta.algo == algo
        probe = trace.steps[1].probes[0]
        np.testing.assert_allclose(probe.ratio, np.exp(probe.logp.astype(np.float64) - probe.logp_old), rtol=1e-5)
        assert (probe.values is not None) == (algo == "ppo")
    # the factory's default shape, as scenes rely on it
    path = make_synthetic_trace(tmp_path / "default")
    trace = load(path)
    assert len(trace.steps) == 5 and len(trace.steps[0].groups) == 2 and len(trace.steps[0].groups[0].completions) == 4
    assert trace.steps[0].probes[0].token_ids.shape == (12,)
    assert all(len(q.token_ids) == 6 for s in trace.steps for p in s.probes for q in p.positions)
    # some update clips something, so a scene has something to show
    assert any(p.clipped_low.any() or p.clipped_high.any() for s in trace.steps for p in s.probes)


def test_validate_reports_inconsistent_numbers(trace_dir):
    payload = os.path.join(trace_dir, "payloads", "step_000002.npz")
    rewrite_npz(payload, lambda a: {**a, "p0.ratio": a["p0.ratio"] * np.float32(1.5)})
    problems = validate(trace_dir)
    assert problems and any("ratio" in p and "step 2" in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_steps_filter_and_lazy_loading(trace_dir):
    assert [s.step for s in load(trace_dir, steps=slice(-2, None)).steps] == [4, 5]
    assert [s.step for s in load(trace_dir, steps=range(2, 4)).steps] == [2, 3]
    assert [s.step for s in load(trace_dir, steps=[5, 1, 99]).steps] == [1, 5]
    one = load(trace_dir, steps=3)
    assert [s.step for s in one.steps] == [3] and sorted(one.rollouts) == [1]
    with pytest.raises(TraceError) as e:
        load(trace_dir, steps=42)
    assert_one_line_error(e, "steps.jsonl", "step 42")
    # a lazily loaded step reads its payload only when .probes is used
    os.remove(os.path.join(trace_dir, "payloads", "step_000004.npz"))
    with pytest.raises(TraceError) as e:
        load(trace_dir)  # a missing file is still noticed at load time
    assert_one_line_error(e, "steps.jsonl line 4", "step_000004.npz")
    trace = load(trace_dir, steps=[1, 2])
    assert not trace.steps[0].probes_loaded
    assert len(trace.steps[0].probes) == 2 and trace.steps[0].probes_loaded
    assert type(pickle.loads(pickle.dumps(trace.steps[1]))) is Step


def test_three_hundred_steps_load_fast(tmp_path):
    meta, rollouts, steps = build_synthetic(n_steps=2, T=64, K=10, seed=5)
    with TraceWriter(tmp_path / "big", meta, fsync=False) as w:
        for k in range(1, 301):
            if k % 2 == 1:
                w.write_rollout(k // 2, rollouts[0])
            w.write_step(dataclasses.replace(steps[0], step=k, rollout=(k - 1) // 2))
    t0 = time.perf_counter()
    trace = load(tmp_path / "big")
    elapsed = time.perf_counter() - t0
    assert len(trace.steps) == 300
    assert elapsed < 2.0, f"loading 300 steps took {elapsed:.2f} s"


# ----------------------------------------------------------------------------- writer
def test_bytes_written_counts_every_file(trace_dir, tmp_path):
    meta, rollouts, steps = build_synthetic(n_steps=3)
    w = write_synthetic(tmp_path / "counted", meta, rollouts, steps)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "counted").rglob("*") if f.is_file())
    assert w.bytes_written == on_disk > 0
    assert w.closed


def test_writer_refuses_to_overwrite(trace_dir, tmp_path):
    meta, _, _ = build_synthetic(n_steps=1)
    with pytest.raises(FileExistsError):
        TraceWriter(trace_dir, meta)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        TraceWriter(tmp_path / "file", meta)
    (tmp_path / "empty").mkdir()
    TraceWriter(tmp_path / "empty", meta).close()  # an existing empty directory is fine
    assert load(tmp_path / "empty").steps == []


def test_writer_rejects_bad_records(tmp_path):
    meta, rollouts, steps = build_synthetic(n_steps=2)
    with TraceWriter(tmp_path / "t", meta) as w:
        with pytest.raises(ValueError, match="write_rollout"):
            w.write_step(steps[0])  # its rollout was not written
        w.write_rollout(0, rollouts[0])
        with pytest.raises(ValueError, match="must increase"):
            w.write_rollout(0, rollouts[0])
        bad = dataclasses.replace(steps[0].probes[0], logp_old=steps[0].probes[0].logp_old[:-1])
        with pytest.raises(ValueError, match="logp_old"):
            w.write_step(dataclasses.replace(steps[0], probes=[bad]))
        bad = dataclasses.replace(steps[0].probes[0], group=7)
        with pytest.raises(ValueError, match="group"):
            w.write_step(dataclasses.replace(steps[0], probes=[bad]))
        w.write_step(steps[0])
        with pytest.raises(ValueError, match="not greater"):
            w.write_step(steps[0])
    with pytest.raises(ValueError, match="closed"):
        w.write_step(steps[1])
    assert [s.step for s in load(tmp_path / "t").steps] == [1]  # refused records left no trace


def test_non_finite_metrics_are_null_on_disk_and_nan_on_read(tmp_path):
    meta, rollouts, steps = build_synthetic(n_steps=1)
    metrics = {**steps[0].metrics, "grad_norm": float("inf"), "kl": float("nan"), "num_tokens": 7}
    with TraceWriter(tmp_path / "t", meta) as w:
        w.write_rollout(0, rollouts[0])
        w.write_step(dataclasses.replace(steps[0], metrics=metrics))
    raw = (tmp_path / "t" / "steps.jsonl").read_text()
    assert "NaN" not in raw and "Infinity" not in raw and '"grad_norm":null' in raw
    got = load(tmp_path / "t").steps[0].metrics
    assert math.isnan(got["grad_norm"]) and math.isnan(got["kl"]) and got["num_tokens"] == 7.0


def test_resume_appends(tmp_path):
    meta, rollouts, steps = build_synthetic(n_steps=6)
    path = tmp_path / "t"
    write_synthetic(path, meta, rollouts, steps[:3])
    with TraceWriter(path, meta, resume=True) as w:
        assert w.resumed and w.last_step == 3 and w.last_rollout == 1
        for s in steps[3:]:
            if s.rollout > w.last_rollout:
                w.write_rollout(s.rollout, rollouts[s.rollout])
            w.write_step(s)
    trace = load(path)
    assert [s.step for s in trace.steps] == [1, 2, 3, 4, 5, 6]
    assert_probes_same(trace.steps[4].probes, steps[4].probes, "step 5")
    assert validate(path) == []


def test_resume_repairs_a_torn_line_then_appends(tmp_path):
    meta, rollouts, steps = build_synthetic(n_steps=4)
    path = tmp_path / "t"
    write_synthetic(path, meta, rollouts, steps[:3])
    steps_file = path / "steps.jsonl"
    steps_file.write_bytes(steps_file.read_bytes()[:-40])  # step 3's line torn
    with pytest.warns(UserWarning, match="torn"):
        w = TraceWriter(path, meta, resume=True)
    assert w.last_step == 2
    w.write_step(steps[2])
    w.write_step(steps[3])
    w.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn line left behind
        assert [s.step for s in load(path).steps] == [1, 2, 3, 4]


def test_rewind_drops_later_updates(tmp_path):
    meta, rollouts, steps = build_synthetic(n_steps=6)
    path = tmp_path / "t"
    write_synthetic(path, meta, rollouts, steps)
    with TraceWriter(path, meta, resume=True) as w:
        w.rewind(3)  # steps 1..3 kept; rollout 1 (steps 3, 4) kept, rollout 2 dropped
        assert w.last_step == 3 and w.last_rollout == 1
        w.write_step(steps[3])
        w.write_rollout(2, rollouts[2])
        w.write_step(steps[4])
    trace = load(path)
    assert [s.step for s in trace.steps] == [1, 2, 3, 4, 5] and sorted(trace.rollouts) == [0, 1, 2]
    assert not (path / "payloads" / "step_000006.npz").exists()


def test_a_rewind_refused_before_writing_changes_nothing(tmp_path):
    """The trainer refuses a trace that would end short of its checkpoint: asked before the rewind writes,
    so the lines and payloads it would drop are still there to restore from."""
    meta, rollouts, steps = build_synthetic(n_steps=6)
    path = tmp_path / "t"
    write_synthetic(path, meta, rollouts, steps)
    before = {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    seen = []

    def refuse(last_step, last_rollout):
        seen.append((last_step, last_rollout))
        raise RuntimeError("short")

    with TraceWriter(path, meta, resume=True) as w:
        with pytest.raises(RuntimeError, match="short"):
            w.rewind(3, before_write=refuse)
        assert w.last_step == 6
    assert seen == [(3, 1)]
    assert {p.relative_to(path): p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_resume_refuses_another_algo(trace_dir):
    meta, _, _ = build_synthetic(algo="ppo", n_steps=1)
    with pytest.raises(ValueError, match="algo"):
        TraceWriter(trace_dir, meta, resume=True)


# ----------------------------------------------------------------------------- crash safety
def test_torn_last_line_is_dropped_with_a_warning(trace_dir):
    steps_file = pathlib.Path(trace_dir) / "steps.jsonl"
    data = steps_file.read_bytes()
    last = data[:-1].rsplit(b"\n", 1)[1]
    steps_file.write_bytes(data + last[: len(last) // 2])  # a killed writer's half line (step 6 never landed)
    with pytest.warns(TraceWarning, match=r"steps.jsonl line 6: dropped a torn last line"):
        trace = load(trace_dir)
    assert [s.step for s in trace.steps] == [1, 2, 3, 4, 5]
    # the last complete line losing its newline and tail: previous steps still load
    steps_file.write_bytes(data[:-25])
    with pytest.warns(TraceWarning):
        assert [s.step for s in load(trace_dir).steps] == [1, 2, 3, 4]
    # a complete line that only lacks its newline is kept
    steps_file.write_bytes(data[:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load(trace_dir).steps) == 5
    # validate reports the dropped line as a problem instead of warning
    steps_file.write_bytes(data + b'{"step": 6, "rol')
    problems = validate(trace_dir)
    assert len(problems) == 1 and "torn" in problems[0]


def test_torn_rollout_line_is_dropped(trace_dir):
    rfile = pathlib.Path(trace_dir) / "rollouts.jsonl"
    rfile.write_bytes(rfile.read_bytes() + b'{"rollout": 3, "groups": [{"prompt": "x"')
    with pytest.warns(TraceWarning, match="rollouts.jsonl line 4"):
        assert sorted(load(trace_dir).rollouts) == [0, 1, 2]


KILLED_WRITER = textwrap.dedent("""
    import sys, dataclasses
    sys.path[:0] = [{repo!r}, {tests!r}]
    from trace_factory import build_synthetic
    from minigrpo.trace import TraceWriter
    meta, rollouts, steps = build_synthetic(n_steps=2, T=200, K=20, seed=1)
    with TraceWriter(sys.argv[1], meta) as w:
        print("ready", flush=True)
        for k in range(1, 100000):
            if k % 2 == 1:
                w.write_rollout(k // 2, rollouts[0])
            w.write_step(dataclasses.replace(steps[0], step=k, rollout=(k - 1) // 2))
""")


def test_kill_9_at_any_moment_leaves_a_loadable_trace(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER.format(repo=str(REPO), tests=str(REPO / "tests")))
    recorded = []
    for i, delay in enumerate((0.05, 0.13, 0.31, 0.5)):
        path = tmp_path / f"t{i}"
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceWarning)
            trace = load(path, lazy=False)  # every complete line has complete payloads
        numbers = [s.step for s in trace.steps]
        assert numbers == list(range(1, len(numbers) + 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = TraceWriter(path, trace.meta, resume=True)  # and the run can go on
        assert w.last_step == len(numbers)
        w.close()
        recorded.append(len(numbers))
    assert max(recorded) > 0, "the writer was always killed before its first step: the test proved nothing"


# ----------------------------------------------------------------------------- bad inputs
def _meta_edit(edit):
    def apply(path):
        f = pathlib.Path(path) / "meta.json"
        f.write_text(json.dumps(edit(json.loads(f.read_text()))))
    return apply


def _drop(key):
    def edit(d):
        d.pop(key)
        return d
    return edit


def _set(key, value):
    def edit(d):
        d[key] = value
        return d
    return edit


def _write(rel, data):
    def apply(path):
        (pathlib.Path(path) / rel).write_bytes(data)
    return apply


def _remove(rel):
    return lambda path: os.remove(os.path.join(path, rel))


def _npz(rel, edit):
    return lambda path: rewrite_npz(os.path.join(path, rel), edit)


def _line(rel, n, edit):
    return lambda path: rewrite_line(os.path.join(path, rel), n, edit)


def _malformed_middle(path):
    f = pathlib.Path(path) / "steps.jsonl"
    lines = f.read_bytes().split(b"\n")
    lines[1] = lines[1][: len(lines[1]) // 2]
    f.write_bytes(b"\n".join(lines))


def _probe_field(i, key, value):
    def edit(d):
        d["probes"][i][key] = value
        return d
    return edit


BAD_CASES = {
    "newer version": (_meta_edit(_set("version", FORMAT_VERSION + 1)),
                      ["meta.json", f"trace version {FORMAT_VERSION + 1} is newer than this minigrpo reads "
                                    f"({FORMAT_VERSION}): upgrade minigrpo"]),
    "version not int": (_meta_edit(_set("version", "1")), ["meta.json", "field version"]),
    "wrong format": (_meta_edit(_set("format", "something-else")), ["meta.json", "field format", "not a minigrpo"]),
    "meta missing field": (_meta_edit(_drop("algo")), ["meta.json", "field algo", "missing"]),
    "meta wrong type": (_meta_edit(_set("config", [1, 2])), ["meta.json", "field config"]),
    "meta malformed": (_write("meta.json", b'{"format": "minigrpo-trace", '), ["meta.json", "malformed JSON"]),
    "meta not object": (_write("meta.json", b"[1, 2]"), ["meta.json", "not a JSON object"]),
    "malformed middle line": (_malformed_middle, ["steps.jsonl line 2", "malformed JSON"]),
    "blank middle line": (lambda p: (pathlib.Path(p) / "steps.jsonl").write_bytes(
        (pathlib.Path(p) / "steps.jsonl").read_bytes().replace(b"\n", b"\n\n", 1)), ["steps.jsonl line 2", "empty"]),
    "step missing field": (_line("steps.jsonl", 3, _drop("metrics")), ["steps.jsonl line 3", "field metrics"]),
    "step metric not a number": (_line("steps.jsonl", 2, lambda d: {**d, "metrics": {"loss": "x"}}),
                                 ["steps.jsonl line 2", "field metrics.loss"]),
    "probe missing field": (_line("steps.jsonl", 1, lambda d: (d["probes"][1].pop("tokens"), d)[1]),
                            ["steps.jsonl line 1", "field probes[1].tokens", "missing"]),
    "probe group out of range": (_line("steps.jsonl", 2, _probe_field(0, "group", 9)),
                                 ["step_000002.npz", "probes[0].group", "out of range"]),
    "probe tokens length": (_line("steps.jsonl", 2, _probe_field(0, "tokens", ["a"])),
                            ["step_000002.npz", "probes[0].tokens"]),
    "position outside completion": (_line("steps.jsonl", 2, lambda d: (d["probes"][0]["positions"][0].update(pos=99), d)[1]),
                                    ["step_000002.npz", "probes[0].positions[0].pos"]),
    "steps out of order": (_line("steps.jsonl", 3, _set("step", 2)), ["steps.jsonl line 3", "field step"]),
    "unknown rollout": (_line("steps.jsonl", 4, _set("rollout", 17)), ["steps.jsonl line 4", "rollout 17"]),
    "payload path escapes": (_line("steps.jsonl", 1, _set("payload", "../../etc/passwd.npz")),
                             ["steps.jsonl line 1", "field payload"]),
    "missing step payload": (_remove("payloads/step_000003.npz"),
                             ["steps.jsonl line 3", "field payload", "step_000003.npz", "missing"]),
    "missing rollout payload": (_remove("payloads/rollout_000001.npz"),
                                ["rollouts.jsonl line 2", "rollout_000001.npz", "missing"]),
    "group length mismatch": (_line("rollouts.jsonl", 1, lambda d: (d["groups"][0]["rewards"].pop(), d)[1]),
                              ["rollouts.jsonl line 1", "groups[0].rewards"]),
    "duplicate rollout": (_line("rollouts.jsonl", 2, _set("rollout", 0)), ["rollouts.jsonl line 2", "twice"]),
    "rollout lengths mismatch": (_npz("payloads/rollout_000000.npz", lambda a: {**a, "lengths": a["lengths"][:-1]}),
                                 ["rollout_000000.npz", "lengths"]),
    "probe array length": (_npz("payloads/step_000002.npz", lambda a: {**a, "p0.logp_old": a["p0.logp_old"][:-1]}),
                           ["step_000002.npz", "probes[0].logp_old", "token_ids has length"]),
    "position array length": (_npz("payloads/step_000002.npz",
                                   lambda a: {**a, "p1.pos1.probs_after": a["p1.pos1.probs_after"][:2]}),
                              ["step_000002.npz", "probes[1].positions[1].probs_after"]),
    "probe array dtype": (_npz("payloads/step_000001.npz",
                               lambda a: {**a, "p0.clipped_low": a["p0.clipped_low"].astype(np.float32)}),
                          ["step_000001.npz", "p0.clipped_low", "dtype"]),
    "token ids dtype": (_npz("payloads/step_000001.npz",
                             lambda a: {**a, "p0.token_ids": a["p0.token_ids"].astype(np.float64)}),
                        ["step_000001.npz", "p0.token_ids", "dtype"]),
    "probe array 2-D": (_npz("payloads/step_000001.npz", lambda a: {**a, "p0.kl": a["p0.kl"][None]}),
                        ["step_000001.npz", "p0.kl", "shape"]),
    "payload key missing": (_npz("payloads/step_000005.npz", lambda a: {k: v for k, v in a.items() if k != "p1.ratio"}),
                            ["step_000005.npz", "p1.ratio", "missing"]),
    "payload not a zip": (_write("payloads/step_000004.npz", b"not an archive at all"),
                          ["step_000004.npz", "cannot be read"]),
    "payload truncated": (lambda p: _write("payloads/step_000004.npz",
                                           (pathlib.Path(p) / "payloads/step_000004.npz").read_bytes()[:500])(p),
                          ["step_000004.npz"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_trace_raises_one_line_trace_error(trace_dir, case):
    damage, fragments = BAD_CASES[case]
    damage(trace_dir)
    with pytest.raises(TraceError) as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TraceWarning)
            load(trace_dir, lazy=False)
    assert_one_line_error(e, *fragments)
    with pytest.raises(TraceError):  # validate raises on the same structural problems
        validate(trace_dir)


def test_bad_directories(tmp_path):
    with pytest.raises(TraceError) as e:
        load(tmp_path / "nope")
    assert_one_line_error(e, "nope", "no such trace directory")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(TraceError) as e:
        load(tmp_path / "file.txt")
    assert_one_line_error(e, "file.txt", "not a trace directory")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError) as e:
        load(tmp_path / "empty")
    assert_one_line_error(e, "empty", "is empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("hi")
    with pytest.raises(TraceError) as e:
        load(tmp_path / "other")
    assert_one_line_error(e, os.path.join("other", "meta.json"), "not a minigrpo trace")


def test_multiline_content_never_breaks_the_one_line_rule(trace_dir):
    rewrite_line(os.path.join(trace_dir, "steps.jsonl"), 2, _set("metrics", {"a\nb\u2028c": "x"}))
    with pytest.raises(TraceError) as e:
        load(trace_dir)
    assert_one_line_error(e, "steps.jsonl line 2")


class _Boom:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_object_array_payload_is_refused_and_never_unpickled(trace_dir, tmp_path):
    marker = tmp_path / "pwned"
    payload = os.path.join(trace_dir, "payloads", "step_000002.npz")
    with np.load(payload, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["p0.logp_old"] = np.array([_Boom(str(marker))] * len(arrays["p0.logp_old"]), dtype=object)
    np.savez(payload, **arrays)  # numpy pickles object arrays when saving
    with pytest.raises(TraceError) as e:
        load(trace_dir, lazy=False)
    assert_one_line_error(e, "step_000002.npz", "p0.logp_old", "object")
    assert not marker.exists()
    # the same refusal happens lazily, on first access of the probes
    trace = load(trace_dir, steps=[2])
    with pytest.raises(TraceError):
        trace.steps[0].probes
    assert not marker.exists()
    # a pickle instead of an npz is refused as well
    with open(payload, "wb") as f:
        pickle.dump(_Boom(str(marker)), f)
    with pytest.raises(TraceError) as e:
        load(trace_dir, lazy=False)
    assert_one_line_error(e, "step_000002.npz")
    assert not marker.exists()


# ----------------------------------------------------------------------------- inspect / export
def test_cli_inspect_good_trace(trace_dir, capsys):
    assert cli_inspect(trace_dir) == 0
    out = capsys.readouterr().out
    for fragment in ("grpo", "synthetic", "syllogism", "steps      5", "rollouts   3", "clip_ratio/low_mean",
                     "payloads"):
        assert fragment in out


def test_a_run_folder_without_a_trace_is_named_as_such(tmp_path):
    (tmp_path / "train_config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TraceError) as e:
        load(tmp_path)
    assert_one_line_error(e, "a run folder with no trace in it")
    assert "--trace false" in str(e.value)


def test_cli_inspect_and_downsample_take_a_run_folder(trace_dir, tmp_path, capsys):
    """`minigrpo train --out RUN` writes RUN/trace: RUN itself is accepted wherever a trace is."""
    import shutil

    from minigrpo.trace import trace_dir as resolve
    from minigrpo.trace.downsample import downsample

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(trace_dir, run / "trace")
    assert resolve(run) == str(run / "trace") and resolve(trace_dir) == str(trace_dir)
    assert resolve(tmp_path / "nothing") == str(tmp_path / "nothing")  # left for the reader to refuse
    assert cli_inspect(run) == 0
    assert f"trace      {run / 'trace'}" in capsys.readouterr().out
    got = downsample(run, tmp_path / "ds", probe_every=2)
    assert got["steps"] == len(load(trace_dir).steps) and validate(tmp_path / "ds") == []
    assert got["bytes_before"] == sum(f.stat().st_size for f in (run / "trace").rglob("*") if f.is_file())


@pytest.mark.parametrize("damage", [
    lambda p: os.remove(os.path.join(p, "meta.json")),
    _meta_edit(_set("version", 2)),
    _malformed_middle,
    _npz("payloads/step_000002.npz", lambda a: {**a, "p0.logp_old": a["p0.logp_old"][:-1]}),
])
def test_cli_on_a_bad_trace_prints_one_line_and_fails(trace_dir, capsys, damage, tmp_path):
    damage(trace_dir)
    assert cli_inspect(trace_dir) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("minigrpo: error: "), captured.err
    assert "Traceback" not in captured.err
    assert cli_export(tmp_path / "missing", tmp_path / "x.csv") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error: ")


def test_cli_inspect_warns_on_one_line_for_a_torn_line(trace_dir, capsys):
    with open(os.path.join(trace_dir, "steps.jsonl"), "ab") as f:
        f.write(b'{"step": 6, "rollo')
    assert cli_inspect(trace_dir) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: warning: ") and "torn" in err[0]


def test_cli_downsample_says_it_drops_a_torn_line(trace_dir, tmp_path, capsys):
    from minigrpo.cli import main

    with open(os.path.join(trace_dir, "steps.jsonl"), "ab") as f:
        f.write(b'{"step": 6, "rollo')
    assert main(["trace", "downsample", str(trace_dir), str(tmp_path / "small"), "--probe-every", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: warning: ") and "torn" in err[0]


def test_cli_validate_a_good_trace_or_run_folder(trace_dir, tmp_path, capsys):
    import shutil

    from minigrpo.cli import main

    assert main(["trace", "validate", str(trace_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"trace OK: 5 steps, 3 rollouts in {trace_dir}\n" and captured.err == ""
    run = tmp_path / "run"
    shutil.copytree(trace_dir, run / "trace")
    assert cli_validate(run) == 0
    assert capsys.readouterr().out.startswith(f"trace OK: 5 steps, 3 rollouts in {run / 'trace'}")


def test_cli_validate_prints_each_problem_then_a_count(trace_dir, capsys):
    """A tampered number in steps.jsonl: the problem on its own line, then the verdict; exit status 1."""
    from minigrpo.cli import main

    def tamper(d):
        d["metrics"]["clip_ratio/region_mean"] += 0.25
        return d

    rewrite_line(os.path.join(trace_dir, "steps.jsonl"), 2, tamper)
    assert main(["trace", "validate", str(trace_dir)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2, out
    assert "steps.jsonl line 2 (step 2): field metrics.clip_ratio/region_mean:" in out[0]
    assert out[1] == f"1 problem in {trace_dir}"


@pytest.mark.parametrize("damage, fragment", [
    (_malformed_middle, "steps.jsonl line 2"),  # structural: the check stops there
    (lambda p: open(os.path.join(p, "steps.jsonl"), "ab").write(b'{"step": 6, "rollo'), "torn last line"),
])
def test_cli_validate_counts_structural_and_torn_lines_as_problems(trace_dir, capsys, damage, fragment):
    damage(trace_dir)
    assert cli_validate(trace_dir) == 1
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert len(out) == 2 and fragment in out[0] and out[1].startswith("1 problem in "), captured.out
    assert captured.err == ""


def test_cli_validate_a_path_that_is_not_a_trace(tmp_path, capsys):
    from minigrpo.cli import main

    (tmp_path / "sft-run").mkdir()
    (tmp_path / "sft-run" / "train_config.json").write_text("{}")
    for path, fragment in [(tmp_path / "missing", "no such trace directory"),
                           (tmp_path / "sft-run", "a run folder with no trace in it")]:
        assert main(["trace", "validate", str(path)]) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert captured.out == "" and len(lines) == 1, captured
        assert lines[0].startswith("minigrpo: error: ") and fragment in lines[0]


def test_export_csv_columns(tmp_path, capsys):
    meta, rollouts, steps = build_synthetic(n_steps=3)
    path = tmp_path / "t"
    write_synthetic(path, meta, rollouts, steps[:2])
    with TraceWriter(path, meta, resume=True) as w:  # a step with fewer metrics and a NaN
        w.write_rollout(1, rollouts[1])
        w.write_step(dataclasses.replace(steps[2], metrics={"loss": 0.5, "reward": float("nan"), "extra": 3}))
    trace = load(path)
    out = tmp_path / "m.csv"
    assert export_csv(trace, out) == 3
    import csv

    rows = list(csv.reader(out.open()))
    names = list(steps[0].metrics)
    assert rows[0] == ["step", "rollout", *names, "extra"] == ["step", "rollout", *metric_names(trace)]
    assert [r[:2] for r in rows[1:]] == [["1", "0"], ["2", "0"], ["3", "1"]]
    first = dict(zip(rows[0], rows[1]))
    assert float(first["reward"]) == steps[0].metrics["reward"]  # repr: exact
    assert first["extra"] == ""
    last = dict(zip(rows[0], rows[3]))
    assert last["loss"] == "0.5" and last["reward"] == "nan" and last["accuracy"] == "" and last["extra"] == "3.0"
    assert cli_export(path, tmp_path / "cli.csv") == 0
    assert "wrote 3 rows" in capsys.readouterr().out
    assert (tmp_path / "cli.csv").read_text() == out.read_text()
    assert cli_export(path, tmp_path / "no-such-dir" / "x.csv") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error: cannot write")


def test_summary_mentions_the_essentials(trace_dir):
    text = summary(load(trace_dir))
    assert "algo       grpo" in text and "steps      5 (step 1..5)" in text
    assert "2 probes x 5 steps" in text
    for name in ("loss", "reward", "grad_norm"):
        assert name in text


def test_index_reads_json_only(trace_dir):
    for f in pathlib.Path(trace_dir, "payloads").iterdir():
        f.unlink()
    index = read_index(trace_dir)
    assert [s.step for s in index.steps] == [1, 2, 3, 4, 5] and len(index.rollouts) == 3


def test_new_meta_fills_provenance():
    meta = new_meta("grpo", "tiny", "syllogism", {"epsilon": 0.2}, "tiny-tok", git_commit=None)
    assert meta.format == "minigrpo-trace" and meta.version == FORMAT_VERSION
    assert meta.created.endswith("+00:00") and meta.git_commit is None


# ----------------------------------------------------------------------------- stop 19: reader edge cases
def test_reading_while_a_run_appends_a_rollout_and_its_step(tmp_path, monkeypatch):
    """The writer appends a rollout's line, then its steps' lines. The reader reads steps.jsonl
    first, so a rollout line and its first step line appended between its two reads cannot make
    a step name a rollout it has not read."""
    from minigrpo.trace import reader

    path = tmp_path / "t"
    make_synthetic_trace(path, n_steps=2)
    lines = {name: (path / name).read_text().splitlines(keepends=True) for name in ("rollouts.jsonl", "steps.jsonl")}
    last_rollout = json.loads(lines["rollouts.jsonl"][-1])["rollout"]
    first_of_last = next(i for i, l in enumerate(lines["steps.jsonl"]) if json.loads(l)["rollout"] == last_rollout)
    # on disk: the run before it wrote the last rollout; it writes that rollout and its first step
    # while the reader is between its two files
    (path / "rollouts.jsonl").write_text("".join(lines["rollouts.jsonl"][:-1]))
    (path / "steps.jsonl").write_text("".join(lines["steps.jsonl"][:first_of_last]))
    read_jsonl = reader._read_jsonl
    calls = []

    def racing(file, notes):
        out = read_jsonl(file, notes)
        if not calls:
            with open(path / "rollouts.jsonl", "a") as f:
                f.write(lines["rollouts.jsonl"][-1])
            with open(path / "steps.jsonl", "a") as f:
                f.write(lines["steps.jsonl"][first_of_last])
        calls.append(file)
        return out

    monkeypatch.setattr(reader, "_read_jsonl", racing)
    index = read_index(path)
    assert [r.step for r in index.steps] == [json.loads(l)["step"] for l in lines["steps.jsonl"][:first_of_last]]
    assert last_rollout in index.rollouts  # read after the steps, it is there; its step comes on the next read


@pytest.mark.parametrize("mutation,message", [
    (lambda d: {**d, "metrics": {**d["metrics"], "lo\ud800ss": 1.0}}, r"lone UTF-16 surrogate escape \(\\ud800\)"),
    (lambda d: {**d, "step": 2 ** 63}, "does not fit a 64-bit integer"),
], ids=["lone-surrogate", "step-past-int64"])
def test_json_the_tools_could_not_use_is_refused_in_one_line(tmp_path, mutation, message):
    path = tmp_path / "t"
    make_synthetic_trace(path, n_steps=2)
    lines = (path / "steps.jsonl").read_text().splitlines()
    lines[-1] = json.dumps(mutation(json.loads(lines[-1])))  # ensure_ascii: the surrogate as a \ud800 escape
    (path / "steps.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError, match=message) as err:
        load(path)
    assert "\n" not in str(err.value) and f"line {len(lines)}" in str(err.value)


def test_an_escaped_surrogate_pair_is_text(tmp_path):
    path = tmp_path / "t"
    make_synthetic_trace(path, n_steps=2)
    lines = (path / "steps.jsonl").read_text().splitlines()
    d = json.loads(lines[-1])
    d["metrics"]["\U0001F600"] = 1.0  # written by json.dumps as the pair \ud83d\ude00
    lines[-1] = json.dumps(d)
    assert "\\ud83d\\ude00" in lines[-1]
    (path / "steps.jsonl").write_text("\n".join(lines) + "\n")
    assert load(path).steps[-1].metrics["\U0001F600"] == 1.0


def test_an_empty_meta_or_a_folder_for_a_payload_says_so(tmp_path):
    path = tmp_path / "t"
    make_synthetic_trace(path, n_steps=2)
    payload = json.loads((path / "steps.jsonl").read_text().splitlines()[0])["payload"]
    os.remove(path / payload)
    os.mkdir(path / payload)
    with pytest.raises(TraceError, match="is not a file"):
        load(path)
    (path / "meta.json").write_text("")
    with pytest.raises(TraceError, match=r"meta.json: is empty; the file is damaged") as err:
        load(path)
    assert "cut the file" not in str(err.value)


def test_validate_reports_updates_missing_between_steps(tmp_path):
    path = tmp_path / "t"
    make_synthetic_trace(path, n_steps=5)
    lines = (path / "steps.jsonl").read_text().splitlines()
    del lines[1:3]  # steps 2 and 3
    (path / "steps.jsonl").write_text("\n".join(lines) + "\n")
    problems = validate(path)
    assert any("follows step 1, so updates 2-3 of the run are not in the trace" in p for p in problems), problems


def test_export_csv_failing_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "t"
    make_synthetic_trace(path, n_steps=3)
    trace = load(path)
    out = tmp_path / "m.csv"
    out.write_text("old\n")
    trace.steps[-1].metrics["loss"] = "not a number"  # fails on the last row
    with pytest.raises(TypeError):
        export_csv(trace, out)
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_csv_writes_through_a_link(tmp_path):
    """--csv through a symlink (or to a pipe, /dev/stdout) writes into it instead of replacing it."""
    path = tmp_path / "t"
    make_synthetic_trace(path, n_steps=3)
    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    target.write_text("")
    link.symlink_to(target)
    assert export_csv(load(path), link) == 3
    assert link.is_symlink() and len(target.read_text().splitlines()) == 4


def test_a_lost_steps_file_or_lost_first_updates_are_not_a_valid_trace(tmp_path):
    """A trace whose steps.jsonl was lost read as 0 updates ("trace OK"); one whose first lines were cut too."""
    import shutil

    from minigrpo.trace import TraceError, validate

    demo = pathlib.Path(__file__).resolve().parents[1] / "traces" / "demo-grpo-syllogism"
    lost = tmp_path / "lost"
    shutil.copytree(demo, lost)
    (lost / "steps.jsonl").unlink()
    with pytest.raises(TraceError, match="steps.jsonl: is missing .* holds 38 rollouts; restore steps.jsonl"):
        load(lost)
    with pytest.raises(TraceError, match="is missing"):
        validate(lost)  # a structural problem: `trace validate` reports it as one and exits 1
    cut = tmp_path / "cut"
    shutil.copytree(demo, cut)
    lines = (cut / "steps.jsonl").read_text().splitlines(keepends=True)
    (cut / "steps.jsonl").write_text("".join(lines[49:]))
    assert any("first recorded update is 50, so updates 1-49" in p for p in validate(cut))


@pytest.mark.parametrize("key, value", [("epsilon", "0.2x"), ("beta", [0.04]), ("format_weight", "x"),
                                        ("epsilon_high", 10**400), ("advantage_eps", True)])
def test_a_config_number_of_the_wrong_type_is_one_line_for_every_reader(tmp_path, key, value, capsys):
    """meta.config is what the scenes, plots and validate compute with: a string epsilon was a 73-line
    traceback in the scenes, and a 400-digit epsilon_high an OverflowError in validate and plot."""
    import json
    import shutil

    from minigrpo.cli import main
    from minigrpo.trace import TraceError
    from scenes.components import data as D

    trace = tmp_path / "t"
    shutil.copytree(pathlib.Path(__file__).resolve().parents[1] / "traces" / "demo-grpo-syllogism", trace)
    meta = json.loads((trace / "meta.json").read_text())
    meta["config"][key] = value
    (trace / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TraceError, match=f"field config.{key}: .* is not a finite number"):
        load(trace)
    for argv in (["trace", "validate", str(trace)], ["plot", str(trace), "-o", str(tmp_path / "p")]):
        assert main(argv) in (1, 2)
        err = capsys.readouterr().err.strip()
        assert f"config.{key}" in err and "Traceback" not in err, argv
    with pytest.raises(D.SceneInputError, match=f"config.{key}"):
        D.load_trace(str(trace))


def test_an_unreadable_payload_is_named_for_what_it_is(tmp_path):
    """A link loop or a dangling link was "missing"; garbage quoted numpy's advice to load it unsafely."""
    from minigrpo.trace.fields import Where
    from minigrpo.trace.npz import Npz

    (tmp_path / "loop.npz").symlink_to(tmp_path / "loop.npz")
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "nothing")
    (tmp_path / "garbage.npz").write_bytes(b"not an archive" * 8)
    where = Where(str(tmp_path / "steps.jsonl"), 1)
    for rel, needle in (("loop.npz", "cannot be reached (Too many levels of symbolic links)"),
                        ("dangling.npz", "is a link to nothing"), ("missing.npz", "is missing"),
                        ("garbage.npz", "not an archive of plain arrays")):
        with pytest.raises(TraceError, match=re.escape(needle)) as err:
            Npz(str(tmp_path), rel, where, "payload")
        assert "allow_pickle" not in str(err.value) and "\n" not in str(err.value)


def test_validate_flags_another_algo_rollouts_out_of_order_and_negative_counts(tmp_path):
    import json
    import shutil

    from minigrpo.trace import validate

    trace = tmp_path / "t"
    shutil.copytree(pathlib.Path(__file__).resolve().parents[1] / "traces" / "demo-grpo-syllogism", trace)
    assert validate(trace) == []
    meta = json.loads((trace / "meta.json").read_text())
    meta["algo"] = "dpo"
    (trace / "meta.json").write_text(json.dumps(meta))
    rollouts = (trace / "rollouts.jsonl").read_text().splitlines(keepends=True)
    rollouts[0], rollouts[1] = rollouts[1], rollouts[0]
    (trace / "rollouts.jsonl").write_text("".join(rollouts))
    steps = (trace / "steps.jsonl").read_text().splitlines(keepends=True)
    first = json.loads(steps[0])
    first["metrics"]["num_tokens"] = -5
    steps[0] = json.dumps(first) + "\n"
    (trace / "steps.jsonl").write_text("".join(steps))
    problems = "\n".join(validate(trace))
    assert "field algo: 'dpo'" in problems
    assert "(rollout 0): field rollout: follows rollout 1" in problems
    assert "(step 1): field metrics.num_tokens: -5.0 is negative" in problems


def test_a_trl_trace_resumed_from_a_checkpoint_may_start_after_step_1(tmp_path):
    import json
    import shutil

    from minigrpo.trace import validate

    trace = tmp_path / "t"
    shutil.copytree(pathlib.Path(__file__).resolve().parents[1] / "traces" / "demo-grpo-syllogism", trace)
    lines = (trace / "steps.jsonl").read_text().splitlines(keepends=True)
    (trace / "steps.jsonl").write_text("".join(lines[49:]))
    assert any("first recorded update is 50" in p for p in validate(trace))
    meta = json.loads((trace / "meta.json").read_text())
    meta["extra"]["trainer"] = "trl"
    (trace / "meta.json").write_text(json.dumps(meta))
    assert not any("first recorded update" in p for p in validate(trace))
