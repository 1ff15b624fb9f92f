"""One GRPO step, ours next to TRL's GRPOTrainer, on the same model and config, in one run.

    python bench/gpu_step.py                       # CUDA: SmolLM-135M architecture, 8 prompts × G=6, 300 tokens
    python bench/gpu_step.py --arch qwen3-0.6b     # the Qwen3-0.6B architecture
    python bench/gpu_step.py --tiny                # CPU smoke size (the default without CUDA)

The model is the named architecture with random weights (seeded), built here from its
config: timing needs no trained weights. Its EOS id lies outside the model's vocabulary,
so EOS is never sampled and every completion runs to the full length in both trainers.
Prompts are fixed random token strings of mixed lengths (left padding), the reward is a
cheap function of the text, so that advantages are not all zero.

Timed, per optimizer step (one rollout, one step, as TRL with β = 0.04):
  ours  minigrpo's GRPOTrainer: sampling (rollout_backend, default fast), rewards, the log π_ref
        pass (and log π_old where a step needs it), the update, and the trace (probes +
        writing); with --compile-decode / --fused-decode also with those decode steps; again
        with the trace off and the fastest decode asked for (the trace's overhead), and PPO for
        its peak memory. --overlap-steps N: decode steps queued before the trace's record runs
        (decode.OVERLAP_STEPS) in our runs
  TRL   trl.GRPOTrainer with its defaults except the shared knobs (skipped if trl is missing)
The first `--warmup` steps (CUDA-graph capture, allocator warm-up) are reported apart.
Prints a table and writes JSON (to $OUT/gpu_step.json when OUT is set, else --json).

reasoning-gym is not needed: the GPU image lacks it, so when it cannot be imported a stub
with the three names minigrpo.tasks imports is installed (the bench uses its own task).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ARCHS = {
    "smollm-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                  rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)),
    "qwen3-0.6b": ("qwen3", dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                 max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                 tie_word_embeddings=True)),
    "tiny": ("llama", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=True)),
}
# measured on this workplace's H100 (device KINDS.md, 2026-11-13): copy bandwidth, bf16 matmul rate; the floor
# uses the rates measured in the run itself (measure_ceilings) when there is a GPU
H100_BYTES_PER_S, H100_FLOP_PER_S = 3.0e12, 7.9e14


def stub_reasoning_gym() -> bool:
    try:
        import reasoning_gym  # noqa: F401
        return False
    except ImportError:
        names = ["reasoning_gym", "reasoning_gym.factory", "reasoning_gym.logic",
                 "reasoning_gym.logic.propositional_logic"]
        mods = {n: types.ModuleType(n) for n in names}
        mods["reasoning_gym"].create_dataset = None
        mods["reasoning_gym.factory"].DATASETS = {}
        mods["reasoning_gym.logic.propositional_logic"].parse_expr = None
        sys.modules.update(mods)
        return True


# ----------------------------------------------------------------------------- model, tokenizer, task
def model_config(arch: str):
    """The architecture's transformers config; its EOS id is the vocabulary size, outside the vocabulary."""
    from transformers import AutoConfig

    kind, shape = ARCHS[arch]
    return AutoConfig.for_model(kind, **shape, pad_token_id=0, eos_token_id=shape["vocab_size"], bos_token_id=None)


