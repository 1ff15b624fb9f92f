"""``minigrpo plot``: the figures of one run, for slides (PNG and SVG, the scenes' palette).

Every figure is drawn from a trace (``minigrpo.trace.load``) and, when the run folder has
one, its ``summary.json`` (held-out accuracy before and after RL, majority baseline). This
module draws and writes; what a figure shows is read and computed in ``plot_data.py``.
What each figure draws is also written to ``plot_data.json`` next to the images, so the
numbers on a slide can be checked against the trace.

    minigrpo plot runs/grpo            # a run folder: trace/ + summary.json
    minigrpo plot runs/grpo/trace -o figs
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import palette as C
from .files import write_via_path
from .plot_data import (
    PlotError,
    answer_token_points,
    baselines,
    decision_heatmap,
    find_run,
    read_summary,
    rollout_rewards,
    summary_mismatch,
)

FIGURES = ("reward_accuracy", "kl", "clip_fractions", "entropy", "completion_length",
           "answer_token_prob", "decision_heatmap", "reward_groups")
FORMATS = ("png", "svg")


# ----------------------------------------------------------------------------- drawing
STYLE = {  # matplotlib rc for every figure: the scenes' colours, type large enough for a slide
    "figure.facecolor": C.BG, "axes.facecolor": C.BG, "savefig.facecolor": C.BG,
    "text.color": C.FG, "axes.labelcolor": C.FG, "axes.edgecolor": C.MUTED, "axes.titlecolor": C.FG,
    "xtick.color": C.MUTED, "ytick.color": C.MUTED, "grid.color": C.GRID, "axes.grid": True,
    "font.family": "sans-serif", "font.sans-serif": [C.FONT], "font.size": 16,
    "axes.titlesize": 22, "axes.labelsize": 18, "xtick.labelsize": 15, "ytick.labelsize": 15,
    "legend.fontsize": 14, "legend.facecolor": C.CARD, "legend.edgecolor": C.GRID, "legend.labelcolor": C.FG,
    "lines.linewidth": 2.0, "svg.fonttype": "path", "axes.spines.top": False, "axes.spines.right": False,
    "text.parse_math": False,  # a token such as "$$" or "$x$" is text, not mathtext
}


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _moving_mean(y: np.ndarray) -> tuple[Optional[int], np.ndarray]:
    """Trailing mean over w = n/20 steps (ignoring NaN), for readability on a slide; None when n < 60."""
    n = len(y)
    if n < 60:
        return None, y
    w = round(n / 20)
    out = np.full(n, np.nan)
    for i in range(n):
        window = y[max(0, i - w + 1): i + 1]
        if np.isfinite(window).any():
            out[i] = np.nanmean(window)
    return w, out


def _series(ax, x, y, label: str, color: str, data: dict) -> None:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w, ym = _moving_mean(y)
    ax.plot(x, y, color=color, lw=1.2 if w else 2.2, alpha=0.45 if w else 1.0, label=label if not w else None,
            marker="o" if len(x) < 60 else None, ms=5)
    if w:
        ax.plot(x, ym, color=color, lw=2.8, label=f"{label} — mean of {w} steps")
    data[label] = {"x": x.tolist(), "y": y.tolist(), **({"moving_mean_window": w} if w else {})}


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=C.MUTED, fontsize=18)


def _head(trace) -> str:
    m = trace.meta
    steps = trace.step_numbers
    span = f"steps {steps.min()}–{steps.max()}" if len(steps) else "no steps"
    return f"{m.algo.upper()} · {m.model} · {m.task} · {span}"


TOP = 0.87  # axes stay below the title lines


def _title(fig, trace, title: str) -> None:
    fig.text(0.02, 0.955, title, fontsize=26, color=C.FG, ha="left", va="center")
    fig.text(0.02, 0.905, _head(trace), fontsize=15, color=C.MUTED, ha="left", va="center")


def _new_fig(plt, trace, title: str, **kw):
    fig, ax = plt.subplots(figsize=(12.8, 7.2), dpi=150, **kw)
    _title(fig, trace, title)
    for a in np.atleast_1d(ax):
        a.set_xlabel("optimizer step")
    return fig, ax


def _metric_figure(plt, trace, title, series, ylabel, extra: Optional[Callable] = None):
    fig, ax = _new_fig(plt, trace, title)
    data: dict = {}
    x = trace.step_numbers
    drawn = 0
    for name, label, color in series:
        y = trace.metric(name)
        data[label] = {"metric": name}
        if np.isfinite(y).any():
            _series(ax, x, y, label, color, data)
            data[label]["metric"] = name
            drawn += 1
        else:
            data[label].update(x=[], y=[], missing=True)
            ax.plot([], [], " ", label=f"{label}: metric {name!r} not in trace")
    if not drawn:
        _empty(ax, "metric not in trace")
    if extra:
        extra(ax, data)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best")
    fig.tight_layout(rect=(0, 0, 1, TOP))
    return fig, data


def fig_reward_accuracy(plt, trace, base):
    def lines(ax, data):
        for key, color, style in (("sft", C.OLD, "--"), ("majority", C.MUTED, ":"), ("after", C.FG, "-.")):
            b = base.get(key)
            if b is None:
                continue
            if b["value"] is None:
                ax.plot([], [], " ", label=b["label"])
            else:
                ax.axhline(b["value"], color=color, ls=style, lw=2.2, label=b["label"])
        data["baselines"] = base

    fig, data = _metric_figure(plt, trace, "Reward and accuracy per update",
                               [("reward", "reward, rollout mean", C.NEW),
                                ("accuracy", "accuracy of the sampled rollouts", C.POS)],
                               "reward · fraction correct", lines)
    ax = fig.axes[0]
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, TOP))
    return fig, data


NO_KL = "no KL recorded: TRL with β = 0 loads no reference model"


def fig_kl(plt, trace, base):
    cfg = trace.meta.config or {}
    if not trace.meta.kl_recorded:
        fig, ax = _new_fig(plt, trace, "KL to the reference policy")
        _empty(ax, NO_KL)
        fig.tight_layout(rect=(0, 0, 1, TOP))
        return fig, {"missing": NO_KL}
    # GRPO weighs it by β in the loss (ρ-weighted with use_bias_correction_kl); PPO by kl_coef in the reward
    name, coef = ("kl_coef", cfg.get("kl_coef")) if trace.meta.algo == "ppo" else ("β", cfg.get("beta"))
    weight = f" ({name} = {coef:g})" if isinstance(coef, (int, float)) and not isinstance(coef, bool) else ""
    series = [("kl", "KL(π_θ ‖ π_ref), k3 token mean", C.REF)]
    if trace.meta.algo != "ppo" and cfg.get("use_bias_correction_kl"):
        series.append(("kl/ratio_weighted", "ρ · k3 token mean: the loss's KL term", C.NEW))
    return _metric_figure(plt, trace, "KL to the reference policy" + weight, series, "KL")


def fig_clip_fractions(plt, trace, base):
    cfg = trace.meta.config or {}
    eps = cfg.get("epsilon")
    eh = cfg.get("epsilon_high") if cfg.get("epsilon_high") is not None else eps
    band = f" (ε = {eps:g}, ε_high = {eh:g})" if isinstance(eps, (int, float)) and isinstance(eh, (int, float)) else ""
    return _metric_figure(plt, trace, "Fraction of tokens clipped" + band,
                          [("clip_ratio/low_mean", "low: ρ < 1−ε, A < 0", C.NEG),
                           ("clip_ratio/high_mean", "high: ρ > 1+ε_high, A > 0", C.POS),
                           ("clip_ratio/region_mean", "region: either side", C.CLIP)], "fraction of tokens")


def fig_entropy(plt, trace, base):
    return _metric_figure(plt, trace, "Policy entropy", [("entropy", "entropy (token mean, nats)", C.VALUE)], "nats")


def fig_completion_length(plt, trace, base):
    cap = (trace.meta.config or {}).get("max_completion_length")

    def cap_line(ax, data):
        if isinstance(cap, (int, float)):
            ax.axhline(cap, color=C.MUTED, ls=":", lw=2, label=f"max_completion_length = {cap:g}")
            data["max_completion_length"] = cap

    return _metric_figure(plt, trace, "Completion length",
                          [("completion_length", "mean completion tokens", C.OLD)], "tokens", cap_line)


def fig_answer_token_prob(plt, trace, base):
    fig, (ax, dax) = _new_fig(plt, trace, "Probability of the sampled answer token", nrows=2, sharex=True,
                              gridspec_kw={"height_ratios": (3, 2)})
    ax.set_xlabel("")
    points = answer_token_points(trace)
    data: dict = {"points": points}
    if not points:
        _empty(ax, "no probed decision position (first token inside <answer>) in this trace")
    else:
        steps = np.array([p["step"] for p in points], dtype=float)
        before = np.array([p["p_before"] for p in points])
        after = np.array([p["p_after"] for p in points])
        adv = np.array([p["advantage"] for p in points])
        for mask, color, label in ((adv > 0, C.POS, "A > 0"), (adv < 0, C.NEG, "A < 0"), (adv == 0, C.ZERO, "A = 0")):
            if mask.any():
                ax.scatter(steps[mask], after[mask], s=28, color=color, alpha=0.8, label=f"one probe, {label}")
                dax.scatter(steps[mask], after[mask] - before[mask], s=28, color=color, alpha=0.8)
        xs = np.array(sorted(set(steps.tolist())))
        mean = np.array([after[steps == s].mean() for s in xs])
        w, smooth = _moving_mean(mean)
        ax.plot(xs, smooth, color=C.FG, lw=2.8, label=f"mean over probes{f' and {w} steps' if w else ''}")
        data["mean"] = {"x": xs.tolist(), "y": mean.tolist(), **({"moving_mean_window": w} if w else {})}
        ax.set_ylim(-0.03, 1.03)
        dax.axhline(0, color=C.MUTED, lw=1.5)
        fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=4, frameon=False)
    ax.set_ylabel("p after the update")
    dax.set_ylabel("Δp in the update")
    fig.align_ylabels((ax, dax))
    fig.tight_layout(rect=(0, 0.06, 1, TOP))
    return fig, data


def fig_decision_heatmap(plt, trace, base):
    from matplotlib.colors import LinearSegmentedColormap

    fig, ax = _new_fig(plt, trace, "Top tokens at the answer decision, update by update")
    data = decision_heatmap(trace)
    if not data["steps"]:
        _empty(ax, "no probed decision position (first token inside <answer>) in this trace")
    else:
        cmap = LinearSegmentedColormap.from_list("minigrpo", [C.GRID, C.OLD, C.CLIP]).with_extremes(bad=C.BG)
        steps = data["steps"]
        rows, span = len(data["tokens"]), steps[-1] - steps[0] + 1
        if span <= 4 * len(steps) + 1000:
            # one column per step from the first to the last, blank where no decision was probed (a
            # downsampled trace): imshow spreads its columns evenly, so they must be every step's
            grid = np.full((rows, span), np.nan)
            grid[:, np.asarray(steps) - steps[0]] = np.array(data["p_after"], dtype=float)
            extent = (steps[0] - 0.5, steps[-1] + 0.5, rows - 0.5, -0.5)
        else:  # numbering gaps far wider than the probed steps (a damaged trace): a column per probed step
            grid = np.array(data["p_after"], dtype=float).reshape(rows, len(steps))
            extent = (-0.5, len(steps) - 0.5, rows - 0.5, -0.5)
            ticks = sorted(set(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int).tolist()))
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(steps[i]) for i in ticks])
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0,
                       interpolation="nearest", extent=extent)
        ax.set_yticks(range(len(data["tokens"])))
        ax.set_yticklabels([readable(t) for t in data["tokens"]], fontfamily=C.MONO, fontsize=16, color=C.FG)
        ax.grid(False)
        bar = fig.colorbar(im, ax=ax, pad=0.02)
        bar.set_label("mean p after the update")
        bar.ax.yaxis.set_tick_params(color=C.MUTED)
        ax.set_ylabel("token")
        fig.text(0.02, 0.02, "over the step's probed decisions (first token inside <answer>); "
                 "blank: token not in any probe's top-k", fontsize=13, color=C.MUTED)
    fig.tight_layout(rect=(0, 0.04, 1, TOP))
    return fig, data


def fig_reward_groups(plt, trace, base):
    ids = sorted(trace.rollouts)
    chosen = [ids[0], ids[-1]] if len(ids) > 1 else ids
    fig, axes = plt.subplots(1, max(1, len(chosen)), figsize=(12.8, 7.2), dpi=150, sharey=True, squeeze=False)
    axes = axes[0]
    _title(fig, trace, "Rewards of each group (G completions of one prompt)")
    data: dict = {}
    if not chosen:
        _empty(axes[0], "no rollouts in this trace")
    for ax, r in zip(axes, chosen):
        groups = rollout_rewards(trace, r)
        data[f"rollout {r}"] = groups
        for g in groups:
            rw = np.array(g["rewards"])
            flat = rw.size == 0 or np.ptp(rw) == 0
            offsets = np.linspace(-0.3, 0.3, rw.size) if rw.size > 1 else np.zeros(rw.size)
            colors = [C.ZERO if flat else (C.POS if v > g["mean"] else C.NEG if v < g["mean"] else C.ZERO) for v in rw]
            ax.scatter(g["group"] + offsets, rw, s=22, c=colors, alpha=0.85, zorder=3)
            ax.hlines(g["mean"], g["group"] - 0.4, g["group"] + 0.4, color=C.MUTED if flat else C.FG, lw=2, zorder=2)
        n_flat = sum(1 for g in groups if len(g["rewards"]) == 0 or np.ptp(g["rewards"]) == 0)
        ax.set_title(f"rollout {r} · σ = 0 in {n_flat} of {len(groups)} groups", fontsize=18, loc="left")
        ax.set_xlabel("group")
    axes[0].set_ylabel("reward")
    handles = [axes[0].scatter([], [], color=color, label=label) for color, label in
               ((C.POS, "above the group mean (A > 0)"), (C.NEG, "below (A < 0)"), (C.ZERO, "σ = 0: no signal"))]
    handles.append(axes[0].hlines([], 0, 1, color=C.FG, lw=2, label="group mean"))
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, TOP))
    return fig, data


def readable(token: str) -> str:
    """A token as it should read on a slide: spaces as ·, newlines as ⏎."""
    return token.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥") or "∅"


DRAW = {"reward_accuracy": fig_reward_accuracy, "kl": fig_kl, "clip_fractions": fig_clip_fractions,
        "entropy": fig_entropy, "completion_length": fig_completion_length,
        "answer_token_prob": fig_answer_token_prob, "decision_heatmap": fig_decision_heatmap,
        "reward_groups": fig_reward_groups}


# ----------------------------------------------------------------------------- output
def _draw_all(trace, trace_dir, summary_path, base, out: Path) -> dict:
    from .trace.encode import jsonable

    plt = pyplot()
    result: dict = {"trace": str(trace_dir), "summary": str(summary_path) if summary_path else None,
                    "files": [], "figures": {}}
    drawn: list[tuple[Path, bytes]] = []  # every figure is drawn before any file is written: a figure
    for name in FIGURES:                   # that fails to draw leaves no partial set behind
        with plt.rc_context(STYLE):
            fig, data = DRAW[name](plt, trace, base)
            try:
                for fmt in FORMATS:
                    buffer = io.BytesIO()
                    fig.savefig(buffer, format=fmt)
                    drawn.append((out / f"{name}.{fmt}", buffer.getvalue()))
            finally:
                plt.close(fig)
        result["figures"][name] = data
    out.mkdir(parents=True, exist_ok=True)
    for target, content in drawn:
        write_via_path(target, lambda tmp, c=content: tmp.write_bytes(c))
        result["files"].append(str(target))
    result = jsonable(result, "plot data")
    text = json.dumps(result, indent=1, ensure_ascii=False)
    write_via_path(out / "plot_data.json", lambda tmp: tmp.write_text(text))
    return result


def default_out(path: str | os.PathLike) -> Path:
    """``renders/plots/<run name>`` under the current directory; ``.`` is named as its absolute path would be."""
    trace_dir, _ = find_run(Path(path).expanduser().resolve())
    name = trace_dir.parent.name if trace_dir.name == "trace" else trace_dir.name
    out = Path("renders") / "plots" / name
    if out.resolve().is_relative_to(trace_dir):
        raise PlotError(f"the default output {out} would be inside the trace folder {trace_dir}; "
                        f"run from outside it or pass -o DIR")
    return out


def plot(path: str | os.PathLike, out: str | os.PathLike | None = None, recompute_baseline: bool = True,
         log: Callable[[str], None] = print) -> dict:
    """Draw every figure of :data:`FIGURES` for a run or trace folder into ``out``.

    Returns ``{"files": [...], "figures": {name: plotted data}}``, the same as ``plot_data.json``.
    """
    from .trace import TraceError, load

    trace_dir, summary_path = find_run(path)
    summary = read_summary(summary_path)
    try:
        trace = load(trace_dir)
    except TraceError as e:
        raise PlotError(f"{trace_dir} is not a valid minigrpo trace: {e}") from None
    if not trace.steps:
        raise PlotError(f"trace {trace_dir} has no optimizer steps yet; train longer, then plot again")
    # a run's own trace/ beside its summary is that run's (a resume may spell --model anew); a copied trace is checked
    mismatch = summary_mismatch(trace.meta, summary) if Path(trace_dir).name != "trace" else None
    if mismatch:
        log(f"minigrpo: note: {summary_path} is another run's summary ({mismatch}): not used")
        summary, summary_path = None, None
    out = Path(out) if out else default_out(path)
    base = baselines(trace.meta, summary, recompute=recompute_baseline)
    try:
        result = _draw_all(trace, trace_dir, summary_path, base, out)
    except OSError as e:  # an unwritable or full -o folder: every figure is written whole or not at all
        raise PlotError(f"cannot write the figures to {out}: {e.strerror or e}; choose another -o folder") from None
    log(f"minigrpo: {len(FIGURES)} figures ({', '.join(FORMATS)}) + plot_data.json -> {out}")
    return result
