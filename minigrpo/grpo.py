"""GRPO: group-relative advantages, PPO's clipped surrogate and a k3 KL penalty.

    A_i     = (r_i - mean(r_group)) / (std(r_group) + eps)                (no critic)
    ρ_t     = π_θ(o_t | q, o_<t) / π_old(o_t | q, o_<t)
    L_clip  = min(ρ_t A_i, clip(ρ_t, 1 - ε, 1 + ε_high) A_i)
    D_KL    = exp(ref - logp) - (ref - logp) - 1                          (k3, per token)
    maximise  L_GRPO = L_clip - β D_KL, aggregated over tokens by ``loss_type``.
"""

from __future__ import annotations

import torch

from .losses import aggregate_loss, grpo_token_loss
from .rollout import completion_logprobs_entropy
from .trainer import RLTrainer


class GRPOTrainer(RLTrainer):
    algo = "grpo"
    hands_probes_hidden = True

    def micro_loss(self, exp, rows, normalizer):
        cfg = self.cfg
        batch = exp.rollout.select(rows)
        mask = batch.completion_mask
        logp, entropy, hidden = completion_logprobs_entropy(self.policy, batch, cfg.temperature,
                                                            output_hidden=self.probes.wants_hidden(rows))
        advantages = exp.advantages[rows].unsqueeze(1).expand_as(logp)
        logp_ref = exp.logp_ref[rows] if exp.logp_ref is not None else None
        if exp.logp_old_from_update:  # π_old is this very policy (one update per rollout): ρ = 1 exactly
            exp.logp_old[rows] = logp.detach() * mask
        per_token, stats = grpo_token_loss(logp, exp.logp_old[rows], logp_ref, advantages, cfg.beta,
                                           cfg.epsilon_low, cfg.epsilon_upper, cfg.use_bias_correction_kl)
        loss = reduce(per_token, mask, cfg, normalizer)
        # without a KL term the loss is the policy loss (0 · an overflowed KL would be NaN)
        policy_loss = reduce(per_token - cfg.beta * stats["kl_term"], mask, cfg, normalizer) if cfg.beta else loss
        self.probes.capture_rows(rows, hidden, logp=logp, ratio=stats["ratio"], clipped_low=stats["clipped_low"],
                                 clipped_high=stats["clipped_high"], kl=stats["kl"], advantage=advantages)
        out = token_stats(mask, loss, policy_loss, stats, entropy)
        if cfg.use_bias_correction_kl:  # the KL the loss used, as TRL logs it then
            out["sum:kl/ratio_weighted"] = (stats["kl_term"] * mask).sum()
        return loss, out


def reduce(per_token: torch.Tensor, mask: torch.Tensor, cfg, normalizer: dict) -> torch.Tensor:
    """Aggregate by loss_type. dapo divides by the step's share of the rollout's tokens already; every other type
    is weighted by this micro-batch's share of the step's rows, so that the step's loss does not
    depend on how its rows are split (grpo: the mean over the step's sequences; dr_grpo: sum over
    (the step's rows × max_completion_length); bnpo: each micro-batch's token mean, weighted by rows).
    With equal micro-batches the share is 1 / (number of micro-batches), TRL's accumulation."""
    loss = aggregate_loss(per_token, mask, cfg.loss_type, cfg.max_completion_length, normalizer["num_items_in_batch"])
    return loss if cfg.loss_type == "dapo" else loss * micro_share(mask, normalizer)


def micro_share(mask: torch.Tensor, normalizer: dict) -> float:
    """This micro-batch's rows over the optimizer step's rows."""
    return mask.shape[0] / normalizer["num_rows"]


def token_stats(mask, loss, policy_loss, stats, entropy) -> dict:
    """Sums over this micro-batch, as device scalars (read once per step by the trainer); the
    trainer divides the ``sum:`` ones by the step's token count."""
    m = mask.float()
    return {"loss": loss.detach(), "policy_loss": policy_loss.detach(), "num_tokens": m.sum(),
            "sum:kl": (stats["kl"].detach() * m).sum(), "sum:entropy": (entropy * m).sum(),
            "sum:clip_ratio/low_mean": (stats["clipped_low"].float() * m).sum(),
            "sum:clip_ratio/high_mean": (stats["clipped_high"].float() * m).sum(),
            "sum:ratio_mean": (stats["ratio"].detach() * m).sum()}
