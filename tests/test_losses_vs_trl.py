"""minigrpo's GRPO formulas against TRL 1.16's own GRPOTrainer code (not against a copy of its formulas).

How TRL runs without a model: a real ``trl.GRPOTrainer`` is built around a tiny random Llama (~0.05 s;
its ``__init__`` maps the ``GRPOConfig`` knobs to what the loss reads; the reference model it would load
from disk is a copy of the tiny model), and only the three methods that touch a model or a reward function
are replaced on the instance: ``_generate`` (fixed completion ids, whose lengths make TRL's completion
mask), ``_calculate_rewards`` (fixed rewards) and ``_get_per_token_logps_and_entropies`` (fixed per-token
log-probs: π_θ's are rows of a leaf tensor, so the gradient w.r.t. the per-token log-probs is read off it;
π_old's and π_ref's are constants). Row i's prompt is the one token TAG + i, so rows are found again after
TRL shuffles the generation batch. TRL's own ``training_step`` (``_prepare_inputs``: advantages, shuffle,
split into micro-batches; ``compute_loss``; Trainer's accumulation scaling; backward), and ``log`` for the
logged averages, run unchanged. minigrpo's side is ``grpo.GRPOTrainer.micro_loss`` on the same
micro-batches, its forward (``rollout.completion_logprobs_entropy``) replaced the same way, accumulated
and turned into step metrics as ``RLTrainer._update`` does. This leans on TRL internals (method names, the
buffer of ``_prepare_inputs``): pyproject pins trl to 1.16.x.

Where the two differ (on purpose or not), a test pins the difference and says which it is.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from minigrpo import grpo as mg  # noqa: E402
from minigrpo import losses as L  # noqa: E402
from minigrpo.config import TrainConfig  # noqa: E402
from minigrpo.experience import completion_stats  # noqa: E402
from minigrpo.rollout import Rollout  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")  # transformers' renames

TAG = 1000  # prompt token of row i: TAG + i
D = torch.float64
T_MAX = 7  # max_completion_length (the padded completions are narrower: both must read the knob, not the width)


# ----------------------------------------------------------------------------- TRL, around a tiny model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-layer random Llama, its copy (the reference) and an 18-token tokenizer (never run: forwards are replaced)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(16)} | {"<pad>": 16, "<eos>": 17}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=18, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    out = tmp_path_factory.mktemp("tiny")
    model.config._name_or_path = str(out)  # where TRL would load its reference model from
    return model, copy.deepcopy(model), tok


def trl_trainer(tiny, out, n, *, G, micro, gas, spg=None, num_iterations=1, **knobs):
    """A real trl.GRPOTrainer; ``knobs``: loss_type, scale_rewards, beta, epsilon_high, use_bias_correction_kl.
    The tiny model and its copy, the reference (β ≠ 0, instead of a load from disk), are shared: never run."""
    import trl.trainer.grpo_trainer as grpo_module
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(out), use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
                      logging_steps=1, num_generations=G, per_device_train_batch_size=micro,
                      gradient_accumulation_steps=gas, steps_per_generation=spg, num_iterations=num_iterations,
                      epsilon=0.2, max_completion_length=T_MAX, mask_truncated_completions=False, **knobs)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("ignore")
        mp.setattr(grpo_module, "create_model_from_path", lambda *a, **k: tiny[1])
        trainer = GRPOTrainer(model=tiny[0], reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                              args=args, processing_class=tiny[2],
                              train_dataset=Dataset.from_dict({"prompt": ["t1"] * n}))
    trainer.model.train()  # mode "train": accumulation scaling, as in trainer.train()
    trainer.current_gradient_accumulation_steps = gas  # set by Trainer's loop
    return trainer


def feed(trainer, case, logp):
    """Route TRL's generation, rewards and forwards to ``case``; π_θ's log-probs are rows of the leaf ``logp``."""
    n = case.rewards.numel()
    ids = [case.completion_ids[i, :int(case.lengths[i])].tolist() for i in range(n)]
    trainer._generate = lambda prompts: ([[TAG + i] for i in range(n)], ids, None, ["x"] * n, None, {}, None, None)
    trainer._calculate_rewards = lambda inputs, prompts, completions, ids: case.rewards[:, None].clone()

    def forward(model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **_):
        rows = input_ids[:, input_ids.shape[1] - logits_to_keep - 1] - TAG  # the last prompt token
        cols = slice(0, logits_to_keep)  # TRL pads to the longest completion
        if model is trainer.ref_model:
            return case.ref[rows, cols], None, None
        if compute_entropy:  # the loss's forward
            return logp[rows, cols], case.entropy[rows, cols], None
        return case.old[rows, cols], None, None  # π_old's scoring pass

    trainer._get_per_token_logps_and_entropies = forward


def trl_step(trainer, case, gas):
    """One optimizer step through TRL: ``gas`` calls of its own training_step (_prepare_inputs, compute_loss,
    Trainer's accumulation scaling, backward). Returns the micro-batch losses, the rows of each, TRL's
    advantages per row, num_items_in_batch, TRL's per-micro-batch metrics and d(sum of losses)/d logp."""
    logp = case.logp.clone().requires_grad_()
    feed(trainer, case, logp)
    trainer._step, trainer._buffered_inputs = 0, None
    gen_batch = [{"prompt": "t1"} for _ in range(case.rewards.numel())]
    losses, chunks = [], []
    advantages = torch.full_like(case.rewards, math.nan)
    for _ in range(gas):
        losses.append(trainer.training_step(trainer.model, gen_batch, None))
        inputs = trainer._buffered_inputs[(trainer._step - 1) % trainer.args.steps_per_generation]
        rows = (inputs["prompt_ids"][:, -1] - TAG).tolist()
        chunks.append(rows)
        advantages[rows] = inputs["advantages"]
    metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}
    return SimpleNamespace(losses=torch.stack(losses), chunks=chunks, advantages=advantages, metrics=metrics,
                           grad=logp.grad, num_items_in_batch=inputs["num_items_in_batch"])


