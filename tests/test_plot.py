"""`minigrpo plot`: every figure is written (valid PNG and SVG), and what it plots equals the trace.

The expected values are read straight from the trace files (json lines and npz payloads),
not through minigrpo.trace, so a reader bug cannot hide a plotting bug.
"""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from minigrpo import palette
from minigrpo.plot import FIGURES, FORMATS, plot
from minigrpo.plot_data import PlotError

REPO = Path(__file__).resolve().parents[1]
DEMO_GRPO = REPO / "traces" / "demo-grpo-syllogism"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_series(trace_dir: Path, name: str) -> tuple[list[int], list[float]]:
    rows = read_jsonl(trace_dir / "steps.jsonl")
    ys = [row["metrics"].get(name) for row in rows]
    return [row["step"] for row in rows], [math.nan if y is None else float(y) for y in ys]


def same(a, b) -> bool:
    a = np.array([math.nan if v is None else v for v in a], dtype=float)
    b = np.array(b, dtype=float)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def decision_points(trace_dir: Path) -> list[tuple]:
    """(step, probe, p_before, p_after, advantage) of every decision position, from the npz files."""
    out = []
    for row in read_jsonl(trace_dir / "steps.jsonl"):
        if not row.get("payload"):
            continue
        z = np.load(trace_dir / row["payload"])
        for i, pr in enumerate(row["probes"]):
            for j, pos in enumerate(pr["positions"]):
                if pos["kind"] != "decision":
                    continue
                ids = z[f"p{i}.pos{j}.token_ids"]
                k = int(np.flatnonzero(ids == pos["sampled_token_id"])[0])
                out.append((row["step"], i, float(z[f"p{i}.pos{j}.probs_before"][k]),
                            float(z[f"p{i}.pos{j}.probs_after"][k]), float(z[f"p{i}.advantage"][pos["pos"]])))
    return out


def check_files(out: Path) -> None:
    for name in FIGURES:
        for fmt in FORMATS:
            f = out / f"{name}.{fmt}"
            assert f.is_file() and f.stat().st_size > 5000, f
            head = f.read_bytes()[:8]
            if fmt == "png":
                assert head == PNG_MAGIC, f
                import matplotlib.image as mpimg

                h, w = mpimg.imread(f).shape[:2]
                assert (w, h) == (1920, 1080), (f, w, h)  # 16:9, readable when projected
            else:
                root = ET.parse(f).getroot()
                assert root.tag.endswith("svg"), f
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"


def check_series(data: dict, trace_dir: Path) -> None:
    figs = data["figures"]
    for fig, label, metric in [("reward_accuracy", "reward, rollout mean", "reward"),
                               ("reward_accuracy", "accuracy of the sampled rollouts", "accuracy"),
                               ("kl", "KL(π_θ ‖ π_ref), k3 token mean", "kl"),
                               ("clip_fractions", "low: ρ < 1−ε, A < 0", "clip_ratio/low_mean"),
                               ("clip_fractions", "high: ρ > 1+ε_high, A > 0", "clip_ratio/high_mean"),
                               ("clip_fractions", "region: either side", "clip_ratio/region_mean"),
                               ("entropy", "entropy (token mean, nats)", "entropy"),
                               ("completion_length", "mean completion tokens", "completion_length")]:
        xs, ys = metric_series(trace_dir, metric)
        series = figs[fig][label]
        assert series["metric"] == metric
        assert same(series["x"], xs), (fig, label)
        assert same(series["y"], ys), (fig, label)

    want = decision_points(trace_dir)
    got = [(p["step"], p["probe"], p["p_before"], p["p_after"], p["advantage"]) for p in figs["answer_token_prob"]["points"]]
    assert got == want and len(want) > 0

    # heat map: mean p_after over the step's decisions, recomputed from the payloads
    heat = figs["decision_heatmap"]
    cells: dict = {}
    for row in read_jsonl(trace_dir / "steps.jsonl"):
        z = np.load(trace_dir / row["payload"]) if row.get("payload") else None
        for i, pr in enumerate(row["probes"]):
            for j, pos in enumerate(pr["positions"]):
                if pos["kind"] == "decision":
                    for tok, p in zip(pos["tokens"], z[f"p{i}.pos{j}.probs_after"]):
                        cells.setdefault((row["step"], tok), []).append(float(p))
    assert heat["tokens"] and heat["steps"]
    for r, tok in enumerate(heat["tokens"]):
        for c, step in enumerate(heat["steps"]):
            expect = np.mean(cells[(step, tok)]) if (step, tok) in cells else math.nan
            assert same([heat["p_after"][r][c]], [expect]), (tok, step)

    rollouts = {row["rollout"]: row for row in read_jsonl(trace_dir / "rollouts.jsonl")}
    first, last = min(rollouts), max(rollouts)
    for rid in {first, last}:
        shown = figs["reward_groups"][f"rollout {rid}"]
        assert [g["rewards"] for g in shown] == [g["rewards"] for g in rollouts[rid]["groups"]]