def kv_values_per_token(arch: str) -> int:
    """Keys and values the cache holds per token, over all layers."""
    shape = ARCHS[arch][1]
    head_dim = shape.get("head_dim", shape["hidden_size"] // shape["num_attention_heads"])
    return 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim


def build_model_folder(arch: str, folder: Path) -> dict:
    """Random-weight model of ``arch`` + a word-level tokenizer over its vocabulary, saved as an HF folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    vocab = ARCHS[arch][1]["vocab_size"]
    # ids 0..V-1 are the model's tokens ("<pad>" = 0); "<eos>" = V lies outside: never sampled
    words = {"<pad>": 0, **{f"w{i}": i for i in range(1, vocab)}, "<eos>": vocab}
    core = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", padding_side="left")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(arch))
    model.generation_config = GenerationConfig(eos_token_id=vocab, pad_token_id=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "layers": ARCHS[arch][1]["num_hidden_layers"], "kv_per_token": kv_values_per_token(arch)}


def make_prompts(n: int, lengths: tuple[int, int], vocab: int) -> list[str]:
    g = torch.Generator().manual_seed(1)
    sizes = torch.linspace(lengths[0], lengths[1], n).round().long().tolist()
    return [" ".join(f"w{int(t)}" for t in torch.randint(1, vocab, (s,), generator=g)) for s in sizes]


def reward_of(text: str) -> float:
    """Share of the words whose id is even: cheap, deterministic, different across completions."""
    words = text.split()
    return sum(int(w[1:]) % 2 == 0 for w in words if w[1:].isdigit()) / max(1, len(words))


def install_bench_task(prompts: list[str]) -> None:
    """minigrpo's trainer on the bench prompts and reward, without reasoning-gym or an eval pass."""
    from minigrpo import experience, trainer
    from minigrpo.tasks import RewardResult, TaskData

    items = [{"question": p, "answer": None, "metadata": {}} for p in prompts]
    data = TaskData(name="bench", items=items, dataset=None)

    def score(text, item, task, cfg):
        r = reward_of(text)
        return RewardResult(parts={"format": 0.0, "correctness": r}, total=r, correct=r > 0.5, formatted=False,
                            premise_copy=False, answer=None)

    trainer.load_train_eval = lambda *a, **k: (data, data)
    trainer.evaluate = lambda *a, **k: {"accuracy": 0.0, "mean_score": 0.0, "format_rate": 0.0,
                                        "premise_copy_rate": 0.0, "majority_baseline": float("nan"), "n": 0}
    experience.build_prompt = lambda item, tokenizer=None: item["question"]
    experience.score_completion = score


# ----------------------------------------------------------------------------- timing helpers
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fresh_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def step_times(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def summarize(times: list[float], warmup: int) -> dict:
    timed = times[warmup:] or times
    return {"steps_s": times, "first_s": times[0] if times else None, "median_s": statistics.median(timed)}


# ----------------------------------------------------------------------------- the runs
def _context(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["max_position_embeddings"]


def bench_config(folder: Path, args, algo: str, trace: bool, compile_decode: bool = False,
                 fused_decode: bool = False):
    """Our trainer's config for the bench: one rollout and one optimizer step per step, as TRL with β = 0.04."""
    from minigrpo.config import build_config

    rows = args.prompts * args.num_generations
    return build_config(overrides=dict(
        model=str(folder), task="bench", algo=algo, seed=0, num_generations=args.num_generations, buffer_size=rows,
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=rows // args.micro_batch,
        num_iterations=1, max_completion_length=args.new_tokens, temperature=0.7, top_p=1.0, beta=0.04,
        learning_rate=1e-6, sampling_batch_size=rows, rollout_backend=args.backend, trace=trace,
        compile_decode=compile_decode, fused_decode=fused_decode,
        # one step more than timed: a step's log line comes while the next rollout decodes (its record is
        # written there), so the intervals between log lines are whole steps except after the run's last
        max_steps=args.warmup + args.steps + 1, save_steps=10**6, eval_n=1, logging_steps=1,
        max_prompt_length=min(512, _context(folder) - args.new_tokens)))


def write_report(report: dict, name: str, fallback: str) -> Path:
    """The JSON report, written whole: to $OUT/``name`` when OUT is set, else to ``fallback``."""
    out_dir = os.environ.get("OUT")
    path = Path(out_dir) / name if out_dir else Path(fallback)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(report, indent=2))
    tmp_path.replace(path)
    return path


def run_ours(folder: Path, args, algo: str, trace: bool, out: Path, compile_decode: bool = False,
             fused_decode: bool = False) -> dict:
    from minigrpo import decode, experience
    from minigrpo.grpo import GRPOTrainer
    from minigrpo.ppo import PPOTrainer
    from minigrpo.trace import load

    rows = args.prompts * args.num_generations
    cfg = bench_config(folder, args, algo, trace, compile_decode, fused_decode)
    gen_seconds: list[float] = []
    plain_generate = experience.generate

    def timed_generate(*a, **k):
        sync()
        t0 = time.perf_counter()
        result = plain_generate(*a, **k)
        sync()
        gen_seconds.append(time.perf_counter() - t0)
        return result

    experience.generate = timed_generate
    decode.reset_stats()
    stamps: list[float] = []

    def log(line: str) -> None:  # "eval before", then one line per step, each after the trace is written
        sync()
        stamps.append(time.perf_counter())

    fresh_memory()
    try:
        trainer = (GRPOTrainer if algo == "grpo" else PPOTrainer)(cfg, out, log=log)
        trainer.train()
    finally:
        experience.generate = plain_generate
    result = summarize(step_times(stamps[: args.warmup + args.steps + 1]), args.warmup)
    result.update(peak_mb=peak_mb(), decode=dict(decode.STATS) if args.backend == "fast" else None)
    timed_gen = gen_seconds[args.warmup:] or gen_seconds
    result["generate_median_s"] = statistics.median(timed_gen)
    result["generate_tokens_per_s"] = rows * args.new_tokens / result["generate_median_s"]
    if trace:
        t = load(out / "trace")
        for key in ("rollout_time", "step_time", "trace_time", "completion_length"):
            name = key if key == "completion_length" else key + "_median_s"
            result[name] = float(statistics.median(t.metric(key)[args.warmup:]))
    del trainer
    return result


def run_trl(folder: Path, prompts: list[str], args, out: Path, device: str) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = args.prompts * args.num_generations
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync()
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            sync()
            stamps.append(time.perf_counter())

    def reward(completions, **kwargs):
        return [reward_of(c) for c in completions]

    fresh_memory()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(folder)
    config = GRPOConfig(
        output_dir=str(out), seed=0, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=rows // args.micro_batch, num_generations=args.num_generations,
        max_completion_length=args.new_tokens, temperature=0.7, top_p=1.0, beta=0.04, num_iterations=1,
        learning_rate=1e-6, loss_type="grpo", use_bias_correction_kl=False, max_steps=args.warmup + args.steps,
        logging_steps=1,
        save_strategy="no", report_to="none", bf16=device == "cuda", use_cpu=device == "cpu",
        dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok,
                          callbacks=[Clock()])
    trainer.train()
    result = summarize(step_times(stamps), args.warmup)
    result.update(peak_mb=peak_mb(), gradient_checkpointing=config.gradient_checkpointing,
                  loss_type=config.loss_type)
    del trainer, model
    return result


# ----------------------------------------------------------------------------- floor
def measure_ceilings() -> dict:
    """This GPU's copy bandwidth (bytes read + written per s) and bf16 matmul rate, on random data.

    Device-to-device copies of 1 GiB and 8192³ bf16 products, each timed with CUDA events
    after warm-up (the median of 5 timings of 10). None without CUDA.
    """
    if not torch.cuda.is_available():
        return {"bytes_per_s": None, "flop_per_s": None}

    def median_seconds(fn, repeats=10, timings=5):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(timings):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / repeats)
        return statistics.median(times)

    src = torch.randn(2**29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    copy_s = median_seconds(lambda: dst.copy_(src))
    del src, dst
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul_s = median_seconds(lambda: a @ b)
    del a, b
    torch.cuda.empty_cache()
    return {"bytes_per_s": 2 * 2**30 / copy_s, "flop_per_s": 2 * n**3 / matmul_s}


def floor_estimate(facts: dict, args, prompt_len: float, ceilings: dict | None = None) -> dict:
    """Seconds no implementation beats: bytes each decode step must read, and the matmul FLOPs.

    At the rates in ``ceilings`` (measured here), or this workplace's H100 rates without them.

    decode: every step reads the weights (bf16) and the KV cache so far (average context);
    matmuls: 2·P FLOPs per token for the prefill and each decode token, 6·P per token for the
    update's forward+backward, 2·P per token for each of the π_old and π_ref passes.
    """
    rows, new = args.prompts * args.num_generations, args.new_tokens
    p = facts["params"]
    bandwidth = (ceilings or {}).get("bytes_per_s") or H100_BYTES_PER_S
    rate = (ceilings or {}).get("flop_per_s") or H100_FLOP_PER_S
    kv_bytes = rows * (prompt_len + new / 2) * facts["kv_per_token"] * 2
    decode_s = new * (2 * p + kv_bytes) / bandwidth
    tokens = rows * (prompt_len + new)
    flops = 2 * p * tokens + (6 + 2 + 2) * p * tokens
    return {"decode_s": decode_s, "matmul_s": flops / rate, "total_s": decode_s + flops / rate,
            "bytes_per_s": bandwidth, "flop_per_s": rate}


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, choices=[a for a in ARCHS if a != "tiny"],
                        help="model architecture (default smollm-135m; --tiny uses a 2-layer model)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke size (the default when CUDA is missing)")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--num-generations", type=int)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--micro-batch", type=int,
                        help="completions per micro-batch (both trainers; 0: all prompts × G in one)")
    parser.add_argument("--steps", type=int, help="timed steps per run")
    parser.add_argument("--warmup", type=int, help="steps run first and reported apart")
    parser.add_argument("--backend", default="fast", choices=["fast", "hf"], help="our rollout_backend")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-ppo", action="store_true")
    parser.add_argument("--skip-trace-off", action="store_true")
    parser.add_argument("--skip-plain", action="store_true",
                        help="with --compile-decode: run ours only with the compiled decode step")
    parser.add_argument("--compile-decode", action="store_true",
                        help="also run ours with compile_decode (torch.compile of the decode step; fast backend)")
    parser.add_argument("--fused-decode", action="store_true",
                        help="also run ours with fused_decode (fused q/k/v and gate/up projections; compiled too "
                             "with --compile-decode)")
    parser.add_argument("--overlap-steps", type=int,
                        help="decode.OVERLAP_STEPS for our runs (decode steps queued before the trace's record)")
    parser.add_argument("--json", default="gpu_step.json", help="output file when $OUT is not set")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared machine more threads only add contention)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    tiny = args.tiny or device == "cpu"
    arch = "tiny" if tiny else (args.arch or "smollm-135m")
    defaults = dict(prompts=4, num_generations=2, new_tokens=16, micro_batch=8, steps=3, warmup=1) if tiny else \
        dict(prompts=8, num_generations=6, new_tokens=300, micro_batch=16, steps=5, warmup=2)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    rows = args.prompts * args.num_generations
    from minigrpo import decode

    if args.overlap_steps is not None:
        decode.OVERLAP_STEPS = args.overlap_steps
    if args.skip_plain and not args.compile_decode:
        parser.error("--skip-plain needs --compile-decode (ours must run at least once)")
    args.micro_batch = args.micro_batch or rows
    if rows % args.micro_batch:
        parser.error(f"--micro-batch {args.micro_batch} must divide prompts × G = {rows}")
    stubbed = stub_reasoning_gym()
    prompt_lengths = (6, 12) if tiny else (22, 41)
    prompts = make_prompts(args.prompts, prompt_lengths, ARCHS[arch][1]["vocab_size"])
    install_bench_task(prompts)

    import transformers

    report = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if device == "cuda" else
              f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
              "torch": torch.__version__, "transformers": transformers.__version__, "arch": arch,
              "reasoning_gym_stub": stubbed,
              "config": {k: getattr(args, k) for k in ("prompts", "num_generations", "new_tokens", "micro_batch",
                                                       "steps", "warmup", "backend", "compile_decode",
                                                       "fused_decode")}}
    report["config"]["overlap_steps"] = decode.OVERLAP_STEPS
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        facts = build_model_folder(arch, tmp / "model")
        report["params"] = facts["params"]
        report["ceilings"] = measure_ceilings()
        report["floor"] = floor_estimate(facts, args, sum(prompt_lengths) / 2, report["ceilings"])
        print(f"device {report['device']}  arch {arch} ({facts['params'] / 1e6:.1f}M params)  "
              f"{args.prompts} prompts × G={args.num_generations}, {args.new_tokens} new tokens", flush=True)
        if not args.skip_plain:
            report["ours_grpo"] = run_ours(tmp / "model", args, "grpo", True, tmp / "ours")
            print("ours (trace on) done", flush=True)
        if args.compile_decode:
            report["ours_grpo_compiled"] = run_ours(tmp / "model", args, "grpo", True, tmp / "ours-compiled", True)
        if args.fused_decode:
            report["ours_grpo_fused"] = run_ours(tmp / "model", args, "grpo", True, tmp / "ours-fused",
                                                 args.compile_decode, True)
        if not args.skip_trace_off:  # with the fastest decode asked for, to compare with that run's trace on
            report["ours_grpo_trace_off"] = run_ours(tmp / "model", args, "grpo", False, tmp / "ours-off",
                                                     args.compile_decode, args.fused_decode)
        if not args.skip_ppo:
            report["ours_ppo"] = run_ours(tmp / "model", args, "ppo", True, tmp / "ppo")
        if not args.skip_trl:
            try:
                import trl

                report["trl_version"] = trl.__version__
                report["trl_grpo"] = run_trl(tmp / "model", prompts, args, tmp / "trl", device)
            except ImportError as exc:
                report["trl_grpo"] = {"skipped": f"trl not importable: {exc}"}

    print_table(report)
    print(f"wrote {write_report(report, 'gpu_step.json', args.json)}")


