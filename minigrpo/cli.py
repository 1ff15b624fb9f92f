"""Command line: ``minigrpo sft | train | eval | trace | render | plot | lecture | fetch``.

Every field of :class:`minigrpo.config.TrainConfig` can be set as ``--field-name value``.
Errors end with one line on stderr (``minigrpo: error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import shlex
import sys

from .config import ConfigError, TrainConfig, build_config, field_default, field_names

SHARED_FLAGS = ("task", "model", "seed", "algo")


def json_line(result: dict) -> str:
    """One strict-JSON object: a NaN or inf (e.g. no majority baseline) becomes null, which every parser reads."""
    from .trace.encode import jsonable

    return json.dumps(jsonable(result, "eval result"), allow_nan=False)


def _add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--preset", help="tiny | smollm2-135m | smollm-135m | smollm-360m | qwen3-0.6b")
    parser.add_argument("--config", help="TOML or JSON file of config fields")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    if command == "eval":
        out_help = "not used: eval writes no files (refused)"
        steps_help = "not used: eval trains nothing"
    elif command == "sft":
        out_help = "output folder (the SFT model); default runs/sft-TASK"
        steps_help = (f"SFT optimizer steps (--sft-steps; switches a preset's --sft-epochs off); "
                      f"default {defaults['sft_steps']!r} when --sft-epochs is 0")
    else:
        out_help = "output folder (model, trace, checkpoint); default runs/train-ALGO-TASK"
        steps_help = f"optimizer steps; default {defaults['max_steps']!r}"
    parser.add_argument("--out", help=out_help)
    parser.add_argument("--max-steps", help=steps_help)
    fields = argparse.ArgumentParser.add_argument_group(
        parser, "config fields (see minigrpo/config.py; the defaults shown are the config's own: a --preset "
                "or --config sets its values first, then these flags override them)")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "max_steps":
            continue
        default = field_default(f)
        fields.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar="V",
                            help=f"default {default!r}")


def _config_from_args(args: argparse.Namespace, command: str) -> TrainConfig:
    overrides = {name: getattr(args, name) for name in field_names()
                 if getattr(args, name, None) is not None and name != "max_steps"}
    if args.max_steps is not None:
        if command == "sft" and args.sft_steps is not None:
            raise ConfigError("--max-steps and --sft-steps both set the SFT steps of `minigrpo sft`: give one")
        overrides["sft_steps" if command == "sft" else "max_steps"] = args.max_steps
    steps_given = command == "sft" and (getattr(args, "sft_steps", None) is not None or args.max_steps is not None)
    if steps_given and getattr(args, "sft_epochs", None):  # epochs would win, and the steps asked for be ignored
        raise ConfigError("--sft-epochs and --sft-steps (or sft's --max-steps) both say how long SFT runs: give one")
    if steps_given:  # counted steps replace the epochs of a preset or a config file
        overrides["sft_epochs"] = 0
    if command == "eval" and args.preset is None and args.config is None:
        recorded = _model_eval_defaults(overrides.get("model"))
        if overrides.get("task", recorded.get("task")) != recorded.get("task"):
            recorded.pop("task_kwargs", None)  # another task's knobs
        overrides = {**recorded, **overrides}
    return build_config(args.preset, args.config, overrides)


# what `minigrpo eval` takes from the evaluated model's own run when no --preset or --config says otherwise
MODEL_EVAL_DEFAULTS = ("task", "task_kwargs", "max_prompt_length", "max_completion_length",
                       "format_weight", "correctness_weight", "penalize_premise_copy")


def _model_eval_defaults(model: str | None) -> dict:
    """The task, lengths and reward weights of the run that wrote ``model`` (its ``train_config.json``), so
    that a plain ``minigrpo eval --model runs/grpo`` scores as that run's own evaluation did; {} for a
    model minigrpo did not write. Flags override them."""
    from .heldout import training_runs

    runs = training_runs(model) if model else []
    if not runs:
        return {}
    return {key: runs[0][key] for key in MODEL_EVAL_DEFAULTS if key in runs[0]}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``minigrpo: error: ...``, exit 2) like every other error."""

    def error(self, message: str):
        from .config import RENAMED

        for old, (new, why) in RENAMED.items():
            if f"--{old.replace('_', '-')}" in message:
                message += f" (now --{new.replace('_', '-')}: {why})"
        self.exit(2, f"minigrpo: error: {message}; see `{self.prog} --help`\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minigrpo", description="A small, exact GRPO/PPO trainer whose every "
                                     "update is recorded to a trace that Manim scenes replay.")
    sub = parser.add_subparsers(dest="command", required=True)

    sft = sub.add_parser("sft", help="supervised warm-up (builds the tiny model when --model tiny)")
    _add_config_flags(sft, "sft")

    train = sub.add_parser("train", help="RL training (GRPO or PPO) with a trace of every update")
    _add_config_flags(train, "train")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")

    ev = sub.add_parser("eval", help="held-out accuracy of a model")
    _add_config_flags(ev, "eval")
    ev.add_argument("--n", type=int, default=500, help="number of eval items")
    ev.add_argument("--json", action="store_true", help="print one JSON object")

    trace = sub.add_parser("trace", help="inspect, export, validate or downsample a trace")
    tsub = trace.add_subparsers(dest="trace_command", required=True)
    ins = tsub.add_parser("inspect", help="print a summary")
    ins.add_argument("path")
    val = tsub.add_parser("validate", help="check every record and number; exit 1 if a problem is found")
    val.add_argument("path")
    exp = tsub.add_parser("export", help="write the scalar metrics as CSV")
    exp.add_argument("path")
    exp.add_argument("--csv", required=True, help="output CSV file")
    down = tsub.add_parser("downsample", help="copy a trace keeping all rollouts and scalars, probes of some updates")
    down.add_argument("src")
    down.add_argument("dst", help="new folder (never overwritten)")
    down.add_argument("--probe-every", type=int, required=True, metavar="N", help="keep the probes of every N-th update")
    down.add_argument("--keep-first", type=int, default=0, metavar="K", help="and of the first K updates (default 0)")

    render = sub.add_parser("render", help="render Manim scenes from a trace into renders/")
    render.add_argument("--trace", help="trace or run folder (default: the shipped demo trace)")
    render.add_argument("--ppo-trace", help="PPO trace for ppo_vs_grpo")
    render.add_argument("--scene", help="scene name, e.g. ppo_logits")
    render.add_argument("--all", action="store_true",
                        help="render every scene (on a PPO trace: every scene but the GRPO-only ones)")
    render.add_argument("-q", "--quality", default="l", choices=list("lmhk"),
                        help="Manim quality: l 480p15 (default), m 720p30, h 1080p60, k 2160p60")
    render.add_argument("--steps", help="update range a:b")
    render.add_argument("--probe", help="probe index")
    render.add_argument("-p", "--preview", action="store_true")

    plot = sub.add_parser("plot", help="figures of a run for slides (PNG + SVG) into renders/plots/NAME")
    plot.add_argument("path", metavar="RUN_OR_TRACE", help="run folder (trace/ + summary.json) or trace folder")
    plot.add_argument("-o", "--out", help="output folder (default renders/plots/<run name>)")

    lecture = sub.add_parser("lecture", help="every scene of a trace as one video with chapters, stills and slides")
    lecture.add_argument("--trace", help="trace or run folder (default: the shipped demo trace)")
    lecture.add_argument("--ppo-trace", help="PPO trace for ppo_vs_grpo (default: the shipped demo PPO trace)")
    lecture.add_argument("-q", "--quality", default="l", choices=list("lmhk"),
                         help="Manim quality: l 480p15 (default), m 720p30, h 1080p60, k 2160p60")
    lecture.add_argument("-j", "--jobs", type=int, default=0, help="scenes rendered at once (default: CPU count)")
    lecture.add_argument("--scenes", help="comma-separated subset, e.g. ppo_logits,kl_penalty (default: all)")
    lecture.add_argument("--steps", help="update range a:b for every scene")
    lecture.add_argument("-o", "--out", help="output folder (default renders/lecture)")
    lecture.add_argument("--no-plots", action="store_true", help="leave the figures out of the slides")

    fetch = sub.add_parser("fetch", help="fetch and convert an offline model (smollm2-135m)")
    fetch.add_argument("name", choices=["smollm2-135m"])
    parser.commands = dict(sub.choices)  # name -> its parser (its errors point at its own --help)
    return parser


