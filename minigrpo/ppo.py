"""PPO for comparison: a learned critic, KL-shaped per-token rewards and GAE.

    r_t      = -kl_coef · (log π_old(o_t) - log π_ref(o_t))  (+ the verifier's score on the last token)
    δ_t      = r_t + γ V(s_{t+1}) - V(s_t);   A_t = Σ_l (γλ)^l δ_{t+l};   R_t = A_t + V(s_t)
    A_t      ← whiten(A_t) over the rollout's tokens
    L_clip   = min(ρ_t A_t, clip(ρ_t, 1 - ε, 1 + ε_high) A_t)
    L_V      = ½ max((V - R)², (V_old + clip(V - V_old, ±c) - R)²)
    minimise -L_clip + vf_coef · L_V   (the KL lives in the reward, not in the loss)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .grpo import micro_share, reduce, token_stats
from .losses import (clipped_surrogate, explained_variance, gae, k3_kl, masked_mean, masked_whiten,
                     ppo_token_rewards, value_loss)
from .rollout import Rollout, completion_hidden, completion_logprobs_entropy
from .trainer import RLTrainer


class ValueModel(nn.Module):
    """V(s_t) for every completion position: a backbone's last hidden state → linear head."""

    def __init__(self, causal_lm: nn.Module | None, hidden_size: int):
        super().__init__()
        self.lm = causal_lm  # None: shared trunk (hidden states come from the policy's forward)
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: Rollout, hidden: torch.Tensor | None = None) -> torch.Tensor:
        if hidden is None:
            hidden = completion_hidden(self.lm, batch)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()


class PPOTrainer(RLTrainer):
    algo = "ppo"
    hands_probes_hidden = True
    needs_logp_old_before_update = True

    def setup_algorithm(self) -> None:
        hidden = self.policy.config.hidden_size
        critic_lm = copy.deepcopy(self.policy) if self.cfg.critic == "separate" else None  # in the policy's mode
        self.value_model = ValueModel(critic_lm, hidden).to(self.device)
        self.extra_modules["value_model"] = self.value_model

    def _values(self, batch: Rollout, policy_hidden: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.critic == "shared":
            return self.value_model(batch, hidden=policy_hidden)
        return self.value_model(batch)

    @torch.no_grad()
    def prepare(self, exp) -> None:
        cfg, mask = self.cfg, exp.rollout.completion_mask
        values = []
        for start in range(0, len(exp.rollout), cfg.per_device_train_batch_size):
            batch = exp.rollout.select(list(range(start, min(start + cfg.per_device_train_batch_size, len(exp.rollout)))))
            hidden = completion_hidden(self.policy, batch) if cfg.critic == "shared" else None
            values.append(self._values(batch, hidden))
        exp.values = torch.cat(values) * mask
        logp_ref = exp.logp_ref if exp.logp_ref is not None else exp.logp_old
        exp.token_rewards = ppo_token_rewards(exp.rewards, exp.logp_old, logp_ref, mask, cfg.kl_coef)
        advantages, exp.returns = gae(exp.token_rewards, exp.values, mask, cfg.gamma, cfg.lam)
        exp.token_advantages = (masked_whiten(advantages, mask) if cfg.whiten_advantages else advantages) * mask
        exp.explained_variance = explained_variance(exp.values, exp.returns, mask)

    def sequence_advantages(self, exp) -> torch.Tensor:
        return masked_mean(exp.token_advantages, exp.rollout.completion_mask, dim=1)

    def micro_loss(self, exp, rows, normalizer):
        cfg = self.cfg
        batch = exp.rollout.select(rows)
        mask = batch.completion_mask
        logp, entropy, hidden = completion_logprobs_entropy(self.policy, batch, cfg.temperature,
                                                            output_hidden=cfg.critic == "shared" or
                                                            self.probes.wants_hidden(rows))
        advantages = exp.token_advantages[rows]
        per_token, ratio, clipped_low, clipped_high = clipped_surrogate(
            logp, exp.logp_old[rows], advantages, cfg.epsilon_low, cfg.epsilon_upper)
        policy_loss = reduce(per_token, mask, cfg, normalizer)
        values = self._values(batch, hidden if cfg.critic == "shared" else None)
        vf_loss, vf_clipfrac = value_loss(values, exp.values[rows], exp.returns[rows], mask, cfg.cliprange_value)
        share = micro_share(mask, normalizer)
        vf_loss = vf_loss * share
        loss = policy_loss + cfg.vf_coef * vf_loss
        logp_ref = exp.logp_ref[rows] if exp.logp_ref is not None else exp.logp_old[rows]
        kl = k3_kl(logp.detach(), logp_ref)
        stats = {"ratio": ratio.detach(), "clipped_low": clipped_low, "clipped_high": clipped_high, "kl": kl}
        self.probes.capture_rows(rows, hidden, logp=logp, ratio=ratio, clipped_low=clipped_low,
                                 clipped_high=clipped_high, kl=kl, advantage=advantages,
                                 values=exp.values[rows], returns=exp.returns[rows])
        out = token_stats(mask, loss, policy_loss, stats, entropy)
        out.update({"value_loss": vf_loss.detach(), "vf_clipfrac": vf_clipfrac.detach() * share,
                    "explained_variance": exp.explained_variance * share})
        return loss, out
