"""The scoring worker against scoring in the trainer's process: same scores, and what a score costs.

For the first ``--tasks`` reasoning-gym tasks (alphabetical), ``--items`` train items each, the
reference answer is scored by ``minigrpo.scoring`` (the worker minigrpo uses) and by the task's
verifier in this process. Prints a table (items sent, scored in-process because JSON could not
carry them, mismatches, milliseconds per score on each side once the worker has built the
task's verifier, their ratio) and exits 1 on a mismatch.

    python bench/scoring_worker.py                 # 60 tasks x 3 items
    python bench/scoring_worker.py --tasks 5 --items 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reasoning_gym.factory import DATASETS  # noqa: E402

from minigrpo import scoring  # noqa: E402
from minigrpo.tasks import TaskError, load_split, score_here, verifier_spec  # noqa: E402


def run(n_tasks: int, n_items: int) -> dict:
    scoring.SCORER.score(("syllogism", 0, "{}"), "Yes", {"question": "", "answer": "Yes", "metadata": {}})  # start it
    out = {"tasks": 0, "sent": 0, "in_process": 0, "mismatches": [], "worker_s": 0.0, "here_s": 0.0}
    for name in sorted(DATASETS)[:n_tasks]:
        try:
            task = load_split(name, "train", n_items, 0)
        except TaskError:
            continue  # a task that needs knobs (composite)
        out["tasks"] += 1
        spec = verifier_spec(task.dataset)
        for item in task.items:
            answer = None if item.get("answer") is None else str(item["answer"])
            scoring.SCORER.score(spec, answer, item)  # the worker builds the task's verifier on first use: not timed
            t0 = time.perf_counter()
            remote = scoring.SCORER.score(spec, answer, item)
            t1 = time.perf_counter()
            local = score_here(task.dataset, answer, item)
            t2 = time.perf_counter()
            if remote is scoring.NOT_SENT:
                out["in_process"] += 1
                continue
            out["sent"] += 1
            out["worker_s"] += t1 - t0
            out["here_s"] += t2 - t1
            if remote != local:
                out["mismatches"].append((name, remote, local))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--items", type=int, default=3)
    args = parser.parse_args(argv)
    r = run(args.tasks, args.items)
    per_worker = r["worker_s"] / max(1, r["sent"])
    per_here = r["here_s"] / max(1, r["sent"])
    print(f"{'tasks':<28}{r['tasks']:>10}")
    print(f"{'items scored by the worker':<28}{r['sent']:>10}")
    print(f"{'items scored in-process':<28}{r['in_process']:>10}")
    print(f"{'mismatches':<28}{len(r['mismatches']):>10}")
    print(f"{'ms per score, worker':<28}{per_worker * 1e3:>10.3f}")
    print(f"{'ms per score, in-process':<28}{per_here * 1e3:>10.3f}")
    print(f"{'worker / in-process':<28}{per_worker / per_here if per_here else float('nan'):>10.1f}")
    for m in r["mismatches"]:
        print("mismatch:", *m)
    return 1 if r["mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
