"""Tests of minigrpo.losses against hand-computed literals and independent re-derivations."""

import math

import numpy as np
import pytest
import torch

from minigrpo import losses as L

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- masks
def test_masked_mean_ignores_padding():
    x, m = t([[1.0, 2.0, 3.0, 100.0], [4.0, -50.0, -50.0, -50.0]]), t([[1, 1, 1, 0], [1, 0, 0, 0]])
    close(L.masked_mean(x, m), (1 + 2 + 3 + 4) / 4)  # = 2.5
    close(L.masked_mean(x, m.bool(), dim=1), [2.0, 4.0])  # (1+2+3)/3, 4/1


def test_masked_whiten_population_variance():
    x, m = t([1.0, 2.0, 3.0, 99.0]), t([1, 1, 1, 0])
    # mean 2, population var = (1+0+1)/3 = 2/3 -> (x-2)/sqrt(2/3) = [-1.2247, 0, 1.2247]
    w = L.masked_whiten(x, m)
    close(w[:3], [-1 / math.sqrt(2 / 3), 0.0, 1 / math.sqrt(2 / 3)])
    close(L.masked_whiten(x, m, shift_mean=False)[:3], w[:3] + 2.0)


# ----------------------------------------------------------------------------- group advantages
REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 0.0, 4.0]  # 3 prompts, G = 3


def test_group_stats_hand():
    mean, std = L.group_stats(t(REWARDS), 3)
    # [1,0,0]: mean 1/3, unbiased var = (4/9+1/9+1/9)/2 = 1/3 ; [1,1,1]: 1, 0 ; [2,0,4]: mean 2, var (0+4+4)/2 = 4
    close(mean, [1 / 3, 1.0, 2.0])
    close(std, [math.sqrt(1 / 3), 0.0, 2.0])


def test_group_advantages_group_scaling_hand():
    a = L.group_advantages(t(REWARDS), 3, "group", eps=1e-4)
    s1 = math.sqrt(1 / 3) + 1e-4  # std of [1,0,0] + eps
    close(a, [(2 / 3) / s1, (-1 / 3) / s1, (-1 / 3) / s1, 0, 0, 0, 0 / 2.0001, -2 / 2.0001, 2 / 2.0001])


def test_group_advantages_batch_scaling_hand():
    a = L.group_advantages(t(REWARDS), 3, "batch", eps=1e-4)
    # all 9: mean 10/9, sum r^2 = 24, unbiased var = (24 - 9*(10/9)^2)/8 = (116/9)/8 = 1.6111..
    sb = math.sqrt(116 / 72) + 1e-4
    close(a, [v / sb for v in [2 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0, -2, 2]])


def test_group_advantages_no_scaling_hand():
    a = L.group_advantages(t(REWARDS), 3, "none")
    close(a, [2 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0, -2, 2])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_std_group_gives_exact_zeros(scale):
    # 0.1 is not representable: mean of three float32 0.1 need not equal 0.1 bit-for-bit
    r = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.7, 0.2], dtype=torch.float32)
    a = L.group_advantages(r, 3, scale)
    assert torch.equal(a[:3], torch.zeros(3))
    assert a[3:].abs().sum() > 0
    all_same = L.group_advantages(torch.full((4,), 0.7), 2, scale)
    assert torch.equal(all_same, torch.zeros(4)) and not torch.isnan(all_same).any()


def test_a_group_of_equal_rewards_has_std_exactly_zero():
    """Six float32 rewards of 1.2 have a torch.std of about 1.3e-7 (the mean is not exactly 1.2):
    the group must still count as zero-std (frac_reward_zero_std, the trace's group std)."""
    from minigrpo.experience import completion_stats

    r = torch.full((6,), 1.2, dtype=torch.float32)
    assert r.view(1, 6).std(dim=1).item() != 0.0  # the float residue this test is about
    _, std = L.group_stats(r, 6)
    assert std.tolist() == [0.0]
    mixed = torch.tensor([1.2] * 6 + [0.0, 1.2, 0.2, 1.2, 1.2, 1.2])
    _, std = L.group_stats(mixed, 6)
    assert std[0].item() == 0.0 and std[1].item() > 0.4
    flags = torch.zeros(12, dtype=torch.bool)
    stats = completion_stats(6, mixed, flags, flags, flags, torch.ones(12))
    assert stats["frac_reward_zero_std"] == 0.5


