"""One documented config for SFT, GRPO and PPO runs, with presets.

Knob names follow TRL's ``GRPOConfig`` (and TRL <= 1.12's ``PPOConfig``) wherever the meaning is the same
(``num_generations``, ``beta``, ``epsilon``, ``epsilon_high``, ``loss_type``,
``scale_rewards``, ``max_completion_length``, ``temperature``, ``learning_rate``,
``gradient_accumulation_steps``, ``num_iterations``, ``per_device_train_batch_size``,
``kl_coef``, ``vf_coef``, ``cliprange_value``, ``gamma``, ``lam``).

Precedence: dataclass defaults < preset < config file (TOML/JSON) < command-line flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the field and valid choices."""


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------
    task: str = "syllogism"  # any reasoning-gym dataset name
    task_kwargs: dict = field(default_factory=dict)  # passed to the dataset config (e.g. allow_some=false)
    model: str = "tiny"  # "tiny" (embedded, built by `sft`), "smollm2-135m" (offline), a local folder or a hub id
    algo: str = "grpo"  # grpo | ppo
    seed: int = 0
    train_size: int = 4000  # items in the training split
    eval_size: int = 500  # held-out items (different seed)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 (bf16: float32 master weights)

    # --- rollouts ------------------------------------------------------------------
    num_generations: int = 6  # G completions per prompt
    buffer_size: int = 500  # completions per rollout (replay buffer); rounded down to a multiple of G
    max_prompt_length: int = 512
    max_completion_length: int = 300
    temperature: float = 0.7
    top_p: float = 1.0
    sampling_batch_size: int = 64  # completions per generate call (a rollout is sampled in calls of this many)
    rollout_backend: str = "hf"  # hf (transformers generate) | fast (own decode loop: static KV cache, CUDA graphs)
    compile_decode: bool = False  # fast backend: torch.compile the decode step (fused kernels; compiles once per run)
    fused_decode: bool = False  # fast backend: decode steps with q/k/v and gate/up projections fused (Llama, Qwen3)

    # --- rewards -------------------------------------------------------------------
    format_weight: float = 0.2
    correctness_weight: float = 1.0
    penalize_premise_copy: bool = True  # propositional_logic: restating a premise earns no correctness

    # --- optimisation --------------------------------------------------------------
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant"  # constant | linear | cosine (RL; SFT has sft_lr_scheduler_type)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 4  # completions per micro-batch
    gradient_accumulation_steps: int = 12  # micro-batches per optimizer step
    num_iterations: int = 2  # passes over each rollout buffer
    max_steps: int = 100  # optimizer steps
    nan_policy: str = "stop"  # NaN/inf loss or gradient: stop (keep the last checkpoint) | skip (drop the update)
    disable_dropout: bool = True  # RL: policy (and critic) updates with dropout off (TRL's knob; TRL's default False)

    # --- GRPO ----------------------------------------------------------------------
    beta: float = 0.04  # weight of the k3 KL penalty to the reference policy
    use_bias_correction_kl: bool = False  # the penalty is ρ·k3 (TRL 1.16's default, True) instead of k3
    epsilon: float = 0.2  # lower clip: 1 - epsilon
    epsilon_high: Optional[float] = None  # upper clip: 1 + epsilon_high (None: = epsilon)
    loss_type: str = "grpo"  # grpo | dr_grpo | dapo | bnpo
    scale_rewards: str = "group"  # group | batch | none
    advantage_eps: float = 1e-4
    dynamic_sampling: bool = False  # DAPO: train on groups whose rewards differ; sample more prompts to refill
    max_num_gen_batches: int = 3  # dynamic_sampling: generation batches per rollout at most, then equal groups refill

    # --- PPO -----------------------------------------------------------------------
    critic: str = "separate"  # separate (value model = copy of the policy + head) | shared (head on the policy)
    kl_coef: float = 0.05  # per-token KL reward shaping: r_t = -kl_coef * (logp - logp_ref)
    vf_coef: float = 0.1
    cliprange_value: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True

    # --- SFT -----------------------------------------------------------------------
    sft_steps: int = 200  # optimizer steps, each on a random batch (used when sft_epochs == 0)
    sft_epochs: int = 0  # > 0: instead of sft_steps, this many shuffled passes over the sft_size examples
    sft_learning_rate: float = 1e-5
    sft_lr_scheduler_type: str = "constant"  # constant | linear | cosine
    sft_batch_size: int = 16
    sft_size: int = 2000  # items used for SFT (from the training split)
    sft_style: str = "form"  # syllogism SFT target: form (abstract form, then the answer) | rules (see sft_targets.py)

    # --- recording / bookkeeping ---------------------------------------------------
    trace: bool = True  # record every update to OUT/trace
    probe_completions: int = 2  # completions probed per update (-1: all of the update's batch)
    probe_top_k: int = 10
    probe_moved_positions: int = 2  # positions whose sampled-token probability moved most
    eval_every: int = 0  # evaluate on eval_n items every N steps (0: only before/after)
    eval_n: int = 500
    save_steps: int = 25  # checkpoint every N optimizer steps
    logging_steps: int = 1

    # ---------------------------------------------------------------------------------
    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def epsilon_upper(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def prompts_per_rollout(self) -> int:
        return max(1, self.buffer_size // self.num_generations)

    @property
    def completions_per_step(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def validate(self) -> "TrainConfig":
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"invalid --{name.replace('_', '-')}: {why}")

        for fld in dataclasses.fields(self):  # the Python API too: TrainConfig(trace="false") is not tracing off
            default = field_default(fld)
            setattr(self, fld.name, _typed(fld.name, getattr(self, fld.name), default))
        if not isinstance(self.task_kwargs, dict):
            bad("task_kwargs", f"{self.task_kwargs!r} is not a JSON object (a dict of task knobs)")

        choices = {
            "algo": ("grpo", "ppo"),
            "loss_type": ("grpo", "dr_grpo", "dapo", "bnpo"),
            "scale_rewards": ("group", "batch", "none"),
            "lr_scheduler_type": ("constant", "linear", "cosine"),
            "sft_lr_scheduler_type": ("constant", "linear", "cosine"),
            "critic": ("separate", "shared"),
            "device": ("auto", "cpu", "cuda"),
            "dtype": ("auto", "float32", "bfloat16"),
            "rollout_backend": ("hf", "fast"),
            "sft_style": ("form", "rules"),
            "nan_policy": ("stop", "skip"),
        }
        for name, valid in choices.items():
            value = getattr(self, name)
            if value not in valid:
                bad(name, f"{value!r} is not one of {', '.join(valid)}")
        if self.num_generations < 2:
            bad("num_generations", f"{self.num_generations} < 2; a group needs at least 2 completions (use 2 or more)")
        positive = ["learning_rate", "sft_learning_rate", "epsilon", "temperature", "max_grad_norm",
                    "cliprange_value", "advantage_eps"]
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                bad(name, f"{value!r} must be a finite number > 0")
        for name in ("learning_rate", "sft_learning_rate"):  # the optimizer holds it as a float32
            if getattr(self, name) > FLOAT32_MAX:
                bad(name, f"{getattr(self, name)!r} is beyond float32's range (about 3.4e38)")
        if self.temperature < MIN_TEMPERATURE:  # z / τ, and exp of log-prob gaps, would overflow float32
            bad("temperature", f"{self.temperature!r} must be >= {MIN_TEMPERATURE:g} (below it the tempered "
                               f"logits, and the ratios and KL of their log-probs, overflow float32; for "
                               f"near-greedy sampling use e.g. 0.01)")
        if self.epsilon_high is not None and not (math.isfinite(self.epsilon_high) and self.epsilon_high > 0):
            bad("epsilon_high", f"{self.epsilon_high!r} must be a finite number > 0")
        if self.epsilon >= 1:
            bad("epsilon", f"{self.epsilon} must be < 1 so that 1 - epsilon > 0")
        for name in ("beta", "kl_coef", "vf_coef", "weight_decay", "format_weight", "correctness_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                bad(name, f"{value!r} must be a finite number >= 0")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"{self.top_p} must be in (0, 1]")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                bad(name, f"{value!r} must be in [0, 1) (Adam's moment decay)")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                bad(name, f"{getattr(self, name)} must be in [0, 1]")
        for name in ("buffer_size", "max_completion_length", "max_prompt_length", "per_device_train_batch_size",
                     "gradient_accumulation_steps", "num_iterations", "max_steps", "train_size", "eval_size",
                     "sft_batch_size", "sft_size", "probe_top_k", "sampling_batch_size", "save_steps", "eval_n"):
            if getattr(self, name) < 1:
                bad(name, f"{getattr(self, name)} must be >= 1")
        for name in ("sft_steps", "sft_epochs", "warmup_steps", "eval_every", "probe_moved_positions", "logging_steps"):
            if getattr(self, name) < 0:
                bad(name, f"{getattr(self, name)} must be >= 0")
        if not 0 <= self.seed < 2**32:
            bad("seed", f"{self.seed} must be in [0, 2**32 - 1] (numpy's seed range)")
        if self.probe_completions < -1:
            bad("probe_completions", f"{self.probe_completions} must be -1 (all) or >= 0")
        if self.max_num_gen_batches < 1:
            bad("max_num_gen_batches", f"{self.max_num_gen_batches} must be >= 1")
        if self.compile_decode and self.rollout_backend != "fast":
            bad("compile_decode", "compiles the fast backend's decode step; use it with --rollout-backend fast")
        if self.fused_decode and self.rollout_backend != "fast":
            bad("fused_decode", "changes the fast backend's decode step; use it with --rollout-backend fast")
        if self.dynamic_sampling and self.algo != "grpo":
            bad("dynamic_sampling", "keeps the groups whose rewards differ, which only GRPO's group advantages need; "
                                    "use it with --algo grpo")
        if self.buffer_size < self.num_generations:
            bad("buffer_size", f"{self.buffer_size} is smaller than one group (num_generations={self.num_generations})")
        if not isinstance(self.task_kwargs, dict):
            bad("task_kwargs", "must be a table/dict of the task's config knobs")
        try:  # the run's train_config.json and the trace keep them, and the scoring worker reads them back
            json.dumps(self.task_kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            bad("task_kwargs", f"its knobs must be JSON values (strings, numbers, true/false, lists, tables): "
                               f"{exc}; write a date as a string, \"2000-01-01\"")
        for knob, flag in (("seed", "--seed"), ("size", "--train-size / --eval-size")):
            if knob in self.task_kwargs:
                bad("task_kwargs", f"{knob!r} is set by {flag}, not a task knob")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Seed recipe (the article's table): lr 1e-6, temperature 0.7, G = 6, buffer 500,
# gradient accumulation 12, 300 new tokens; its SFT warm-up: about 200 examples, 3 epochs,
# lr 5e-5. The syllogism SFT target of a real model is a short chain of rule checks in
# words (sft_style="rules"): a pretrained model reads English, not the tiny model's codes.
# dtype auto: bf16 on a GPU. An AdamW step at lr 1e-6 (about 1e-6 per weight) is far below
# bf16's spacing near typical weights (~1e-4), so the optimiser steps float32 master copies
# and rounds them into the bf16 model (minigrpo/optim.py, tests/test_optim.py).
# sampling_batch_size=512 samples a whole 500-completion buffer (and a 500-item eval) in
# one generate call: on a GPU a decode step of a 135M model is bound by per-step overhead
# (93 ms at batch 48 on an H100, issue 5), not by the batch, so one call replaces ten.
_SEED_RECIPE: dict[str, Any] = dict(
    learning_rate=1e-6, temperature=0.7, num_generations=6, buffer_size=500,
    gradient_accumulation_steps=12, max_completion_length=300, per_device_train_batch_size=4,
    num_iterations=2, sft_learning_rate=5e-5, sft_size=200, sft_epochs=3, sft_batch_size=16,
    sft_style="rules", sampling_batch_size=512,
)

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded model: tuned so that a 2-core CPU run visibly learns in minutes.
    "tiny": dict(
        model="tiny", learning_rate=3e-4, temperature=1.0, num_generations=8, buffer_size=256,
        per_device_train_batch_size=64, gradient_accumulation_steps=2, num_iterations=2,
        max_completion_length=48, max_prompt_length=160, max_steps=600, lr_scheduler_type="cosine", beta=0.04,
        sft_steps=200, sft_learning_rate=3e-3, sft_batch_size=32, sft_size=3000,
        sampling_batch_size=256, save_steps=50, kl_coef=0.02, vf_coef=0.5, lam=0.95,
    ),
    "smollm2-135m": dict(model="smollm2-135m", **_SEED_RECIPE),
    "smollm-135m": dict(model="HuggingFaceTB/SmolLM-135M-Instruct", **_SEED_RECIPE),
    "smollm-360m": dict(model="HuggingFaceTB/SmolLM-360M-Instruct", **_SEED_RECIPE),
    "qwen3-0.6b": dict(model="Qwen/Qwen3-0.6B", **_SEED_RECIPE),
}


# the knobs one algorithm does not read (a GRPO run: the critic's; a PPO run: the group advantages' and β)
PPO_ONLY = frozenset({"critic", "kl_coef", "vf_coef", "cliprange_value", "gamma", "lam", "whiten_advantages"})
GRPO_ONLY = frozenset({"beta", "use_bias_correction_kl", "scale_rewards", "advantage_eps", "dynamic_sampling",
                       "max_num_gen_batches"})


def unread_knobs(config: dict) -> frozenset:
    """The RL knobs a run with ``config`` does not read: changing one changes nothing it computes or records,
    so a resume does not refuse or restart over it, and the command line notes it."""
    unread = PPO_ONLY if config.get("algo") == "grpo" else GRPO_ONLY
    if not config.get("dynamic_sampling"):
        unread = unread | {"max_num_gen_batches"}
    return unread


FLOAT32_MAX = 3.4028234663852886e38
MIN_TEMPERATURE = 1e-6


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def field_default(fld: dataclasses.Field) -> Any:
    """A dataclass field's default (its factory's value for a list or dict; MISSING where it has none)."""
    if fld.default is not dataclasses.MISSING:
        return fld.default
    return fld.default_factory() if fld.default_factory is not dataclasses.MISSING else dataclasses.MISSING


def _default_of(name: str) -> Any:
    """The default of the TrainConfig field ``name`` (what its type is read from)."""
    return field_default(next(f for f in dataclasses.fields(TrainConfig) if f.name == name))


def _coerce(name: str, value: Any) -> Any:
    """Turn a string (from the command line) or a file value into the field's type."""
    default = _default_of(name)
    if not isinstance(value, str):
        return _typed(name, value, default)
    text = value.strip()
    if name == "task_kwargs":
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            raise ConfigError(f"invalid --task-kwargs: {value!r} is not a JSON object, e.g. '{{\"allow_some\": false}}'")
        if not isinstance(parsed, dict):
            raise ConfigError(f"invalid --task-kwargs: {value!r} is not a JSON object")
        return parsed
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float) or name == "epsilon_high":
            return None if name == "epsilon_high" and text.lower() in ("none", "null") else float(text)
    except ValueError:
        kind = ("a true/false value" if isinstance(default, bool) else "an integer" if isinstance(default, int)
                else "a number")
        raise ConfigError(f"invalid --{name.replace('_', '-')}: {value!r} is not {kind}")
    return text


def _typed(name: str, value: Any, default: Any) -> Any:
    """A value from a config file (TOML/JSON already typed it): check it has the field's type."""
    flag = f"--{name.replace('_', '-')}"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if name == "task_kwargs" or (name == "epsilon_high" and value is None):
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"invalid {flag}: {value!r} is not true/false")
    if isinstance(default, int):
        if is_int:
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"invalid {flag}: {value!r} is not an integer")
    if isinstance(default, float) or name == "epsilon_high":
        if is_int or isinstance(value, float):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"invalid {flag}: {value!r} is too large for a float") from None
        raise ConfigError(f"invalid {flag}: {value!r} is not a number")
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"invalid {flag}: {value!r} is not a string")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; pass a TOML or JSON file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r} ({exc.strerror}); check its permissions") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except Exception as exc:  # noqa: BLE001 - one line for any parse error
        raise ConfigError(f"cannot parse config file {str(path)!r}: {exc}".splitlines()[0])
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of fields")
    return data


