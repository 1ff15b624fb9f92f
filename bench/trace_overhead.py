"""What does recording cost? GRPO on the tiny preset, the same run with the trace on and off.

    python bench/trace_overhead.py --model runs/sft [--steps 24] [--repeats 2]

Prints a table: wall seconds per optimizer update (rollout share included) with and
without the trace, their ratio, the recording time measured inside the traced run, and the
bytes written per update. Same seed, same updates: only the recording differs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from minigrpo.config import build_config
from minigrpo.grpo import GRPOTrainer
from minigrpo.trace import load


def one_run(model: str, steps: int, trace: bool, out: Path, preset: str) -> dict:
    cfg = build_config(preset, overrides=dict(model=model, max_steps=steps, trace=trace, eval_n=1,
                                              save_steps=10**6, logging_steps=0))
    trainer = GRPOTrainer(cfg, out, log=lambda *_: None)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    result = {"seconds_per_update": wall / steps}
    if trace:
        t = load(out / "trace")
        result["trace_time"] = float(t.metric("trace_time").mean())
        result["bytes_per_update"] = sum(p.stat().st_size for p in (out / "trace").rglob("*") if p.is_file()) / steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an SFT'd model folder (minigrpo sft --preset tiny)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    on, off = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            for trace, bucket in ((False, off), (True, on)):
                out = Path(tmp) / f"{r}-{trace}"
                bucket.append(one_run(args.model, args.steps, trace, out, args.preset))
                shutil.rmtree(out)
    t_off = statistics.median(x["seconds_per_update"] for x in off)
    t_on = statistics.median(x["seconds_per_update"] for x in on)
    rec = statistics.median(x["trace_time"] for x in on)
    size = statistics.median(x["bytes_per_update"] for x in on)
    print(f"{'preset':<10}{'updates':>8}{'s/update off':>14}{'s/update on':>13}{'on/off':>8}"
          f"{'record s':>10}{'record %':>10}{'KB/update':>11}")
    print(f"{args.preset:<10}{args.steps:>8}{t_off:>14.3f}{t_on:>13.3f}{t_on / t_off:>8.3f}"
          f"{rec:>10.4f}{100 * rec / t_off:>9.1f}%{size / 1024:>11.1f}")


if __name__ == "__main__":
    main()