def _print_table(summary: dict) -> None:
    before, after = summary["before"], summary["after"]
    base = after.get("majority_baseline", math.nan)
    rows = [("accuracy", before["accuracy"], after["accuracy"]), ("mean score", before["mean_score"], after["mean_score"]),
            ("format rate", before["format_rate"], after["format_rate"])]
    print(f"\n{'':<22}{'before':>10}{'after':>10}")
    for name, b, a in rows:
        print(f"{name:<22}{b:>10.3f}{a:>10.3f}")
    print(f"{'majority baseline':<22}{base:>10.3f}{base:>10.3f}")
    print(f"{'eval items':<22}{after['n']:>10d}")
    print(f"{'train seconds':<22}{summary['train_seconds']:>10.1f}")
    if "mean_step_time" in summary:
        print(f"{'mean step time (s)':<22}{summary['mean_step_time']:>10.3f}")
    print(f"{'peak memory (MB)':<22}{summary['peak_memory_mb']:>10.1f}")


def _run(args: argparse.Namespace) -> int:
    if args.command == "trace" and args.trace_command == "downsample":
        from .trace.downsample import cli_downsample

        return cli_downsample(args.src, args.dst, args.probe_every, args.keep_first)
    if args.command == "trace":
        from .trace.inspect import cli_export, cli_inspect, cli_validate

        if args.trace_command == "validate":
            return cli_validate(args.path)
        return cli_inspect(args.path) if args.trace_command == "inspect" else cli_export(args.path, args.csv)
    if args.command == "render":
        from .render import render

        return render(args.scene, args.trace, quality=args.quality, steps=args.steps, probe=args.probe,
                      all_scenes=args.all, ppo_trace=args.ppo_trace, preview=args.preview)
    if args.command in ("plot", "lecture"):
        from .lecture import LectureError
        from .plot_data import PlotError

        try:
            if args.command == "plot":
                from .plot import plot

                plot(args.path, args.out)
                return 0
            from .lecture import build_lecture

            return build_lecture(args.trace, args.ppo_trace, quality=args.quality, jobs=args.jobs, scenes=args.scenes,
                                 steps=args.steps, out=args.out, plots=not args.no_plots)
        except (PlotError, LectureError) as exc:
            print(f"minigrpo: error: {exc}", file=sys.stderr)
            return 2
    if args.command == "fetch":
        from .smollm2 import fetch_smollm2

        print(fetch_smollm2())
        return 0

    cfg = _config_from_args(args, args.command)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" / "Writing model shards" bars between our lines
    if args.command == "eval" and args.n < 1:
        raise ConfigError(f"invalid --n: {args.n} must be >= 1 (the number of held-out items to evaluate)")
    if args.command == "eval" and args.out:
        raise ConfigError("eval prints its result and writes no files: drop --out (use --json > FILE to keep it)")
    if args.command == "eval" and args.eval_n is not None:
        raise ConfigError("eval counts its items with --n; --eval-n is how many items training evaluates")
    if args.command == "eval":
        _note_unused_eval_flags(args)
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out is empty; pass the folder for the run, or leave the flag out for the default")
    out = args.out or (f"runs/train-{cfg.algo}-{cfg.task}" if args.command == "train" else f"runs/sft-{cfg.task}")
    if args.command in ("sft", "train"):
        _check_out(out, cfg.model, args.command, resume=getattr(args, "resume", False))
        _note_unused_run_flags(args, cfg)
    if args.command == "eval":
        from .evaluate import evaluate
        from .heldout import trained_before
        from .models import load_model
        from .runtime import pick_device, pick_dtype
        from .tasks import load_train_eval

        device = pick_device(cfg.device)
        model, tokenizer = load_model(cfg.model, device=device, dtype=pick_dtype(cfg.dtype, device))
        _, eval_data = load_train_eval(cfg.task, cfg.train_size, args.n, cfg.seed,
                                       also_exclude=trained_before(cfg), **cfg.task_kwargs)
        result = evaluate(model, tokenizer, eval_data, cfg, n=args.n)
        result.update(task=cfg.task, model=cfg.model)
        if args.json:
            print(json_line(result))
        else:
            for key, value in result.items():
                print(f"{key:<20}{value}")
        return 0

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.command == "sft":
        from .sft import run_sft

        summary = run_sft(cfg, out, log=log)
    else:
        from .grpo import GRPOTrainer
        from .ppo import PPOTrainer

        if cfg.model == "tiny":
            raise ConfigError("--model tiny is built by `minigrpo sft --preset tiny --out runs/sft`; "
                              "then train with --model runs/sft")
        trainer_cls = GRPOTrainer if cfg.algo == "grpo" else PPOTrainer
        summary = trainer_cls(cfg, out, resume=args.resume, log=log).train()
        if os.environ.get("RANK", "0") != "0":  # data-parallel run: rank 0 reports
            return 0
    _print_table(summary)
    print(f"\nmodel saved in {out} (load it with --model {shlex.quote(str(out))})")
    return 0


