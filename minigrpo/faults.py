"""Deterministic fault injection for the reliability tests: ``MINIGRPO_FAULT=stage:count``.

The process dies with ``os._exit(FAULT_EXIT)`` (no clean-up, no flush: what a kill -9 leaves)
the ``count``-th time it reaches ``hit(stage)``. Several faults: ``rollout:2,checkpoint:1``.
Without the variable every ``hit`` is one dict lookup. Stages (where they are):

=================  ============================================================================
``rollout``        trainer: a rollout was sampled and scored, not yet recorded
``update``         trainer: gradients accumulated, optimizer step not yet taken
``step``           trainer: optimizer step taken, its trace line not yet written
``checkpoint``     checkpoint.save_checkpoint: model files in checkpoint.tmp, trainer state not yet
``checkpoint-swap`` checkpoint.save_checkpoint: old checkpoint moved aside, new one not yet renamed in
``trace-payload``  trace writer: a payload renamed into place, its JSON line not yet appended
``trace-line``     trace writer: half of a JSON line written (a torn line)
``final``          trainer: the final model half moved into OUT
``render``         render: Manim wrote the video under its temp name, not yet renamed
=================  ============================================================================
"""

from __future__ import annotations

import os
from typing import Callable, Optional

FAULT_EXIT = 86
_SPEC = os.environ.get("MINIGRPO_FAULT", "")
_TARGETS: dict[str, int] = {}
for _part in filter(None, (p.strip() for p in _SPEC.split(","))):
    _stage, _, _count = _part.partition(":")
    _TARGETS[_stage] = int(_count or 1)
_SEEN: dict[str, int] = {}


def hit(stage: str, before_exit: Optional[Callable[[], None]] = None) -> None:
    """Die here if ``MINIGRPO_FAULT`` asks for this stage's current occurrence."""
    if stage not in _TARGETS:
        return
    _SEEN[stage] = _SEEN.get(stage, 0) + 1
    if _SEEN[stage] == _TARGETS[stage]:
        if before_exit is not None:
            before_exit()
        os._exit(FAULT_EXIT)


def armed(stage: str) -> bool:
    return stage in _TARGETS
