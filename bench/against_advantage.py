"""How often does one update move a probed token against the sign of its advantage?

    python bench/against_advantage.py [TRACE ...]      (default: the two shipped demo traces)

For every probed token with A != 0 whose log-prob moved by more than 1e-3 nats, compares
the sign of log π_new − log π_θ (after the step minus the log-prob the loss used) with the
sign of A; prints the share that moved the other way, for the decision tokens (first token
inside <answer>) and for all tokens. (Tokens the model is already sure of barely move: their
change is float noise, so they are not counted.) One update sums the gradients of every token
of the batch through shared weights, so a token's own push is one term among thousands: this
is how often the others win. The rule is the one the ppo_logits scene uses to caption such
an update (scenes/components/data.py, move_vs_advantage).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minigrpo.trace import load, trace_dir  # noqa: E402
from scenes.components.data import MIN_MOVE, move_vs_advantage  # noqa: E402,F401 - the scene's rule


def against(path: str) -> dict:
    trace = load(trace_dir(path))
    counts = {"decision": [0, 0], "all": [0, 0]}  # [tokens counted, moved against A]
    for step in trace.steps:
        for probe in step.probes:
            decision = {q.pos for q in probe.positions if q.kind == "decision"}
            for pos in range(len(probe.token_ids)):
                verdict = move_vs_advantage(probe, pos)
                if verdict is None:
                    continue
                for key in ("all", "decision") if pos in decision else ("all",):
                    counts[key][0] += 1
                    counts[key][1] += int(verdict)
    return {"trace": path, "algo": trace.meta.algo, "updates": len(trace.steps), **counts}


def main(paths: list[str]) -> None:
    print(f"{'trace':<32} {'algo':<5} {'updates':>7} {'decision: against/n':>20} {'all tokens: against/n':>22}")
    for path in paths:
        r = against(path)
        d, a = r["decision"], r["all"]
        share = lambda c: f"{c[1]}/{c[0]} ({c[1] / c[0]:.0%})" if c[0] else "n/a"  # noqa: E731
        print(f"{Path(path).name:<32} {r['algo']:<5} {r['updates']:>7} {share(d):>20} {share(a):>22}")


if __name__ == "__main__":
    main(sys.argv[1:] or [str(ROOT / "traces" / "demo-grpo-syllogism"), str(ROOT / "traces" / "demo-ppo-syllogism")])
