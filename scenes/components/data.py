"""Which trace, steps and probe a scene shows — from environment variables.

=====================  =================================================================
``MINIGRPO_TRACE``      trace directory (default: the shipped GRPO demo trace
                        ``traces/demo-grpo-syllogism`` under the repo root)
``MINIGRPO_PPO_TRACE``  PPO trace for ``ppo_vs_grpo`` (default ``traces/demo-ppo-syllogism``)
``MINIGRPO_STEPS``      optimizer steps to use, ``a:b`` (a <= step < b), ``a:`` or ``a``
``MINIGRPO_PROBE``      probe index inside the first shown step (default: picked, see
                        :func:`pick_flagship`)
``MINIGRPO_FOLLOW``     how many later updates ``ppo_logits`` follows (default 6)
=====================  =================================================================

Every problem a user can fix is raised as :class:`SceneInputError` with a one-line
message that says what to do; :func:`friendly` turns it into ``SystemExit("minigrpo: …")``
so Manim prints one line and exits non-zero instead of a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_GRPO_TRACE = "traces/demo-grpo-syllogism"
DEFAULT_PPO_TRACE = "traces/demo-ppo-syllogism"
DEFAULT_FOLLOW = 6


class SceneInputError(Exception):
    """A problem with the scene's input the user can fix; the message is one line."""


def friendly(construct):
    """Decorator for ``Scene.construct``: user errors exit with one line, not a traceback."""

    @functools.wraps(construct)
    def wrapper(self, *args, **kwargs):
        try:
            return construct(self, *args, **kwargs)
        except SceneInputError as e:
            raise SystemExit(f"minigrpo: {e}") from None
        except Exception as e:  # TraceError raised lazily by the reader, etc.
            if type(e).__name__ == "TraceError":
                raise SystemExit(f"minigrpo: invalid trace: {e}") from None
            raise

    return wrapper


# ----------------------------------------------------------------------------- env
def _resolve(path: str) -> Path:
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def parse_steps(text: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``"10:40"`` -> (10, 40); ``"10:"`` -> (10, None); ``":40"`` -> (None, 40); ``"12"`` -> (12, 13)."""
    if text is None or not str(text).strip():
        return (None, None)
    s = str(text).strip()
    try:
        if ":" in s:
            a, b = s.split(":", 1)
            lo = int(a) if a.strip() else None
            hi = int(b) if b.strip() else None
        else:
            lo = int(s)
            hi = lo + 1
    except ValueError:
        raise SceneInputError(
            f"MINIGRPO_STEPS={text!r} is not a step range; use a:b (a <= step < b), a: or a single step number"
        ) from None
    if lo is not None and hi is not None and hi <= lo:
        raise SceneInputError(f"MINIGRPO_STEPS={text!r} is empty (b <= a); use a:b with b > a, e.g. 10:40")
    return (lo, hi)


def env_int(name: str, default: Optional[int] = None) -> Optional[int]:
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        return int(v)
    except ValueError:
        raise SceneInputError(f"{name}={v!r} is not an integer; set it to a number (e.g. {name}=0)") from None


# ----------------------------------------------------------------------------- loading
def load_trace(path: str | os.PathLike, steps: tuple[Optional[int], Optional[int]] = (None, None),
               var: str = "MINIGRPO_TRACE", default_used: bool = False):
    """Load a trace (only ``steps``) or raise SceneInputError saying what to do."""
    p = _resolve(str(path))
    if not p.exists():
        if default_used:
            raise SceneInputError(
                f"no trace at {p} (the default demo trace is not there); record one with `minigrpo train` "
                f"and set {_var(var)} to it"
            )
        raise SceneInputError(f"no trace at {p}; set {_var(var)} to a trace directory written by `minigrpo train`")
    if not p.is_dir():
        raise SceneInputError(f"{p} is a file, not a trace directory; point {_var(var)} at the directory holding meta.json")
    try:
        from minigrpo.trace import load, trace_dir, trace_warnings_as_lines
        from minigrpo.trace.schema import TraceError
    except ImportError as e:
        raise SceneInputError(f"cannot import minigrpo.trace ({e}); run from the repo root or `pip install -e .`") from None
    lo, hi = steps
    p = Path(trace_dir(p))  # a run folder (`minigrpo train --out`) holds its trace in trace/
    try:
        with trace_warnings_as_lines():  # e.g. a torn last line dropped: one line, not a Python warning
            trace = _load_with_steps(load, str(p), lo, hi)
    except TraceError as e:
        msg = " ".join(str(e).split())
        raise SceneInputError(f"{p} is not a valid minigrpo trace: {msg}") from None
    except OSError as e:
        raise SceneInputError(f"cannot read trace {p}: {e}") from None
    all_steps = trace.steps
    sel = [s for s in all_steps if (lo is None or s.step >= lo) and (hi is None or s.step < hi)]
    if not sel:
        try:
            held = [r.step for r in _index_again(p).steps]
        except Exception:
            held = [s.step for s in all_steps]
        if not held:
            raise SceneInputError(f"trace {p} has no optimizer steps yet; train longer or wait for the run to write one")
        raise SceneInputError(
            f"MINIGRPO_STEPS (--steps) {_fmt_range(lo, hi)} selects no step of {p}; it holds steps "
            f"{min(held)}–{max(held)}"
        )
    trace.steps = sel
    return trace


def _index_again(path):
    """The trace's records read a second time, its warnings (a torn last line) already said by the load."""
    import warnings

    from minigrpo.trace import read_index
    from minigrpo.trace.reader import TraceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TraceWarning)
        return read_index(str(path))


