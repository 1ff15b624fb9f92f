"""Where a trace keeps what: file names, npz keys, array kinds, and the shapes they must agree on.

The one place both the writer and the reader take the on-disk layout of format
``minigrpo-trace`` version 1 from (``docs/trace-format.md`` documents it for people).
"""

from __future__ import annotations

from typing import Optional

from .schema import Probe

META_FILE = "meta.json"
ROLLOUTS_FILE = "rollouts.jsonl"
STEPS_FILE = "steps.jsonl"
PAYLOAD_DIR = "payloads"

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
