"""`minigrpo sft` on bad input: one line on stderr, exit 2, and no partial output left behind."""

from __future__ import annotations

import pytest

from minigrpo.cli import main
from minigrpo.runtime import TrainingError

SMALL = ["--train-size", "60", "--eval-size", "20", "--eval-n", "20"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error:"), err
    return err[0]


def test_task_without_sft_target_fails_before_writing(tmp_path, capsys, monkeypatch):
    import minigrpo.sft

    monkeypatch.setattr(minigrpo.sft, "build_tiny", lambda *a, **k: pytest.fail("built the model for nothing"))
    out = tmp_path / "runs" / "sft"
    assert main(["sft", "--task", "graph_color", "--preset", "tiny", "--out", str(out), *SMALL]) == 2
    assert "no SFT target" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_bad_task_config_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["sft", "--task", "composite", "--out", str(out)]) == 2
    one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("inside", ["trace", "checkpoint"])
def test_refuses_an_rl_run_folder(tmp_path, capsys, inside):
    run = tmp_path / "grpo"
    (run / inside).mkdir(parents=True)
    (run / "summary.json").write_text("rl")
    assert main(["sft", "--preset", "tiny", "--out", str(run), *SMALL]) == 2
    assert "choose a new --out" in one_error_line(capsys)
    assert sorted(p.name for p in run.iterdir()) == sorted([inside, "summary.json"])
    assert (run / "summary.json").read_text() == "rl"


@pytest.mark.parametrize("exists", [False, True])
def test_failure_after_building_the_model_cleans_up(tmp_path, capsys, monkeypatch, exists):
    """A new --out is removed whole; in an existing one only what this run wrote (.tiny-base) goes."""
    import minigrpo.sft

    def fail(*a, **k):
        raise TrainingError("eval failed")

    monkeypatch.setattr(minigrpo.sft, "evaluate", fail)
    out = tmp_path / "new" / "sft"
    if exists:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("keep")
    assert main(["sft", "--preset", "tiny", "--out", str(out), *SMALL]) == 2
    assert "eval failed" in one_error_line(capsys)
    if exists:
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not (tmp_path / "new").exists()
