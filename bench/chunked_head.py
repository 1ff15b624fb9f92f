"""The update's output layer: log π(token) and H, forward and backward, chunked against full logits.

    python bench/chunked_head.py            # CUDA: SmolLM-135M's head at the seed recipe (48 × 300 positions), bf16
    python bench/chunked_head.py --tiny     # CPU size (the default without CUDA), float32

Times, in one process on the same inputs:
  full      autograd through the whole (M, V) float32 logits, as ``rollout.forward_completion``
            computes them: ``logprobs_from_logits`` with its gradient, ``entropy_from_logits``
            detached (what the update's loss and statistics need)
  chunked   ``losses.ChunkedHeadLogprobs`` (what the update runs): at most ``--budget`` logits at
            once, recomputed in the backward pass
and checks that both give the same log-probs, entropy and gradients (to the dtype's rounding).
Prints a table (median seconds of the repeats, peak memory on CUDA, full / chunked).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minigrpo.losses import ChunkedHeadLogprobs, entropy_from_logits, logprobs_from_logits  # noqa: E402
from minigrpo.rollout import LOGITS_BUDGET  # noqa: E402


def full(hidden, weight, ids, tau):
    logits = F.linear(hidden, weight).float() / tau
    return logprobs_from_logits(logits, ids), entropy_from_logits(logits.detach())


def chunked(hidden, weight, ids, tau, budget):
    return ChunkedHeadLogprobs.apply(hidden, weight, None, ids, tau, max(1, budget // weight.shape[0]))


def run(fn, hidden, weight, grad, device):
    hidden.grad = weight.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    logp, entropy = fn()
    (logp * grad).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return seconds, peak, (logp.detach(), entropy, hidden.grad.clone(), weight.grad.clone())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU size (the default without CUDA)")
    parser.add_argument("--positions", type=int, help="M: completion tokens in the update")
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--budget", type=int, default=LOGITS_BUDGET, help="logits held at once by the chunked head")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu":
        torch.set_num_threads(args.threads)
    big = device == "cuda"
    m = args.positions or (48 * 300 if big else 2048)
    v = args.vocab or (49152 if big else 8192)
    h = args.hidden or 576
    budget = args.budget if big or args.budget != LOGITS_BUDGET else 2**22
    dtype = torch.bfloat16 if big else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = (torch.randn(m, h, device=device, generator=gen) * 2).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, device=device, generator=gen) * 0.05).to(dtype).requires_grad_()
    ids = torch.randint(0, v, (m,), device=device, generator=gen)
    grad = torch.randn(m, device=device, generator=gen)
    tau = 0.7
    fns = {"full": lambda: full(hidden, weight, ids, tau), "chunked": lambda: chunked(hidden, weight, ids, tau, budget)}
    times = {name: [] for name in fns}
    peaks, outputs = {}, {}
    for name, fn in fns.items():  # one warm-up each
        run(fn, hidden, weight, grad, device)
    for _ in range(args.repeats):
        for name, fn in fns.items():
            seconds, peak, out = run(fn, hidden, weight, grad, device)
            times[name].append(seconds)
            peaks[name], outputs[name] = peak, out
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for what, a, b in zip(("log π", "entropy", "∂hidden", "∂W"), outputs["full"], outputs["chunked"]):
        scale = a.float().abs().max().item() or 1.0
        err = (a.float() - b.float()).abs().max().item() / scale
        print(f"{what}: largest difference {err:.2e} of the largest value" + ("" if err <= tol else "  MISMATCH"))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}, torch {torch.__version__}: M = {m} positions, V = {v}, H = {h}, {str(dtype)[6:]}, "
          f"chunks of {max(1, budget // v)} rows, {args.repeats} repeats")
    print(f"{'head':<10}{'fwd+bwd s':>11}{'peak MiB':>10}")
    for name in fns:
        peak = f"{peaks[name]:.0f}" if peaks[name] is not None else "-"
        print(f"{name:<10}{statistics.median(times[name]):>11.4f}{peak:>10}")
    print(f"full / chunked: {statistics.median(times['full']) / statistics.median(times['chunked']):.2f}x")


if __name__ == "__main__":
    main()
