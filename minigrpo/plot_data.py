"""What the figures of ``minigrpo plot`` show, read from a run: no drawing here (``plot.py`` draws).

Finds the trace and ``summary.json`` of a run or trace folder, and computes from them the
baselines (held-out accuracy before and after RL, majority baseline), the sampled answer
token's probability at each probed decision, the decision heat map and each group's rewards.
Bad input raises :class:`PlotError` with one line that says what to do.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from .trace.layout import META_FILE


class PlotError(ValueError):
    """Bad input for ``minigrpo plot``; the message is one line that says what to do."""


HEATMAP_ROWS = 8  # tokens shown in the decision heat map


# ----------------------------------------------------------------------------- input
def find_run(path: str | os.PathLike) -> tuple[Path, Optional[Path]]:
    """(trace folder, summary.json or None) for a run folder or a trace folder."""
    from .trace import trace_dir as resolve

    p = Path(path).expanduser()
    if not p.exists():
        raise PlotError(f"{p} does not exist; pass a run folder (with trace/ and summary.json) or a trace folder")
    trace_dir = Path(resolve(p))
    if not (trace_dir / META_FILE).is_file():
        _refuse_run_without_trace(p)
        raise PlotError(f"{p} holds neither meta.json (a trace folder) nor trace/meta.json (a run folder); "
                        f"pass the folder `minigrpo train --out` wrote, or its trace/")
    summary = trace_dir.parent / "summary.json"  # the run folder's, whichever folder was given
    return trace_dir, (summary if summary.is_file() else None)


def _refuse_run_without_trace(p: Path) -> None:
    """A run folder with no trace/ (`train --trace false`, an SFT run): PlotError in the trace reader's words."""
    if not (p / "train_config.json").is_file() or (p / "trace").exists():
        return
    from .trace import TraceError, read_meta

    try:
        read_meta(p)  # raises, explaining such a folder as `minigrpo trace inspect` does
    except TraceError as e:
        raise PlotError(f"nothing to plot: {e}") from None


def read_summary(path: Optional[Path]) -> Optional[dict]:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PlotError(f"cannot read {path} ({e}); fix or delete it (the plots only need the trace)") from None


def summary_mismatch(meta, summary: Optional[dict]) -> Optional[str]:
    """Why ``summary`` (the summary.json beside the trace folder) is another run's, or None if it may be this
    trace's: a summary records the algo, task and model of its run, and a trace copied out of its run folder
    can sit beside an unrelated one."""
    if not isinstance(summary, dict):
        return None
    for key in ("algo", "task", "model"):
        if key in summary and summary[key] != getattr(meta, key, None):
            return f"its {key} is {summary[key]!r}, the trace's is {getattr(meta, key, None)!r}"
    return None


def _finite(x) -> Optional[float]:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def recompute_majority(meta) -> Optional[float]:
    """The eval split's majority baseline, rebuilt from the config the way the trainer builds it
    (None if it cannot be)."""
    cfg = meta.config or {}
    try:
        from .heldout import trained_questions
        from .tasks import TaskData, load_train_eval

        size, seed, knobs = int(cfg["train_size"]), int(cfg["seed"]), cfg.get("task_kwargs") or {}
        _, evaluation = load_train_eval(cfg["task"], size, int(cfg["eval_size"]), seed,
                                        also_exclude=trained_questions(cfg["task"], cfg["model"], (size, seed, knobs)),
                                        **knobs)
        n = min(int(cfg.get("eval_n") or len(evaluation)), len(evaluation))
        items = TaskData(evaluation.name, [evaluation[i] for i in range(n)], evaluation.dataset)
        return _finite(items.majority_baseline(bool(cfg.get("penalize_premise_copy", True))))
    except Exception:  # an unknown task, an old config: then the baseline is simply unknown
        return None


def baselines(meta, summary: Optional[dict], recompute: bool = True) -> dict:
    """``{"sft"|"majority"|"after": {"value": float or None, "label": str}}`` — never a made-up number."""
    before = (summary or {}).get("before") or {}
    after = (summary or {}).get("after") or {}
    sft, maj, fin = (_finite(before.get("accuracy")), _finite(after.get("majority_baseline")),
                     _finite(after.get("accuracy")))
    if maj is None:
        maj = _finite(before.get("majority_baseline"))
    out = {}
    if sft is not None:
        out["sft"] = {"value": sft, "label": f"before RL (SFT), held-out greedy: {sft:.3f}"}
    else:
        out["sft"] = {"value": None, "label": "before RL (SFT): unknown — no summary.json (plot the run folder)"}
    if maj is not None:
        out["majority"] = {"value": maj, "label": f"majority baseline: {maj:.3f}"}
    elif recompute and (maj := recompute_majority(meta)) is not None:
        out["majority"] = {"value": maj, "label": f"majority baseline: {maj:.3f} (recomputed from the eval split)"}
    else:
        out["majority"] = {"value": None, "label": "majority baseline: unknown"}
    if fin is not None:
        out["after"] = {"value": fin, "label": f"after RL, held-out greedy: {fin:.3f}"}
    return out


# ----------------------------------------------------------------------------- data
def answer_token_points(trace) -> list[dict]:
    """One point per probed decision position: the sampled answer token's p before/after the update."""
    points = []
    for s in trace.steps:
        for i, probe in enumerate(s.probes):
            for pos in probe.positions:
                if pos.kind != "decision":
                    continue
                hit = np.flatnonzero(np.asarray(pos.token_ids) == pos.sampled_token_id)
                if hit.size == 0:
                    continue
                k = int(hit[0])
                points.append({"step": s.step, "probe": i, "pos": pos.pos, "token": pos.tokens[k],
                               "p_before": float(pos.probs_before[k]), "p_after": float(pos.probs_after[k]),
                               "advantage": float(probe.advantage[pos.pos])})
    return points


def decision_heatmap(trace, rows: int = HEATMAP_ROWS) -> dict:
    """Mean p after each update of the decision tokens, over the step's probed decisions.

    Rows are the ``rows`` tokens with the largest total probability over all decisions; a
    cell is NaN where no decision of that step kept the token in its top-k.
    """
    per_step: dict[int, dict[str, list[float]]] = {}
    decisions: dict[int, int] = {}
    total: dict[str, float] = defaultdict(float)
    for s in trace.steps:
        cells: dict[str, list[float]] = defaultdict(list)
        for probe in s.probes:
            for pos in probe.positions:
                if pos.kind != "decision":
                    continue
                decisions[s.step] = decisions.get(s.step, 0) + 1
                for tok, p in zip(pos.tokens, pos.probs_after):
                    cells[tok].append(float(p))
                    total[tok] += float(p)
        per_step[s.step] = cells
    tokens = sorted(total, key=lambda t: (-total[t], t))[:rows]
    steps = [s for s in per_step if per_step[s]]
    matrix = [[float(np.mean(per_step[s][t])) if per_step[s].get(t) else math.nan for s in steps] for t in tokens]
    return {"tokens": tokens, "steps": steps, "p_after": matrix, "decisions_per_step": [decisions[s] for s in steps]}


def rollout_rewards(trace, rollout: int) -> list[dict]:
    return [{"group": g, "rewards": [float(r) for r in grp.rewards], "mean": float(grp.mean), "std": float(grp.std)}
            for g, grp in enumerate(trace.rollouts[rollout])]