def test_batch_scaling_with_every_ranks_rewards():
    r = t([1.0, 0.0, 0.0, 1.0])
    everyone = t([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 0.0, 3.0])  # this rank's rewards and another rank's
    sb = float(np.std([1, 0, 0, 1, 5, 5, 0, 3], ddof=1)) + 1e-4
    close(L.group_advantages(r, 2, "batch", eps=1e-4, batch_rewards=everyone), [0.5 / sb, -0.5 / sb, -0.5 / sb, 0.5 / sb])
    close(L.group_advantages(r, 2, "group", eps=1e-4, batch_rewards=everyone),
          L.group_advantages(r, 2, "group", eps=1e-4))  # only "batch" reads them


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_vs_numpy(scale):
    rng = np.random.default_rng(0)
    G, P = 4, 5
    r = rng.normal(size=P * G)
    got = L.group_advantages(torch.from_numpy(r), G, scale, eps=1e-4).numpy()
    want = []
    for p in range(P):
        block = r[p * G:(p + 1) * G]
        denom = {"group": np.std(block, ddof=1) + 1e-4, "batch": np.std(r, ddof=1) + 1e-4, "none": 1.0}[scale]
        want += [(x - block.mean()) / denom for x in block]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_group_advantages_int_rewards():
    close(L.group_advantages(torch.tensor([1, 0, 0, 1]), 2, "none"), [0.5, -0.5, -0.5, 0.5])


def test_group_advantages_bad_inputs():
    with pytest.raises(ValueError, match="multiple of num_generations"):
        L.group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=">= 2"):
        L.group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="group.*batch.*none"):
        L.group_advantages(torch.zeros(4), 2, scale_rewards="std")
    with pytest.raises(ValueError, match="multiple"):
        L.group_stats(torch.zeros(7), 3)


# ----------------------------------------------------------------------------- KL
def test_k3_kl_values():
    close(L.k3_kl(t([-1.3, 0.0]), t([-1.3, 0.0])), [0.0, 0.0])
    # logp = log .5, ref = log .25: d = log .5 ; e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    close(L.k3_kl(t(math.log(0.5)), t(math.log(0.25))), 0.5 + math.log(2) - 1)
    g = torch.Generator().manual_seed(0)
    kl = L.k3_kl(torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3)
    assert (kl >= 0).all()


# ----------------------------------------------------------------------------- clipped surrogate
# eps_low = 0.2, eps_high = 0.28 -> band [0.8, 1.28]; logp_old = 0 so ratio = exp(logp)
CASES = [  # ratio, A, loss, d loss / d logp, clipped_low, clipped_high
    (1.5, +1.0, -1.28, 0.0, False, True),   # -min(1.5, 1.28): clipped above, no gradient
    (1.5, -1.0, +1.5, +1.5, False, False),  # -min(-1.5, -1.28) = 1.5: unclipped, grad -A*ratio
    (0.5, +1.0, -0.5, -0.5, False, False),  # -min(0.5, 0.8) = -0.5: unclipped
    (0.5, -1.0, +0.8, 0.0, True, False),    # -min(-0.5, -0.8) = 0.8: clipped below, no gradient
    (1.1, +2.0, -2.2, -2.2, False, False),  # inside the band
    (0.9, -2.0, +1.8, +1.8, False, False),  # inside the band
]


def test_clipped_surrogate_hand_values_and_gradients():
    ratio_in, A = t([c[0] for c in CASES]), t([c[1] for c in CASES])
    logp = torch.log(ratio_in).requires_grad_()
    loss, ratio, lo, hi = L.clipped_surrogate(logp, torch.zeros_like(ratio_in), A, 0.2, 0.28)
    loss.sum().backward()
    close(ratio, ratio_in)
    close(loss, [c[2] for c in CASES])
    close(logp.grad, [c[3] for c in CASES])
    assert lo.tolist() == [c[4] for c in CASES]
    assert hi.tolist() == [c[5] for c in CASES]
    # the flags mark exactly the zero-gradient tokens
    assert ((logp.grad == 0) == (lo | hi)).all()


