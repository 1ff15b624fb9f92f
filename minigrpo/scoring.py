"""reasoning-gym's verifiers in a worker process, stopped after ``SCORE_TIMEOUT_S``.

A verifier can run for good on a model's answer: countdown and puzzle24 evaluate
``9**9**9**9``, whose big-integer power holds the GIL, so neither a signal nor a thread could
stop it inside the trainer, and a resumed run would sample the same answer again. The worker
is a plain ``python -m minigrpo.scoring`` subprocess (nothing of torch or CUDA is forked, and
no user script is re-imported, as ``multiprocessing``'s spawn would): it rebuilds each task's
verifier from its (name, seed, config) and answers one JSON line at a time on its
stdin/stdout (JSON, not pickle: nothing is unpickled anywhere in minigrpo; tuples and sets
in an item's metadata are tagged so that they come back as they were). An item that does
not come back equal is scored in the trainer's process. A verifier that has not answered in time is killed with its worker; the
answer scores 0 and the next request starts a new worker.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
from typing import Any, Optional

SCORE_TIMEOUT_S = 10.0
AVAILABLE = os.name == "posix"  # select() on pipes; elsewhere verifiers run in the trainer's process
NOT_SENT = object()  # score(): the request cannot go to the worker exactly; score it in this process
_TAGS = {"\u0000tuple": tuple, "\u0000set": set, "\u0000frozenset": frozenset}


def _tagged(x: Any) -> Any:
    """``x`` as plain JSON values, tuples and sets tagged (TypeError for anything JSON cannot hold)."""
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise TypeError("a dict with non-string keys")
        return {k: _tagged(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_tagged(v) for v in x]
    for tag, kind in _TAGS.items():
        if type(x) is kind:
            return {tag: [_tagged(v) for v in x]}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"a {type(x).__name__}")


def _untagged(d: dict) -> Any:
    if len(d) == 1:
        (key, value), = d.items()
        if key in _TAGS:
            return _TAGS[key](value)
    return d


def _encode(obj: Any) -> bytes:
    return json.dumps(_tagged(obj), ensure_ascii=False).encode("utf-8") + b"\n"


def _decode(line: bytes) -> Any:
    return json.loads(line, object_hook=_untagged)


class Scorer:
    """The trainer's side: ``score(spec, answer, item)`` -> the verifier's score, None when it raised,
    took longer than ``SCORE_TIMEOUT_S`` or the worker died, or NOT_SENT."""

    def __init__(self):
        self.proc: Optional[subprocess.Popen] = None

    def score(self, spec: tuple, answer: Optional[str], item: dict) -> Any:
        try:
            request = _encode([list(spec), answer, item])
            if _decode(request)[2] != item:
                return NOT_SENT
        except (TypeError, ValueError, RecursionError):
            return NOT_SENT
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(request)
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], SCORE_TIMEOUT_S)
            if not ready:
                self.stop()
                return None
            line = self.proc.stdout.readline()
            if not line:
                raise EOFError
            return _decode(line)
        except (OSError, EOFError, ValueError):  # the worker died while scoring (e.g. out of memory)
            self.stop()
            return None

    def _start(self) -> None:
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH"))
                                                          if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "minigrpo.scoring"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
        self.proc = None


SCORER = Scorer()
atexit.register(SCORER.stop)  # the worker ends with its process, and no unclosed pipe is left to warn about


def serve() -> None:
    """The worker's loop: a JSON line [spec, answer, item] in, the score (null: the verifier failed) out."""
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a verifier that prints must not write into the replies
    from .tasks import rebuild_verifier, score_here

    verifiers: dict[tuple, Any] = {}
    for line in requests:
        try:
            spec, answer, item = _decode(line)
            spec = tuple(spec)
            if spec not in verifiers:
                verifiers[spec] = rebuild_verifier(spec)
            score = score_here(verifiers[spec], answer, item)
        except Exception:  # noqa: BLE001 - a verifier that cannot be built scores like one that raises
            score = None
        replies.write(json.dumps(score).encode("utf-8") + b"\n")
        replies.flush()


if __name__ == "__main__":
    serve()