# The config fields `minigrpo eval` reads: it decodes greedily, one completion per item, and trains nothing.
EVAL_FIELDS = frozenset({
    "task", "task_kwargs", "model", "seed", "train_size", "device", "dtype", "rollout_backend",
    "max_prompt_length", "max_completion_length", "sampling_batch_size",
    "format_weight", "correctness_weight", "penalize_premise_copy",
})


def _note_unused_eval_flags(args: argparse.Namespace) -> None:
    """One stderr line naming the flags eval ignores (a train command turned into an eval, say); a preset's or
    a config file's other fields are expected and pass silently."""
    unused = [f"--{name.replace('_', '-')}" for name in field_names()
              if name not in EVAL_FIELDS and getattr(args, name, None) is not None]
    if unused:
        print(f"minigrpo: note: eval decodes greedily and trains nothing, so {', '.join(unused)} "
              f"{'has' if len(unused) == 1 else 'have'} no effect", file=sys.stderr)


# What `minigrpo sft` reads: the task, the model, the SFT knobs, AdamW's shared ones, and what its evaluations
# before and after read (greedy decoding; the fast backend, uncompiled)
SFT_FIELDS = EVAL_FIELDS | {"eval_size", "eval_n", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm",
                            "sft_steps", "sft_epochs", "sft_learning_rate", "sft_lr_scheduler_type", "sft_batch_size",
                            "sft_size", "sft_style"}