def trl_advantages(trainer, case):
    """TRL's advantages (and num_items_in_batch, mask) from _generate_and_score_completions, unshuffled."""
    feed(trainer, case, case.logp)
    with torch.no_grad():
        out = trainer._generate_and_score_completions([{"prompt": "t1"} for _ in range(case.rewards.numel())])
    return out


def trl_logged(trainer):
    """What TRL's own GRPOTrainer.log writes for the metrics it collected (its average over micro-batches)."""
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.log({})
    return trainer.state.log_history[-1]


# ----------------------------------------------------------------------------- minigrpo
def mini_step(case, chunks, *, from_update, G, gas, micro, **knobs):
    """One optimizer step of minigrpo's GRPOTrainer.micro_loss on ``chunks`` (the same micro-batches as TRL's),
    accumulated and turned into step metrics as RLTrainer._update does."""
    n = case.rewards.numel()
    cfg = TrainConfig(num_generations=G, buffer_size=n, per_device_train_batch_size=micro,
                      gradient_accumulation_steps=gas, max_completion_length=T_MAX, epsilon=0.2,
                      num_iterations=1 if from_update else 2, **knobs).validate()
    logp = case.logp.clone().requires_grad_()
    mask = case.mask
    rollout = Rollout(torch.tensor([[TAG + i] for i in range(n)]), torch.ones(n, 1, dtype=torch.long),
                      case.completion_ids, mask.float(), ["x"] * n)
    advantages = L.group_advantages(case.rewards, G, cfg.scale_rewards, cfg.advantage_eps)
    exp = SimpleNamespace(rollout=rollout, advantages=advantages,
                          logp_old=torch.zeros_like(case.old) if from_update else case.old * mask,
                          logp_ref=case.ref * mask,
                          logp_old_from_update=from_update, rollout_tokens=None)
    trainer = object.__new__(mg.GRPOTrainer)
    trainer.cfg, trainer.policy = cfg, None
    trainer.dist = SimpleNamespace(mean=lambda values: values)  # one process
    trainer.probes = SimpleNamespace(wants_hidden=lambda rows: False, capture_rows=lambda *a, **k: None)

    def forward(model, batch, temperature, output_hidden=False):
        rows = batch.prompt_ids[:, -1] - TAG
        return torch.where(batch.completion_mask.bool(), logp[rows], 0.0), case.entropy[rows], None

    step_rows = [r for chunk in chunks for r in chunk]
    normalizer = trainer.step_normalizer(exp, step_rows)  # what RLTrainer._update passes
    losses, micro_stats, sums = [], [], {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mg, "completion_logprobs_entropy", forward)
        for chunk in chunks:
            loss, stats = trainer.micro_loss(exp, chunk, normalizer)
            loss.backward()
            losses.append(loss.detach())
            micro_stats.append(stats)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
    tokens = sums.pop("num_tokens")
    step = {k[4:]: v / tokens for k, v in sums.items() if k.startswith("sum:")}
    step.update({k: v for k, v in sums.items() if not k.startswith("sum:")})
    step["clip_ratio/region_mean"] = step["clip_ratio/low_mean"] + step["clip_ratio/high_mean"]
    return SimpleNamespace(losses=torch.stack(losses), micro=micro_stats, step=step, grad=logp.grad,
                           advantages=advantages, num_items_in_batch=normalizer["num_items_in_batch"], cfg=cfg)


