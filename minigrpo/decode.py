"""Fast sampling: our own decode loop over a Hugging Face causal LM (Llama, Qwen3).

It produces the rollout layout of ``rollout.generate`` with ``model.generate``
(left-padded prompts, right-padded completions, pad after EOS), without the
per-token costs of ``generate``:

    prefill   one forward over the prompts fills KV-cache columns [0, Lp) and gives the
              logits of completion token 0
    step i    one forward of token i-1 (cache column Lp+i-1, RoPE position n_b+i-1)
              gives the logits of token i
    sample    z = logits / τ;  p = softmax(z) cut to its top-p nucleus;
              token = argmax_v p_v / E_v with E_v ~ Exp(1) i.i.d. (the exponential race:
              P(token = v) = p_v / Σ p, exactly; no host round trip, unlike multinomial;
              ``sampling.py``)
    log-prob  log softmax(z)[token]: the policy's log-prob, as ``score_logprobs`` computes it
              (over the whole vocabulary, also when top_p < 1, like TRL)
    EOS       once a row has emitted an EOS id it gets pad tokens (log-prob 0)

No step reads a value back to the host: which rows are finished lives in a device
tensor, looked at every ``check_every`` steps. The KV cache is preallocated and the
attention mask is built on the device from a column counter, so every decode step has
the same shapes and addresses. On CUDA the step is captured once per shape (batch and
prompt length rounded up to buckets) into a CUDA graph and replayed; elsewhere it runs
eagerly. Capture takes about two forward passes, not a compilation; ``compile=True``
(config ``compile_decode``) also passes the step through torch.compile, which fuses its
small kernels at the cost of compiling once per process and shape. The steps' attention
is ``decode_attention.gqa_decode_attention``: each KV head serves its query heads without
copying the cache. Which models the loop can sample from is ``decode_support.unsupported``,
which ``decode`` asks before any work.
"""

from __future__ import annotations

import inspect
import os
import time
import weakref
from collections import OrderedDict

import torch
import torch.nn.functional as F

from .decode_attention import STEP_ATTENTIONS, register_step_attentions, attention_implementation
from .decode_support import unsupported
from .sampling import sample

# CUDA: rows rounded up to a multiple of BATCH_BUCKET, prompts left-padded to a multiple of
# PROMPT_BUCKET, so that a handful of captured graphs serve every rollout of a run.
BATCH_BUCKET, PROMPT_BUCKET, CHECK_EVERY = 8, 64, 32
# CUDA: decode steps queued before ``while_decoding`` runs (the finished rows are first looked at
# after them). The trace's record that runs there is about 0.1 s of host work at the seed recipe
# (docs/performance.md), some 60 steps of 1.6 ms (SmolLM-135M, H200): with fewer queued the GPU
# idles until the host comes back. Costs steps only when every row finishes before them.
OVERLAP_STEPS = 64
MAX_DECODERS_PER_MODEL = 4  # captured shapes kept per model (each holds its own KV cache)

# what the last decode calls did (read by bench/gpu_step.py): "cuda-graph" or "eager", compiled or not,
# graphs captured, seconds spent capturing (compiling included), and why a capture fell back to eager if it did
STATS: dict = {}


def reset_stats() -> None:
    STATS.update(mode=None, compiled=False, captures=0, capture_seconds=0.0, fallback=None)


reset_stats()


