"""Data-parallel training of our own trainer (minigrpo/distributed.py), on CPU processes with gloo.

* the collectives on two spawned processes, against hand-computed values;
* ``minigrpo train`` under ``torchrun --nproc_per_node 2``: exactly one valid trace (groups and
  probes of both ranks, the truth checks of trace_checks.py), and identical weights on both
  ranks after the updates, compared from outside (tests/dp_worker.py saves each rank's weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minigrpo import distributed
from minigrpo.probes import pick_probe_rows

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def test_one_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.setup()
    assert (d.rank, d.world_size, d.is_main, d.active) == (0, 1, True, False)
    advantages = torch.tensor([0.3, -1.0, 2.0, 0.0, -0.5])
    assert d.pick_probe_rows(advantages, 2) == pick_probe_rows(advantages, 2) == [2, 1]
    assert d.gather([1, 2]) == [1, 2] and d.broadcast("x") == "x"
    assert d.reduce_stats({"loss": 2.0, "num_tokens": 3.0}, averaged=("loss",)) == {"loss": 2.0, "num_tokens": 3.0}
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, -1.0])
    d.average_gradients([p])
    assert p.grad.tolist() == [1.0, -1.0] and d.in_sync([torch.nn.Linear(2, 2)])


def _collectives(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    d = distributed.setup()  # joins the existing group
    p1, p2 = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    p1.grad = torch.full((3,), rank + 1.0)
    p2.grad = None if rank == 1 else torch.tensor([4.0, -2.0])  # no gradient on rank 1 counts as zeros
    d.average_gradients([p1, p2])
    stats = d.reduce_stats({"sum:kl": rank + 1.0, "loss": 10.0 * (rank + 1), "num_tokens": 5.0 + rank},
                           averaged=("loss",))
    picks = d.pick_probe_rows(torch.tensor([[0.5, -1.0, 0.0], [2.0, -3.0, 0.1]][rank]), 4)
    module = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(module.weight, float(rank))
    d.broadcast_modules([module])
    synced = d.in_sync([module])
    with torch.no_grad():
        module.bias[0] += 1e-3 * rank
    # dynamic sampling: rank 0 sampled 1 group, rank 1 two (G = 4)
    from types import SimpleNamespace

    from minigrpo.trainer import RLTrainer

    local = [{"reward": 0.1, "frac_reward_zero_std": 1.0, "scorer_errors": 1.0, "dynamic_sampling/groups_sampled": 1.0,
              "dynamic_sampling/gen_batches": 1.0},
             {"reward": 0.4, "frac_reward_zero_std": 0.5, "scorer_errors": 0.0, "dynamic_sampling/groups_sampled": 2.0,
              "dynamic_sampling/gen_batches": 3.0}][rank]
    exp = SimpleNamespace(rollout=[0] * 4, num_generations=4, rollout_metrics=lambda: dict(local))
    rollout = RLTrainer._rollout_metrics(SimpleNamespace(dist=d), exp)
    # one of rank 0's four prompts cut to --max-prompt-length, none of rank 1's: 1 of 8 (was 1 of 4 on rank 0)
    cut = RLTrainer._truncated_prompts(SimpleNamespace(dist=d), SimpleNamespace(truncated_prompts=1 - rank,
                                                                                 prompts=["p"] * 4))
    # a stop asked of rank 0 alone (a signal reaches the ranks at different instants): both stop
    stop = RLTrainer._stop_agreed(SimpleNamespace(dist=d, _stop=SimpleNamespace(requested=rank == 0)))
    out = {"p1": p1.grad.tolist(), "p2": p2.grad.tolist(), "stats": stats, "picks": picks, "rollout": rollout,
           "stop": stop, "cut": cut,
           "gather": d.gather([f"r{rank}a", f"r{rank}b"]), "weight": module.weight.tolist(),
           "synced": synced, "synced_after_nudge": d.in_sync([module]), "world": d.world_size, "main": d.is_main}
    Path(out_dir, f"{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def test_collectives_on_two_processes(tmp_path):
    mp.spawn(_collectives, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert r["p1"] == [1.5, 1.5, 1.5] and r["p2"] == [2.0, -1.0]  # (1 + 2) / 2; (4 + 0) / 2
        assert r["stats"] == {"sum:kl": 3.0, "loss": 15.0, "num_tokens": 11.0}
        assert r["weight"] == [[0.0, 0.0], [0.0, 0.0]]  # rank 0's weights everywhere
        assert r["synced"] is True and r["synced_after_nudge"] is False and r["world"] == 2
        assert r["stop"] is True
        assert r["cut"] == [1.0, 8.0]
        # means weighted by what each rank covered (3 groups, 12 completions), counts added, batches averaged
        assert r["rollout"] == pytest.approx({"reward": (0.1 * 4 + 0.4 * 8) / 12, "frac_reward_zero_std": 2 / 3,
                                              "scorer_errors": 1.0, "dynamic_sampling/groups_sampled": 3.0,
                                              "dynamic_sampling/gen_batches": 2.0})
    # all six rows by advantage: 2.0 (rank 1 row 0), -3.0 (rank 1 row 1), 0.5 (rank 0 row 0), -1.0 (rank 0 row 1)
    assert r0["picks"] == [0, 1] and r1["picks"] == [0, 1]
    assert r0["gather"] == ["r0a", "r0b", "r1a", "r1b"] and r1["gather"] is None
    assert (r0["main"], r1["main"]) == (True, False)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to the python running the tests")
def test_grpo_on_two_processes_writes_one_trace_and_keeps_ranks_identical(sft_model, tmp_path):
    from conftest import FAST
    from safetensors.torch import load_file
    from trace_checks import GRPO_CHECKS

    from minigrpo.trace import load, validate

    out, weights = tmp_path / "run", tmp_path / "weights"
    weights.mkdir()
    flags = {**FAST, "eval_n": 8, "max_steps": 2, "probe_completions": -1, "learning_rate": 3e-3, "beta": 0.1}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "dp_worker.py"), "train", "--preset", "tiny",
           "--model", sft_model, "--out", str(out),
           *[arg for k, v in flags.items() for arg in (f"--{k.replace('_', '-')}", str(v))]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "DP_WEIGHTS_DIR": str(weights)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model saved in") == 1  # rank 0 reports, rank 1 is silent

    # one trace, written by rank 0, holding both ranks' groups and probes
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("meta.json")) == ["run/trace/meta.json"]
    assert validate(out / "trace") == []
    trace = load(out / "trace")
    assert trace.meta.extra["world_size"] == 2
    prompts = FAST["buffer_size"] // FAST["num_generations"]  # 4 per rollout: 2 per rank
    for step in trace.steps:
        assert len(step.groups) == prompts and len({g.prompt for g in step.groups}) == prompts
        assert sorted((p.group, p.index) for p in step.probes) == [(g, i) for g in range(prompts)
                                                                  for i in range(FAST["num_generations"])]
    for check in GRPO_CHECKS:  # incl. num_tokens / kl / clip ratios summed over both ranks' probes
        check(trace)

    # the ranks took the same updates: identical weights, moved away from the start, saved by rank 0
    rank0, rank1 = (torch.load(weights / f"rank{r}.pt") for r in (0, 1))
    start, final = load_file(Path(sft_model) / "model.safetensors"), load_file(out / "model.safetensors")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert any(not torch.equal(rank0[k], start[k]) for k in start)
    assert all(torch.equal(rank0[k], final[k]) for k in final)