# ----------------------------------------------------------------------------- random cases
def make_case(groups, G, seed, rewards=None, dtype=D, lengths=None):
    """P = ``groups`` prompts × G rows: completion lengths 1..T_MAX - 2 with one of length 1 and one of 0 (an
    all-masked row; or ``lengths``), rewards with ties and, with several groups, a group whose rewards are all
    equal; π_old, π_θ, π_ref log-probs far enough apart that both clips and the KL are busy."""
    gen = torch.Generator().manual_seed(seed)
    n = groups * G
    width = T_MAX - 2  # the padded width; max_completion_length stays T_MAX
    given, lengths = lengths, torch.randint(1, width + 1, (n,), generator=gen)
    lengths[1], lengths[-1] = 1, width
    if n > 2:
        lengths[2] = 0  # an all-masked row (not the first: TRL pads with the first row's dtype)
    if given is not None:
        lengths = torch.as_tensor(given)
    if rewards is None:
        # row 0's advantage is > 0, row 1's < 0 (whatever the scaling)
        pattern = [[1.0, 0.0, 1.0, 0.5], [0.5] * G, [0.25, 0.0, 1.0, 1.0], [0.0, 0.75, 0.75, 0.5]]
        rewards = [r for g in range(groups) for r in pattern[(g if groups > 1 else 0) % len(pattern)][:G]]
    rewards = torch.as_tensor(rewards, dtype=dtype)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    old = -3 * torch.rand(n, width, generator=gen, dtype=dtype)
    logp = old + 0.35 * torch.randn(n, width, generator=gen, dtype=dtype)
    ref = old + 0.3 * torch.randn(n, width, generator=gen, dtype=dtype)
    logp[0, 0], logp[1, 0] = old[0, 0] + 0.6, old[1, 0] - 0.6  # ρ = 1.82 at A > 0, 0.55 at A < 0: both clip
    return SimpleNamespace(rewards=rewards, lengths=lengths, mask=mask, old=old, logp=logp, ref=ref,
                           entropy=torch.rand(n, width, generator=gen, dtype=dtype) * 2,
                           completion_ids=torch.randint(0, 16, (n, width), generator=gen))


