"""Running out of GPU memory or disk: one clear line, the last checkpoint and a readable trace kept.

CUDA OOM is simulated on CPU by raising ``torch.cuda.OutOfMemoryError`` where a GPU would;
a full disk by an ``OSError(ENOSPC)`` from the trace writer's ``write`` (after a short write,
as a real full disk does) or from the checkpoint's ``torch.save``.
"""

from __future__ import annotations

import errno
import json
import os
import warnings

import pytest
import torch
from harness import trainer

from minigrpo.cli import main
from minigrpo.grpo import GRPOTrainer
from minigrpo.runtime import TrainingError
from minigrpo.trace import load

from harness import one_thread  # noqa: E402,F401 - the fixture below

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli_train(sft_model, out, *extra) -> list[str]:
    flags = ["train", "--preset", "tiny", "--model", sft_model, "--out", str(out), "--train-size", "64",
             "--eval-size", "8", "--eval-n", "4", "--buffer-size", "16", "--num-generations", "4",
             "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2",
             "--max-completion-length", "24", "--save-steps", "1", "--logging-steps", "0", *extra]
    return flags


def test_oom_in_rollout_names_the_generation_knobs(sft_model, tmp_path, monkeypatch, capsys):
    import minigrpo.trainer as trainer_module

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer_module, "collect", oom)
    assert main(_cli_train(sft_model, tmp_path / "o", "--max-steps", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minigrpo: error: CUDA out of memory during the rollout of step 1"), err
    for knob in ("--sampling-batch-size", "--num-generations", "--max-completion-length", "--resume"):
        assert knob in err[0], err[0]


def test_oom_in_update_names_the_batch_knobs_and_resume_works(sft_model, tmp_path, monkeypatch):
    real = GRPOTrainer.micro_loss

    def oom_at_step_2(self, exp, rows, normalizer):
        if self.step == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(self, exp, rows, normalizer)

    monkeypatch.setattr(GRPOTrainer, "micro_loss", oom_at_step_2)
    t, _ = trainer(sft_model, tmp_path, max_steps=3)
    with pytest.raises(TrainingError) as err:
        t.train()
    msg = str(err.value)
    assert msg.startswith("CUDA out of memory during the update of step 2") and "\n" not in msg
    for knob in ("--per-device-train-batch-size (now 4)", "--gradient-accumulation-steps (now 2)",
                 "--max-completion-length", "--num-generations", "last checkpoint (step 1)"):
        assert knob in msg, msg
    monkeypatch.setattr(GRPOTrainer, "micro_loss", real)
    GRPOTrainer(t.cfg, tmp_path, resume=True, log=lambda *_: None).train()
    assert [s.step for s in load(tmp_path / "trace").steps] == [1, 2, 3]


def _full_disk_after(n_ok: int, short: bool):
    """A replacement for the trace's files.write_all: the first n_ok calls write, then ENOSPC
    (after writing half of the bytes, if ``short``)."""
    from minigrpo import files

    real, calls = files.write_all, []

    def write_all(fd, data):
        calls.append(len(data))
        if len(calls) > n_ok:
            if short:
                real(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    return write_all


@pytest.mark.parametrize("short", [True, False])
def test_full_disk_while_writing_the_trace_stops_cleanly(sft_model, tmp_path, monkeypatch, short):
    from minigrpo import files

    # line appends: rollout 0, step 1, step 2 <- the disk fills up here
    monkeypatch.setattr(files, "write_all", _full_disk_after(2, short))
    t, _ = trainer(sft_model, tmp_path, max_steps=3)
    with pytest.raises(TrainingError) as err:
        t.train()
    msg = str(err.value)
    assert "steps.jsonl" in msg and "No space left on device" in msg and "step 2" in msg and "--resume" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the torn half line was cut off again: no warning either
        assert [s.step for s in load(tmp_path / "trace", lazy=False).steps] == [1]
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 1
    monkeypatch.undo()
    GRPOTrainer(t.cfg, tmp_path, resume=True, log=lambda *_: None).train()
    assert [s.step for s in load(tmp_path / "trace", lazy=False).steps] == [1, 2, 3]


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "free some space"), (errno.EACCES, "make it writable again"),
                                       (errno.EIO, "check the disk and the folder's permissions")])
def test_a_failed_write_gets_the_advice_of_its_cause(sft_model, tmp_path, monkeypatch, code, fix):
    """Every write error said "free some space", a folder made read-only mid-run too."""
    from minigrpo import files

    real, calls = files.write_all, []

    def write_all(fd, data):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(code, os.strerror(code))
        real(fd, data)

    monkeypatch.setattr(files, "write_all", write_all)
    t, _ = trainer(sft_model, tmp_path, max_steps=2)
    with pytest.raises(TrainingError, match=f"{os.strerror(code)}.*; {fix}, then run the same command with --resume"):
        t.train()


def test_full_disk_while_writing_a_payload_leaves_no_temp_file(sft_model, tmp_path, monkeypatch):
    import numpy as np

    from minigrpo.trace import writer

    real, calls = np.savez_compressed, []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) == 2:  # rollout 0's payload, then step 1's: full
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, **arrays)

    monkeypatch.setattr(writer.np, "savez_compressed", savez)
    t, _ = trainer(sft_model, tmp_path)
    with pytest.raises(TrainingError, match=r"step_000001\.npz.*No space left on device"):
        t.train()
    assert not [p for p in (tmp_path / "trace").rglob("*") if p.name.endswith(".tmp")]
    assert load(tmp_path / "trace", lazy=False).steps == []


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(sft_model, tmp_path, monkeypatch):
    import minigrpo.runtime as runtime

    real, calls = torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # checkpoint of step 2
            open(path, "wb").write(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path, *args, **kwargs)

    monkeypatch.setattr(runtime.torch, "save", save)
    t, _ = trainer(sft_model, tmp_path, max_steps=3)
    with pytest.raises(TrainingError, match=r"trainer_state\.pt during the checkpoint of step 2"):
        t.train()
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 1
    assert not (tmp_path / "checkpoint.tmp").exists() and not (tmp_path / "checkpoint.old").exists()
    assert [s.step for s in load(tmp_path / "trace").steps] == [1, 2]  # the trace may run ahead; resume cuts it