def print_table(r: dict) -> None:
    cfg = r["config"]
    tokens = cfg["prompts"] * cfg["num_generations"] * cfg["new_tokens"]
    trl = r.get("trl_grpo", {})
    ours = r.get("ours_grpo") or r["ours_grpo_compiled"]
    mem = lambda x: "-" if not x or x.get("peak_mb") is None else f"{x['peak_mb']:.0f}"  # noqa: E731
    print()
    print(f"{'run':<28}{'s/step':>9}{'first':>9}{'gen s':>8}{'gen tok/s':>11}{'peak MiB':>10}")
    fused_name = "ours GRPO (compiled, fused)" if r.get("ours_grpo_compiled") else "ours GRPO (fused)"
    rows = [("ours GRPO (trace on)", r.get("ours_grpo")), ("ours GRPO (compiled)", r.get("ours_grpo_compiled")),
            (fused_name, r.get("ours_grpo_fused")),
            ("ours GRPO (trace off)", r.get("ours_grpo_trace_off")),
            ("ours PPO (trace on)", r.get("ours_ppo")), ("TRL GRPOTrainer", trl)]
    for name, x in rows:
        if not x:
            continue
        if "skipped" in x:
            print(f"{name:<28}  skipped: {x['skipped']}")
            continue
        gen = x.get("generate_median_s")
        print(f"{name:<28}{x['median_s']:>9.3f}{x['first_s']:>9.3f}"
              f"{(f'{gen:.3f}' if gen else '-'):>8}{(f'{tokens / gen:,.0f}' if gen else '-'):>11}{mem(x):>10}")
    runs = [(label, r[key]) for label, key in (("", "ours_grpo"), (" (compiled decode)", "ours_grpo_compiled"),
                                               (" (fused decode)", "ours_grpo_fused")) if r.get(key)]
    for label, x in runs:
        if trl.get("median_s"):
            print(f"TRL / ours{label}: {trl['median_s'] / x['median_s']:.2f}x")
    traced = r.get("ours_grpo_fused") or r.get("ours_grpo_compiled") or r.get("ours_grpo")  # the trace-off run's decode
    if traced and r.get("ours_grpo_trace_off"):
        print(f"tracing overhead: {100 * (traced['median_s'] / r['ours_grpo_trace_off']['median_s'] - 1):+.1f}%")
    for label, x in runs:
        print(f"ours{label}, per step: rollout {x.get('rollout_time_median_s', float('nan')):.3f} s "
              f"(generation {x['generate_median_s']:.3f} s), update {x.get('step_time_median_s', float('nan')):.3f} s, "
              f"trace {x.get('trace_time_median_s', float('nan')):.3f} s; "
              f"mean completion {x.get('completion_length', float('nan')):.0f} tokens")
    f = r["floor"]
    if r["device"].startswith("CPU"):
        return  # the H100 floor and graph capture mean nothing at the CPU smoke size
    print(f"floor: {f['total_s']:.3g} s/step (decode bytes {f['decode_s']:.3g} s + matmuls {f['matmul_s']:.3g} s at "
          f"{f['bytes_per_s'] / 1e12:.2f} TB/s, {f['flop_per_s'] / 1e12:.0f} TFLOP/s measured); "
          f"ours is {ours['median_s'] / f['total_s']:.0f}x the floor")
    for name, x in (("decode", r.get("ours_grpo")), ("decode (compiled)", r.get("ours_grpo_compiled")),
                    ("decode (fused)", r.get("ours_grpo_fused"))):
        if x and x.get("decode"):
            d = x["decode"]
            print(f"{name}: {d['mode']}, {d['captures']} graph(s) captured in {d['capture_seconds']:.2f} s"
                  + (" (compiling included)" if d.get("compiled") else "")
                  + (f", fell back: {d['fallback']}" if d.get("fallback") else ""))


if __name__ == "__main__":
    main()