def opens_its_rollout(trace, step) -> bool:
    """Whether ``step`` is the first update trained on its rollout, where π_θ = π_old (ρ = 1 up to the
    rounding of two forward passes, not bit for bit), by the whole trace's step list, so a
    ``--steps`` range that starts mid-rollout does not count its first step as one."""
    first = getattr(trace, "_rollout_first_step", None)
    if first is None:
        try:
            records = _index_again(trace.path).steps
        except Exception:  # noqa: BLE001 - the loaded steps then stand for the trace
            records = trace.steps
        first = {}
        for r in records:
            first[r.rollout] = min(first.get(r.rollout, r.step), r.step)
        trace._rollout_first_step = first
    return first.get(step.rollout) == step.step


def _fmt_range(lo, hi) -> str:
    return f"{'' if lo is None else lo}:{'' if hi is None else hi}"


def _load_with_steps(load, path: str, lo, hi):
    """Load only the steps a <= step < b (the reader reads only their payloads)."""
    if lo is None and hi is None:
        return load(path)
    return load(path, steps=range(lo if lo is not None else 0, hi if hi is not None else 2**62))


def scene_trace(var: str = "MINIGRPO_TRACE", default: str = DEFAULT_GRPO_TRACE):
    """The trace a scene shows, from ``var`` / ``MINIGRPO_STEPS``."""
    raw = os.environ.get(var, "").strip()
    steps = parse_steps(os.environ.get("MINIGRPO_STEPS"))
    return load_trace(raw or default, steps, var=var, default_used=not raw)


FLAGS = {"MINIGRPO_TRACE": "--trace", "MINIGRPO_PPO_TRACE": "--ppo-trace", "MINIGRPO_STEPS": "--steps",
         "MINIGRPO_PROBE": "--probe"}


def _var(var: str) -> str:
    """``VAR`` with its ``minigrpo render`` flag: ``MINIGRPO_TRACE (--trace)``."""
    return f"{var} ({FLAGS[var]})" if var in FLAGS else var


def require_algo(trace, algo: str, var: str, what: str):
    if trace.meta.algo != algo:
        raise SceneInputError(
            f"{what} needs a {algo.upper()} trace but {trace.path} is {trace.meta.algo.upper()}; "
            f"set {_var(var)} to a trace recorded with `minigrpo train --algo {algo}`"
        )


def require_kl(trace, what: str) -> None:
    """A trace without a KL to a reference model (``Meta.kl_recorded``: TRL with β = 0) is refused in one line."""
    if not trace.meta.kl_recorded:
        raise SceneInputError(
            f"{what} needs a KL to a reference model, but {trace.path} is a TRL run with beta = 0, for which TRL "
            f"loads no reference model; set {_var('MINIGRPO_TRACE')} to a run with beta > 0"
        )


# ----------------------------------------------------------------------------- config
def clip_epsilons(trace) -> tuple[float, float]:
    """(ε, ε_high) of the run (ε_high null: = ε, as in the config). A trace whose meta.config has no ε
    is refused: the band drawn would be a guess, and its clip flags were set by another."""
    c = trace.meta.config or {}
    if c.get("epsilon") is None:
        raise SceneInputError(f"{trace.path}/meta.json has no config.epsilon, so the clip band [1-ε, 1+ε_high] "
                              f"is unknown; restore meta.json from a copy, or record the run again")
    eps = float(c["epsilon"])
    eh = c.get("epsilon_high")
    return eps, float(eps if eh is None else eh)


def beta(trace) -> float:
    c = trace.meta.config or {}
    b = c.get("beta")
    return float(b) if b is not None else float("nan")


def temperature(trace) -> float:
    """The sampling temperature τ the trace's logits are divided by (NaN where meta.config has none)."""
    t = (trace.meta.config or {}).get("temperature")
    return float(t) if t is not None else float("nan")