# ----------------------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated keys/values of every layer; a forward writes its q positions at columns [col, col+q).

    Duck-types the one method of ``transformers.Cache`` that the attention layers call. The
    caller passes position ids and a 4-D mask, so nothing else of the cache is read.
    """

    def __init__(self, col: torch.Tensor, length: int):
        self.col, self.length = col, length
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.keys:
            b, h, _, d = key_states.shape
            self.keys[layer_idx] = key_states.new_zeros(b, h, self.length, d)
            self.values[layer_idx] = value_states.new_zeros(b, h, self.length, value_states.shape[-1])
        q = key_states.shape[-2]
        columns = self.col.view(1) if q == 1 else self.col + torch.arange(q, device=key_states.device)
        self.keys[layer_idx].index_copy_(2, columns, key_states)
        self.values[layer_idx].index_copy_(2, columns, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0):
        return self.col


# ----------------------------------------------------------------------------- the loop
class Decoder:
    """Static buffers (and on CUDA the captured step) for one model, batch size and cache length.

    Buffers, all on the model's device and updated in place:
        valid (B, L)      key columns a query may attend to (prompt padding excluded)
        col ()            cache column the next forward writes
        position (B,)     RoPE position of the token fed next
        token (B,)        the token fed next;  step (): index of the completion token made next
        finished (B,)     the row has emitted EOS;  tokens, logps (B, max_new): the output
    """

    def __init__(self, model, batch: int, prompt_len: int, max_new: int, temperature: float, top_p: float,
                 greedy: bool, eos_ids, pad_id: int, use_graph: bool, attention: str = "gqa", compile: bool = False,
                 fused=None):
        attn = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"  # decode() checked it (unsupported)
        device = next(model.parameters()).device
        self._model = weakref.ref(model)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.float_mask = model.dtype if attn == "eager" else None
        # decode steps: our grouped attention over an additive mask, or the model's own implementation
        ours = attention in STEP_ATTENTIONS and register_step_attentions()
        self.step_attention = STEP_ATTENTIONS[attention][0] if ours else None
        self.attend = STEP_ATTENTIONS.get(attention, STEP_ATTENTIONS["gqa"])[1]  # the fused step's attention
        self.step_mask = model.dtype if self.step_attention else self.float_mask
        self.prompt_len, self.max_new = prompt_len, max_new
        self.temperature, self.top_p, self.greedy = temperature, top_p, greedy
        length = prompt_len + max_new
        self.kv_index = torch.arange(length, device=device)
        self.col = torch.zeros((), dtype=torch.long, device=device)
        self.cache = KVCache(self.col, length)
        self.valid = torch.ones(batch, length, dtype=torch.bool, device=device)
        self.position = torch.zeros(batch, dtype=torch.long, device=device)
        self.token = torch.zeros(batch, dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.tokens = torch.full((batch, max_new), pad_id, dtype=torch.long, device=device)
        self.logps = torch.zeros(batch, max_new, dtype=torch.float32, device=device)
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
        self.pad_id, self.pad = pad_id, torch.tensor(pad_id, dtype=torch.long, device=device)
        self.zero, self.neg = (torch.tensor(v, dtype=model.dtype, device=device)
                               for v in (0.0, torch.finfo(model.dtype).min))
        self.use_graph = use_graph and max_new > 3  # capture warms up on two steps
        self.replay = None  # the captured decode step
        # torch.compile fuses the step's small kernels; aten's own random kernels keep the draws those of eager
        self.compiled = compile
        self.step_fn = torch.compile(self._decode_step, dynamic=False, options={"fallback_random": True}) \
            if compile else self._decode_step
        self.fused = fused  # a fused_step.FusedStep: the decode steps run it instead of the model's forward
        self.restart: tuple | None = None

    # -- one forward
    def _additive(self, allowed):
        """The boolean mask as 0 / dtype-min, for attention that adds its mask to the scores."""
        return torch.where(allowed, self.zero, self.neg)

    def _forward(self, input_ids, allowed, position_ids, float_mask=None, **extra):
        mask = allowed if float_mask is None else self._additive(allowed)
        return self._model()(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             use_cache=True, **{self.cache_arg: self.cache}, **extra)

    def _record(self, token, logp) -> None:
        """Write completion token ``step`` (pad after EOS) and make it the token fed next."""
        token = torch.where(self.finished, self.pad, token)
        logp = torch.where(self.finished, torch.zeros_like(logp), logp)
        self.tokens.index_copy_(1, self.step.view(1), token[:, None])
        self.logps.index_copy_(1, self.step.view(1), logp[:, None])
        self.finished.logical_or_((token[:, None] == self.eos).any(dim=-1))
        self.token.copy_(token)
        self.step.add_(1)

    def _decode_step(self) -> None:
        """One token per row; runs (is captured, is compiled) with ``step_attention`` switched on."""
        allowed = (self.valid & (self.kv_index <= self.col))[:, None, None, :]
        if self.fused is not None:
            logits = self.fused(self.token[:, None], self.position[:, None], self._additive(allowed), self.cache,
                                self.attend)
        else:
            logits = self._forward(self.token[:, None], allowed, self.position[:, None], self.step_mask).logits
        self._record(*sample(logits[:, -1], self.temperature, self.top_p, self.greedy))
        self.col.add_(1)
        self.position.add_(1)

    def _restore(self) -> None:
        """Counters and outputs as they are right after the prefill."""
        token, logp, position = self.restart
        self.step.zero_()
        self.finished.zero_()
        self.tokens.fill_(self.pad_id)
        self.logps.zero_()
        self.col.fill_(self.prompt_len)
        self.position.copy_(position)
        self._record(token, logp)

    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        lp = self.prompt_len
        self.valid[:, :lp] = prompt_mask.bool()
        self.valid[:, lp:] = True
        positions = (prompt_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        query = self.kv_index[:lp, None]
        # causal over valid keys; a padding query also sees itself, so that no row of the
        # softmax is empty (its output only reaches padding columns, which nothing reads)
        allowed = (self.valid[:, None, None, :] & (self.kv_index <= query)) | (self.kv_index == query)
        self.col.zero_()
        out = self._forward(prompt_ids, allowed, positions, self.float_mask, logits_to_keep=1)
        token, logp = sample(out.logits[:, -1], self.temperature, self.top_p, self.greedy)
        self.restart = (token, logp, positions[:, -1] + 1)
        self._restore()

    def _capture(self) -> None:
        started = time.perf_counter()
        try:
            self.replay = capture_graph(self.step_fn)
            STATS["captures"] += 1
        except Exception as exc:  # noqa: BLE001 - an uncapturable model still decodes, eagerly
            self.use_graph = False
            lines = str(exc).strip().splitlines()
            STATS["fallback"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"
        STATS["capture_seconds"] += time.perf_counter() - started
        self._restore()  # the warm-up steps moved the counters

    def run(self, prompt_ids, prompt_mask, check_every: int, while_decoding=None,
            overlap_steps: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Tokens and log-probs (static buffers: copy them) and the number of columns made.

        ``while_decoding()`` runs once, when the steps up to the first look at the finished rows
        are queued (at least ``overlap_steps`` columns, rounded up to a multiple of ``check_every``):
        on CUDA the GPU decodes them while the host does that work, which runs on a side stream
        (``_beside_the_decode``) so that its reads back to the host do not wait for them.
        """
        # after everything queued before this decode (the optimizer step the host work may read)
        ready = _queued_marker(prompt_ids.device) if while_decoding is not None else None
        self.prefill(prompt_ids, prompt_mask)
        every = check_every or 1
        first = min(self.max_new, _round_up(max(overlap_steps, every), every) if while_decoding else every)
        made = self._steps(1, first, check_every=0)  # no look at the finished rows before ``first``
        if while_decoding is not None:
            # outside attention_implementation: it may run the model's own forward
            _beside_the_decode(while_decoding, ready, prompt_ids.device)
        made = self._steps(made, self.max_new, check_every)
        return self.tokens, self.logps, made

    def _steps(self, made: int, until: int, check_every: int) -> int:
        """Decode steps until ``until`` columns are made or every row has finished; the columns made."""
        with attention_implementation(self._model(), self.step_attention):
            if self.use_graph and self.replay is None:
                self._capture()
            STATS["mode"] = "cuda-graph" if self.replay is not None else "eager"
            STATS["compiled"] = self.compiled
            step = self.replay or self.step_fn
            while made < until:
                if check_every and made % check_every == 0 and bool(self.finished.all()):
                    break
                step()
                made += 1
        return made


