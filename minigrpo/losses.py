"""The formulas of GRPO and PPO, as pure functions on torch tensors.

Shapes: N sequences (rows), T completion positions, V vocabulary. ``mask`` is (N, T),
1/True on completion tokens that count, 0/False on padding. Everything here is exact
math with no framework state; the trainer decides what to detach and when to step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


# ----------------------------------------------------------------------------- masks
def masked_mean(x: Tensor, mask: Tensor, dim=None) -> Tensor:
    """sum(x * mask) / sum(mask), over everything (dim=None) or along ``dim``.

    An all-zero mask gives 0/0 = nan (on purpose: an empty mean has no value).
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps), mean and var over masked entries.

    var is the POPULATION variance (divide by sum(mask), no Bessel correction), so a
    whitened masked set has exactly mean 0 and variance var/(var+eps) ~ 1.
    shift_mean=False adds the mean back (scale only). Masked-out entries are
    transformed the same way but carry no meaning.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


# ----------------------------------------------------------------------------- GRPO
def _check_groups(rewards: Tensor, num_generations: int) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 (a group needs a baseline), got {num_generations}")
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"len(rewards)={rewards.numel()} is not a multiple of num_generations={num_generations}"
        )


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.float()


def group_stats(rewards: Tensor, num_generations: int) -> tuple[Tensor, Tensor]:
    """Per-prompt mean and UNBIASED std (ddof=1) of consecutive blocks of G rewards: (P,), (P,).

    A group whose rewards are all equal has std exactly 0 (float sums can leave a residue such
    as 1.3e-7 for six rewards of 1.2, which would hide the group from ``std == 0`` counts).
    """
    _check_groups(rewards, num_generations)
    grouped = _as_float(rewards).view(-1, num_generations)  # (P, G)
    std = grouped.std(dim=1)  # torch.std is unbiased by default
    return grouped.mean(dim=1), torch.where(constant_groups(grouped), torch.zeros_like(std), std)


def constant_groups(grouped: Tensor) -> Tensor:
    """(P,) True where every reward of a (P, G) group equals its first."""
    return (grouped == grouped[:, :1]).all(dim=1)


def group_advantages(rewards: Tensor, num_generations: int, scale_rewards: str = "group", eps: float = 1e-4,
                     batch_rewards: Tensor | None = None) -> Tensor:
    """A_i = r_i - mean_group(r), optionally divided by (std + eps).

    scale_rewards: "group" -> std of the prompt's group, "batch" -> std of all N rewards (of
    ``batch_rewards`` when given: every rank's rewards in a data-parallel run, as TRL gathers
    them), "none" -> no division. std is unbiased (ddof=1) as in TRL's GRPOTrainer; eps is added
    to the std (not the variance). A group whose rewards are all equal gets advantages of
    exactly 0 (no float residue from r - mean).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    mean, std = group_stats(rewards, num_generations)
    grouped = _as_float(rewards).view(-1, num_generations)
    advantages = grouped - mean[:, None]
    if scale_rewards == "group":
        advantages = advantages / (std[:, None] + eps)
    elif scale_rewards == "batch":
        batch = _as_float(rewards if batch_rewards is None else batch_rewards)
        advantages = advantages / (batch.std() + eps)
    advantages = torch.where(constant_groups(grouped)[:, None], torch.zeros_like(advantages), advantages)
    return advantages.reshape(-1)


def k3_kl(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref), per token: exp(d) - d - 1 with d = logp_ref - logp.

    Unbiased under samples from pi, and >= 0 always (e^d >= 1 + d). Computed as expm1(d) - d:
    the same function, without the cancellation of exp(d) - 1 that makes it come out slightly
    negative in float32 for small d (a million of ten million draws at |d| ~ 1e-4; none this way).
    """
    d = logp_ref - logp
    return torch.expm1(d) - d


def clipped_surrogate(logp, logp_old, advantages, epsilon_low, epsilon_high):
    """PPO clipped objective, negated into a per-token loss.

    ratio = exp(logp - logp_old)
    per_token_loss = -min(ratio * A, clamp(ratio, 1 - eps_low, 1 + eps_high) * A)
    clipped_low = (ratio < 1 - eps_low) & (A < 0);  clipped_high = (ratio > 1 + eps_high) & (A > 0)
    (TRL's counting: a token is "clipped" exactly when its gradient is zeroed.)
    advantages broadcast to logp: (N,) is read as (N, 1).
    Returns (per_token_loss, ratio, clipped_low, clipped_high), all shaped like logp.
    """
    if advantages.dim() == 1 and logp.dim() == 2:
        advantages = advantages[:, None]
    ratio = torch.exp(logp - logp_old)
    surr1 = ratio * advantages
    surr2 = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * advantages
    per_token_loss = -torch.min(surr1, surr2)
    clipped_low = (ratio < 1 - epsilon_low) & (advantages < 0)
    clipped_high = (ratio > 1 + epsilon_high) & (advantages > 0)
    return per_token_loss, ratio, clipped_low, clipped_high