def test_clipped_surrogate_broadcasts_sequence_advantages():
    logp = torch.log(t([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]]))
    A = t([[1.0], [-1.0]])  # (N,1)
    loss, _, lo, hi = L.clipped_surrogate(logp, torch.zeros(2, 3, dtype=D), A, 0.2, 0.2)
    close(loss, [[-1.2, -1.0, -0.5], [1.5, 1.0, 0.8]])
    assert hi.tolist() == [[True, False, False], [False, False, False]]
    assert lo.tolist() == [[False, False, False], [False, False, True]]
    loss1d, *_ = L.clipped_surrogate(logp, torch.zeros(2, 3, dtype=D), t([1.0, -1.0]), 0.2, 0.2)
    close(loss1d, loss)


# ----------------------------------------------------------------------------- aggregation
PTL = t([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])  # 100s sit on padding
MASK = t([[1, 1, 1], [1, 0, 0]])


def test_aggregate_grpo():
    close(L.aggregate_loss(PTL, MASK, "grpo"), 3.0)  # row means (1+2+3)/3 = 2 and 4/1 = 4 -> 3


def test_aggregate_bnpo():
    close(L.aggregate_loss(PTL, MASK.bool(), "bnpo"), 2.5)  # (1+2+3+4)/4


def test_aggregate_dr_grpo():
    close(L.aggregate_loss(PTL, MASK, "dr_grpo", max_completion_length=5), 1.0)  # 10/(2*5)
    with pytest.raises(ValueError, match="max_completion_length"):
        L.aggregate_loss(PTL, MASK, "dr_grpo")


def test_aggregate_dapo():
    close(L.aggregate_loss(PTL, MASK, "dapo"), 2.5)  # None -> 10/mask.sum() = 10/4
    close(L.aggregate_loss(PTL, MASK, "dapo", num_items_in_batch=8), 1.25)  # 10/8
    close(L.aggregate_loss(PTL, MASK, "dapo", num_items_in_batch=torch.tensor(8)), 1.25)


def test_aggregate_bad_loss_type():
    with pytest.raises(ValueError, match="grpo.*bnpo.*dr_grpo.*dapo"):
        L.aggregate_loss(PTL, MASK, "mean")


def test_grpo_token_loss():
    logp, old, ref = t([[-1.0, -2.0]]), t([[-1.0, -2.5]]), t([[-1.5, -2.0]])
    A = t([[1.0]])
    clip, *_ = L.clipped_surrogate(logp, old, A, 0.2, 0.2)
    ptl, stats = L.grpo_token_loss(logp, old, ref, A, 0.1, 0.2, 0.2)
    # ratio = [1, e^0.5=1.6487 -> clipped to 1.2]; k3 at d=-0.5: e^-0.5 + 0.5 - 1 = 0.106531
    close(clip, [[-1.0, -1.2]])
    close(stats["kl"], [[math.exp(-0.5) - 0.5, 0.0]])
    close(ptl, [[-1.0 + 0.1 * (math.exp(-0.5) - 0.5), -1.2]])
    assert stats["clipped_high"].tolist() == [[False, True]]
    close(stats["ratio"], [[1.0, math.exp(0.5)]])
    ptl0, stats0 = L.grpo_token_loss(logp, old, None, A, 0.0, 0.2, 0.2)
    close(ptl0, clip)
    assert torch.equal(stats0["kl"], torch.zeros_like(logp))
    with pytest.raises(ValueError, match="logp_ref"):
        L.grpo_token_loss(logp, old, None, A, 0.1, 0.2, 0.2)


