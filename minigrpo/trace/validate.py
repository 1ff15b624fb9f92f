"""Validating a minigrpo trace: structure (by loading every record and payload) and numbers.

:func:`validate` reads the whole trace strictly, then :func:`semantic_problems` checks each
recorded number against the formula that defines it (docs/trace-format.md): group means and
stds, ratio = exp(logp - logp_old), k3 KL, the clip flags against the advantage sign and the
run's epsilon, probe tokens against the rollout, and each position's probabilities against
its logits and the per-token log-probs.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Optional

import numpy as np

from .fields import one_line
from .reader import TraceIndex, TraceWarning, _load
from .schema import Trace
from .layout import META_FILE, ROLLOUTS_FILE, STEPS_FILE

__all__ = ["validate", "semantic_problems"]


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    same_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    with np.errstate(invalid="ignore"):
        return same_nan | same_inf | (np.abs(a - b) <= atol + rtol * np.abs(b))


def _as_float32(x: np.ndarray) -> np.ndarray:
    """A value computed in float64 as the trainer's float32 holds it: past float32's largest, inf
    (a ratio or a KL of a token whose log-probs moved by more than about 88 nats)."""
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float64).astype(np.float32).astype(np.float64)


def _first_bad(ok: np.ndarray) -> str:
    bad = np.flatnonzero(~ok)
    return f"{bad.size} of {ok.size} tokens (first at token {bad[0]})"


def semantic_problems(trace: Trace, index: Optional[TraceIndex] = None) -> list[str]:
    """Consistency of the recorded numbers with their formulas (docs/trace-format.md)."""
    problems: list[str] = []
    sfile = os.path.join(trace.path, STEPS_FILE)
    rfile = os.path.join(trace.path, ROLLOUTS_FILE)
    lines = {r.step: r.line for r in index.steps} if index else {}
    rlines = {rid: r.line for rid, r in index.rollouts.items()} if index else {}
    cfg = trace.meta.config
    eps_low = cfg.get("epsilon")
    eps_high = cfg.get("epsilon_high")
    if eps_high is None:
        eps_high = eps_low
    have_eps = all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in (eps_low, eps_high))

    if trace.meta.algo not in ("grpo", "ppo"):
        problems.append(f"{os.path.join(trace.path, META_FILE)}: field algo: {trace.meta.algo!r} is neither "
                        f"'grpo' nor 'ppo'")
    in_file_order = sorted(rlines, key=rlines.get)
    for before, rid in zip(in_file_order, in_file_order[1:]):
        if rid < before:
            problems.append(f"{rfile} line {rlines[rid]} (rollout {rid}): field rollout: follows rollout {before}; "
                            f"rollout ids increase down the file")
    for s in trace.steps:
        for key in ("num_tokens", "completion_length"):
            value = s.metrics.get(key)
            if isinstance(value, (int, float)) and value < 0:
                problems.append(f"{sfile} line {lines.get(s.step, '?')} (step {s.step}): field metrics.{key}: "
                                f"{value} is negative")

    for rid, groups in trace.rollouts.items():
        where = f"{rfile} line {rlines.get(rid, '?')} (rollout {rid})"
        for gi, g in enumerate(groups):
            r = g.rewards
            if r.size and np.isfinite(r).all():
                if not _close(g.mean, r.mean(), 1e-5, 1e-6):
                    problems.append(f"{where}: field groups[{gi}].mean: {g.mean} != mean of rewards {r.mean()}")
                if r.size >= 2 and not _close(g.std, r.std(ddof=1), 1e-5, 1e-6):
                    problems.append(f"{where}: field groups[{gi}].std: {g.std} != unbiased std of rewards "
                                    f"{r.std(ddof=1)}")

    for before, s in zip([None] + trace.steps[:-1], trace.steps):
        where = f"{sfile} line {lines.get(s.step, '?')} (step {s.step})"
        if before is None and s.step != 1 and trace.meta.extra.get("trainer") != "trl":  # TRL resumes number on
            gap = "update 1" if s.step == 2 else f"updates 1-{s.step - 1}"
            problems.append(f"{where}: field step: the first recorded update is {s.step}, so {gap} of the run are "
                            f"not in the trace (its first lines were cut?)")
        if before is not None and s.step != before.step + 1:
            gap = f"update {before.step + 1}" if s.step == before.step + 2 else \
                f"updates {before.step + 1}-{s.step - 1}"
            problems.append(f"{where}: field step: follows step {before.step}, so {gap} of the run are not in the "
                            f"trace (a trace cut short, then continued by --resume?)")
        m = s.metrics
        keys = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")
        if all(k in m and math.isfinite(m[k]) for k in keys):
            if abs(m[keys[2]] - m[keys[0]] - m[keys[1]]) > 1e-6:
                problems.append(f"{where}: field metrics.clip_ratio/region_mean: {m[keys[2]]} != low + high = "
                                f"{m[keys[0]] + m[keys[1]]}")
        for i, p in enumerate(s.probes):
            f = f"{where}: field probes[{i}]"
            lp, old, ref = (np.asarray(x, np.float64) for x in (p.logp, p.logp_old, p.logp_ref))
            with np.errstate(over="ignore"):
                ok = _close(p.ratio, _as_float32(np.exp(lp - old)), 1e-4, 1e-6)
            if not ok.all():
                problems.append(f"{f}.ratio: != exp(logp - logp_old) at {_first_bad(ok)}")
            d = ref - lp
            with np.errstate(over="ignore"):
                k3 = _as_float32(np.expm1(d) - d)
            ok = _close(p.kl, k3, 1e-4, 1e-5 * (1 + np.abs(d)))
            if not ok.all():
                problems.append(f"{f}.kl: != exp(logp_ref - logp) - (logp_ref - logp) - 1 at {_first_bad(ok)}")
            A = np.asarray(p.advantage, np.float64)
            ratio = np.asarray(p.ratio, np.float64)
            for name, flag, sign_ok, side_ok in (
                    ("clipped_low", p.clipped_low, A < 0, ratio < 1),
                    ("clipped_high", p.clipped_high, A > 0, ratio > 1)):
                ok = ~flag | (sign_ok & side_ok)
                if not ok.all():
                    problems.append(f"{f}.{name}: set where the advantage sign or the ratio side is wrong at "
                                    f"{_first_bad(ok)}")
            if have_eps:
                for name, flag, expect, edge in (
                        ("clipped_low", p.clipped_low, (ratio < 1 - eps_low) & (A < 0), 1 - eps_low),
                        ("clipped_high", p.clipped_high, (ratio > 1 + eps_high) & (A > 0), 1 + eps_high)):
                    ok = (flag == expect) | (np.abs(ratio - edge) < 1e-6)
                    if not ok.all():
                        problems.append(f"{f}.{name}: disagrees with the ratio and epsilon of meta.config at "
                                        f"{_first_bad(ok)}")
            if p.group < len(s.groups) and p.index < len(s.groups[p.group].completion_ids):
                g = s.groups[p.group]
                ids = g.completion_ids[p.index]
                if ids.shape != p.token_ids.shape or not np.array_equal(ids, p.token_ids):
                    problems.append(f"{f}.token_ids: differ from completion {p.index} of group {p.group} of rollout "
                                    f"{s.rollout}")
                if trace.meta.algo == "grpo":
                    ok = _close(A, g.advantages[p.index], 1e-5, 1e-6)
                    if not ok.all():
                        problems.append(f"{f}.advantage: != the group's advantage {g.advantages[p.index]} at "
                                        f"{_first_bad(ok)}")
            per_token = {"before": p.logp, "after": p.logp_new, "ref": p.logp_ref}
            for j, q in enumerate(p.positions):
                fq = f"{f}.positions[{j}]"
                if 0 <= q.pos < p.token_ids.shape[0] and p.token_ids[q.pos] != q.sampled_token_id:
                    problems.append(f"{fq}.sampled_token_id: {q.sampled_token_id} != token_ids[{q.pos}] = "
                                    f"{p.token_ids[q.pos]}")
                where_sampled = np.flatnonzero(q.token_ids == q.sampled_token_id)
                if where_sampled.size == 0:
                    problems.append(f"{fq}.token_ids: do not contain the sampled token {q.sampled_token_id}")
                for side in ("before", "after", "ref"):
                    probs = np.asarray(getattr(q, f"probs_{side}"), np.float64)
                    logits = np.asarray(getattr(q, f"logits_{side}"), np.float64)
                    other = getattr(q, f"other_{side}")
                    if ((probs < 0) | (probs > 1)).any() or probs.sum() > 1 + 1e-4:
                        problems.append(f"{fq}.probs_{side}: not probabilities (outside [0, 1] or summing above 1)")
                        continue
                    if math.isfinite(other) and abs(other - (1 - probs.sum())) > 1e-4:
                        problems.append(f"{fq}.other_{side}: {other} != 1 - sum(probs_{side}) = {1 - probs.sum()}")
                    live = (probs > 1e-30) & np.isfinite(logits)
                    if live.sum() >= 2:
                        shift = np.log(probs[live]) - logits[live]
                        if shift.max() - shift.min() > 1e-3:
                            problems.append(f"{fq}.probs_{side}: not the softmax of logits_{side} "
                                            f"(log p - logit varies by {shift.max() - shift.min():.3g})")
                    if where_sampled.size and 0 <= q.pos < p.token_ids.shape[0]:
                        p_tok = probs[where_sampled[0]]
                        p_seq = math.exp(float(per_token[side][q.pos]))
                        if abs(p_tok - p_seq) > 0.02 + 0.05 * p_seq:
                            problems.append(f"{fq}.probs_{side}: p(sampled) = {p_tok:.6g} but the per-token "
                                            f"log-prob gives {p_seq:.6g}")
    return [one_line(p) for p in problems]


def validate(path: str | os.PathLike) -> list[str]:
    """Load every record and payload (raises TraceError on the first structural problem),
    then check the numbers against their formulas. Returns the recoverable and semantic
    problems found, one line each (an empty list: the trace is consistent)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace, index = _load(path, lazy=False)
    for w in caught:
        if not issubclass(w.category, TraceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return list(index.notes) + semantic_problems(trace, index)