SFT_ONLY = frozenset(name for name in SFT_FIELDS if name.startswith("sft_"))


def _note_unused_run_flags(args: argparse.Namespace, cfg) -> None:
    """One stderr line per reason for flags a train or sft run does not read (a PPO knob on a GRPO run, an SFT
    knob on RL, ...): they would otherwise pass without a word. A preset's or a file's fields pass silently."""
    from .config import PPO_ONLY, unread_knobs

    if os.environ.get("RANK", "0") != "0":  # data parallel: rank 0 says it
        return
    given = {name for name in field_names() if getattr(args, name, None) is not None}
    if args.command == "sft":
        given.discard("max_steps")  # sft's --max-steps is its sft_steps
        groups = [(sorted(given - SFT_FIELDS), "SFT does not read")]
    else:
        unread = unread_knobs(cfg.to_dict())
        by_algo = unread & PPO_ONLY if cfg.algo == "grpo" else unread
        groups = [(sorted(given & SFT_ONLY), "RL training does not read the SFT knobs"),
                  (sorted(given & by_algo), f"a {cfg.algo.upper()} run does not read"),
                  (sorted(given & (unread - by_algo)), "without --dynamic-sampling nothing reads")]
    for names, why in groups:
        if names:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in names)
            print(f"minigrpo: note: {why} {flags}: {'it has' if len(names) == 1 else 'they have'} no effect",
                  file=sys.stderr)


