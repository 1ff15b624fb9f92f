"""Typed objects of a minigrpo trace (format ``minigrpo-trace``).

These dataclasses are the contract between the trainer (which fills them and hands
them to :class:`minigrpo.trace.writer.TraceWriter`) and everything that reads a trace
(:func:`minigrpo.trace.load`, the Manim scenes, the plots). Every field is documented,
with its formula, in ``docs/trace-format.md``.

Conventions
-----------
* ``T`` is the number of completion tokens of a probe (prompt tokens are never recorded
  per token); ``K`` is the number of tokens kept at a probe position (the union of the
  top-k tokens before and after the update).
* Per-token arrays are float32 unless stated; ids are int64; flags are bool.
* ``tokens`` are the tokens as a reader reads them: ``tokenizer.decode([id])`` for each
  id, so byte-level markers such as ``Ġ`` are already decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

FORMAT_NAME = "minigrpo-trace"
FORMAT_VERSION = 1


class TraceError(ValueError):
    """A trace that cannot be read; the message is one line naming file, line and field."""


@dataclass
class Meta:
    format: str  # always FORMAT_NAME
    version: int  # FORMAT_VERSION of the writer
    algo: str  # "grpo" | "ppo"
    model: str  # model spec as given to --model (hub id, path, "tiny", "smollm2-135m")
    task: str  # reasoning-gym dataset name
    config: dict  # the full run config (TrainConfig as a dict)
    tokenizer: str  # tokenizer name or path
    minigrpo_version: str
    git_commit: Optional[str]  # None when not run from a git checkout
    created: str  # ISO-8601 UTC creation time
    extra: dict = field(default_factory=dict)  # free-form facts (device, dtype, ...)

    @property
    def kl_recorded(self) -> bool:
        """Whether the trace holds a KL to a reference model. Not for a TRL run with β = 0: TRL loads no
        reference model then, so its trace's KL fields are NaN (traces written before 2026-11-26 hold 0)."""
        return not ((self.extra or {}).get("trainer") == "trl" and (self.config or {}).get("beta") == 0)


@dataclass
class Group:
    """One prompt of a rollout and its G sampled completions."""

    prompt: str  # the prompt text exactly as fed to the model (chat template applied)
    question: str  # the task's question (without template), for display
    answer: Optional[str]  # the reference answer (None for propositional_logic)
    completions: list[str]  # G decoded completions
    completion_ids: list[np.ndarray]  # G int64 arrays (ragged), completion token ids
    reward_parts: dict[str, np.ndarray]  # part name -> (G,) float, e.g. "format", "correctness"
    rewards: np.ndarray  # (G,) total reward = weighted sum of the parts
    mean: float  # mean of rewards over the group
    std: float  # std of rewards over the group (unbiased, ddof=1, as TRL; see docs)
    advantages: np.ndarray  # (G,) sequence advantage; GRPO: (r - mean) / (std + eps)
    correct: np.ndarray  # (G,) bool, answer judged correct


@dataclass
class ProbePosition:
    """Logits of the policy at one position of a probe completion, before/after/ref."""

    pos: int  # index into the probe's completion tokens (0 = first generated token)
    kind: str  # "decision" (first token inside <answer>) or "moved" (largest |Δp| of sampled)
    sampled_token_id: int  # the token the completion actually has at ``pos``
    token_ids: np.ndarray  # (K,) int64: union of top-k before and after (+ sampled token)
    tokens: list[str]  # (K,) decoded strings of token_ids
    logits_before: np.ndarray  # (K,) policy logits before the optimizer step
    probs_before: np.ndarray  # (K,) softmax(full logits before)[token_ids]
    logits_after: np.ndarray  # (K,) after the optimizer step
    probs_after: np.ndarray  # (K,)
    logits_ref: np.ndarray  # (K,) frozen reference model
    probs_ref: np.ndarray  # (K,)
    other_before: float  # 1 - probs_before.sum(): mass of all tokens not in token_ids
    other_after: float
    other_ref: float


@dataclass
class Probe:
    """One completion of the update's batch, followed token by token through the update."""

    group: int  # index into Step.groups
    index: int  # index of the completion inside its group (0..G-1)
    text: str  # decoded completion
    token_ids: np.ndarray  # (T,) int64
    tokens: list[str]  # (T,) decoded strings
    logp_old: np.ndarray  # (T,) log π_old (behaviour policy, at rollout time)
    logp: np.ndarray  # (T,) log π_θ just before this optimizer step (the one the loss used)
    logp_new: np.ndarray  # (T,) log π_θ' re-scored right after the optimizer step
    logp_ref: np.ndarray  # (T,) log π_ref (frozen reference)
    ratio: np.ndarray  # (T,) ρ = exp(logp - logp_old), as used in the loss
    clipped_low: np.ndarray  # (T,) bool: ρ < 1 - epsilon and A < 0
    clipped_high: np.ndarray  # (T,) bool: ρ > 1 + epsilon_high and A > 0
    advantage: np.ndarray  # (T,) advantage used in the loss (GRPO: A_i broadcast; PPO: GAE)
    kl: np.ndarray  # (T,) k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1
    values: Optional[np.ndarray] = None  # PPO only: (T,) critic values V(s_t) at rollout
    returns: Optional[np.ndarray] = None  # PPO only: (T,) GAE returns = A_raw + V
    positions: list[ProbePosition] = field(default_factory=list)


@dataclass
class Step:
    """One optimizer update."""

    step: int  # 1-based optimizer step counter
    rollout: int  # id of the rollout whose buffer this update trained on
    metrics: dict[str, float]  # scalar metrics (names as TRL/verl), see docs
    probes: list[Probe] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)  # the rollout's groups (shared per rollout)


@dataclass
class Trace:
    path: str
    meta: Meta
    steps: list[Step]
    # rollout id -> its groups, for the rollouts that were loaded (all of them, or those the
    # selected steps train on); Step.groups is the same list object as rollouts[step.rollout].
    rollouts: dict[int, list[Group]] = field(default_factory=dict)

    def metric(self, name: str) -> np.ndarray:
        """The scalar ``name`` over steps (NaN where a step lacks it)."""
        return np.array([s.metrics.get(name, np.nan) for s in self.steps], dtype=np.float64)

    @property
    def step_numbers(self) -> np.ndarray:
        return np.array([s.step for s in self.steps], dtype=np.int64)
