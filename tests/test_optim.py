"""The optimiser: float32 master weights keep the seed recipe's small updates on bf16 models."""

import pytest
import torch

from minigrpo.config import build_config
from minigrpo.optim import MasterWeightAdamW, make_optimizer, optimized_params, state_tensors
from minigrpo.runtime import train_state_mb


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]


def _layer(dtype, seed=0, device="cpu"):
    torch.manual_seed(seed)
    return torch.nn.Linear(64, 64).to(dtype).to(device)


def _steps(layer, optimizer, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        x = torch.randn(32, 64, generator=gen).to(layer.weight.dtype).to(layer.weight.device)
        layer(x).pow(2).mean().backward()
        optimizer.step()


def test_bf16_weights_lose_small_updates_without_masters():
    """Why masters exist: one AdamW step at lr 1e-6 moves a weight by about 1e-6, far below
    bf16's spacing near typical weights (2^-13 ≈ 1.2e-4 at |w| ≈ 0.02): stepping the bf16
    tensors directly rounds nearly every update away; float32 keeps all of them."""
    changed = {}
    for dtype in (torch.bfloat16, torch.float32):
        layer = _layer(dtype)
        before = layer.weight.detach().clone()
        _steps(layer, torch.optim.AdamW(layer.parameters(), lr=1e-6, weight_decay=0.0), 1)
        changed[dtype] = (layer.weight != before).float().mean().item()
    assert changed[torch.float32] == 1.0
    assert changed[torch.bfloat16] < 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_masters_accumulate_what_bf16_would_round_away(device):
    cfg = build_config("tiny", overrides={"weight_decay": 0.0})
    bf16, fp32 = _layer(torch.bfloat16, device=device), _layer(torch.bfloat16, device=device)
    fp32 = fp32.float()  # the same (bf16-representable) start, trained in float32
    opt_bf16, _ = make_optimizer(bf16.parameters(), cfg, 1e-6, 100)
    opt_fp32, _ = make_optimizer(fp32.parameters(), cfg, 1e-6, 100)
    assert isinstance(opt_bf16, MasterWeightAdamW) and isinstance(opt_fp32, torch.optim.AdamW)
    start = fp32.weight.detach().clone()
    _steps(bf16, opt_bf16, 30)
    _steps(fp32, opt_fp32, 30)
    master = opt_bf16.masters[0]
    # the master moved like a float32 run does (gradients differ only by bf16 forward rounding)
    moved = (master - start).abs()
    assert moved.mean() > 1e-5 and (master != start).float().mean() == 1.0
    ref_moved = (fp32.weight.detach() - start).abs()
    assert torch.allclose(moved.mean(), ref_moved.mean(), rtol=0.05)
    # the model's bf16 weights are exactly the rounded masters, stored in the same tensors
    assert torch.equal(bf16.weight.detach(), master.to(torch.bfloat16))
    assert master.dtype == torch.float32 and bf16.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
def test_model_storage_is_updated_in_place(device):
    """CUDA graphs captured over the weights read fixed addresses: a step must not move them."""
    layer = _layer(torch.bfloat16, device=device)
    cfg = build_config("tiny")
    opt, _ = make_optimizer(layer.parameters(), cfg, 1e-2, 10)
    ptr = layer.weight.data_ptr()
    before = layer.weight.detach().clone()
    _steps(layer, opt, 1)
    assert layer.weight.data_ptr() == ptr and not torch.equal(layer.weight.detach(), before)


def test_schedule_drives_the_masters_learning_rate():
    cfg = build_config("tiny", overrides={"warmup_steps": 0})
    layer = _layer(torch.bfloat16)
    opt, sched = make_optimizer(layer.parameters(), cfg, 1e-3, 10, schedule="linear")
    lrs = []
    for _ in range(3):
        lrs.append(sched.get_last_lr()[0])
        _steps(layer, opt, 1)
        sched.step()
    assert lrs == pytest.approx([1e-3, 0.9e-3, 0.8e-3])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.7e-3)


