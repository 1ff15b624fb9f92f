"""A trace or checkpoint from someone else cannot run code or reach files outside itself.

No pickle anywhere on the load paths: traces are JSON + ``np.load(allow_pickle=False)``, model
weights safetensors (transformers' own ``torch.load`` fallback is ``weights_only=True``), the
trainer state ``torch.load(weights_only=True)``. Each test plants an object whose unpickling
would create a marker file, and checks that the load is refused and the marker never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings

import harness as H
import numpy as np
import pytest
import torch

from minigrpo.trace import load
from minigrpo.trace.schema import TraceError


class Boom:
    """Unpickling this creates ``path``: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_no_unsafe_deserialisation_in_the_source():
    """Every torch.load is weights_only=True, every np.load allow_pickle=False, no pickle.load(s)."""
    problems = []
    for folder in ("minigrpo", "scenes"):
        for path in (H.ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in m.group(1):
                    problems.append(f"{path}: {m.group(0)}")
            for m in re.finditer(r"np\.load\(([^)]*)\)", text):
                if "allow_pickle=False" not in m.group(1):
                    problems.append(f"{path}: {m.group(0)}")
            problems += [f"{path}: {m.group(0)}" for m in re.finditer(r"pickle\.loads?\(|allow_pickle=True|"
                                                                     r"weights_only=False|trust_remote_code=True", text)]
    assert not problems, problems


# ----------------------------------------------------------------------------- traces
@pytest.fixture
def trace_copy(grpo_run, tmp_path):
    out, _, _ = grpo_run
    dst = tmp_path / "trace"
    shutil.copytree(out / "trace", dst)
    return dst


def test_a_pickled_object_in_a_trace_payload_is_refused_unrun(trace_copy, tmp_path):
    marker = tmp_path / "pwned"
    payload = trace_copy / "payloads" / "rollout_000000.npz"
    with np.load(payload, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["completion_ids"] = np.array([Boom(marker)], dtype=object)
    np.savez(payload, **arrays)  # numpy pickles object arrays
    with pytest.raises(TraceError, match="Python-object array"):
        load(trace_copy)
    step_payload = trace_copy / "payloads" / "step_000001.npz"
    with open(step_payload, "wb") as f:  # a bare pickle under a payload's name
        pickle.dump(Boom(marker), f)
    with pytest.raises(TraceError):
        load(trace_copy, steps=[1], lazy=False)
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["../../outside.npz", "/tmp/outside.npz", "payloads/../../outside.npz",
                                     "payloads/sub/x.npz", "payloads\\\\..\\\\x.npz"])
def test_payload_paths_cannot_leave_the_trace(trace_copy, payload):
    lines = (trace_copy / "steps.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["payload"] = payload
    lines[0] = json.dumps(record)
    (trace_copy / "steps.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError, match="is not a payload name"):
        load(trace_copy)


@pytest.mark.parametrize("name", ["payloads/step_000001.npz", "payloads/rollout_000000.npz", "steps.jsonl",
                                  "meta.json"])
def test_symlinks_out_of_the_trace_are_refused(trace_copy, tmp_path, name):
    outside = tmp_path / "outside"
    shutil.copy(trace_copy / name, outside)
    (trace_copy / name).unlink()
    os.symlink(outside, trace_copy / name)
    with pytest.raises(TraceError, match="outside the trace directory"):
        load(trace_copy, lazy=False)


def test_a_trace_reached_through_a_symlink_loads(trace_copy, tmp_path):
    link = tmp_path / "link"
    os.symlink(trace_copy, link)
    inner = trace_copy / "payloads" / "alias.npz"  # a link that stays inside is fine too
    os.symlink(trace_copy / "payloads" / "step_000001.npz", inner)
    assert len(load(link, lazy=False).steps) == len(load(trace_copy).steps)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture
def run_copy(grpo_run, tmp_path):
    out, cfg, _ = grpo_run
    dst = tmp_path / "run"
    shutil.copytree(out, dst)
    return dst, cfg


def test_a_pickled_object_in_the_trainer_state_is_refused_unrun(run_copy, tmp_path):
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.runtime import TrainingError

    out, cfg = run_copy
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Boom(marker)}, out / "checkpoint" / "trainer_state.pt")
    with pytest.raises(TrainingError, match="refused to load it"):
        GRPOTrainer(cfg, out, resume=True, log=lambda *_: None).train()
    assert not marker.exists()


def test_pickled_model_weights_are_refused_unrun(run_copy, tmp_path):
    from minigrpo.models import ModelLoadError, load_model

    out, _ = run_copy
    marker = tmp_path / "pwned"
    (out / "checkpoint" / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Boom(marker)}, out / "checkpoint" / "pytorch_model.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ModelLoadError, match="cannot load model"):
            load_model(str(out / "checkpoint"))
    assert not marker.exists()
