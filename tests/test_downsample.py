"""`minigrpo trace downsample`: all rollouts and scalars kept, probes of chosen updates only.

The sources are the shipped demo traces (real GRPO and PPO runs of the tiny model): the
copy must pass the reader's full validation, keep every number it keeps bit for bit, and
never leave a half-written destination.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from minigrpo.cli import main
from minigrpo.trace import TraceError, load, validate
from minigrpo.trace.downsample import downsample, kept_probe_steps

ROOT = Path(__file__).resolve().parents[1]
GRPO = ROOT / "traces" / "demo-grpo-syllogism"
PPO = ROOT / "traces" / "demo-ppo-syllogism"


def test_kept_steps_by_hand():
    steps = list(range(1, 11))
    # first 2, then every 3rd counted from the 3rd recorded step (3, 6, 9), then the last (10)
    assert kept_probe_steps(steps, 3, keep_first=2) == {1, 2, 3, 6, 9, 10}
    assert kept_probe_steps(steps, 4) == {1, 5, 9, 10}
    assert kept_probe_steps(steps, 1) == set(steps)
    assert kept_probe_steps([5, 7, 20], 100) == {5, 20}  # numbering gaps: counted in recorded order
    assert kept_probe_steps([], 3) == set()
    with pytest.raises(ValueError):
        kept_probe_steps(steps, 0)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope="module")
def grpo_copy(tmp_path_factory):
    dst = tmp_path_factory.mktemp("ds") / "grpo-ds"
    summary = downsample(GRPO, dst, probe_every=25, keep_first=3)
    return dst, summary


def test_copy_is_valid_and_keeps_every_rollout_and_scalar(grpo_copy):
    dst, summary = grpo_copy
    assert validate(dst) == []
    src, out = load(GRPO), load(dst)
    assert [s.step for s in out.steps] == [s.step for s in src.steps]
    assert [s.rollout for s in out.steps] == [s.rollout for s in src.steps]
    for a, b in zip(src.steps, out.steps):
        assert a.metrics.keys() == b.metrics.keys()
        assert all(_same(a.metrics[k], b.metrics[k]) for k in a.metrics)
    assert sorted(out.rollouts) == sorted(src.rollouts)
    for rid, groups in src.rollouts.items():
        for g, h in zip(groups, out.rollouts[rid], strict=True):
            assert (g.prompt, g.question, g.answer, g.completions) == (h.prompt, h.question, h.answer, h.completions)
            assert all(np.array_equal(x, y) for x, y in zip(g.completion_ids, h.completion_ids, strict=True))
            np.testing.assert_array_equal(g.rewards, h.rewards)
            np.testing.assert_array_equal(g.advantages, h.advantages)
            assert g.reward_parts.keys() == h.reward_parts.keys()
    assert out.meta.config == src.meta.config and out.meta.created == src.meta.created
    assert summary["bytes_after"] < summary["bytes_before"]


def test_probes_only_on_kept_steps_and_unchanged(grpo_copy):
    dst, summary = grpo_copy
    src, out = load(GRPO), load(dst)
    numbers = [s.step for s in src.steps]
    kept = kept_probe_steps(numbers, 25, keep_first=3)
    assert out.meta.extra["downsampled"]["steps_with_probes"] == sorted(kept)
    assert summary["steps_with_probes"] == len(kept) == 3 + 6 + 1  # 150 steps: 1-3, 4,29,...,129, 150
    for a, b in zip(src.steps, out.steps):
        if a.step not in kept:
            assert b.probes == []
            continue
        assert len(a.probes) == len(b.probes) > 0
        for p, q in zip(a.probes, b.probes):
            assert (p.group, p.index, p.text, p.tokens) == (q.group, q.index, q.text, q.tokens)
            for name in ("token_ids", "logp_old", "logp", "logp_new", "logp_ref", "ratio", "advantage", "kl"):
                np.testing.assert_array_equal(getattr(p, name), getattr(q, name))
            for u, v in zip(p.positions, q.positions, strict=True):
                assert (u.pos, u.kind, u.tokens) == (v.pos, v.kind, v.tokens)
                np.testing.assert_array_equal(u.probs_after, v.probs_after)


def test_ppo_copy_keeps_values_and_returns(tmp_path):
    dst = tmp_path / "ppo-ds"
    downsample(PPO, dst, probe_every=10)
    assert validate(dst) == []
    src, out = load(PPO), load(dst)
    assert out.meta.algo == "ppo"
    for a, b in zip(src.steps, out.steps):
        if b.probes:
            np.testing.assert_array_equal(a.probes[0].values, b.probes[0].values)
            np.testing.assert_array_equal(a.probes[0].returns, b.probes[0].returns)


def test_scenes_find_a_flagship_in_the_copy(grpo_copy):
    sys.path.insert(0, str(ROOT))
    from scenes.components import data as D

    trace = load(grpo_copy[0])
    shot = D.pick_flagship(trace)
    assert shot.step(trace).probes  # a step that kept its probes
    assert all(trace.steps[s.step_index].probes for s in D.follow(trace, shot))


def test_refuses_to_overwrite_and_leaves_no_temp(tmp_path):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(TraceError, match="already exists"):
        downsample(GRPO, dst, probe_every=5)
    assert (dst / "keep.txt").read_text() == "mine"
    with pytest.raises(TraceError, match="no such trace directory"):
        downsample(tmp_path / "missing", tmp_path / "new", probe_every=5)
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_cli(tmp_path, capsys):
    dst = tmp_path / "ds"
    assert main(["trace", "downsample", str(PPO), str(dst), "--probe-every", "20"]) == 0
    assert "40 steps (3 with probes" in capsys.readouterr().out  # steps 1, 21 and the last, 40
    assert main(["trace", "downsample", str(PPO), str(dst), "--probe-every", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minigrpo: error:") and "already exists" in err and "\n" not in err


def test_fields_this_version_does_not_know_survive_the_copy(tmp_path):
    """docs/trace-format.md §8: later writers may add fields without a version bump; a copy keeps
    them (meta, rollout lines and payloads, step lines, step payload keys)."""
    import json
    import shutil

    src = tmp_path / "src"
    shutil.copytree(PPO, src)
    meta = json.loads((src / "meta.json").read_text())
    meta["zz_meta"] = {"new": 1}
    (src / "meta.json").write_text(json.dumps(meta))
    for name in ("rollouts.jsonl", "steps.jsonl"):
        lines = (src / name).read_text().splitlines()
        (src / name).write_text("".join(json.dumps({**json.loads(line), "zz_line": i}) + "\n"
                                        for i, line in enumerate(lines)))
    last = load(src).steps[-1]
    step_payload = src / json.loads((src / "steps.jsonl").read_text().splitlines()[-1])["payload"]
    arrays = dict(np.load(step_payload))
    np.savez(step_payload, **arrays, zz_array=np.arange(3))
    dst = tmp_path / "dst"
    downsample(src, dst, probe_every=1000)
    out_meta = json.loads((dst / "meta.json").read_text())
    assert out_meta["zz_meta"] == {"new": 1} and out_meta["extra"]["downsampled"]["probe_every"] == 1000
    for name in ("rollouts.jsonl", "steps.jsonl"):
        got = [json.loads(line)["zz_line"] for line in (dst / name).read_text().splitlines()]
        assert got == list(range(len(got))) and got
    assert (dst / "rollouts.jsonl").read_bytes() == (src / "rollouts.jsonl").read_bytes()
    assert "zz_array" in np.load(dst / step_payload.relative_to(src)).files  # the last step keeps its probes
    assert len(load(dst).steps[-1].probes) == len(last.probes)
    assert validate(dst) == validate(src)


def test_a_temp_folder_left_by_a_killed_downsample_is_removed(tmp_path):
    stale = tmp_path / ".copy.tmp-999999999"  # no such process
    stale.mkdir()
    (stale / "meta.json").write_text("{}")
    live = tmp_path / ".copy.tmp-1"  # process 1 is alive: a copy that may still be running
    live.mkdir()
    downsample(GRPO, tmp_path / "copy", probe_every=50)
    assert not stale.exists() and live.exists() and (tmp_path / "copy").is_dir()


def test_a_nan_literal_the_reader_takes_is_copied_as_null(tmp_path):
    """The reader accepts NaN/Infinity literals; a dropped probe's line was re-encoded as strict JSON: traceback."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(GRPO, src)
    lines = (src / "steps.jsonl").read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace('"loss":', '"x": NaN, "y": Infinity, "loss":', 1)
    (src / "steps.jsonl").write_text("".join(lines))
    assert validate(src) == []
    downsample(src, tmp_path / "ds", probe_every=10)
    step5 = load(tmp_path / "ds").steps[4]
    assert step5.probes == [] and math.isnan(step5.metrics["x"]) and math.isnan(step5.metrics["y"])
    assert validate(tmp_path / "ds") == []


def test_a_dangling_link_in_the_source_does_not_fail_a_finished_copy(tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(GRPO, src)
    (src / "payloads" / "old.npz").symlink_to(tmp_path / "nonexistent")
    summary = downsample(src, tmp_path / "ds", probe_every=10)
    assert summary["bytes_after"] > 0 and validate(tmp_path / "ds") == []


def test_a_missing_payload_is_one_line_and_no_copy(tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(GRPO, src)
    (src / "payloads" / "rollout_000000.npz").unlink()
    assert main(["trace", "downsample", str(src), str(tmp_path / "ds"), "--probe-every", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minigrpo: error:") and "rollout_000000.npz" in err and "\n" not in err
    assert sorted(os.listdir(tmp_path)) == ["src"]
