"""The fast decode loop alone: tokens/s at batch 48, which attention, graphs or not, kernels per step.

    python bench/gpu_decode.py                                   # CUDA: SmolLM-135M architecture
    python bench/gpu_decode.py --arch smollm-135m qwen3-0.6b     # both, one JSON
    python bench/gpu_decode.py --tiny                            # CPU smoke size (the default without CUDA)

Random-weight model of the architecture (bf16 on CUDA), 48 left-padded prompts of 22-41
tokens, 300 new tokens at temperature 0.7 with an EOS id outside the vocabulary, so every
row runs to the full length. For each attention of the decode steps (``model``: the
model's own sdpa, which copies the KV cache per query head with repeat_kv; ``gqa``:
minigrpo.decode_attention.gqa_decode_attention; with ``--compile`` also ``compiled``: gqa through
torch.compile; with ``--fused`` also ``fused``, the step of minigrpo.fused_step with the q/k/v
and gate/up projections fused, and with both ``fused-compiled``; with ``--sdpa`` the fused ones
also over minigrpo.decode_attention.sdpa_decode_attention, torch's fused attention kernel) the first call
(it captures the CUDA graph, and compiles) is reported apart from the median of ``--repeats`` more. An eager run (no graph) gives the
launch-bound cost per step, and a profile of eager steps counts the kernels each decode
step launches and the GPU time they take (no launch gaps: what a perfect graph replay would
cost). The floor per step reads the bf16 weights and the average KV cache once, at the copy
bandwidth measured in the run. Prints a table, writes JSON ($OUT/gpu_decode.json when OUT is set).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gpu_step import (ARCHS, floor_estimate, kv_values_per_token, measure_ceilings, model_config,  # noqa: E402
                      sync, write_report)
from minigrpo import decode as fast  # noqa: E402

# the decode step: the model's own attention (sdpa + repeat_kv), ours (gqa), ours through torch.compile,
# ours with the q/k/v and gate/up projections fused (minigrpo.fused_step), and that compiled, also with
# inductor's GEMM autotuning (max_autotune: Triton GEMM templates, epilogues fused into them); the fused ones
# over torch's fused attention (sdpa_decode_attention); variant -> (attention, compile, fused)
VARIANTS = {"model": ("model", False, False), "gqa": ("gqa", False, False), "compiled": ("gqa", True, False),
            "fused": ("gqa", False, True), "fused-compiled": ("gqa", True, True),
            "fused-autotuned": ("gqa", True, True), "fused-sdpa": ("sdpa", False, True),
            "fused-compiled-sdpa": ("sdpa", True, True)}
AUTOTUNE = {"max_autotune": True, "coordinate_descent_tuning": True}


def variants(compile: bool, fused: bool, autotune: bool = False, sdpa: bool = False) -> list[str]:
    return [v for v, (attention, compiled, fuses) in VARIANTS.items()
            if (compile or not compiled) and (fused or not fuses) and (autotune or "autotuned" not in v)
            and (sdpa or attention != "sdpa")]


@contextlib.contextmanager
def compile_options(extra: dict | None):
    """torch.compile called inside the block (the decoder's step) gets ``extra`` inductor options."""
    if not extra:
        yield
        return
    real = torch.compile

    def compile_with(fn=None, **kw):
        return real(fn, **{**kw, "options": {**kw.get("options", {}), **extra}})

    torch.compile = compile_with
    try:
        yield
    finally:
        torch.compile = real


def build(arch: str, device: str):
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(arch), attn_implementation="sdpa", dtype=dtype)
    return model.eval()


def prompt_batch(rows: int, lengths: tuple[int, int], vocab: int, device: str):
    g = torch.Generator().manual_seed(1)
    sizes = torch.linspace(lengths[0], lengths[1], rows).round().long().tolist()
    width = max(sizes)
    ids = torch.zeros(rows, width, dtype=torch.long)
    mask = torch.zeros(rows, width, dtype=torch.long)
    for r, n in enumerate(sizes):
        ids[r, width - n:] = torch.randint(1, vocab, (n,), generator=g)
        mask[r, width - n:] = 1
    return ids.to(device), mask.to(device)