def test_plot_run_folder(grpo_run, tmp_path):
    run_dir, cfg, summary = grpo_run
    out = tmp_path / "figs"
    data = plot(run_dir, out, log=lambda *_: None)
    check_files(out)
    assert data == json.loads((out / "plot_data.json").read_text())
    check_series(data, Path(run_dir) / "trace")
    base = data["figures"]["reward_accuracy"]["baselines"]
    assert base["sft"]["value"] == summary["before"]["accuracy"]
    assert base["majority"]["value"] == summary["after"]["majority_baseline"]
    assert base["after"]["value"] == summary["after"]["accuracy"]


def test_another_runs_summary_beside_a_copied_trace_is_not_used(grpo_run, tmp_path):
    """A trace copied out of its run folder may sit beside another run's summary.json: its accuracies
    would be drawn as this run's. A summary whose algo, task or model differs is set aside with a note."""
    run_dir, cfg, summary = grpo_run
    shutil.copytree(DEMO_GRPO, tmp_path / "demo")
    (tmp_path / "summary.json").write_text((Path(run_dir) / "summary.json").read_text())
    said = []
    data = plot(tmp_path / "demo", tmp_path / "figs", log=said.append)
    assert data["summary"] is None
    assert data["figures"]["reward_accuracy"]["baselines"]["sft"]["value"] is None
    assert any("another run's summary" in line and "its model is" in line for line in said), said
    # its own run's summary is used: the same copy beside the run's own summary (the model matches)
    shutil.copytree(Path(run_dir) / "trace", tmp_path / "own")
    data = plot(tmp_path / "own", tmp_path / "figs2", log=lambda *_: None)
    assert data["figures"]["reward_accuracy"]["baselines"]["sft"]["value"] == summary["before"]["accuracy"]


def test_baselines_unknown_are_said_in_the_legend_and_majority_is_recomputed_exactly(grpo_run, tmp_path):
    """Without summary.json the SFT baseline is 'unknown' in the legend; the majority baseline,
    rebuilt from the trace's config, equals what the trainer measured."""
    from minigrpo.plot import STYLE, fig_reward_accuracy, pyplot
    from minigrpo.plot_data import baselines
    from minigrpo.trace import load

    run_dir, cfg, summary = grpo_run
    lone = tmp_path / "trace"
    shutil.copytree(Path(run_dir) / "trace", lone)
    trace = load(lone)
    base = baselines(trace.meta, None)
    assert base["sft"]["value"] is None and "unknown" in base["sft"]["label"]
    assert base["majority"]["value"] == summary["after"]["majority_baseline"]
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, _ = fig_reward_accuracy(plt, trace, base)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert any("unknown" in t for t in legend) and any("majority" in t for t in legend)
    sft_lines = [line for line in fig.axes[0].lines if line.get_label().startswith("before RL")]
    assert sft_lines and all(len(line.get_ydata()) == 0 for line in sft_lines)  # a legend entry, no line
    # and with nothing to recompute from, the majority baseline is unknown too
    meta = trace.meta
    meta.config = {**meta.config, "task": "no_such_task"}
    assert baselines(meta, None)["majority"] == {"value": None, "label": "majority baseline: unknown"}


