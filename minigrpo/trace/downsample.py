"""A smaller copy of a trace: every rollout and every step's scalars, probes for some updates.

``minigrpo trace downsample SRC DST --probe-every N [--keep-first K]``

What makes a long trace large is its probes (per-token arrays and top-k logits for every
update) and its rollouts' completion texts. A copy for shipping keeps

* ``meta.json`` as recorded, plus ``extra["downsampled"]`` saying what was dropped;
* every rollout line and payload, byte for byte (all groups: prompts, completions, rewards,
  advantages, token ids);
* every step line with all its metrics;
* the probes of the first ``keep_first`` updates, of every ``probe_every``-th update after
  them (counted in recorded order, starting with the first), and of the last update; the
  other steps keep ``"probes": []`` and no payload, which the format allows.

Kept lines and payloads are copied as bytes, and the other step lines lose only their probes,
so a field this minigrpo does not know (one a later version added, docs/trace-format.md §8)
survives the copy. The copy goes into a hidden temp folder next to ``DST``, is read back with
the reader's checks, and is then renamed into place: an interrupted run leaves no
half-written ``DST`` (and a later run removes a temp folder a killed one left).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

from .encode import dumps_line, jsonable
from .layout import META_FILE, PAYLOAD_DIR, ROLLOUTS_FILE, STEPS_FILE
from .reader import TraceWarning, load, read_index, trace_dir
from .schema import TraceError

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
    """Bytes of every file under a trace folder (a link counts as itself: a dangling one or a loop is no error)."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


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
        warnings.simplefilter("always", TraceWarning)  # a torn last line is dropped, as load() does, and said
        index = read_index(src)
    numbers = [r.step for r in index.steps]
    kept = kept_probe_steps(numbers, probe_every, keep_first)
    with_probes = [r.step for r in index.steps if r.step in kept and r.probes]
    meta = json.loads(_read(src, META_FILE))
    meta.setdefault("extra", {})["downsampled"] = {"source_steps": len(numbers), "probe_every": probe_every,
                                                   "keep_first": keep_first, "steps_with_probes": with_probes}

    parent = os.path.dirname(dst) or "."
    if not os.path.isdir(parent):
        raise TraceError(f"{parent}: no such folder for the destination; create it first")
    _remove_stale_temps(parent, os.path.basename(dst))
    tmp = os.path.join(parent, f".{os.path.basename(dst)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rollout_lines = _read(src, ROLLOUTS_FILE).split(b"\n")
    step_lines = _read(src, STEPS_FILE).split(b"\n")
    payloads, probes_kept = [], 0
    try:
        os.makedirs(os.path.join(tmp, PAYLOAD_DIR))
        with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
        with open(os.path.join(tmp, ROLLOUTS_FILE), "wb") as f:
            for rid in sorted(index.rollouts):  # the lines the reader accepted (a torn tail is not one)
                rec = index.rollouts[rid]
                f.write(rollout_lines[rec.line - 1] + b"\n")
                payloads.append(rec.payload)
        with open(os.path.join(tmp, STEPS_FILE), "wb") as f:
            for rec in index.steps:
                line = step_lines[rec.line - 1]
                if rec.step in kept or not rec.probes:
                    f.write(line + b"\n")
                    payloads += [rec.payload] if rec.payload else []
                    probes_kept += len(rec.probes) if rec.step in kept else 0
                else:
                    obj = json.loads(line)
                    obj["probes"], obj["payload"] = [], None
                    f.write(dumps_line(jsonable(obj, f"step {rec.step}")))  # a NaN literal the reader took: null
        for rel in payloads:
            try:
                shutil.copyfile(os.path.join(src, rel), os.path.join(tmp, rel))
            except OSError as exc:
                raise TraceError(f"{os.path.join(src, rel)}: cannot copy this payload ({exc.strerror or exc}); "
                                 f"restore the trace's payloads/ from a copy of the whole trace") from None
        load(tmp, lazy=False)  # the copy passes the reader's checks before it gets its name
        summary = {"steps": len(numbers), "rollouts": len(index.rollouts), "steps_with_probes": len(with_probes),
                   "probes": probes_kept, "bytes_before": trace_bytes(src), "bytes_after": trace_bytes(tmp)}
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _read(trace: str, name: str) -> bytes:
    path = os.path.join(trace, name)
    if not os.path.exists(path):  # a run killed before its first record: no jsonl yet
        return b""
    with open(path, "rb") as f:
        return f.read()


def _remove_stale_temps(parent: str, name: str) -> None:
    """Temp folders of earlier downsamples to ``name`` whose process is gone (killed mid-copy)."""
    prefix = f".{name}.tmp-"
    for entry in os.listdir(parent):
        pid = entry[len(prefix):]
        if entry.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. no permission to signal it: it exists
        return True
    return True


def cli_downsample(src: str, dst: str, probe_every: int, keep_first: int = 0) -> int:
    """``minigrpo trace downsample``: write the copy and print one line of sizes."""
    s = downsample(src, dst, probe_every, keep_first)
    print(f"wrote {dst}: {s['steps']} steps ({s['steps_with_probes']} with probes, {s['probes']} probes), "
          f"{s['rollouts']} rollouts; {s['bytes_before'] / 2**20:.2f} MiB -> {s['bytes_after'] / 2**20:.2f} MiB",
          file=sys.stdout)
    return 0