@pytest.fixture(scope="module")
def both(tiny, tmp_path_factory):
    """run(case, G=, micro=, **knobs): one optimizer step of TRL and of minigrpo on the same micro-batches.
    ``from_update``: one update per rollout (TRL skips π_old, minigrpo takes the update's own log-probs);
    otherwise num_iterations = 2 and π_old is ``case.old``. ``steps``: optimizer steps per rollout (TRL's
    steps_per_generation = steps × gradient_accumulation_steps); only the first step is run."""
    out = tmp_path_factory.mktemp("trl_out")

    def run(case, *, G, micro, from_update=False, steps=1, **knobs):
        n = case.rewards.numel()
        gas = n // (micro * steps)
        trainer = trl_trainer(tiny, out, n, G=G, micro=micro, gas=gas, spg=gas * steps,
                              num_iterations=1 if from_update else 2, **knobs)
        theirs = trl_step(trainer, case, gas)
        ours = mini_step(case, theirs.chunks, from_update=from_update, G=G, gas=gas, micro=micro, **knobs)
        return trainer, theirs, ours

    return run


def close(a, b, rtol=1e-7, atol=1e-12):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=rtol, atol=atol)


def micro_metric(stats, name):
    """minigrpo's value of TRL's per-micro-batch metric ``name`` (a masked mean over the micro-batch)."""
    tokens = stats["num_tokens"]
    if name == "clip_ratio/region_mean":
        return (stats["sum:clip_ratio/low_mean"] + stats["sum:clip_ratio/high_mean"]) / tokens
    return stats[f"sum:{name}"] / tokens


