"""Human summaries, CSV export and validation of traces (behind ``minigrpo trace inspect|export|validate``)."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
import warnings
from collections import Counter

import numpy as np

from ..files import atomic_write, is_temp
from .layout import META_FILE, PAYLOAD_DIR, ROLLOUTS_FILE, STEPS_FILE
from .reader import TraceWarning, load, probe_counts, read_index, read_meta, trace_dir, trace_warnings_as_lines
from .schema import Trace, TraceError
from .validate import validate

__all__ = ["summary", "display_name", "export_csv", "metric_names", "payload_bytes", "cli_inspect", "cli_export",
           "cli_validate"]


def metric_names(trace: Trace) -> list[str]:
    """Every metric name of the trace, in order of first appearance."""
    names: dict[str, None] = {}
    for s in trace.steps:
        for name in s.metrics:
            names.setdefault(name, None)
    return list(names)


def payload_bytes(path: str) -> tuple[int, int]:
    """(bytes, files) of the npz payloads of the trace directory (temp files excluded)."""
    directory = os.path.join(path, PAYLOAD_DIR)
    total = count = 0
    if os.path.isdir(directory):
        for entry in os.scandir(directory):
            if entry.is_file() and entry.name.endswith(".npz") and not is_temp(entry.name):
                total += entry.stat().st_size
                count += 1
    return total, count


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.6g}"


def summary(trace: Trace) -> str:
    """A few lines: provenance, sizes, probes, and first/last/min/max of every metric."""
    m = trace.meta
    steps = trace.steps
    lines = [
        f"trace      {trace.path}",
        f"format     {m.format} v{m.version}, written by minigrpo {m.minigrpo_version}"
        + (f" (commit {m.git_commit[:12]})" if m.git_commit else "") + f", created {m.created}",
        f"algo       {m.algo}",
        f"model      {m.model} (tokenizer {m.tokenizer})",
        f"task       {m.task}",
    ]
    if steps:
        lines.append(f"steps      {len(steps)} (step {steps[0].step}..{steps[-1].step})")
    else:
        lines.append("steps      0")
    rollouts = trace.rollouts or {s.rollout: s.groups for s in steps}
    completions = sum(len(g.completions) for groups in rollouts.values() for g in groups)
    lines.append(f"rollouts   {len(rollouts)} ({completions} completions)")
    per_step = [probe_counts(s) for s in steps]  # no payload is read for this
    counts = Counter(len(c) for c in per_step)
    if steps:
        n_pos = [n for c in per_step for n in c]
        per = ", ".join(f"{k} probes x {v} steps" for k, v in sorted(counts.items()))
        lines.append(f"probes     {per}" + (f"; {sum(n_pos) / len(n_pos):.3g} positions per probe" if n_pos else ""))
    nbytes, nfiles = payload_bytes(trace.path)
    json_bytes = sum(os.path.getsize(os.path.join(trace.path, f)) for f in (META_FILE, ROLLOUTS_FILE, STEPS_FILE)
                     if os.path.isfile(os.path.join(trace.path, f)))
    lines.append(f"payloads   {nbytes} bytes ({_size(nbytes)}) in {nfiles} files; JSON {json_bytes} bytes")
    names = metric_names(trace)
    if names:
        width = max(len(n) for n in names)
        lines.append("metrics    " + f"{'name':<{width}}  {'n':>5}  {'first':>12}  {'last':>12}  {'min':>12}  {'max':>12}")
        for name in names:
            values = trace.metric(name)
            present = [s.metrics[name] for s in steps if name in s.metrics]
            finite = values[np.isfinite(values)]
            lo = _fmt(float(finite.min())) if finite.size else "nan"
            hi = _fmt(float(finite.max())) if finite.size else "nan"
            lines.append(f"           {name:<{width}}  {finite.size:>5}  {_fmt(present[0]):>12}  "
                         f"{_fmt(present[-1]):>12}  {lo:>12}  {hi:>12}")
    return "\n".join(lines)


def display_name(path) -> str:
    """``trace NAME`` for a trace folder, ``run NAME`` for a run's (``runs/NAME/trace``: every run's
    trace folder is called trace, so its run folder is what tells runs apart)."""
    path = os.path.normpath(str(path))
    name = os.path.basename(path)
    if name == "trace" and os.path.basename(os.path.dirname(path)):
        return f"run {os.path.basename(os.path.dirname(path))}"
    return f"trace {name}"


def export_csv(trace: Trace, out_path: str | os.PathLike) -> int:
    """One row per step: ``step, rollout`` then every metric (first-appearance order).

    A metric a step did not record is an empty cell; a recorded non-finite value (stored
    as JSON null) is ``nan``; floats are written with repr (exact round trip). Returns the
    number of rows written.
    """
    names = metric_names(trace)

    def write(f) -> None:  # into a temp file renamed onto out_path: a failure leaves the old file whole
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(["step", "rollout", *names])
        for s in trace.steps:
            row: list = [s.step, s.rollout]
            for name in names:
                v = s.metrics.get(name)
                row.append("" if v is None else ("nan" if math.isnan(v) else repr(float(v))))
            writer.writerow(row)
        text.flush()
        text.detach()

    out_path = os.fspath(out_path)
    if os.path.islink(out_path) or (os.path.exists(out_path) and not os.path.isfile(out_path)):
        with open(out_path, "wb") as f:  # a link, a pipe, /dev/stdout: written through, not replaced
            write(f)
    else:
        atomic_write(out_path, write, durable=False)
    return len(trace.steps)


@contextlib.contextmanager
def _warnings_as_lines():
    with warnings.catch_warnings():
        warnings.simplefilter("always", TraceWarning)  # every load says so, not the first one in a process
        with trace_warnings_as_lines():
            yield


def _load_for_cli(path: str, lazy: bool) -> Trace:
    with _warnings_as_lines():
        return load(trace_dir(path), lazy=lazy)  # a run folder works too


def cli_inspect(path: str | os.PathLike) -> int:
    """Print the summary of the trace at ``path``; on a bad trace print ``minigrpo: error: ...`` (one line) and return 2.

    Every payload is read (lazy=False), so a damaged trace is reported here.
    """
    try:
        trace = _load_for_cli(os.fspath(path), lazy=False)
    except TraceError as e:
        print(f"minigrpo: error: {e}", file=sys.stderr)
        return 2
    print(summary(trace))
    return 0


def cli_export(path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the per-step metrics CSV of the trace at ``path`` to ``out``; errors: one line, return 2."""
    try:
        trace = _load_for_cli(os.fspath(path), lazy=True)  # metrics only: no step payload is read
    except TraceError as e:
        print(f"minigrpo: error: {e}", file=sys.stderr)
        return 2
    try:
        rows = export_csv(trace, out)
    except OSError as e:
        print(f"minigrpo: error: cannot write {os.fspath(out)}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {rows} rows x {2 + len(metric_names(trace))} columns to {os.fspath(out)}")
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def cli_validate(path: str | os.PathLike) -> int:
    """Print every problem :func:`validate` finds in the trace at ``path``, one a line, then a verdict line.

    Returns 0 when the trace is consistent, 1 when problems were found (a structural one, which stops
    the check, counts as one), 2 when ``path`` is not a trace (``minigrpo: error: ...`` on one line, as inspect).
    """
    path = trace_dir(os.fspath(path))  # a run folder works too
    try:
        read_meta(path)  # no trace here (no meta.json, another format): the path is wrong, not the trace
    except TraceError as e:
        print(f"minigrpo: error: {e}", file=sys.stderr)
        return 2
    try:
        problems, stopped = validate(path), ""
    except TraceError as e:
        problems, stopped = [str(e)], " (the check stops at a structural problem: fix it, then validate again)"
    for problem in problems:
        print(problem)
    if problems:
        print(f"{_plural(len(problems), 'problem')} in {path}{stopped}")
        return 1
    with _warnings_as_lines():
        index = read_index(path)  # JSON only, for the counts
    print(f"trace OK: {_plural(len(index.steps), 'step')}, {_plural(len(index.rollouts), 'rollout')} in {path}")
    return 0
