"""Learning curves of a run from its trace: one PNG with the rollout's sampled accuracy, format
rate and reward, and the KL to the reference, per optimizer update.

    python bench/plot_curves.py TRACE OUT.png [--title TEXT]

Works on a down-sampled trace too (it keeps every step's scalars).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minigrpo.trace import load  # noqa: E402


def plot(trace_dir: str, out_png: str, title: str | None = None) -> None:
    trace = load(trace_dir)
    steps = trace.step_numbers
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name in ("accuracy", "format_rate", "reward", "premise_copy_rate"):
        values = trace.metric(name)
        if (values == values).any() and not (name == "premise_copy_rate" and trace.meta.task != "propositional_logic"):
            top.plot(steps, values, label=name)
    top.set_ylabel("per rollout (sampled)")
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    bottom.plot(steps, trace.metric("kl"), color="tab:red", label="kl (k3, to the reference)")
    bottom.set_yscale("symlog", linthresh=1e-3)
    bottom.set_ylabel("kl (symlog)")
    bottom.set_xlabel("optimizer update")
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3)
    fig.suptitle(title or f"{trace.meta.algo.upper()} {trace.meta.model} on {trace.meta.task}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("out")
    parser.add_argument("--title")
    args = parser.parse_args()
    plot(args.trace, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