def check_step(trainer, theirs, ours, case, beta, bias_kl):
    """Everything the two compute for one optimizer step, micro-batch by micro-batch."""
    cfg = ours.cfg
    assert (trainer.epsilon_low, trainer.epsilon_high, trainer.beta) == (cfg.epsilon_low, cfg.epsilon_upper, cfg.beta)
    # advantages: group mean, std with ddof = 1 (+ 1e-4) per group / over the batch / none. TRL's Bessel factor
    # count / (count - 1) is a float32 division, hence rtol 1e-7 on float64 rewards
    close(ours.advantages, theirs.advantages)
    assert int(theirs.num_items_in_batch) == ours.num_items_in_batch == int(case.mask.sum())
    # the loss of each micro-batch (already scaled for the accumulation) and d loss / d log π_θ per token
    close(ours.losses, theirs.losses)
    close(ours.grad, theirs.grad)
    assert theirs.grad.abs().sum() > 0
    # TRL's per-micro-batch metrics: masked means over the micro-batch (TRL gives 0 for a micro-batch without tokens)
    names = ["entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]
    for name in names + (["kl"] if beta else []):
        mini = name if not (name == "kl" and bias_kl) else "kl/ratio_weighted"
        got = [micro_metric(s, mini) if s["num_tokens"] else 0.0 for s in ours.micro]
        close(got, theirs.metrics[name], rtol=1e-6, atol=1e-7)  # TRL's clip fractions are float32
    assert "kl" in theirs.metrics if beta else "kl" not in theirs.metrics


# every loss_type × scale_rewards × β × epsilon_high × (1 or 3 groups); the ratio-weighted KL (TRL's default) too,
# under group scaling (the scaling only changes the advantages)
KL = [(0.0, False), (0.04, False), (0.04, True)]
PRODUCT = [(lt, sr, b, bias, eh, g) for lt, sr, (b, bias), eh, g in
           itertools.product(L.LOSS_TYPES, L.SCALE_REWARDS, KL, (None, 0.28), (1, 3)) if not (bias and sr != "group")]


@pytest.mark.parametrize("loss_type,scale_rewards,beta,bias_kl,epsilon_high,groups", PRODUCT)
def test_one_optimizer_step_equals_trls(both, loss_type, scale_rewards, beta, bias_kl, epsilon_high, groups):
    """Off-policy step (num_iterations = 2, ρ ≠ 1): advantages, per-micro-batch loss, gradient and metrics.
    One group: micro-batches of one row (a row without tokens is a micro-batch without tokens); three groups
    (one of equal rewards): micro-batches of two rows."""
    case = make_case(groups, 4, seed=groups * 7 + (epsilon_high is None))
    micro = 1 if groups == 1 else 2
    trainer, theirs, ours = both(case, G=4, micro=micro, loss_type=loss_type, scale_rewards=scale_rewards,
                                 beta=beta, epsilon_high=epsilon_high, use_bias_correction_kl=bias_kl)
    check_step(trainer, theirs, ours, case, beta, bias_kl)
    low = sum(s["sum:clip_ratio/low_mean"] for s in ours.micro)
    high = sum(s["sum:clip_ratio/high_mean"] for s in ours.micro)
    assert low > 0 and high > 0  # both clips fire, so the clip band and its flags are really compared


@pytest.mark.parametrize("loss_type", L.LOSS_TYPES)
@pytest.mark.parametrize("beta,bias_kl", KL)
def test_on_policy_step_equals_trls(both, loss_type, beta, bias_kl):
    """One update per rollout: TRL skips π_old (old = logp.detach()), minigrpo takes the update's own
    log-probs (logp_old_from_update); ρ = 1, nothing is clipped, and the two still agree."""
    case = make_case(3, 4, seed=11)
    trainer, theirs, ours = both(case, G=4, micro=2, from_update=True, loss_type=loss_type, scale_rewards="group",
                                 beta=beta, epsilon_high=0.28, use_bias_correction_kl=bias_kl)
    check_step(trainer, theirs, ours, case, beta, bias_kl)
    assert sum(theirs.metrics["clip_ratio/region_mean"]) == 0
    assert all(s["sum:ratio_mean"] == s["num_tokens"] for s in ours.micro)  # ρ = 1 exactly


# ----------------------------------------------------------------------------- advantages alone
@pytest.mark.parametrize("scale_rewards", L.SCALE_REWARDS)
@pytest.mark.parametrize("G", [2, 5])
def test_advantages_equal_trls(tiny, tmp_path, scale_rewards, G):
    """TRL's _generate_and_score_completions on rewards with ties, a group of equal (dyadic) rewards and
    non-dyadic values, one group or three, float32 and float64: group mean, std with ddof = 1 (G = 2 tells
    ddof 0 from 1: ±0.707 against ±1), + 1e-4 on the std, batch std over every reward, or no division."""
    trainer = trl_trainer(tiny, tmp_path, 3 * G, G=G, micro=G, gas=3, loss_type="grpo", scale_rewards=scale_rewards,
                          beta=0.0)
    gen = torch.Generator().manual_seed(G)
    for dtype, groups in itertools.product((torch.float32, D), (1, 3)):
        rewards = torch.randn(groups * G, generator=gen, dtype=D)
        rewards[:2] = rewards[:2].mul(4).round().div(4)  # a tie (in a group of 5)...
        rewards[1] = rewards[0] if G > 2 else rewards[1]
        if groups > 1:
            rewards[G:2 * G] = 0.75  # ...and a group whose rewards are all equal
        case = make_case(groups, G, seed=1, rewards=rewards, dtype=dtype)
        theirs = trl_advantages(trainer, case)["advantages"]
        ours = L.group_advantages(case.rewards, G, scale_rewards, TrainConfig().advantage_eps)
        assert ours.dtype == theirs.dtype == dtype
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-7, atol=1e-12)
        close(ours, theirs, **tol)
        if groups > 1:
            assert theirs[G:2 * G].tolist() == [0.0] * G  # exactly 0 in TRL too, for a dyadic reward
    if G == 2 and scale_rewards == "group":  # ddof by hand: r = (a, b) -> ±(|a-b|/2) / (|a-b|/√2 + eps) ~ ±0.707
        assert abs(theirs[-1].item()) == pytest.approx(0.5 * math.sqrt(2), rel=1e-3)