def test_plot_shipped_trace_has_smoothed_and_raw_series(tmp_path):
    out = tmp_path / "demo"
    data = plot(DEMO_GRPO, out, log=lambda *_: None)
    check_files(out)
    check_series(data, DEMO_GRPO)
    kl = data["figures"]["kl"]["KL(π_θ ‖ π_ref), k3 token mean"]
    assert kl["moving_mean_window"] == round(150 / 20) and len(kl["y"]) == 150


def test_plot_ppo_run(ppo_run, tmp_path):
    run_dir, _, _ = ppo_run
    data = plot(Path(run_dir) / "trace", tmp_path / "ppo", log=lambda *_: None)  # the trace inside its run folder
    check_files(tmp_path / "ppo")
    assert data["summary"] == str(Path(run_dir) / "summary.json")
    check_series(data, Path(run_dir) / "trace")


def test_palette_is_the_scenes_palette():
    from scenes.components import palette as P

    for name in ("BG", "FG", "MUTED", "GRID", "CARD", "POS", "NEG", "ZERO", "OLD", "NEW", "REF", "CLIP", "VALUE",
                 "RETURN", "PPO_C", "GRPO_C"):
        assert P.__dict__[name].to_hex().lower() == getattr(palette, name).lower(), name


def test_plot_errors(tmp_path, capsys):
    from minigrpo.cli import main

    with pytest.raises(PlotError, match="does not exist"):
        plot(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error:") and "run folder" in err[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text("{not json")
    assert main(["plot", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("minigrpo: error:")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    blocker = tmp_path / "a-file"  # an -o that cannot be a folder: one line, the file untouched
    blocker.write_text("keep")
    for out in (blocker, blocker / "sub"):
        assert main(["plot", str(DEMO_GRPO), "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("minigrpo: error: cannot write the figures to"), err
    assert blocker.read_text() == "keep"


def test_a_run_trained_without_a_trace_is_explained(tmp_path, capsys):
    """`train --trace false` (or `sft`) leaves train_config.json and summary.json but no trace/: plot says
    so, in the words of `minigrpo trace inspect`, instead of asking for the folder it was given."""
    from minigrpo.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text("{}")
    (run / "summary.json").write_text("{}")
    with pytest.raises(PlotError, match=r"nothing to plot: .*run folder with no trace.*--trace false"):
        plot(run, tmp_path / "o")
    assert main(["plot", str(run), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error: nothing to plot") and "--trace false" in err[0]
    assert "pass the folder" not in err[0]
    assert not (tmp_path / "o").exists()


def test_default_out_is_named_after_the_run_from_any_folder(tmp_path, monkeypatch):
    """`plot .` inside a run folder is `plot /abs/run`; inside a trace folder it refuses to write there."""
    from minigrpo.plot import default_out

    trace = tmp_path / "my-run" / "trace"
    trace.mkdir(parents=True)
    (trace / "meta.json").write_text("{}")
    for cwd, path in [(tmp_path, "my-run"), (tmp_path, "my-run/trace"), (tmp_path / "my-run", "."),
                      (tmp_path / "my-run", "trace"), (tmp_path / "my-run", str(tmp_path / "my-run"))]:
        monkeypatch.chdir(cwd)
        assert default_out(path) == Path("renders/plots/my-run"), (cwd, path)
    monkeypatch.chdir(trace)
    for path in (".", "..", str(trace)):
        with pytest.raises(PlotError, match="inside the trace folder.*pass -o"):
            default_out(path)


def test_a_torn_last_line_is_one_warning_line(tmp_path, capsys):
    """A trace whose run was killed mid-line: `minigrpo plot` says so in one line of its own, not
    Python's two-line warning pointing into the reader."""
    from minigrpo.cli import main

    trace = tmp_path / "trace"
    shutil.copytree(Path(__file__).resolve().parents[1] / "traces" / "demo-grpo-syllogism", trace)
    with open(trace / "steps.jsonl", "a") as f:
        f.write('{"step": 999, "rollo')
    assert main(["plot", str(trace), "-o", str(tmp_path / "plots")]) == 0
    err = capsys.readouterr().err.splitlines()
    torn = [line for line in err if "torn last line" in line]
    assert len(torn) == 1 and torn[0].startswith("minigrpo: warning: ") and "TraceWarning" not in torn[0]
    assert not any("warnings.warn" in line or "return _load" in line for line in err)


def test_decision_heatmap_columns_sit_at_their_steps_when_steps_are_missing(tmp_path):
    """A downsampled trace probes every 10th update: each column is drawn at its own step (imshow
    spreads the columns it is given evenly over the axis), blank between."""
    from minigrpo.plot import STYLE, fig_decision_heatmap, pyplot
    from minigrpo.plot_data import decision_heatmap
    from minigrpo.trace import load
    from minigrpo.trace.downsample import downsample

    downsample(DEMO_GRPO, tmp_path / "ds", probe_every=10)
    trace = load(tmp_path / "ds")
    data = decision_heatmap(trace)
    steps = data["steps"]
    assert len(steps) > 2 and steps[-1] - steps[0] + 1 > len(steps)  # the test has gaps
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, _ = fig_decision_heatmap(plt, trace, None)
    grid = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    plt.close(fig)
    assert grid.shape[1] == steps[-1] - steps[0] + 1
    for j, step in enumerate(steps):
        np.testing.assert_allclose(grid[:, step - steps[0]], np.array(data["p_after"], float)[:, j])
    assert np.isnan(grid[:, steps[1] - steps[0] - 1]).all()  # a step without a probed decision is blank


def test_a_huge_gap_in_step_numbers_draws_a_column_per_probed_step(tmp_path):
    """A last step numbered 2**63 - 1 (the reader takes it; validate reports the gap) made the heatmap
    allocate a column per number in between: "array is too big"."""
    import json
    import shutil

    from minigrpo.plot import STYLE, fig_decision_heatmap, pyplot
    from minigrpo.plot_data import decision_heatmap
    from minigrpo.trace import load

    trace_dir = tmp_path / "t"
    shutil.copytree(DEMO_GRPO, trace_dir)
    lines = (trace_dir / "steps.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    last["step"] = 2**63 - 1
    lines[-1] = json.dumps(last)
    (trace_dir / "steps.jsonl").write_text("\n".join(lines) + "\n")
    trace = load(trace_dir)
    data = decision_heatmap(trace)
    assert data["steps"][-1] == 2**63 - 1
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, _ = fig_decision_heatmap(plt, trace, None)
    grid = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    plt.close(fig)
    assert grid.shape[1] == len(data["steps"]) and labels[-1] == str(2**63 - 1)
    np.testing.assert_allclose(grid, np.array(data["p_after"], float))


def test_a_dollar_token_is_text_and_ppos_kl_names_its_coefficient():
    import io

    from minigrpo.plot import STYLE, fig_kl, pyplot
    from minigrpo.trace import load

    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        ax.set_yticks([0, 1])
        ax.set_yticklabels(["$$", "$x$"])  # mathtext would refuse the first and italicise the second
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
        fig, _ = fig_kl(plt, load(REPO / "traces" / "demo-ppo-syllogism"), None)
    title = " ".join(t.get_text() for t in fig.texts + [fig.axes[0].title])
    plt.close(fig)
    assert "kl_coef = 0.02" in title and "β" not in title