def test_state_dict_round_trip_continues_bit_identically(tmp_path):
    cfg = build_config("tiny")
    a = _layer(torch.bfloat16)
    opt_a, sched_a = make_optimizer(a.parameters(), cfg, 1e-4, 20)
    _steps(a, opt_a, 5)
    torch.save({"optimizer": opt_a.state_dict(), "model": a.state_dict()}, tmp_path / "s.pt")
    blob = torch.load(tmp_path / "s.pt", weights_only=True)
    b = _layer(torch.bfloat16, seed=7)
    b.load_state_dict(blob["model"])
    opt_b, _ = make_optimizer(b.parameters(), cfg, 1e-4, 20)
    opt_b.load_state_dict(blob["optimizer"])
    assert opt_b.masters[0].dtype == torch.float32  # not cast down to the parameter's bf16
    assert torch.equal(opt_b.masters[0], opt_a.masters[0])
    _steps(a, opt_a, 3, seed=5)
    _steps(b, opt_b, 3, seed=5)
    assert torch.equal(a.weight, b.weight) and torch.equal(opt_a.masters[0], opt_b.masters[0])


def test_state_from_another_dtype_is_refused():
    cfg = build_config("tiny")
    fp32_opt, _ = make_optimizer(_layer(torch.float32).parameters(), cfg, 1e-4, 5)
    bf16_opt, _ = make_optimizer(_layer(torch.bfloat16).parameters(), cfg, 1e-4, 5)
    with pytest.raises(ValueError, match="master weights"):
        bf16_opt.load_state_dict(fp32_opt.state_dict())


def test_clipping_sees_the_model_gradients_and_memory_counts_masters():
    cfg = build_config("tiny")
    layer = _layer(torch.bfloat16)
    opt, _ = make_optimizer(layer.parameters(), cfg, 1e-4, 5)
    assert optimized_params(opt) == list(layer.parameters())
    _steps(layer, opt, 1)
    n = sum(p.numel() for p in layer.parameters())
    # masters (4 B) + two AdamW moments (4 B each) per weight, + the step counters
    assert sum(t.numel() * t.element_size() for t in state_tensors(opt)) >= 12 * n
    expected = (2 * 2 * n + 12 * n) / 2**20  # bf16 weights + grads, then the optimiser's float32
    assert train_state_mb([layer], opt) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_bf16_run_keeps_masters_and_resumes_bit_identically(sft_model, tmp_path, algo):
    """A bf16 run (the GPU default) on the CPU: the optimiser holds float32 masters, the
    checkpoint carries them, and 2 steps + resume + 2 steps equal 4 steps in one go."""
    from conftest import fast_config
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.models import load_model
    from minigrpo.ppo import PPOTrainer

    trainer_cls = GRPOTrainer if algo == "grpo" else PPOTrainer
    quiet = dict(log=lambda *_: None)

    def cfg(steps):  # a constant lr: a cosine schedule would depend on max_steps
        return fast_config(model=sft_model, algo=algo, dtype="bfloat16", max_steps=steps, save_steps=2,
                           learning_rate=1e-5, lr_scheduler_type="constant", eval_n=2, trace=False)

    whole = trainer_cls(cfg(4), tmp_path / "whole", **quiet)
    assert isinstance(whole.optimizer, MasterWeightAdamW)
    assert next(whole.policy.parameters()).dtype == torch.bfloat16
    whole.train()
    trainer_cls(cfg(2), tmp_path / "split", **quiet).train()
    resumed = trainer_cls(cfg(4), tmp_path / "split", resume=True, **quiet)
    resumed.train()
    a = load_model(str(tmp_path / "whole"), dtype="bfloat16")[0].state_dict()
    b = load_model(str(tmp_path / "split"), dtype="bfloat16")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(m, n) for m, n in zip(whole.optimizer.masters, resumed.optimizer.masters))
    # the masters hold what bf16 cannot: at lr 1e-5 some differ from their rounded weights
    diff = [(m - p.float()).abs().max().item() for m, p in zip(whole.optimizer.masters, whole.optimizer.params)]
    assert max(diff) > 0