def aggregate_loss(per_token_loss: Tensor, mask: Tensor, loss_type: str,
                   max_completion_length=None, num_items_in_batch=None) -> Tensor:
    """Reduce a (N, T) per-token loss to a scalar.

    grpo:    mean_i [ sum_t l_it m_it / sum_t m_it ]        (per-sequence mean, then mean)
    bnpo:    sum l*m / sum m                               (tokens of this micro-batch)
    dr_grpo: sum l*m / (N * max_completion_length)          (constant normaliser)
    dapo:    sum l*m / num_items_in_batch                   (the trainer passes TRL's: the active
             tokens of the whole rollout / its optimizer steps per pass; None -> sum m)
    Token counts are clamped to >= 1 so empty rows/batches give 0, not nan.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    mask = mask.to(per_token_loss.dtype)
    total = (per_token_loss * mask).sum()
    if loss_type == "grpo":
        per_seq = (per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean()
    if loss_type == "bnpo":
        return total / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length (its normaliser is N * max_completion_length)")
        return total / (per_token_loss.size(0) * max_completion_length)
    denom = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=total.dtype)
    return total / denom.clamp(min=1.0)


def grpo_token_loss(logp, logp_old, logp_ref, advantages, beta, epsilon_low, epsilon_high,
                    bias_correction_kl: bool = False):
    """GRPO per-token loss: -min(ratio A, clip(ratio) A) + beta * k3_kl(logp, logp_ref).

    i.e. maximise L_clip - beta * D_KL. With ``bias_correction_kl`` the penalty is
    beta * ratio * k3 (ratio with its gradient: TRL's ``use_bias_correction_kl``, the unbiased
    reverse-KL gradient; it differs from plain k3's even where ratio == 1). With beta == 0 no KL
    term is added and logp_ref may be None; if logp_ref is given the KL is still computed for the stats.
    stats (detached, per token): ratio, clipped_low, clipped_high, kl (k3; zeros if no ref) and
    kl_term, the KL factor the loss used (kl, or ratio * kl).
    """
    if beta != 0 and logp_ref is None:
        raise ValueError(f"beta={beta} != 0 needs logp_ref (the reference model's log-probs)")
    per_token_loss, ratio, clipped_low, clipped_high = clipped_surrogate(
        logp, logp_old, advantages, epsilon_low, epsilon_high)
    kl = torch.zeros_like(logp) if logp_ref is None else k3_kl(logp, logp_ref)
    kl_term = ratio * kl if bias_correction_kl else kl
    if beta != 0:
        per_token_loss = per_token_loss + beta * kl_term
    stats = {"ratio": ratio.detach(), "clipped_low": clipped_low,
             "clipped_high": clipped_high, "kl": kl.detach(), "kl_term": kl_term.detach()}
    return per_token_loss, stats


# ----------------------------------------------------------------------------- logits
def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = logsumexp(l) - sum_v softmax(l)_v * l_v, per position, in float32.

    -inf logits (masked vocab) contribute 0 (their probability is exactly 0).
    """
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    finite = torch.where(torch.isinf(logits), torch.zeros_like(logits), logits)
    return torch.logsumexp(logits, dim=-1) - (p * finite).sum(-1)


def logprobs_from_logits(logits: Tensor, token_ids: Tensor) -> Tensor:
    """log softmax(l)[token] = l[token] - logsumexp(l), float32: (N,T,V), (N,T) -> (N,T).

    Same value as log_softmax(...).gather(...) without materialising a (N,T,V) log_softmax.
    """
    logits = logits.float()
    picked = logits.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def head_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, token_ids: Tensor, temperature: float,
                  rows: int, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """log π(token) (and H) at M positions from their last hidden states, ``rows`` positions at a time:
    z = (hidden · Wᵀ + b) / τ in float32, never more than (rows, V) of it at once. No gradient.

    hidden (M, H), weight (V, H), token_ids (M,) -> logp (M,), entropy (M,) or None, float32.
    """
    m = hidden.shape[0]
    logp = torch.empty(m, dtype=torch.float32, device=hidden.device)
    entropy = torch.empty_like(logp) if with_entropy else None
    for start in range(0, m, rows):
        z = F.linear(hidden[start:start + rows], weight, bias).float().div_(temperature)
        tokens = token_ids[start:start + rows]
        if with_entropy:
            logp[start:start + rows], entropy[start:start + rows] = _logp_and_entropy(z, tokens)
        else:
            logp[start:start + rows] = logprobs_from_logits(z, tokens)
    return logp, entropy


def _logp_and_entropy(z: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor]:
    """log π(token) and H of a chunk of finite float32 logits z (rows, V) (an output layer's, so
    no -inf): log p = log_softmax(z), H = -Σ_v p_v log p_v. The values of ``logprobs_from_logits``
    and ``entropy_from_logits``, with about half their passes over (rows, V) floats and buffers."""
    log_p = torch.log_softmax(z, dim=-1)
    picked = log_p.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
    return picked, -log_p.exp().mul_(log_p).sum(-1)


class ChunkedHeadLogprobs(torch.autograd.Function):
    """``head_logprobs`` with a gradient for log π, recomputing each chunk's logits in the backward
    pass instead of keeping (M, V) of them: with g = ∂L/∂logp and p = softmax(z),

        ∂L/∂z = g · (onehot(token) - p),   ∂L/∂logits = ∂L/∂z / τ   (cast to the weights' dtype, as
        autograd casts the gradient of ``.float()``),   ∂L/∂hidden = ∂L/∂logits · W,
        ∂L/∂W = Σ_chunks (∂L/∂logits)ᵀ · hidden (summed in float32),   ∂L/∂b = Σ ∂L/∂logits.

    The entropy comes out detached (a statistic, not part of the loss).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, token_ids, temperature, rows):
        logp, entropy = head_logprobs(hidden, weight, bias, token_ids, temperature, rows, with_entropy=True)
        ctx.save_for_backward(hidden, weight, bias, token_ids)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, bias, token_ids = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        for start in range(0, hidden.shape[0], ctx.rows):
            h = hidden[start:start + ctx.rows]
            g_tau = grad_logp[start:start + ctx.rows].float().unsqueeze(-1) / ctx.temperature  # g / τ per row
            z = F.linear(h, weight, bias).float().div_(ctx.temperature)
            dlogits = torch.softmax(z, dim=-1).mul_(-g_tau)
            dlogits.scatter_add_(-1, token_ids[start:start + ctx.rows].long().unsqueeze(-1), g_tau)
            dlogits = dlogits.to(weight.dtype)
            if need_hidden:
                grad_hidden[start:start + ctx.rows] = dlogits @ weight
            if need_weight:
                grad_weight += (dlogits.t() @ h).float()
            if need_bias:
                grad_bias += dlogits.float().sum(0)
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


# ----------------------------------------------------------------------------- PPO
def ppo_token_rewards(scores: Tensor, logp: Tensor, logp_ref: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """KL-shaped rewards: r_t = -kl_coef * (logp_t - logp_ref_t) on masked tokens,
    plus scores[i] at the LAST masked token of row i. (N, T); 0 off the mask.
    A row with no masked token gets no reward at all.
    """
    mask = mask.bool()
    rewards = torch.where(mask, -kl_coef * (logp - logp_ref), torch.zeros_like(logp))
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(dim=1).values  # (N,), -1 for empty rows
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += scores.to(rewards.dtype)[rows]
    return rewards


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float):
    """Generalised Advantage Estimation along the masked positions of each row.

    delta_t = r_t + gamma * V_{t+1} - V_t ;  A_t = delta_t + gamma * lam * A_{t+1}
    where t+1 is the next MASKED position of the row, and V, A after the row's last
    masked token are 0 (episode ends). returns = A + V. Both 0 off the mask. Values
    at masked-out positions are never read (garbage/nan there is harmless). No grad.
    """
    mask = mask.bool()
    zeros = torch.zeros_like(values[:, 0])
    next_value, next_adv = zeros, zeros
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m, adv_t, zeros)
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv_t, next_adv)
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


def value_loss(values, old_values, returns, mask, clip_range_value):
    """Clipped value loss (PPO2 / TRL):

    v_clipped = V_old + clamp(V - V_old, -c, c)
    loss = 0.5 * masked_mean(max((V - R)^2, (v_clipped - R)^2))
    vf_clipfrac = masked_mean[(v_clipped - R)^2 > (V - R)^2]   (detached)
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(err_unclipped, err_clipped), mask)
    vf_clipfrac = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask).detach()
    return loss, vf_clipfrac


