"""A smaller copy of a trace: every rollout and every step's scalars, probes for some updates.

``minigrpo trace downsample SRC DST --probe-every N [--keep-first K]``

What makes a long trace large is its probes (per-token arrays and top-k logits for every
update) and its rollouts' completion texts. A copy for shipping keeps

* ``meta.json`` as recorded, plus ``extra["downsampled"]`` saying what was dropped;
* every rollout (all groups: prompts, completions, rewards, advantages, token ids);
* every step line with all its metrics;
* the probes of the first ``keep_first`` updates, of every ``probe_every``-th update after
  them (counted in recorded order, starting with the first), and of the last update; the
  other steps keep ``"probes": []`` and no payload, which the format allows.

The copy is written with :class:`TraceWriter` (so it passes the reader's checks), into a
hidden temp folder next to ``DST`` that is renamed into place at the end: an interrupted
run leaves no half-written ``DST``. Probe arrays are copied unchanged, so ``validate`` of
the copy finds exactly what it finds in the source.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings

from .reader import TraceWarning, load, probe_counts, trace_dir
from .schema import Meta, Step, TraceError
from .writer import TraceWriter

__all__ = ["downsample", "kept_probe_steps", "trace_bytes", "cli_downsample"]


def kept_probe_steps(step_numbers: list[int], probe_every: int, keep_first: int = 0) -> set[int]:
    """The step numbers whose probes are kept (see the module docstring)."""
    if probe_every < 1:
        raise ValueError(f"probe_every must be >= 1, got {probe_every}")
    if keep_first < 0:
        raise ValueError(f"keep_first must be >= 0, got {keep_first}")
    kept = {n for i, n in enumerate(step_numbers) if i < keep_first or (i - keep_first) % probe_every == 0}
    if step_numbers:
        kept.add(step_numbers[-1])
    return kept


def trace_bytes(path: str | os.PathLike) -> int:
    """Bytes of every file under a trace folder."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def downsample(src: str | os.PathLike, dst: str | os.PathLike, probe_every: int, keep_first: int = 0) -> dict:
    """Write the down-sampled copy of trace ``src`` to the new folder ``dst``; returns a summary dict.

    Raises :class:`TraceError` (one line) when ``src`` is not a readable trace or ``dst`` exists.
    """
    src, dst = trace_dir(src), os.path.normpath(os.fspath(dst))  # src may be a run folder
    if os.path.exists(dst):
        raise TraceError(f"{dst}: already exists; choose a new destination folder (it is never overwritten)")
    if probe_every < 1 or keep_first < 0:
        raise TraceError(f"--probe-every must be >= 1 and --keep-first >= 0 (got {probe_every}, {keep_first})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceWarning)  # a torn last line is dropped, as load() does
        trace = load(src, lazy=True)
    numbers = [s.step for s in trace.steps]
    kept = kept_probe_steps(numbers, probe_every, keep_first)
    m = trace.meta
    extra = dict(m.extra)
    extra["downsampled"] = {"source_steps": len(numbers), "probe_every": probe_every, "keep_first": keep_first,
                            "steps_with_probes": [s.step for s in trace.steps if s.step in kept and probe_counts(s)]}
    meta = Meta(format=m.format, version=m.version, algo=m.algo, model=m.model, task=m.task, config=m.config,
                tokenizer=m.tokenizer, minigrpo_version=m.minigrpo_version, git_commit=m.git_commit,
                created=m.created, extra=extra)

    parent = os.path.dirname(dst) or "."
    if not os.path.isdir(parent):
        raise TraceError(f"{parent}: no such folder for the destination; create it first")
    tmp = os.path.join(parent, f".{os.path.basename(dst)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pending = sorted(trace.rollouts)  # rollout ids not yet written, in order
    probes_kept = 0
    try:
        with TraceWriter(tmp, meta, compress=True, fsync=False) as writer:
            for step in trace.steps:
                while pending and pending[0] <= step.rollout:
                    writer.write_rollout(pending[0], trace.rollouts[pending.pop(0)])
                probes = step.probes if step.step in kept else []
                probes_kept += len(probes)
                writer.write_step(Step(step=step.step, rollout=step.rollout, metrics=step.metrics, probes=probes))
            for rid in pending:  # rollouts recorded after the last update (a run stopped mid-rollout)
                writer.write_rollout(rid, trace.rollouts[rid])
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"steps": len(numbers), "rollouts": len(trace.rollouts),
            "steps_with_probes": len(extra["downsampled"]["steps_with_probes"]), "probes": probes_kept,
            "bytes_before": trace_bytes(src), "bytes_after": trace_bytes(dst)}


def cli_downsample(src: str, dst: str, probe_every: int, keep_first: int = 0) -> int:
    """``minigrpo trace downsample``: write the copy and print one line of sizes."""
    s = downsample(src, dst, probe_every, keep_first)
    print(f"wrote {dst}: {s['steps']} steps ({s['steps_with_probes']} with probes, {s['probes']} probes), "
          f"{s['rollouts']} rollouts; {s['bytes_before'] / 2**20:.2f} MiB -> {s['bytes_after'] / 2**20:.2f} MiB",
          file=sys.stdout)
    return 0