def test_bias_corrected_kl_by_hand_and_against_trls_formula():
    """use_bias_correction_kl: the penalty is β·ρ·k3 with ρ's gradient. By hand at one token, where
    ρ = 1 (on-policy): d(ρ·k3)/dlogp = k3 + dk3/dlogp, with dk3/dlogp = 1 − e^(ref − logp); plain
    k3's gradient lacks the k3 term. Then on random tokens against TRL 1.16's lines
    (per_token_kl * coef_1, coef_1 = exp(logp − old_logp))."""
    logp = t([[-1.0]]).requires_grad_()
    ref = t([[-1.5]])
    per_token, stats = L.grpo_token_loss(logp, logp.detach(), ref, t([[0.0]]), 1.0, 0.2, 0.2, bias_correction_kl=True)
    per_token.sum().backward()
    k3 = math.exp(-0.5) + 0.5 - 1
    close(stats["kl_term"], [[k3]])
    close(logp.grad, [[k3 + 1 - math.exp(-0.5)]])
    plain = t([[-1.0]]).requires_grad_()
    L.grpo_token_loss(plain, plain.detach(), ref, t([[0.0]]), 1.0, 0.2, 0.2)[0].sum().backward()
    close(plain.grad, [[1 - math.exp(-0.5)]])

    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=gen) * 3).requires_grad_()
    old = logp.detach() + 0.2 * torch.randn(3, 5, generator=gen)
    ref = logp.detach() + 0.5 * torch.randn(3, 5, generator=gen)
    A = torch.randn(3, 1, generator=gen)
    ours = L.grpo_token_loss(logp, old, ref, A, 0.04, 0.2, 0.28, bias_correction_kl=True)[0]
    (g_ours,) = torch.autograd.grad(ours.sum(), logp)
    coef_1 = torch.exp(logp - old)  # TRL: per_token_loss = -min(...) + beta * per_token_kl * coef_1
    per_token_kl = torch.exp(ref - logp) - (ref - logp) - 1
    theirs = -torch.min(coef_1 * A, torch.clamp(coef_1, 1 - 0.2, 1 + 0.28) * A) + 0.04 * per_token_kl * coef_1
    (g_theirs,) = torch.autograd.grad(theirs.sum(), logp)
    torch.testing.assert_close(ours, theirs.detach())
    torch.testing.assert_close(g_ours, g_theirs)


def test_adam_betas_outside_0_1_are_one_line():
    from minigrpo.config import ConfigError, build_config

    for name, value in (("adam_beta1", -0.1), ("adam_beta2", 1.0), ("adam_beta2", 1.5)):
        with pytest.raises(ConfigError, match=f"invalid --{name.replace('_', '-')}: .* must be in \\[0, 1\\)"):
            build_config("tiny", overrides={name: value})
    assert build_config("tiny", overrides={"adam_beta2": 0.0}).adam_beta2 == 0.0


# ----------------------------------------------------------------------------- logits
def test_entropy_uniform_and_manual():
    close(L.entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))
    close(L.entropy_from_logits(t([0.0, 0.0, -math.inf])), math.log(2))  # masked vocab entry
    logits = torch.randn(4, 5, 11) * 5
    p = torch.softmax(logits.double(), -1)
    close(L.entropy_from_logits(logits), -(p * p.log()).sum(-1), tol=1e-5)
    big = L.entropy_from_logits(t([[1e4, 0.0, 0.0]], torch.float32))
    assert torch.isfinite(big).all() and big.abs().item() < 1e-6


def test_logprobs_from_logits_matches_log_softmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 13, generator=g) * 4
    ids = torch.randint(0, 13, (3, 4), generator=g)
    want = torch.log_softmax(logits.double(), -1).gather(-1, ids[..., None]).squeeze(-1)
    got = L.logprobs_from_logits(logits, ids)
    assert got.shape == (3, 4) and got.dtype == torch.float32
    close(got, want, tol=1e-5)
    got_bf16 = L.logprobs_from_logits(logits.bfloat16(), ids)
    assert got_bf16.dtype == torch.float32