def reward_weights(trace) -> dict:
    """Reward part weights from the run config (only those present)."""
    c = trace.meta.config or {}
    out = {}
    for part, key in (("format", "format_weight"), ("correctness", "correctness_weight")):
        if c.get(key) is not None:
            out[part] = float(c[key])
    return out


def metric_mean(trace, name: str) -> float:
    v = trace.metric(name)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


# ----------------------------------------------------------------------------- picking
def position(probe, kind: str = "decision"):
    for p in probe.positions:
        if p.kind == kind:
            return p
    return None


def prompt_of(step, probe) -> Optional[str]:
    if 0 <= probe.group < len(step.groups):
        return step.groups[probe.group].prompt
    return None


def _moved(pp) -> float:
    """|Δp| of the sampled token at a position."""
    ids = list(np.asarray(pp.token_ids))
    if int(pp.sampled_token_id) not in ids:
        return 0.0
    j = ids.index(int(pp.sampled_token_id))
    return abs(float(pp.probs_after[j]) - float(pp.probs_before[j]))


def _clipped_at(probe, pos: int) -> bool:
    return bool(probe.clipped_low[pos] or probe.clipped_high[pos])


@dataclass
class Shot:
    """One update of the flagship: step index (into trace.steps), probe, position."""

    step_index: int
    probe_index: int
    probe: object
    position: object

    def step(self, trace):
        return trace.steps[self.step_index]


def pick_flagship(trace, probe_index: Optional[int] = None) -> Shot:
    """The (step, probe, position) the flagship opens on.

    ``probe_index`` (MINIGRPO_PROBE) picks ``probes[i]`` of the first step. Otherwise:
    among probes with a "decision" position, prefer a non-zero advantage there, then one
    whose prompt comes back in later steps (so the scene can follow it), then one clipped there, then the one whose sampled
    token's probability moved most; earlier steps win ties. Without any decision
    position, the "moved" position is used.
    """
    steps = trace.steps
    if probe_index is not None:
        s0 = steps[0]
        if not s0.probes:
            raise SceneInputError(f"step {s0.step} of {trace.path} has no probes; choose other MINIGRPO_STEPS")
        if not 0 <= probe_index < len(s0.probes):
            raise SceneInputError(
                f"MINIGRPO_PROBE={probe_index} is out of range: step {s0.step} has probes 0..{len(s0.probes) - 1}"
            )
        pr = s0.probes[probe_index]
        pp = position(pr, "decision") or position(pr, "moved") or (pr.positions[0] if pr.positions else None)
        if pp is None:
            raise SceneInputError(
                f"probe {probe_index} of step {s0.step} records no logits position; choose another MINIGRPO_PROBE"
            )
        return Shot(0, probe_index, pr, pp)

    best, best_key = None, None
    for si, st in enumerate(steps):
        # prompts that come back later with a position of the same kind: follow() can go on with them
        later_prompts = {kind: {prompt_of(s, p) for s in steps[si + 1:] for p in s.probes if position(p, kind)}
                         for kind in ("decision", "moved")}
        for pi, pr in enumerate(st.probes):
            for kind, kind_rank in (("decision", 1), ("moved", 0)):
                pp = position(pr, kind)
                if pp is None:
                    continue
                key = (
                    kind_rank,
                    abs(float(pr.advantage[pp.pos])) > 1e-6,
                    prompt_of(st, pr) in later_prompts[kind],
                    _clipped_at(pr, pp.pos),
                    round(_moved(pp), 6),
                    -si,
                )
                if best_key is None or key > best_key:
                    best, best_key = Shot(si, pi, pr, pp), key
    if best is None:
        raise no_probes(trace, "probe with a recorded logits position")
    return best


def follow(trace, shot: Shot, max_updates: int = DEFAULT_FOLLOW) -> list[Shot]:
    """Later updates of the same decision: per later step, a probe of the same prompt at its
    decision position, else that step's first probe with a decision position. A shot at a
    ``moved`` position (its probes had no decision) is followed at ``moved`` positions alike."""
    st0 = trace.steps[shot.step_index]
    prompt = prompt_of(st0, shot.probe)
    kind = shot.position.kind
    out: list[Shot] = []
    for si in range(shot.step_index + 1, len(trace.steps)):
        if len(out) >= max_updates:
            break
        st = trace.steps[si]
        cands = [(pi, p, position(p, kind)) for pi, p in enumerate(st.probes)]
        cands = [c for c in cands if c[2] is not None]
        if not cands:
            continue
        same = [c for c in cands if prompt_of(st, c[1]) == prompt]
        # the very same completion first (its context is identical), then same prompt
        exact = [c for c in same if c[1].index == shot.probe.index]
        pi, p, pp = (exact or same or cands)[0]
        out.append(Shot(si, pi, p, pp))
    return out