def _queued_marker(device: torch.device):
    """A CUDA event recorded now on the current stream (None off CUDA)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()
    event.record()
    return event


_SIDE_STREAMS: dict[int, "torch.cuda.Stream"] = {}


def _beside_the_decode(work, ready, device: torch.device) -> None:
    """Run ``work()`` while decode steps are queued on the current stream: on CUDA on a side stream
    that first waits for ``ready`` (what was queued before the decode: the optimizer step that
    ``work`` may read) and is drained before returning. Its reads back to the host then wait for
    its own kernels only, not for the decode's; and since nothing but ``work`` runs on the host
    meanwhile, no tensor it reads can be freed and reused while its kernels still run. One side
    stream per device, always the same: the allocator caches freed memory per stream."""
    if ready is None:
        work()
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    side = _SIDE_STREAMS.get(index)
    if side is None:
        side = _SIDE_STREAMS[index] = torch.cuda.Stream(device=device)
    with torch.cuda.stream(side):
        side.wait_event(ready)
        try:
            work()
        finally:
            side.synchronize()


def capture_graph(step, warmup: int = 2):
    """Run ``step`` ``warmup`` times on a side stream, capture one call into a CUDA graph; return its replay.

    ``step`` must only update tensors in place (the graph replays fixed addresses); the
    warm-up calls really run, so the caller resets its state afterwards.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    return graph.replay


_DECODERS: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()


def _placement(model) -> tuple:
    """Where the model's weights live: a captured graph or a fused copy is only valid while this holds."""
    params = list(model.parameters())
    return params[0].data_ptr(), params[-1].data_ptr(), params[0].dtype


def _decoder(model, key: tuple, build) -> Decoder:
    """The cached decoder of this shape for ``model`` (rebuilt if the weights moved in memory)."""
    where = _placement(model)
    kept = _DECODERS.get(model)
    if kept is None or kept.get("where") != where:
        kept = _DECODERS[model] = OrderedDict(where=where)
    if key not in kept:
        kept[key] = build()
        shapes = [k for k in kept if k != "where"]
        if len(shapes) > MAX_DECODERS_PER_MODEL:
            del kept[shapes[0]]
    kept.move_to_end(key)
    return kept[key]