# ----------------------------------------------------------------------------- PPO
def test_ppo_token_rewards_hand():
    scores = t([1.0, -2.0])
    logp = t([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = t([[-1.5, -2.0, -2.0], [-1.0, -0.5, -1.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])
    r = L.ppo_token_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # row 0: -0.1*(0.5, 0, -1) = (-0.05, 0, 0.1), +1 at t=2 ; row 1: -0.1*(0, -0.5) = (0, 0.05), -2 at t=1
    close(r, [[-0.05, 0.0, 1.1], [0.0, -1.95, 0.0]])


def test_gae_hand_three_tokens():
    # row 0: r = [0,0,1], V = [.5,.6,.7], gamma .9, lam .5 (4th position is padding with garbage)
    #   delta2 = 1 - .7 = .3 ; delta1 = .9*.7 - .6 = .03 ; delta0 = .9*.6 - .5 = .04
    #   A2 = .3 ; A1 = .03 + .45*.3 = .165 ; A0 = .04 + .45*.165 = .11425 ; R = A + V
    # row 1: one token, r = 2, V = 1 -> A = 1, R = 2
    rewards = t([[0.0, 0.0, 1.0, 7.0], [2.0, 3.0, 3.0, 3.0]])
    values = t([[0.5, 0.6, 0.7, 9.0], [1.0, 5.0, math.nan, 5.0]])
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]])
    adv, ret = L.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    close(adv, [[0.11425, 0.165, 0.3, 0.0], [1.0, 0.0, 0.0, 0.0]])
    close(ret, [[0.61425, 0.765, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]])


def _slow_gae(rewards, values, mask, gamma, lam):
    adv = np.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        idx = [j for j in range(rewards.shape[1]) if mask[i, j]]
        a_next, v_next = 0.0, 0.0
        for j in reversed(idx):
            delta = rewards[i, j] + gamma * v_next - values[i, j]
            a_next = delta + gamma * lam * a_next
            v_next = values[i, j]
            adv[i, j] = a_next
    return adv, (adv + values) * mask


def test_gae_vs_slow_loop_with_padding():
    rng = np.random.default_rng(3)
    N, T = 6, 9
    rewards, values = rng.normal(size=(N, T)), rng.normal(size=(N, T))
    lengths = [9, 5, 1, 3, 7, 2]
    mask = np.array([[1.0 if j < n else 0.0 for j in range(T)] for n in lengths])
    mask[5] = np.roll(mask[5], 4)  # one left-padded row too
    adv, ret = L.gae(torch.from_numpy(rewards), torch.from_numpy(values), torch.from_numpy(mask), 0.97, 0.9)
    want_adv, want_ret = _slow_gae(rewards, values, mask, 0.97, 0.9)
    np.testing.assert_allclose(adv.numpy(), want_adv, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), want_ret, atol=1e-12)


def test_value_loss_hand():
    values, old = t([1.0, 2.0, 1.0, 50.0]), t([0.5, 2.0, 0.0, 0.0])
    returns, mask = t([0.0, 3.0, 2.0, 0.0]), t([1, 1, 1, 0])
    loss, frac = L.value_loss(values, old, returns, mask, clip_range_value=0.2)
    # pos0: v_clip = .5+.2 = .7 : (1-0)^2 = 1 vs .49 -> 1, not clipped
    # pos1: v_clip = 2 : 1 vs 1 -> 1, not clipped (strict >)
    # pos2: v_clip = 0+.2 = .2 : (1-2)^2 = 1 vs (.2-2)^2 = 3.24 -> 3.24, clipped
    close(loss, 0.5 * (1 + 1 + 3.24) / 3)
    close(frac, 1 / 3)


def test_value_loss_gradient_zero_when_clipped():
    values = t([1.0, 0.1]).requires_grad_()
    loss, _ = L.value_loss(values, t([0.0, 0.0]), t([2.0, 2.0]), t([1, 1]), 0.2)
    loss.backward()
    # pos0 clipped (max picks the clipped term, constant in V) ; pos1 inside: d/dV 0.5*(V-2)^2/2 = (0.1-2)/2
    close(values.grad, [0.0, -0.95])


def test_explained_variance():
    # R = [1,2,3], V = [1,2,2]: Var[R-V] = Var[0,0,1] = 2/9, Var[R] = 2/3 -> 1 - 1/3
    ev = L.explained_variance(t([1.0, 2.0, 2.0, 9.0]), t([1.0, 2.0, 3.0, -9.0]), t([1, 1, 1, 0]))
    assert isinstance(ev, float) and ev == pytest.approx(2 / 3)
    assert math.isnan(L.explained_variance(t([1.0, 2.0]), t([3.0, 3.0]), t([1, 1])))


