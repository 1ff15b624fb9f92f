"""Synthetic, internally consistent minigrpo traces, written through the real TraceWriter.

Used by the trace tests and by the scene builders (a scene can be rendered without a run)::

    from tests.trace_factory import make_synthetic_trace   # or: from trace_factory import ...
    path = make_synthetic_trace(tmp_path / "trace", algo="grpo", n_steps=5)

Every number obeys the formulas of docs/trace-format.md:

* completions are sampled token by token from π_old = softmax(logits_old) over a small
  vocabulary (``VOCAB``); π_ref = softmax(logits_old + noise);
* the first update on a rollout is on-policy (π_θ = π_old, ρ = 1 exactly); later updates on
  the same rollout see a drifted π_θ (so some tokens are clipped);
* ratio = exp(logp − logp_old), clipped_low = ρ < 1−ε ∧ A < 0, clipped_high = ρ > 1+ε_high ∧ A > 0,
  kl = k3 = exp(ref − logp) − (ref − logp) − 1, all computed in float32 as the trainer does;
* GRPO: A_i = (r_i − mean)/(std + advantage_eps), unbiased std, 0 for a constant group;
  PPO: GAE over KL-shaped token rewards, whitened over the rollout, returns = A_raw + V;
* π_θ' (after the update) raises the logit of every unclipped token by 0.5·A;
* probe positions keep K tokens (top by max(p_before, p_after), sampled token included);
  probs = softmax(full logits)[token_ids], other = 1 − Σ probs;
* step metrics are computed from the probed tokens (the synthetic "batch") and the rollout.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from minigrpo.trace import Group, Meta, Probe, ProbePosition, Step, TraceWriter, new_meta

VOCAB = [
    "<think>", "</think>", "<answer>", "</answer>", " All", " Some", " No", " cats", " dogs", " birds",
    " are", " not", " mammals", " animals", " therefore", " so", " the", " answer", " is", " Yes",
    " yes", " No.", " no", ".", ",", "\n", " if", " then", " premise", " conclusion", " follows",
    " valid", " invalid", " because", " Ġ", " é", " 猫", " ∧", " ¬", "<|endoftext|>",
]
EPSILON, EPSILON_HIGH, BETA, ADV_EPS = 0.2, 0.28, 0.04, 1e-4
KL_COEF, VF_COEF, GAMMA, LAM = 0.05, 0.1, 1.0, 0.95


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _gather(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log softmax(logits[t])[ids[t]] for every t, float32."""
    return _log_softmax(logits)[np.arange(len(ids)), ids].astype(np.float32)


def _entropy(logits: np.ndarray) -> np.ndarray:
    lp = _log_softmax(logits)
    return -(np.exp(lp) * lp).sum(-1)


def _position(pos: int, kind: str, sampled: int, full_before, full_after, full_ref, K: int) -> ProbePosition:
    pb, pa, pr = (np.exp(_log_softmax(x[pos])) for x in (full_before, full_after, full_ref))
    order = np.argsort(-np.maximum(pb, pa), kind="stable")
    ids = [int(i) for i in order[:K]]
    if sampled not in ids:
        ids[-1] = sampled
    ids = np.array(sorted(ids, key=lambda i: -pb[i]), dtype=np.int64)
    return ProbePosition(
        pos=pos, kind=kind, sampled_token_id=int(sampled), token_ids=ids, tokens=[VOCAB[i] for i in ids],
        logits_before=full_before[pos, ids].astype(np.float32), probs_before=pb[ids].astype(np.float32),
        logits_after=full_after[pos, ids].astype(np.float32), probs_after=pa[ids].astype(np.float32),
        logits_ref=full_ref[pos, ids].astype(np.float32), probs_ref=pr[ids].astype(np.float32),
        other_before=float(1 - pb[ids].sum()), other_after=float(1 - pa[ids].sum()),
        other_ref=float(1 - pr[ids].sum()),
    )