def _check_out(out: str, model: str, command: str, resume: bool = False) -> None:
    """Refuse an --out that cannot become the run's folder, that is the model the run starts from,
    or that holds a model a new run would replace (a finished run, an SFT model)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; pass a folder for the run (it is created if missing)")
    if os.path.isdir(model) and os.path.realpath(out) == os.path.realpath(model):
        raise ConfigError(f"--out {out} is the --model folder; the run would overwrite the model it starts from "
                          f"(and its reference): choose another --out")
    if resume and os.path.isfile(os.path.join(out, "config.json")) and \
            not os.path.isdir(os.path.join(out, "checkpoint")):
        raise ConfigError(f"--out {out} holds a model (config.json) but no checkpoint to resume: it is not a "
                          f"training run this command can continue (an SFT model?); choose a new --out")
    if not resume and os.path.isfile(os.path.join(out, "config.json")):
        again = ", or add --resume to continue the run in it" \
            if command == "train" and os.path.isdir(os.path.join(out, "checkpoint")) else ""
        raise ConfigError(f"--out {out} already holds a model (config.json), which this run would replace: choose "
                          f"a new --out{again} (or delete the folder first)")
    if os.path.isdir(out):
        return
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {out} cannot be created: {parent} is a file; pass a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be created: no permission to write in {parent}; pass a folder "
                          f"you can write to")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail on the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def _join_negative_numbers(argv: list[str]) -> list[str]:
    """``--learning-rate -1e-5`` -> ``--learning-rate=-1e-5`` (argparse would read -1e-5 as a flag)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and arg.startswith("-"):
            try:
                float(arg)
            except ValueError:
                pass
            else:
                out[-1] = f"{out[-1]}={arg}"
                continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    try:  # torch, transformers and reasoning-gym take a second or two to import: a Ctrl-C then is one line too
        from .models import ModelLoadError
        from .runtime import TrainingError
        from .tasks import TaskError
        from .trace.reader import trace_warnings_as_lines
        from .trace.schema import TraceError
    except KeyboardInterrupt:
        print("minigrpo: interrupted", file=sys.stderr)
        return 130

    parser = _parser()
    args, unknown = parser.parse_known_args(_join_negative_numbers(sys.argv[1:] if argv is None else argv))
    if unknown:  # said by the subcommand's parser, whose --help lists its flags
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with trace_warnings_as_lines():
            return _run(args)
    except (ConfigError, TaskError, ModelLoadError, TrainingError, TraceError) as exc:
        # a bad config or task, an agreed stop, fail alike on every data-parallel rank: rank 0 alone says so;
        # what another rank met on its own is said with its rank
        other_rank = os.environ.get("WORLD_SIZE", "1") not in ("", "1") and os.environ.get("RANK", "0") != "0"
        if not other_rank:
            print(f"minigrpo: error: {exc}", file=sys.stderr)
        elif not (isinstance(exc, (ConfigError, TaskError)) or getattr(exc, "every_rank", False)):
            print(f"minigrpo: error: [rank {os.environ.get('RANK')}] {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minigrpo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output stopped reading (`| head`): not an error of ours
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped this way
    except OSError as exc:  # a folder that cannot be made, a file that cannot be written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"minigrpo: error: {where}{exc.strerror or exc}; check the path and its permissions", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