def hand_ev(values, returns) -> float:
    r, v = np.asarray(returns, np.float64), np.asarray(values, np.float64)
    return float(1 - np.var(r - v) / np.var(r))


def test_explained_variance_is_nan_when_returns_vary_only_by_float32_rounding():
    """R = A + V with A = R' - V in float32: R' constant (0.1) or ~0 leaves a rounding residue in R
    (Var[R] > 0) that the plain formula turns into a huge negative number; it is nan instead."""
    values = torch.rand(4, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    mask = torch.ones(4, 64)
    constant = (0.1 - values) + values
    near_zero = ((values + 1) - 1) - values  # every return 0 up to ~1e-8
    for returns in (constant, near_zero):
        assert returns.double().var() > 0  # the residue is there
        assert hand_ev(values, returns) < -1e6  # and the plain formula makes noise of it
        assert math.isnan(L.explained_variance(values, returns, mask))
    assert near_zero.abs().max() < 1e-7
    assert math.isnan(L.explained_variance(t([1.0, 2.0]), t([0.0, 0.0]), t([1, 1])))
    assert math.isnan(L.explained_variance(t([1.0, 2.0]), t([5.0, 5.0]), t([0, 0])))  # nothing masked in


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_explained_variance_of_a_small_real_spread_is_the_formula(dtype):
    values, returns = t([0.9, 1.0, 1.1], dtype), t([1.000, 1.001, 1.002], dtype)
    ev = L.explained_variance(values, returns, t([1, 1, 1]))
    assert math.isfinite(ev) and ev == pytest.approx(hand_ev(values, returns), rel=1e-9)
    # the same spread around 0 (values ~1e-3): also real variance
    values, returns = t([-1e-3, 0.0, 2e-3], dtype), t([0.0, 1e-3, 2e-3], dtype)
    ev = L.explained_variance(values, returns, t([1, 1, 1]))
    assert math.isfinite(ev) and ev == pytest.approx(hand_ev(values, returns), rel=1e-9)


# ----------------------------------------------------------------------------- the update's chunked output layer
@pytest.mark.parametrize("rows", [1, 3, 7, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_head_logprobs_equal_full_logits_and_their_gradients(rows, with_bias):
    """Values and gradients (hidden, W, b) of the chunked head equal autograd through full float64 logits."""
    from minigrpo.losses import ChunkedHeadLogprobs

    gen = torch.Generator().manual_seed(rows)
    m, h, v, tau = 7, 5, 11, 0.7
    hidden = torch.randn(m, h, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, generator=gen, dtype=torch.float64, requires_grad=True) if with_bias else None
    ids = torch.randint(0, v, (m,), generator=gen)
    g = torch.randn(m, generator=gen, dtype=torch.float64)

    logp, entropy = ChunkedHeadLogprobs.apply(hidden, weight, bias, ids, tau, rows)
    (logp.double() * g).sum().backward()
    got = [hidden.grad.clone(), weight.grad.clone()] + ([bias.grad.clone()] if with_bias else [])
    for t in [hidden, weight] + ([bias] if with_bias else []):
        t.grad = None

    z = (hidden @ weight.T + (bias if with_bias else 0)) / tau  # the reference: full logits, float64
    ref_logp = torch.log_softmax(z, -1).gather(-1, ids[:, None]).squeeze(-1)
    p = torch.softmax(z, -1)
    ref_entropy = -(p * torch.log(p)).sum(-1)
    (ref_logp * g).sum().backward()
    want = [hidden.grad, weight.grad] + ([bias.grad] if with_bias else [])
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=1e-6, atol=1e-6)  # float32 outputs
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=1e-6, atol=1e-6)
    assert not entropy.requires_grad
    for a, b in zip(got, want):  # the logits are float32 inside (as the model's are), whatever the input dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_chunked_head_gradient_by_hand():
    """One position, V = 2, W = I, τ = 1: ∂logp_0/∂h = onehot(0) - softmax(h)."""
    from minigrpo.losses import ChunkedHeadLogprobs

    hidden = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64, requires_grad=True)  # p = (1/4, 3/4)
    weight = torch.eye(2, dtype=torch.float64)
    logp, entropy = ChunkedHeadLogprobs.apply(hidden, weight, None, torch.tensor([0]), 1.0, 1)
    logp.sum().backward()
    assert logp.item() == pytest.approx(math.log(0.25))
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    torch.testing.assert_close(hidden.grad, torch.tensor([[0.75, -0.75]], dtype=torch.float64))