def same_context(a: Shot, b: Shot, trace) -> bool:
    """True when two shots are the same completion of the same rollout (the bars and the
    advantage continue); the same text sampled again in a later rollout has its own reward."""
    return (
        trace.steps[a.step_index].rollout == trace.steps[b.step_index].rollout
        and prompt_of(trace.steps[a.step_index], a.probe) == prompt_of(trace.steps[b.step_index], b.probe)
        and a.probe.text == b.probe.text
        and a.position.pos == b.position.pos
    )


def advantage_eps(config) -> float:
    """The run's ``advantage_eps`` (the ε of (R − μ) / (σ + ε)), TRL's 1e-4 where the config has none."""
    return float(config.get("advantage_eps", 1e-4) or 0.0)


def advantage_rule(group, config) -> str:
    """Which formula the recorded advantages follow: "z" ((R−μ)/(σ+eps)), "center" (R−μ), "other"."""
    r = np.asarray(group.rewards, float)
    a = np.asarray(group.advantages, float)
    eps = advantage_eps(config)
    if np.isfinite(group.std) and np.allclose(a, (r - group.mean) / (group.std + eps), atol=1e-3):
        return "z"
    if np.allclose(a, r - group.mean, atol=1e-3):
        return "center"
    return "other"


def pick_group(trace):
    """(step index, group index) of a group worth explaining: most distinct rewards, then
    largest std, earliest step. MINIGRPO_PROBE picks that probe's group in the first step."""
    pi = env_int("MINIGRPO_PROBE")
    if pi is not None:
        s0 = trace.steps[0]
        if not 0 <= pi < len(s0.probes):
            raise SceneInputError(
                f"MINIGRPO_PROBE={pi} is out of range: step {s0.step} has probes 0..{len(s0.probes) - 1}"
            )
        return 0, s0.probes[pi].group
    best, key = None, None
    seen = set()
    for si, st in enumerate(trace.steps):
        if st.rollout in seen:
            continue
        seen.add(st.rollout)
        for gi, g in enumerate(st.groups):
            r = np.asarray(g.rewards, float)
            k = (len(np.unique(np.round(r, 6))), float(g.std) if np.isfinite(g.std) else -1, -si)
            if key is None or k > key:
                best, key = (si, gi), k
    if best is None:
        raise SceneInputError(f"no rollout groups in the chosen steps of {trace.path}; choose other MINIGRPO_STEPS")
    return best


def zero_std_groups(trace) -> list[tuple[int, int]]:
    """(step index, group index) of every group whose scored rewards are all equal (σ = 0), per rollout."""
    out, seen = [], set()
    for si, st in enumerate(trace.steps):
        if st.rollout in seen:
            continue
        seen.add(st.rollout)
        for gi, g in enumerate(st.groups):
            scored = np.asarray(g.rewards, float)
            scored = scored[np.isfinite(scored)]
            # every scored reward equal (a TRL trace's float32 std of such a group can be ~1e-7, not 0)
            if scored.size >= 2 and np.ptp(scored) == 0:
                out.append((si, gi))
    return out


def n_groups_checked(trace) -> int:
    seen, n = set(), 0
    for st in trace.steps:
        if st.rollout not in seen:
            seen.add(st.rollout)
            n += len(st.groups)
    return n


MIN_MOVE = 1e-3  # nats: a smaller change of a token's log-prob in one update is float noise, not a direction


def move_vs_advantage(probe, pos: int) -> Optional[bool]:
    """Did one update move the token at ``pos`` against the sign of its advantage?

    True: against; False: with it; None: not counted (A = 0, or log π moved by at most MIN_MOVE).
    The move is log π_new − log π_θ (after the step minus what the loss used). One update sums
    every token's gradient through shared weights, so True happens (bench/against_advantage.py).
    """
    a = float(probe.advantage[pos])
    moved = float(probe.logp_new[pos]) - float(probe.logp[pos])
    if abs(a) <= 1e-6 or abs(moved) <= MIN_MOVE:
        return None
    return (moved > 0) != (a > 0)


def step_range_text(trace) -> str:
    """"steps 3–7", "step 3" (one step), "no steps"."""
    nums = [s.step for s in trace.steps]
    if not nums:
        return "no steps"
    return f"step {nums[0]}" if min(nums) == max(nums) else f"steps {min(nums)}–{max(nums)}"


def no_probes(trace, what: str = "probes") -> SceneInputError:
    """The error for chosen steps that hold no probe the scene can use, with both ways out."""
    return SceneInputError(
        f"no {what} in {step_range_text(trace)} of {trace.path}; choose other MINIGRPO_STEPS (--steps), "
        f"or record probes: `minigrpo train ... --probe-completions N` (N >= 1; the default is 2)")