def test_equal_float32_rewards_leave_trl_a_residue(tiny, tmp_path):
    """Documented on purpose (losses.group_advantages, tests/test_losses.py): six float32 rewards of 1.2
    (format 0.2 + correct 1.0: an all-correct group) have a mean 1 ulp off 1.2 and a torch std of ~1e-7.
    minigrpo gives the group advantage 0 exactly and counts it in frac_reward_zero_std; TRL gives every
    completion of the group the same advantage ~1.2e-3 (r - mean = 1.2e-7 over std + 1e-4) and, its
    isclose(std, 0) failing at 1e-7, does not count the group as zero-std."""
    rewards = torch.tensor([1.2] * 6 + [0.0, 1.2, 0.2, 1.2, 1.2, 1.2])
    trainer = trl_trainer(tiny, tmp_path, 12, G=6, micro=6, gas=2, loss_type="grpo", scale_rewards="group", beta=0.0)
    theirs = trl_advantages(trainer, make_case(2, 6, seed=0, rewards=rewards, dtype=torch.float32))["advantages"]
    ours = L.group_advantages(rewards, 6, "group")
    assert ours[:6].tolist() == [0.0] * 6
    assert (theirs[:6] == theirs[0]).all() and 1e-3 < theirs[0].item() < 2e-3
    close(ours[6:], theirs[6:], rtol=1e-5, atol=1e-6)
    flags = torch.zeros(12, dtype=torch.bool)
    assert completion_stats(6, rewards, flags, flags, flags, torch.ones(12))["frac_reward_zero_std"] == 0.5
    assert trainer._metrics["train"]["frac_reward_zero_std"] == [0.0]


@pytest.mark.parametrize("scale_rewards", L.SCALE_REWARDS)
def test_rollout_metrics_against_trls(tiny, tmp_path, scale_rewards):
    """reward: the same. frac_reward_zero_std: the same share of equal-reward groups, except under
    scale_rewards="batch", where TRL tests the batch std (docs/integrations.md). reward_std: minigrpo's is the
    mean of the group stds, TRL's the std of all rewards (docs/integrations.md: "not TRL's reward_std")."""
    case = make_case(3, 4, seed=3)
    trainer = trl_trainer(tiny, tmp_path, 12, G=4, micro=4, gas=3, loss_type="grpo", scale_rewards=scale_rewards,
                          beta=0.0)
    trl_advantages(trainer, case)
    theirs = {k: v[0] for k, v in trainer._metrics["train"].items()}
    flags = torch.zeros(12, dtype=torch.bool)
    ours = completion_stats(4, case.rewards, flags, flags, flags, case.lengths)
    close(ours["reward"], theirs["reward"])
    assert ours["frac_reward_zero_std"] == pytest.approx(1 / 3)
    assert theirs["frac_reward_zero_std"] == pytest.approx(0.0 if scale_rewards == "batch" else 1 / 3)
    close(theirs["reward_std"], case.rewards.std())
    close(ours["reward_std"], L.group_stats(case.rewards, 4)[1].mean())
    assert abs(ours["reward_std"] - theirs["reward_std"]) > 0.02


