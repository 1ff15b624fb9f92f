"""Dynamic sampling (DAPO): the buffer keeps the groups whose rewards differ, refilled from more
generation batches, and the rollout metrics still describe everything the policy sampled.

The selection logic runs on hand-built groups (no model): item i's group has equal rewards when
i % 3 == 0 and rewards 0, 1, 0, 1, ... otherwise, and prompts/completions of widths that vary
with i, so the merge's padding is exercised.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from minigrpo import experience as E
from minigrpo.config import ConfigError, build_config
from minigrpo.rollout import Rollout, concat_rollouts

G = 4
PAD = 0


def fake_group(i: int) -> dict:
    lp, lc = 2 + i % 3, 1 + i % 4
    rewards = [0.5] * G if i % 3 == 0 else [float(k % 2) for k in range(G)]
    prompt = torch.full((G, lp), 100 + i)
    comp = torch.full((G, lc), 1000 + i)
    return dict(prompt=prompt, comp=comp, rewards=rewards)


CALLS = {"n": 0, "equal_after": None}  # equal_after=k: from the (k+1)-th batch on, every group's rewards are equal


def fake_sample_and_score(policy, tokenizer, data, cfg, indices):
    CALLS["n"] += 1
    groups = [fake_group(i) for i in indices]
    if CALLS["equal_after"] is not None and CALLS["n"] > CALLS["equal_after"]:
        groups = [{**g, "rewards": [0.0] * G} for g in groups]
    rollout = concat_rollouts([Rollout(g["prompt"], torch.ones_like(g["prompt"]), g["comp"],
                                       torch.ones(g["comp"].shape), [f"{i}-{k}" for k in range(G)])
                               for i, g in zip(indices, groups)], PAD)
    rewards = torch.tensor([r for g in groups for r in g["rewards"]])
    correct = rewards > 0.6
    n = len(rewards)
    return E._Scored(list(indices), [{"i": i} for i in indices], [f"prompt {i}" for i in indices], rollout, rewards,
                     {"correctness": rewards.clone()}, correct, torch.ones(n, dtype=torch.bool),
                     torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))


@pytest.fixture
def fake(monkeypatch):
    CALLS.update(n=0, equal_after=None)
    monkeypatch.setattr(E, "_sample_and_score", fake_sample_and_score)
    monkeypatch.setattr(E, "pad_token_id", lambda model, tokenizer: PAD)


def refill(prompts: int, max_batches: int, size: int = 60, seed: int = 0):
    cfg = SimpleNamespace(num_generations=G, prompts_per_rollout=prompts, max_num_gen_batches=max_batches)
    rng = random.Random(seed)
    drawn = E.draw_indices(size, prompts, rng)
    first = E._sample_and_score(None, None, None, cfg, drawn)
    merged, metrics = E._refill(first, None, None, list(range(size)), cfg, rng, 0, 1, drawn)
    return first, merged, {k: float(v) for k, v in metrics.items()}


def sampled_in_order(seed: int, prompts: int, batches: int, size: int = 60) -> list[int]:
    """The indices _refill draws, re-derived with the same generator calls."""
    rng = random.Random(seed)
    out, used = [], set()
    for _ in range(batches):
        idx = E.draw_indices(size, prompts, rng, exclude=used)
        used.update(idx)
        out += idx
    return out


@pytest.mark.parametrize("seed", [0, 68])  # seed 68: the first batch has exactly 9 groups whose rewards differ
def test_buffer_holds_only_groups_whose_rewards_differ(fake, seed):
    first, merged, m = refill(prompts=9, max_batches=4, seed=seed)
    assert len(merged.indices) == 9 and all(i % 3 for i in merged.indices)
    batches = int(m["dynamic_sampling/gen_batches"])
    every = sampled_in_order(seed, 9, 4)
    enough = [k for k in (1, 2, 3, 4) if sum(i % 3 != 0 for i in every[:9 * k]) >= 9]
    assert batches == (enough[0] if enough else 4)  # stopped as soon as the buffer could be filled
    order = every[:9 * batches]
    assert len(set(order)) == len(order), "a later batch redrew an item"
    informative = [i for i in order if i % 3]
    assert merged.indices == informative[:9]  # the first informative groups, in sampling order
    assert m["dynamic_sampling/groups_sampled"] == len(order)
    assert m["dynamic_sampling/frac_buffer_zero_std"] == 0.0
    # metrics over everything sampled, not over the kept buffer
    all_rewards = [r for i in order for r in fake_group(i)["rewards"]]
    assert m["reward"] == pytest.approx(sum(all_rewards) / len(all_rewards))
    assert m["frac_reward_zero_std"] == pytest.approx(sum(i % 3 == 0 for i in order) / len(order))
    assert m["accuracy"] == pytest.approx(sum(r > 0.6 for r in all_rewards) / len(all_rewards))


def test_merged_rows_are_the_chosen_groups_padded(fake):
    _, merged, _ = refill(prompts=9, max_batches=4)
    r = merged.rollout
    assert len(r) == 9 * G and r.prompt_ids.shape[1] == 4 and r.completion_ids.shape[1] == 4
    for gi, i in enumerate(merged.indices):
        g = fake_group(i)
        rows = slice(gi * G, (gi + 1) * G)
        assert merged.rewards[rows].tolist() == g["rewards"] and merged.parts["correctness"][rows].tolist() == g["rewards"]
        assert r.completions[rows] == [f"{i}-{k}" for k in range(G)] and merged.prompts[gi] == f"prompt {i}"
        lp, lc = g["prompt"].shape[1], g["comp"].shape[1]
        assert (r.prompt_ids[rows, -lp:] == 100 + i).all() and (r.prompt_ids[rows, :-lp] == PAD).all()  # left pad
        assert (r.prompt_mask[rows].sum(1) == lp).all() and (r.prompt_mask[rows, -lp:] == 1).all()
        assert (r.completion_ids[rows, :lc] == 1000 + i).all() and (r.completion_ids[rows, lc:] == PAD).all()
        assert (r.completion_mask[rows].sum(1) == lc).all()


def test_short_after_the_last_batch_refills_with_equal_groups(fake):
    CALLS["equal_after"] = 1  # the second batch brings no informative group
    first, merged, m = refill(prompts=9, max_batches=2)
    order = sampled_in_order(0, 9, 2)
    informative = [i for i in first.indices if i % 3]
    assert 0 < len(informative) < 9 and m["dynamic_sampling/gen_batches"] == 2
    fillers = [i for i in order if i not in informative][:9 - len(informative)]  # equal groups, in sampling order
    assert merged.indices == [i for i in order if i in informative or i in fillers]
    assert m["dynamic_sampling/frac_buffer_zero_std"] == pytest.approx((9 - len(informative)) / 9)
    assert len(merged.rollout) == 9 * G and len(merged.rewards) == 9 * G


def test_a_small_split_is_drawn_fresh_first_then_again():
    rng = random.Random(3)
    first = E.draw_indices(8, 6, rng)
    second = E.draw_indices(8, 6, rng, exclude=set(first))
    assert len(set(second)) == 6 and set(range(8)) - set(first) <= set(second)  # the 2 unseen items come first
    assert set(second[:2]) == set(range(8)) - set(first)


def test_one_batch_keeps_the_first_batch_as_is(fake):
    first, merged, m = refill(prompts=9, max_batches=1)
    assert merged.indices == first.indices and torch.equal(merged.rewards, first.rewards)
    assert m["dynamic_sampling/gen_batches"] == 1
    assert m["dynamic_sampling/frac_buffer_zero_std"] == pytest.approx(sum(not i % 3 for i in first.indices) / 9)


def test_config_refuses_ppo_and_zero_batches():
    with pytest.raises(ConfigError, match="--dynamic-sampling"):
        build_config(preset="tiny", overrides={"algo": "ppo", "dynamic_sampling": True})
    with pytest.raises(ConfigError, match="--max-num-gen-batches"):
        build_config(preset="tiny", overrides={"dynamic_sampling": True, "max_num_gen_batches": 0})


def test_concat_rollouts_pads_and_keeps_sampling_logprobs():
    a = Rollout(torch.tensor([[5, 6]]), torch.tensor([[1, 1]]), torch.tensor([[7]]), torch.tensor([[1.0]]), ["a"],
                torch.tensor([[-0.5]]))
    b = Rollout(torch.tensor([[8]]), torch.tensor([[1]]), torch.tensor([[9, 3]]), torch.tensor([[1.0, 1.0]]), ["b"],
                torch.tensor([[-1.0, -2.0]]))
    c = concat_rollouts([a, b], pad_id=0)
    assert c.prompt_ids.tolist() == [[5, 6], [0, 8]] and c.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert c.completion_ids.tolist() == [[7, 0], [9, 3]] and c.completion_mask.tolist() == [[1, 0], [1, 1]]
    assert c.sampling_logprobs.tolist() == [[-0.5, 0.0], [-1.0, -2.0]] and c.completions == ["a", "b"]
    assert concat_rollouts([a, Rollout(b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, ["b"])],
                           pad_id=0).sampling_logprobs is None
