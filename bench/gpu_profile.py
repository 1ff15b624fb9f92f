"""Where one of our GRPO steps spends its time: a torch.profiler table of one step after warm-up.

    python bench/gpu_profile.py                  # CUDA: SmolLM-135M architecture, the gpu_step.py config
    python bench/gpu_profile.py --tiny           # CPU smoke size (the default without CUDA)

The bench task and model of bench/gpu_step.py. After ``--warmup`` steps, one step runs under
the profiler with its parts labelled (generation, the π_old/π_ref scoring passes, the probes'
passes, each micro-batch's loss, backward, gradient clipping, the optimizer step, the trace
writes). Prints, last, per part, wall seconds (CPU side) and GPU seconds of the kernels it launched,
after the operators with the most CPU time and the most GPU time; writes the tables to
$OUT/gpu_profile.txt when OUT is set. A part whose CPU seconds exceed its GPU seconds is bound
by launching work, not by the GPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import gpu_step  # noqa: E402

PARTS = []  # the labels of the functions wrapped in record_function, in the order of the table


TIMERS: dict[str, list[float]] = {}  # --timers: tag -> [calls, seconds] in the measured step
MEASURING = {"on": False, "timers": False}


def label(owner, name: str, tag: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapped(*a, **k):
        if not MEASURING["timers"]:
            with record_function(tag):
                return original(*a, **k)
        gpu_step.sync()
        t0 = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            gpu_step.sync()
            if MEASURING["on"]:
                entry = TIMERS.setdefault(tag, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - t0

    setattr(owner, name, wrapped)
    PARTS.append(tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="smollm-135m", choices=[a for a in gpu_step.ARCHS if a != "tiny"])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile-decode", action="store_true")
    parser.add_argument("--fused-decode", action="store_true")
    parser.add_argument("--micro-batch", type=int, default=None, help="completions per micro-batch (0: all in one)")
    parser.add_argument("--compile-blocks", choices=("none", "norm-mlp", "norm-mlp-rope"), default="none",
                        help="experiment: the scoring and update passes run the decoder's RMSNorms and MLPs "
                             "(and RoPE) through torch.compile (regional, dynamic shapes)")
    parser.add_argument("--rows", type=int, default=15, help="operator rows per table")
    parser.add_argument("--update-only", action="store_true",
                        help="profile the measured step from its π_ref pass to the end of its update (forward, "
                             "backward, optimizer step), not the generation, whose graph replays make a large profile")
    parser.add_argument("--timers", action="store_true",
                        help="no profiler: wall seconds per part, the GPU synchronised around each (cheap)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or device == "cpu"
    arch = "tiny" if tiny else args.arch
    size = dict(prompts=4, num_generations=2, new_tokens=16, micro_batch=8) if tiny else \
        dict(prompts=8, num_generations=6, new_tokens=300, micro_batch=16)
    if args.micro_batch is not None:
        size["micro_batch"] = args.micro_batch or size["prompts"] * size["num_generations"]
    run = argparse.Namespace(**size, steps=1, warmup=args.warmup, backend="fast")
    if device == "cpu":
        torch.set_num_threads(1)
    gpu_step.stub_reasoning_gym()
    lengths = (6, 12) if tiny else (22, 41)
    gpu_step.install_bench_task(gpu_step.make_prompts(run.prompts, lengths, gpu_step.ARCHS[arch][1]["vocab_size"]))

    from minigrpo import experience, grpo, optim, probes, trainer
    from minigrpo.trace import writer

    label(experience, "generate", "generation")
    label(experience, "score_logprobs_and_hidden", "logp old/ref passes")
    label(probes.ProbeRecorder, "start", "probes: before")
    label(probes.ProbeRecorder, "finish", "probes: after")
    label(grpo.GRPOTrainer, "micro_loss", "micro-batch loss")
    label(torch.Tensor, "backward", "backward")
    label(torch.nn.utils, "clip_grad_norm_", "clip grad norm")
    label(optim.MasterWeightAdamW, "step", "optimizer step")
    label(writer.TraceWriter, "write_step", "trace: write step")
    label(writer.TraceWriter, "write_rollout", "trace: write rollout")
    label(trainer.RLTrainer, "_update", "update (all)")
    label(trainer, "collect", "rollout (all)")
    label(grpo, "completion_logprobs_entropy", "  update forward")
    label(grpo, "grpo_token_loss", "  update loss formula")
    label(grpo, "token_stats", "  update stats")
    MEASURING["timers"] = args.timers
    if args.compile_blocks != "none":
        compile_blocks(args.compile_blocks)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    prof = profile(activities=activities)
    seen = {"lines": 0, "wall": 0.0}

    whole_step = not (args.timers or args.update_only)

    def on_log(line: str) -> None:  # one call per step (after "eval before"): profile step warmup + 1
        gpu_step.sync()
        seen["lines"] += 1
        if seen["lines"] == args.warmup + 1:
            seen["wall"] = time.perf_counter()
            MEASURING["on"] = True
            if whole_step:
                prof.start()
        elif seen["lines"] == args.warmup + 2:
            MEASURING["on"] = False
            if whole_step:
                prof.stop()
            seen["wall"] = time.perf_counter() - seen["wall"]

    if args.update_only and not args.timers:
        # one profiler window, from the measured rollout's scoring passes to the end of its update
        # (a torch profiler restarted after stop() keeps only its last window)
        update, score = trainer.RLTrainer._update, experience.score_logprobs_and_hidden
        window = {"open": False}

        def open_window():
            if MEASURING["on"] and not window["open"]:
                gpu_step.sync()
                prof.start()
                window["open"] = True

        def profiled_score(*a, **k):
            open_window()
            return score(*a, **k)

        def profiled_update(self, *a, **k):
            open_window()
            try:
                return update(self, *a, **k)
            finally:
                if window["open"] and MEASURING["on"]:
                    gpu_step.sync()
                    prof.stop()
                    window["open"] = MEASURING["on"] = False

        experience.score_logprobs_and_hidden = profiled_score
        trainer.RLTrainer._update = profiled_update

    from minigrpo.grpo import GRPOTrainer

    # each part on its own: an update's record is written right away, not while the next rollout decodes
    GRPOTrainer._may_defer_record = lambda self: False

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gpu_step.build_model_folder(arch, tmp / "model")
        cfg = gpu_step.bench_config(tmp / "model", run, "grpo", True, args.compile_decode, args.fused_decode)
        GRPOTrainer(cfg, tmp / "run", log=on_log).train()

    header = (f"{device}: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, arch {arch}, "
              f"one GRPO step after {args.warmup} warm-up steps, micro-batch {run.micro_batch}, compile_decode="
              f"{args.compile_decode}, fused_decode={args.fused_decode}, compile_blocks={args.compile_blocks}")
    if args.compile_blocks != "none":
        from torch._dynamo.utils import counters
        header += (f"; dynamo: {counters['stats'].get('unique_graphs', 0)} graphs, "
                   f"{sum(counters['graph_break'].values())} graph breaks, {len(counters['recompiles'])} recompile reasons")
    if args.timers:
        report(timer_lines(header, seen["wall"]))
        return
    events = prof.key_averages()
    gpu_attr = "self_device_time_total"
    by_name = {e.key: e for e in events}
    ops = [e for e in events if e.key not in PARTS]
    lines = []
    for title, key in (("most CPU time (self)", "self_cpu_time_total"), ("most GPU time", gpu_attr)):
        lines += ["", f"operators with the {title}:", f"{'op':<56}{'calls':>7}{'self CPU ms':>13}{'self GPU ms':>13}"]
        for e in sorted(ops, key=lambda e: getattr(e, key), reverse=True)[:args.rows]:
            lines.append(f"{e.key[:55]:<56}{e.count:>7}{e.self_cpu_time_total / 1e3:>13.2f}{getattr(e, gpu_attr) / 1e3:>13.2f}")
    lines += ["", header, f"{'part':<24}{'calls':>6}{'CPU s':>9}{'GPU s':>9}"]
    for tag in PARTS:
        e = by_name.get(tag)
        if e is not None:
            lines.append(f"{tag:<24}{e.count:>6}{e.cpu_time_total / 1e6:>9.3f}{e.device_time_total / 1e6:>9.3f}")
    total_gpu = sum(getattr(e, gpu_attr) for e in ops)
    what = "π_ref pass and update" if args.update_only else "step"
    lines.append(f"the profiled {what}: GPU busy (sum of kernel time) {total_gpu / 1e6:.3f} s; the step: "
                 f"{seen['wall']:.3f} s wall (profiler on{' from the π_ref pass to the update' if args.update_only else ''})")
    report(lines)


def compile_blocks(kind: str) -> None:
    """Experiment: while ``rollout.completion_hidden`` runs (the π_ref pass, the update's forward and
    the probes' pass), the decoder's RMSNorms and MLPs (and with ``norm-mlp-rope`` its RoPE) run
    through torch.compile (dynamic shapes, one compiled code shared by every layer: regional
    compilation); the decode loop keeps its own step. (Whole layers recompile per layer: the
    prompt-sharing pass hands them a DynamicCache.)"""
    from minigrpo import rollout

    original = rollout.completion_hidden
    compiled_rope = {}

    def compiled_hidden(model, batch):
        decoder = model.get_decoder()
        chosen = [m for layer in decoder.layers for m in (layer.input_layernorm, layer.post_attention_layernorm,
                                                          layer.mlp)] + [decoder.norm]
        for module in chosen:
            if not hasattr(module, "_bench_compiled"):
                module._bench_compiled = torch.compile(module._call_impl, dynamic=True)
            module._compiled_call_impl = module._bench_compiled
        home = sys.modules[type(model).__module__]
        rope = home.apply_rotary_pos_emb
        if kind == "norm-mlp-rope":
            home.apply_rotary_pos_emb = compiled_rope.setdefault(home.__name__, torch.compile(rope, dynamic=True))
        try:
            return original(model, batch)
        finally:
            home.apply_rotary_pos_emb = rope
            for module in chosen:
                module._compiled_call_impl = None

    rollout.completion_hidden = compiled_hidden


def timer_lines(header: str, wall: float) -> list[str]:
    """Seconds per part with the GPU synchronised at both ends: a part's own wall time, its
    kernels included; indented parts run inside the part above them."""
    lines = [header + ", timers (GPU synchronised around each part)", f"{'part':<26}{'calls':>6}{'s':>9}"]
    for tag in PARTS:
        if tag in TIMERS:
            calls, seconds = TIMERS[tag]
            lines.append(f"{tag:<26}{calls:>6}{seconds:>9.3f}")
    lines.append(f"the timed step: {wall:.3f} s wall (with the timers' synchronisation)")
    return lines


def report(lines: list[str]) -> None:
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_profile.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