# fields renamed because TRL has the old name with another meaning: old -> (new, why)
RENAMED = {"generation_batch_size": ("sampling_batch_size", "completions per generate call; TRL's "
                                     "generation_batch_size is the rollout size, here buffer_size")}


def build_config(preset: Optional[str] = None, file: Optional[str] = None,
                 overrides: Optional[dict[str, Any]] = None) -> TrainConfig:
    """defaults < preset < file < overrides; validated. A file may name a preset (``preset = "tiny"``):
    it applies when no ``preset`` is passed (a ``--preset`` flag wins over the file's)."""
    values: dict[str, Any] = {}
    data = load_config_file(file) if file else {}
    if preset is None and "preset" in data:
        preset = data["preset"]
        if not isinstance(preset, str):
            raise ConfigError(f"invalid preset {preset!r} in config file {file!r}: choose one of {', '.join(PRESETS)}")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    for source in (data, overrides or {}):
        for key, value in source.items():
            name = key.replace("-", "_")
            if name == "preset":
                continue
            if name in RENAMED:
                raise ConfigError(f"config field {key!r} is now {RENAMED[name][0]!r}: {RENAMED[name][1]}")
            if name not in field_names():
                raise ConfigError(f"unknown config field {key!r}: see `minigrpo train --help` for the fields")
            values[name] = _coerce(name, value) if source is not data else _from_file(name, value)
    in_file = {key.replace("-", "_") for key in data}
    if "sft_steps" in in_file and "sft_epochs" not in in_file and "sft_epochs" not in (overrides or {}):
        values["sft_epochs"] = 0  # the file's counted steps, not a preset's epochs (a file with both: as written)
    return TrainConfig(**values).validate()


def _from_file(name: str, value: Any) -> Any:
    """A config file's value: TOML/JSON typed it, so a string is not parsed as a number or a switch (as a
    command line's is) but refused; TOML has no null, so ``epsilon_high = "none"`` means null there."""
    if name == "epsilon_high" and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    return _typed(name, value, _default_of(name))
