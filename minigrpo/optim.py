"""The optimiser: AdamW with its learning-rate schedule, and float32 master weights for bf16 models.

Why master weights: at the seed recipe's lr of 1e-6 an AdamW step moves a weight by about
1e-6, while bf16 can only represent changes of about 1e-4 near a typical weight (|w| ≈ 0.02,
spacing 2^-13). Stepping bf16 weights directly rounds nearly every update away. So a
low-precision parameter gets a float32 copy (its master); AdamW updates the masters with the
gradients cast to float32, and the new values are copied back into the model's bf16 tensors
*in place* (their storage never moves, so captured CUDA graphs stay valid). Float32
parameters are their own masters. The model, its forward passes and the rollouts stay in bf16.
"""

from __future__ import annotations

import math

import torch


class MasterWeightAdamW:
    """AdamW over float32 masters of ``params``; the model's own tensors get the rounded result.

    The parts the trainer uses: ``params`` (the model's tensors, whose ``.grad`` the backward
    pass fills), ``zero_grad``, ``step``, ``state_dict`` / ``load_state_dict`` (the masters
    travel with the AdamW state, so a resumed bf16 run continues from the same float32 values),
    ``param_groups``/``state`` of the inner AdamW (the LR schedule drives ``inner``).
    """

    def __init__(self, params, **adamw_kwargs):
        self.params = list(params)
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone() for p in self.params]
        self.inner = torch.optim.AdamW(self.masters, **adamw_kwargs)

    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def low_precision_masters(self) -> list[torch.Tensor]:
        return [m for p, m in zip(self.params, self.masters) if m is not p]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        # one multi-tensor cast each way (not one kernel per tensor): the gradients up to float32,
        # and the new masters back into the model's own tensors, rounded, in place
        low = [(p, m) for p, m in zip(self.params, self.masters) if m is not p and p.grad is not None]
        grads = [torch.empty_like(m) for _, m in low]
        if low:
            torch._foreach_copy_(grads, [p.grad for p, _ in low])
        for (_, master), grad in zip(low, grads):
            master.grad = grad
        self.inner.step()
        changed = [(p, m) for p, m in zip(self.params, self.masters) if m is not p]
        if changed:
            torch._foreach_copy_([p for p, _ in changed], [m for _, m in changed])
        for _, master in low:
            master.grad = None

    def state_dict(self) -> dict:
        return {"adamw": self.inner.state_dict(), "masters": [m.detach().clone() for m in self.low_precision_masters()]}

    def load_state_dict(self, blob: dict) -> None:
        masters = self.low_precision_masters()
        saved = blob.get("masters") if isinstance(blob, dict) else None
        if not isinstance(saved, list) or "adamw" not in blob or len(saved) != len(masters) or any(
                not torch.is_tensor(s) or s.shape != m.shape for s, m in zip(saved, masters)):
            raise ValueError("the optimizer state does not hold float32 master weights for this model's "
                             "low-precision parameters (was the checkpoint written with another --dtype?)")
        self.inner.load_state_dict(blob["adamw"])
        with torch.no_grad():
            for master, value in zip(masters, saved):
                master.copy_(value)


def make_optimizer(params, cfg, lr: float, total_steps: int, schedule: str | None = None,
                   warmup_steps: int | None = None):
    """AdamW and its LR schedule: ``schedule`` (default ``cfg.lr_scheduler_type``) after ``warmup_steps``
    (default ``cfg.warmup_steps``, RL's; SFT passes 0: it has no warm-up of its own).

    When some parameter is not float32 (a bf16 model) the optimiser is a ``MasterWeightAdamW``.
    """
    schedule = schedule or cfg.lr_scheduler_type
    params = list(params)
    kwargs = dict(lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    if params and all(p.is_cuda for p in params):
        kwargs["fused"] = True  # one kernel for the whole step on a GPU (the CPU keeps the reference for-each path)
    if all(p.dtype == torch.float32 for p in params):
        optimizer = torch.optim.AdamW(params, **kwargs)
        inner = optimizer
    else:
        optimizer = MasterWeightAdamW(params, **kwargs)
        inner = optimizer.inner

    def factor(step: int) -> float:
        warmup = cfg.warmup_steps if warmup_steps is None else warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(inner, factor)


def apply_config(scheduler, cfg, lr: float) -> None:
    """Give a restored optimizer and schedule this config's knobs (a resumed run with another
    ``--learning-rate``, ``--weight-decay``, betas, schedule or ``--max-steps``): the schedule's
    base rate becomes ``lr`` and the rate now is what the schedule gives at the restored step,
    the same float the saved schedule held when nothing changed. The moments are kept."""
    scheduler.base_lrs = [lr for _ in scheduler.optimizer.param_groups]
    rates = [lr * factor(scheduler.last_epoch) for factor in scheduler.lr_lambdas]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group.update(lr=rate, initial_lr=lr, weight_decay=cfg.weight_decay, betas=(cfg.adam_beta1, cfg.adam_beta2))
    scheduler._last_lr = rates


def optimized_params(optimizer) -> list[torch.Tensor]:
    """The model tensors whose gradients the optimiser consumes (for clipping and all-reduce)."""
    if isinstance(optimizer, MasterWeightAdamW):
        return optimizer.params
    return [p for group in optimizer.param_groups for p in group["params"]]


def state_tensors(optimizer) -> list[torch.Tensor]:
    """Every tensor the optimiser holds besides the model: AdamW moments, and masters if any."""
    tensors = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    if isinstance(optimizer, MasterWeightAdamW):
        tensors += optimizer.low_precision_masters()
    return tensors