# ----------------------------------------------------------------------------- deliberate differences of a step
@pytest.mark.parametrize("equal_tokens", [True, False])
def test_step_metrics_token_weighted_where_trl_averages_micro_batches(both, equal_tokens):
    """TRL logs the mean over micro-batches of each micro-batch's token mean (an empty micro-batch counts as 0);
    minigrpo's step metrics are token means over the whole step (docs/trace-format.md §3; docs/integrations.md
    says which TRL logs). Equal when the micro-batches hold equally many tokens, else not."""
    lengths = [3] * 4 if equal_tokens else None
    case = make_case(1, 4, seed=5, lengths=lengths)
    trainer, theirs, ours = both(case, G=4, micro=1, loss_type="bnpo", scale_rewards="group", beta=0.04,
                                 epsilon_high=0.28, use_bias_correction_kl=False)
    logged = trl_logged(trainer)
    names = ["kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]
    if equal_tokens:
        for name in names:
            close(ours.step[name], logged[name], rtol=1e-6, atol=1e-7)
        return
    assert [s["num_tokens"].item() for s in ours.micro].count(0) == 1  # one micro-batch without tokens
    for name in names:
        per_micro = [micro_metric(s, name) if s["num_tokens"] else 0.0 for s in ours.micro]
        close(sum(per_micro) / len(per_micro), logged[name], rtol=1e-6, atol=1e-7)
    assert abs(ours.step["entropy"] - logged["entropy"]) > 1e-3


@pytest.mark.parametrize("loss_type", L.LOSS_TYPES)
def test_a_rollout_of_two_optimizer_steps(both, loss_type):
    """A rollout (TRL: generation batch) that spans two optimizer steps (steps_per_generation = 2 × accumulation):
    the same step. dapo: both divide by the MEAN tokens per step of the rollout (TRL: num_items_in_batch ×
    accumulation / steps_per_generation), not by the tokens of this very step (minigrpo did, 1.6× TRL here)."""
    case = make_case(3, 4, seed=2)
    trainer, theirs, ours = both(case, G=4, micro=2, steps=2, loss_type=loss_type, scale_rewards="group", beta=0.04,
                                 epsilon_high=0.28, use_bias_correction_kl=False)
    step_rows = [r for chunk in theirs.chunks for r in chunk]
    close(ours.advantages[step_rows], theirs.advantages[step_rows])
    assert int(theirs.num_items_in_batch) == int(case.mask.sum())  # the whole generation batch's tokens
    assert len(step_rows) == 6 and case.mask[step_rows].sum().item() != case.mask.sum().item() / 2  # tells them apart
    assert ours.num_items_in_batch == pytest.approx(case.mask.sum().item() / 2)
    close(ours.losses, theirs.losses)
    close(ours.grad, theirs.grad)


@pytest.mark.parametrize("loss_type", L.LOSS_TYPES)
@pytest.mark.parametrize("bias_kl", [False, True])
def test_one_step_in_float32(both, loss_type, bias_kl):
    """The trainers' dtype (float32 log-probs and rewards): the same step to float32 rounding. minigrpo's k3 is
    expm1(d) - d, TRL's exp(d) - d - 1: the same function, apart by float32 rounding near d = 0."""
    case = make_case(3, 4, seed=13, dtype=torch.float32)
    trainer, theirs, ours = both(case, G=4, micro=2, loss_type=loss_type, scale_rewards="group", beta=0.04,
                                 epsilon_high=0.28, use_bias_correction_kl=bias_kl)
    assert theirs.grad.dtype == ours.grad.dtype == torch.float32
    close(ours.advantages, theirs.advantages, rtol=1e-6, atol=1e-7)
    close(ours.losses, theirs.losses, rtol=1e-5, atol=1e-6)
    close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)
    for name in ("kl", "clip_ratio/region_mean"):
        mini = "kl/ratio_weighted" if name == "kl" and bias_kl else name
        got = [micro_metric(s, mini) if s["num_tokens"] else 0.0 for s in ours.micro]
        close(got, theirs.metrics[name], rtol=1e-5, atol=1e-6)


def test_knob_defaults_that_differ_from_trls():
    """Same names, other defaults: a run with either's defaults is not the other's; docs/training.md's table says
    so, row by row. advantage_eps (1e-4) is TRL's hard-coded constant."""
    import dataclasses

    from trl import GRPOConfig

    from minigrpo.config import field_default

    knobs = ("num_generations", "beta", "epsilon", "epsilon_high", "loss_type", "scale_rewards", "num_iterations",
             "max_completion_length", "temperature", "top_p", "use_bias_correction_kl")
    ours = {f.name: field_default(f) for f in dataclasses.fields(TrainConfig) if f.name in knobs}
    theirs = {f.name: f.default for f in dataclasses.fields(GRPOConfig) if f.name in knobs}
    assert set(ours) == set(theirs) == set(knobs)
    differ = {k: (ours[k], theirs[k]) for k in knobs if ours[k] != theirs[k]}
    assert differ == {"num_generations": (6, 8), "beta": (0.04, 0.0), "loss_type": ("grpo", "dapo"),
                      "num_iterations": (2, 1), "max_completion_length": (300, 512), "temperature": (0.7, 1.0),
                      "use_bias_correction_kl": (False, True)}
    assert TrainConfig().advantage_eps == 1e-4
    doc = (Path(__file__).parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    for knob, (mine, trls) in {**differ, "disable_dropout": (True, False)}.items():
        row = f"| `{knob}` | {str(mine).lower()} | {str(trls).lower()} |"
        assert row in doc, f"docs/training.md lacks the row {row}"