def timed(fn) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def kernels_per_step(run, short: int, long: int) -> dict:
    """GPU activities (kernels, copies) and their GPU time per decode step: eager runs of ``long`` and ``short``
    tokens, differenced."""
    from torch.profiler import ProfilerActivity, profile

    counts, by_name = {}, {}
    for n in (short, long):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run(n)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_us = sum(e.device_time_total for e in kernels)  # a device event's own duration
        counts[n] = (len(kernels), busy_us)
        sign = 1 if n == long else -1
        for e in kernels:
            entry = by_name.setdefault(e.name[:90], [0, 0.0])
            entry[0] += sign
            entry[1] += sign * e.device_time_total
    steps = long - short
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:25]  # per decode step: launches and GPU µs
    return {"kernels": (counts[long][0] - counts[short][0]) / steps,
            "gpu_busy_ms": (counts[long][1] - counts[short][1]) / steps / 1e3,
            "top_kernels": [[name, count / steps, us / steps] for name, (count, us) in top]}


def bench_arch(arch: str, args, device: str, ceilings: dict) -> dict:
    model = build(arch, device)
    vocab = ARCHS[arch][1]["vocab_size"]
    ids, mask = prompt_batch(args.rows, args.prompt_lengths, vocab, device)
    eos, pad = {vocab}, 0
    params = sum(p.numel() for p in model.parameters())
    result = {"params": params, "rows": args.rows, "new_tokens": args.new_tokens}

    def run(new_tokens, attention="gqa", graphs=None, compile=False, fused=False):
        return fast.decode(model, ids, mask, new_tokens, 0.7, 1.0, False, eos, pad, cuda_graphs=graphs,
                           attention=attention, compile=compile, fused=fused)

    tokens = args.rows * args.new_tokens
    for variant in args.only or variants(args.compile, args.fused, args.autotune, args.sdpa):
        attention, compile, fused = VARIANTS[variant]
        fast.reset_stats()
        fast._DECODERS.clear()  # variants of one shape would share a cached decoder (fused-compiled, fused-autotuned)
        with compile_options(AUTOTUNE if "autotuned" in variant else None):  # the first call builds the step
            first = timed(lambda: run(args.new_tokens, attention, compile=compile, fused=fused))
        out = run(args.new_tokens, attention, compile=compile, fused=fused)
        assert out[0].shape == (args.rows, args.new_tokens), out[0].shape  # EOS is never sampled
        times = [timed(lambda: run(args.new_tokens, attention, compile=compile, fused=fused))
                 for _ in range(args.repeats)]
        median = statistics.median(times)
        result[variant] = {"first_s": first, "times_s": times, "median_s": median, "tokens_per_s": tokens / median,
                           "ms_per_step": 1e3 * median / args.new_tokens, "decode": dict(fast.STATS)}
        print(f"  {arch} {variant}: {median:.3f} s, {tokens / median:,.0f} tok/s ({fast.STATS['mode']}), "
              f"first call {first:.1f} s", flush=True)

    eager = [timed(lambda: run(args.eager_tokens, "gqa", graphs=False)) for _ in range(2)]
    result["gqa_eager"] = {"new_tokens": args.eager_tokens, "ms_per_step": 1e3 * min(eager) / args.eager_tokens}
    if device == "cuda":
        for variant in (v for v in VARIANTS if v in result and "autotuned" not in v):  # eager steps: no autotuning
            attention, compile, fused = VARIANTS[variant]
            try:
                result[variant]["profile"] = kernels_per_step(
                    lambda n: run(n, attention, graphs=False, compile=compile, fused=fused), 2, 2 + args.profile_steps)
            except Exception as exc:  # noqa: BLE001 - the profile is extra information, not the measurement
                result[variant]["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
    if ceilings.get("bytes_per_s"):  # gpu_step's decode floor, per step: weights and the average cache read once
        shape = argparse.Namespace(prompts=args.rows, num_generations=1, new_tokens=args.new_tokens)
        floor = floor_estimate({"params": params, "kv_per_token": kv_values_per_token(arch)}, shape,
                               sum(args.prompt_lengths) / 2, ceilings)
        result["floor_ms_per_step"] = 1e3 * floor["decode_s"] / args.new_tokens
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=None, choices=[a for a in ARCHS if a != "tiny"])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke size (the default when CUDA is missing)")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eager-tokens", type=int, help="tokens of the eager (no graph) run")
    parser.add_argument("--profile-steps", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd step (first call compiles)")
    parser.add_argument("--autotune", action="store_true",
                        help="with --compile --fused: also the fused step compiled with inductor's GEMM autotuning")
    parser.add_argument("--sdpa", action="store_true",
                        help="with --fused: also the fused steps over torch's fused attention (sdpa_decode_attention)")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="time only these variants")
    parser.add_argument("--fused", action="store_true",
                        help="also time the step with fused q/k/v and gate/up projections (and compiled, with --compile)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or device == "cpu"
    archs = ["tiny"] if tiny else (args.arch or ["smollm-135m"])
    for key, value in (dict(rows=4, new_tokens=16, eager_tokens=8) if tiny else
                       dict(rows=48, new_tokens=300, eager_tokens=64)).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.prompt_lengths = (6, 12) if tiny else (22, 41)
    if device == "cpu":
        torch.set_num_threads(1)

    import transformers

    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "transformers": transformers.__version__,
              "device": torch.cuda.get_device_name() if device == "cuda" else "CPU"}
    report["ceilings"] = measure_ceilings()
    report["archs"] = {arch: bench_arch(arch, args, device, report["ceilings"]) for arch in archs}

    print(f"\n{report['device']}, torch {report['torch']}, transformers {report['transformers']}")
    c = report["ceilings"]
    if c["bytes_per_s"]:
        print(f"measured: copy {c['bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul {c['flop_per_s'] / 1e12:.0f} TFLOP/s")
    print(f"{'arch':<13}{'variant':<20}{'first s':>9}{'s':>8}{'tok/s':>9}{'ms/step':>9}"
          f"{'kernels':>9}{'GPU ms':>8}{'floor ms':>9}")
    for arch, r in report["archs"].items():
        for variant in (v for v in VARIANTS if v in r):
            x = r[variant]
            prof = x.get("profile", {})
            kern = f"{prof['kernels']:.0f}" if "kernels" in prof else "-"
            busy = f"{prof['gpu_busy_ms']:.2f}" if "gpu_busy_ms" in prof else "-"
            floor = f"{r['floor_ms_per_step']:.3f}" if "floor_ms_per_step" in r else "-"
            print(f"{arch:<13}{variant:<20}{x['first_s']:>9.2f}{x['median_s']:>8.3f}{x['tokens_per_s']:>9,.0f}"
                  f"{x['ms_per_step']:>9.2f}{kern:>9}{busy:>8}{floor:>9}")
        print(f"{arch:<13}{'gqa eager':<20}{'':>9}{'':>8}{'':>9}{r['gqa_eager']['ms_per_step']:>9.2f}"
              f"   (no graph, {r['gqa_eager']['new_tokens']} tokens)")
        for variant in (v for v in VARIANTS if v in r):
            if r[variant]["decode"].get("fallback"):
                print(f"  {variant}: graph capture fell back to eager: {r[variant]['decode']['fallback']}")
    print(f"wrote {write_report(report, 'gpu_decode.json', 'gpu_decode.json')}")


if __name__ == "__main__":
    main()