# Returns that differ only by float32 rounding do not vary: the trainer's returns are float32 sums
# (R = A + V, A a GAE sum over the completion, KL-penalty rewards on every token), so each carries a
# residue of a few eps times the size of the terms summed, i.e. of max|R| + max|V| (|A| <= |R| + |V|).
# max|R| alone is no scale: returns that are all ~0 have std(R) ~ max|R|. Up to a few hundred terms
# leave a residue of ~sqrt(n) * eps * scale, so k = 100 covers them, while any real spread above
# 100 * eps = 1.2e-5 of the scale still counts as variance (returns 1e-3 apart with V ~ 1: 30x above).
EV_ROUNDING_K = 100.0


def returns_vary(returns: Tensor, values: Tensor) -> bool:
    """Whether std(R) (population) exceeds float32 rounding of the terms R is summed from (see above)."""
    if not returns.numel():
        return False
    scale = returns.abs().max() + values.abs().max()
    return bool(returns.std(unbiased=False) > EV_ROUNDING_K * torch.finfo(torch.float32).eps * scale)


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[R - V] / Var[R] over masked entries (population variances, float64).

    1 = perfect value function, 0 = no better than a constant, < 0 worse. nan (recorded as null)
    when the returns do not vary: Var[R] == 0, or only by float32 rounding (:func:`returns_vary`),
    where the ratio would be rounding noise (e.g. -3e14 for returns that are all ~0).
    """
    m = mask.bool()
    r, v = returns[m].double(), values[m].double()
    if not returns_vary(r, v):
        return float("nan")
    return float(1 - (r - v).var(unbiased=False) / r.var(unbiased=False))