_FUSED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _fused_step(model):
    """The model's FusedStep (one per model and weight placement), its weights refreshed from the model's."""
    from .fused_step import FusedStep

    where = _placement(model)
    kept = _FUSED.get(model)
    if kept is None or kept[0] != where:
        kept = _FUSED[model] = (where, FusedStep(model))
    else:
        kept[1].refresh()  # the optimizer moved the weights since the last rollout
    return kept[1]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@torch.no_grad()
def decode(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, temperature: float,
           top_p: float, greedy: bool, eos_ids, pad_id: int, batch_bucket: int | None = None,
           prompt_bucket: int | None = None, check_every: int | None = None,
           cuda_graphs: bool | None = None, attention: str = "gqa",
           compile: bool = False, fused: bool = False, while_decoding=None,
           overlap_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Complete left-padded prompts (B, Lp): completion ids (B, Lc), pad after EOS, and their log-probs.

    Lc is the longest completion (≤ max_new_tokens), as ``model.generate`` returns. Log-probs
    are 0 after EOS. Defaults by device: CUDA rounds shapes up to buckets, looks at the
    finished rows every CHECK_EVERY steps and replays a CUDA graph (MINIGRPO_CUDA_GRAPHS=0
    turns graphs off); elsewhere shapes stay exact and finished rows are looked at every step.
    ``attention``: "gqa" runs the decode steps' attention with ``gqa_decode_attention``, "sdpa"
    with ``sdpa_decode_attention``, "model" with the model's own implementation (the prefill
    always uses the model's).
    ``compile``: the decode step goes through ``torch.compile`` (once per shape and model;
    on CUDA the compiled step is what the graph captures). ``fused``: the decode steps run
    ``fused_step.FusedStep`` (q/k/v and gate/up projections fused; Llama and Qwen3) with our
    "gqa" or "sdpa" attention, instead of the model's forward. ``while_decoding()``: host work to run once
    while the GPU decodes ``overlap_steps`` steps (default OVERLAP_STEPS on CUDA; elsewhere, where
    nothing overlaps, right after the prefill) (``Decoder.run``).
    """
    from .rollout import completion_mask_from_ids

    if attention not in (*STEP_ATTENTIONS, "model"):
        raise ValueError(f"attention must be 'gqa', 'sdpa' or 'model', got {attention!r}")
    if fused and attention not in STEP_ATTENTIONS:
        raise ValueError("fused decode steps use our own attention, 'gqa' or 'sdpa', not the model's")
    on_cuda = prompt_ids.device.type == "cuda"
    if cuda_graphs is None:
        cuda_graphs = on_cuda and os.environ.get("MINIGRPO_CUDA_GRAPHS", "1") != "0"
    batch_bucket = batch_bucket or (BATCH_BUCKET if on_cuda else 1)
    prompt_bucket = prompt_bucket or (PROMPT_BUCKET if on_cuda else 1)
    check_every = check_every if check_every is not None else (CHECK_EVERY if on_cuda else 1)
    overlap_steps = overlap_steps if overlap_steps is not None else (OVERLAP_STEPS if on_cuda else 0)
    b, lp = prompt_ids.shape
    reason = unsupported(model, lp + max_new_tokens)  # the real context: bucketing adds masked columns only
    if reason:
        raise ValueError(reason)
    rows, cols = _round_up(b, batch_bucket), _round_up(lp, prompt_bucket)
    ids = F.pad(prompt_ids, (cols - lp, 0), value=pad_id)
    mask = F.pad(prompt_mask, (cols - lp, 0), value=0)
    if rows > b:  # filler rows repeat row 0 and are dropped below
        ids = torch.cat([ids, ids[:1].expand(rows - b, -1)])
        mask = torch.cat([mask, mask[:1].expand(rows - b, -1)])

    was_training = model.training
    model.eval()
    step = _fused_step(model) if fused else None
    build = lambda: Decoder(model, rows, cols, max_new_tokens, temperature, top_p, greedy, eos_ids, pad_id,  # noqa: E731
                            use_graph=cuda_graphs, attention=attention, compile=compile, fused=step)
    key = (rows, cols, max_new_tokens, float(temperature), float(top_p), bool(greedy), tuple(sorted(eos_ids)), pad_id,
           attention, compile, cuda_graphs, fused)
    decoder = _decoder(model, key, build) if cuda_graphs or compile else build()
    try:
        tokens, logps, made = decoder.run(ids, mask, check_every, while_decoding, overlap_steps)
    finally:
        model.train(was_training)
    tokens, logps = tokens[:b, :made].clone(), logps[:b, :made].clone()
    used = max(1, int(completion_mask_from_ids(tokens, set(eos_ids)).sum(dim=1).max()))
    return tokens[:, :used], logps[:, :used]