def test_chunked_head_in_bf16_casts_like_autograd():
    """bf16 weights: the gradient reaching the output layer is cast to bf16 as autograd casts the
    gradient of ``.float()``; values agree with the full bf16 path to bf16 rounding."""
    from minigrpo.losses import ChunkedHeadLogprobs, logprobs_from_logits

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=gen).bfloat16().requires_grad_()
    weight = (torch.randn(64, 16, generator=gen) * 0.5).bfloat16().requires_grad_()
    ids = torch.randint(0, 64, (40,), generator=gen)
    logp, _ = ChunkedHeadLogprobs.apply(hidden, weight, None, ids, 0.7, 9)
    logp.sum().backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = logprobs_from_logits((hidden @ weight.T).float() / 0.7, ids)
    full.sum().backward()
    assert logp.dtype == torch.float32 and got[0].dtype == got[1].dtype == torch.bfloat16
    torch.testing.assert_close(logp, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(got[0], hidden.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got[1], weight.grad, rtol=2e-2, atol=2e-2)


def test_chunked_head_entropy_with_underflowing_probabilities():
    """Logits hundreds apart (most probabilities underflow to 0 in float32): log π and H from the
    chunked head equal a float64 log-softmax of the same logits, with no NaN from 0 · log 0."""
    from minigrpo.losses import head_logprobs

    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, -0.2]])
    weight = torch.tensor([[400.0, 0.0], [0.0, 400.0], [-400.0, 300.0], [1.0, 1.0]])
    ids = torch.tensor([1, 1, 3])
    logp, entropy = head_logprobs(hidden, weight, None, ids, 0.5, rows=2, with_entropy=True)
    z = (hidden.double() @ weight.double().T) / 0.5
    log_p = torch.log_softmax(z, -1)
    torch.testing.assert_close(logp.double(), log_p.gather(-1, ids[:, None]).squeeze(-1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(entropy.double(), -(log_p.exp() * log_p).sum(-1), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(entropy).all() and entropy[0] < 1e-30


def test_chunked_head_bench_runs_at_cpu_size():
    """bench/chunked_head.py at a small CPU size: both heads timed, and they agree."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "bench" / "chunked_head.py"), "--tiny", "--positions", "300",
                           "--vocab", "1000", "--hidden", "32", "--budget", "20000", "--repeats", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MISMATCH" not in proc.stdout and proc.stdout.count("largest difference") == 4
    assert "chunks of 20 rows" in proc.stdout and "full / chunked:" in proc.stdout



def test_k3_is_never_below_zero_in_float32():
    """exp(d) - d - 1 comes out slightly negative for small |d| in float32 (the step-1 KL was logged
    as -3e-9); expm1(d) - d, the same function, does not, and stays within float32 rounding of the float64 value."""
    from minigrpo.losses import k3_kl

    torch.manual_seed(0)
    for scale in (1e-7, 1e-4, 1e-2, 1.0):
        logp = torch.randn(200_000) * scale
        kl = k3_kl(logp, torch.zeros_like(logp))
        naive = torch.exp(-logp) + logp - 1
        assert (kl >= 0).all()
        assert scale == 1.0 or (naive < 0).any()  # what the old formula did
        d = -logp.double()  # float64 reference; float32 rounding of d itself bounds the error by ~eps·|d|
        exact = torch.expm1(d) - d
        assert ((kl.double() - exact).abs() <= 2 * torch.finfo(torch.float32).eps * d.abs() + 1e-6 * exact).all()