def build_synthetic(algo: str = "grpo", n_steps: int = 5, G: int = 4, n_groups: int = 2, T: int = 12, K: int = 6,
                    seed: int = 0, steps_per_rollout: int = 2, probes_per_step: int = 2
                    ) -> tuple[Meta, dict[int, list[Group]], list[Step]]:
    """The objects of a synthetic trace: (meta, rollout id -> groups, steps in order)."""
    if algo not in ("grpo", "ppo"):
        raise ValueError(f"algo must be grpo or ppo, got {algo!r}")
    V = len(VOCAB)
    K = min(K, V)
    rng = np.random.default_rng(seed)
    config = dict(algo=algo, task="syllogism", model="synthetic", num_generations=G, epsilon=EPSILON,
                  epsilon_high=EPSILON_HIGH, beta=BETA, advantage_eps=ADV_EPS, scale_rewards="group",
                  loss_type="grpo", learning_rate=1e-4, temperature=1.0, format_weight=0.2,
                  correctness_weight=1.0, kl_coef=KL_COEF, vf_coef=VF_COEF, gamma=GAMMA, lam=LAM,
                  cliprange_value=0.2, max_completion_length=T, seed=seed)
    meta = new_meta(algo, "synthetic", "syllogism", config, f"synthetic-vocab-{V}",
                    extra={"synthetic": True, "seed": seed, "device": "cpu", "dtype": "float32"}, git_commit=None)
    meta.created = "2025-01-01T00:00:00+00:00"

    rollouts: dict[int, list[Group]] = {}
    hidden: dict[int, dict] = {}  # rollout -> (g, i) -> full logits and PPO arrays
    steps: list[Step] = []

    def make_rollout(rid: int) -> None:
        groups, per = [], {}
        all_adv_raw = []
        for g in range(n_groups):
            a, b = rng.choice([" cats", " dogs", " birds", " mammals"], size=2, replace=False)
            question = f"All{a} are{b}. Does it follow that some{b} are{a}?"
            ids_list, texts = [], []
            for i in range(G):
                L = T if i == 0 else int(rng.integers(max(2, T // 2), T + 1))
                full_old = rng.normal(0.0, 2.0, (L, V))
                p_old = np.exp(_log_softmax(full_old))
                ids = np.array([rng.choice(V, p=p_old[t]) for t in range(L)], dtype=np.int64)
                full_ref = full_old + rng.normal(0.0, 0.3, (L, V))
                per[(g, i)] = {"old": full_old, "ref": full_ref, "ids": ids}
                ids_list.append(ids)
                texts.append("".join(VOCAB[t] for t in ids))
            fmt = rng.integers(0, 2, G).astype(np.float64)
            corr = rng.integers(0, 2, G).astype(np.float64)
            rewards = 0.2 * fmt + 1.0 * corr
            mean, std = float(rewards.mean()), float(rewards.std(ddof=1))
            if np.all(rewards == rewards[0]):
                adv = np.zeros(G)
            else:
                adv = (rewards - mean) / (std + ADV_EPS)
            groups.append(Group(prompt=f"<|user|>\n{question}\n<|assistant|>\n", question=question,
                                answer="Yes" if g % 2 == 0 else "No", completions=texts, completion_ids=ids_list,
                                reward_parts={"format": fmt, "correctness": corr}, rewards=rewards, mean=mean,
                                std=std, advantages=adv, correct=corr == 1.0))
            if algo == "ppo":
                for i in range(G):
                    h = per[(g, i)]
                    lp_old = _gather(h["old"], h["ids"]).astype(np.float64)
                    lp_ref = _gather(h["ref"], h["ids"]).astype(np.float64)
                    r_tok = -KL_COEF * (lp_old - lp_ref)
                    r_tok[-1] += rewards[i]
                    values = rng.normal(0.5, 0.3, len(h["ids"]))
                    adv_raw = np.zeros_like(values)
                    last = 0.0
                    for t in reversed(range(len(values))):
                        nxt = values[t + 1] if t + 1 < len(values) else 0.0
                        delta = r_tok[t] + GAMMA * nxt - values[t]
                        last = delta + GAMMA * LAM * last
                        adv_raw[t] = last
                    h["values"], h["adv_raw"] = values, adv_raw
                    all_adv_raw.append(adv_raw)
        if algo == "ppo":
            flat = np.concatenate(all_adv_raw)
            mu, var = flat.mean(), flat.var()
            for g, group in enumerate(groups):
                seq_adv = []
                for i in range(G):
                    h = per[(g, i)]
                    h["adv"] = (h["adv_raw"] - mu) / np.sqrt(var + 1e-8)
                    h["returns"] = h["adv_raw"] + h["values"]
                    seq_adv.append(h["adv"].mean())
                group.advantages = np.array(seq_adv, dtype=np.float64)
        rollouts[rid] = groups
        hidden[rid] = per

    for k in range(1, n_steps + 1):
        rid = (k - 1) // steps_per_rollout
        j = (k - 1) % steps_per_rollout
        if rid not in rollouts:
            make_rollout(rid)
        groups, per = rollouts[rid], hidden[rid]
        chosen = [(0, 0)]
        while len(chosen) < min(probes_per_step, n_groups * G):
            cand = (int(rng.integers(n_groups)), int(rng.integers(G)))
            if cand not in chosen:
                chosen.append(cand)
        probes, all_tok = [], []
        for g, i in chosen:
            h = per[(g, i)]
            ids, L = h["ids"], len(h["ids"])
            full_old, full_ref = h["old"], h["ref"]
            full_before = full_old if j == 0 else full_old + rng.normal(0.0, 0.25 * j, full_old.shape)
            logp_old, logp, logp_ref = (_gather(x, ids) for x in (full_old, full_before, full_ref))
            ratio = np.exp(logp - logp_old)
            d = logp_ref - logp
            kl = np.exp(d) - d - np.float32(1)
            if algo == "grpo":
                adv = np.full(L, groups[g].advantages[i], dtype=np.float32)
            else:
                adv = h["adv"].astype(np.float32)
            low = (ratio < np.float32(1 - EPSILON)) & (adv < 0)
            high = (ratio > np.float32(1 + EPSILON_HIGH)) & (adv > 0)
            full_after = full_before + rng.normal(0.0, 0.02, full_before.shape)
            full_after[np.arange(L), ids] += 0.5 * adv * ~(low | high)
            logp_new = _gather(full_after, ids)
            decision = max(0, L - 2)
            moved_order = np.argsort(-np.abs(np.exp(logp_new) - np.exp(logp)), kind="stable")
            moved = next((int(t) for t in moved_order if t != decision), None)
            positions = [_position(decision, "decision", int(ids[decision]), full_before, full_after, full_ref, K)]
            if moved is not None:
                positions.append(_position(moved, "moved", int(ids[moved]), full_before, full_after, full_ref, K))
            probe = Probe(group=g, index=i, text="".join(VOCAB[t] for t in ids), token_ids=ids.copy(),
                          tokens=[VOCAB[t] for t in ids], logp_old=logp_old, logp=logp, logp_new=logp_new,
                          logp_ref=logp_ref, ratio=ratio, clipped_low=low, clipped_high=high, advantage=adv, kl=kl,
                          values=h["values"].astype(np.float32) if algo == "ppo" else None,
                          returns=h["returns"].astype(np.float32) if algo == "ppo" else None,
                          positions=positions)
            probes.append(probe)
            all_tok.append((probe, _entropy(full_before)))
        cat = lambda name: np.concatenate([getattr(p, name) for p, _ in all_tok]).astype(np.float64)  # noqa: E731
        ratio_all, adv_all = cat("ratio"), cat("advantage")
        low_all = np.concatenate([p.clipped_low for p, _ in all_tok])
        high_all = np.concatenate([p.clipped_high for p, _ in all_tok])
        surr = np.minimum(ratio_all * adv_all, np.clip(ratio_all, 1 - EPSILON, 1 + EPSILON_HIGH) * adv_all)
        policy_loss = float(-surr.mean())
        kl_mean = float(cat("kl").mean())
        all_rewards = np.concatenate([gr.rewards for gr in groups])
        stds = np.array([gr.std for gr in groups])
        metrics = {
            "policy_loss": policy_loss,
            "kl": kl_mean,
            "entropy": float(np.concatenate([e for _, e in all_tok]).mean()),
            "clip_ratio/low_mean": float(low_all.mean()),
            "clip_ratio/high_mean": float(high_all.mean()),
            "clip_ratio/region_mean": float(low_all.mean()) + float(high_all.mean()),
            "grad_norm": float(rng.uniform(0.1, 2.0)),
            "reward": float(all_rewards.mean()),
            "reward_std": float(stds.mean()),
            "frac_reward_zero_std": float((stds == 0).mean()),
            "learning_rate": 1e-4,
            "step_time": float(rng.uniform(0.5, 1.5)),
            "num_tokens": float(ratio_all.size),
            "accuracy": float(np.concatenate([gr.correct for gr in groups]).mean()),
            "format_rate": float(np.concatenate([gr.reward_parts["format"] for gr in groups]).mean()),
            "premise_copy_rate": 0.0,
            "peak_memory_mb": float(100 + rng.uniform(0, 10)),
        }
        if algo == "grpo":
            metrics["loss"] = policy_loss + BETA * kl_mean
        else:
            values, returns = cat("values"), cat("returns")
            value_loss = float(0.5 * np.mean((values - returns) ** 2))
            metrics.update(value_loss=value_loss, vf_clipfrac=float(rng.uniform(0, 0.2)),
                           explained_variance=float(1 - np.var(returns - values) / np.var(returns)),
                           loss=policy_loss + VF_COEF * value_loss)
        steps.append(Step(step=k, rollout=rid, metrics=metrics, probes=probes, groups=groups))
    return meta, rollouts, steps


def write_synthetic(path: str | os.PathLike, meta: Meta, rollouts: dict[int, list[Group]], steps: list[Step],
                    **writer_kwargs) -> TraceWriter:
    """Write the objects of build_synthetic through TraceWriter (each rollout before its first step)."""
    with TraceWriter(path, meta, **writer_kwargs) as writer:
        for s in steps:
            if writer.last_rollout is None or s.rollout > writer.last_rollout:
                writer.write_rollout(s.rollout, rollouts[s.rollout])
            writer.write_step(s)
    return writer


def make_synthetic_trace(path: str | os.PathLike, algo: str = "grpo", n_steps: int = 5, G: int = 4,
                         n_groups: int = 2, T: int = 12, K: int = 6, seed: int = 0,
                         steps_per_rollout: int = 2, probes_per_step: int = 2,
                         fsync: Optional[bool] = None) -> str:
    """Write a synthetic trace to ``path`` (a new or empty directory) and return the path."""
    meta, rollouts, steps = build_synthetic(algo, n_steps, G, n_groups, T, K, seed, steps_per_rollout,
                                            probes_per_step)
    write_synthetic(path, meta, rollouts, steps, **({} if fsync is None else {"fsync": fsync}))
    return os.fspath(path)
