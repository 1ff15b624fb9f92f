"""Follow a few completions through one optimizer update, token by token and logit by logit.

For each probe completion the recorder keeps the per-token quantities the loss used
(ρ, clip flags, advantage, k3 KL, log π before the step) and re-scores the completion
right after the step (log π_new) and under the frozen reference. At a few positions —
the answer decision (first token inside ``<answer>``) and the positions whose
sampled-token probability moved most — it keeps the top-k tokens' logits and
probabilities before, after and under the reference.
"""

from __future__ import annotations

import numpy as np
import torch

from .losses import logprobs_from_logits
from .rollout import Rollout, forward_completion
from .trace.schema import Probe, ProbePosition

ANSWER_TAG = "<answer>"


def pick_probe_rows(advantages: torch.Tensor, n: int) -> list[int]:
    """Indices into ``advantages``: all if n == -1, else alternately the most positive and most negative."""
    count = len(advantages)
    if n == -1 or n >= count:
        return list(range(count))
    order = torch.argsort(advantages.float(), descending=True, stable=True).tolist()
    picked, lo, hi = [], 0, count - 1
    while len(picked) < n:
        picked.append(order[lo] if len(picked) % 2 == 0 else order[hi])
        lo, hi = (lo + 1, hi) if len(picked) % 2 == 1 else (lo, hi - 1)
    return picked


def decision_position(tokenizer, token_ids: list[int]) -> int | None:
    """Index of the first completion token that comes after the text ``<answer>``.

    The shortest prefix whose text holds the tag, found by bisection (about log2 L decodes, not
    L): once a prefix's text holds the (ASCII) tag, every longer prefix's text does too.
    """
    def holds_tag(i: int) -> bool:
        return ANSWER_TAG in tokenizer.decode(token_ids[:i], skip_special_tokens=False)

    if len(token_ids) < 2 or not holds_tag(len(token_ids) - 1):
        return None
    lo, hi = 1, len(token_ids) - 1  # the answer lies in [lo, hi]; holds_tag(hi) is true
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds_tag(mid) else (mid + 1, hi)
    return lo


def _top_union(before: torch.Tensor, after: torch.Tensor, sampled: int, k: int) -> torch.Tensor:
    ids = torch.cat([torch.topk(before, k).indices, torch.topk(after, k).indices,
                     torch.tensor([sampled], device=before.device)])
    ids = torch.unique(ids)
    return ids[torch.argsort(before[ids], descending=True)]


class ProbeRecorder:
    """``pick(advantages, n)`` chooses the probes among an update's rows (data-parallel runs pass
    ``Dist.pick_probe_rows``, which chooses over every rank's rows); ``forward(model, batch,
    temperature)`` returns the tempered completion logits exactly as the loss computes them
    (``rollout.forward_completion`` here, TRL's forward in ``integrations.trl``)."""

    def __init__(self, tokenizer, cfg, pick=pick_probe_rows, forward=forward_completion):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.pick = pick
        self.forward = forward
        self.rows: list[int] = []
        self.captured: dict[int, dict[str, torch.Tensor]] = {}
        self._logits_before: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return self.cfg.trace and self.cfg.probe_completions != 0

    def start(self, policy, rollout: Rollout, step_rows: list[int], seq_advantages: torch.Tensor) -> None:
        """Choose this update's probes among its rows and keep the policy's logits before the step."""
        self.captured = {}
        if not self.active:
            self.rows = []
            return
        picks = self.pick(seq_advantages[step_rows], self.cfg.probe_completions)
        self.rows = [step_rows[i] for i in picks]
        self._logits_before = self._logits(policy, rollout.select(self.rows)) if self.rows else None

    def capture(self, row: int, **per_token: torch.Tensor) -> None:
        """Per-token tensors the loss used for a probe row (called from inside the update)."""
        self.captured[row] = {k: v.detach() for k, v in per_token.items()}  # to the host in finish(): no sync here

    def _logits(self, model, batch: Rollout) -> torch.Tensor:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits, _ = self.forward(model, batch, self.cfg.temperature)
        model.train(was_training)
        return logits

    def finish(self, policy, ref, rollout: Rollout, num_generations: int, logp_old: torch.Tensor,
               logp_ref: torch.Tensor | None, row_offset: int = 0) -> list[Probe]:
        """After the optimizer step: re-score the probes and build trace records.

        ``row_offset``: index of ``rollout``'s first row in the whole rollout (a data-parallel
        rank holds one block of it), so that ``group``/``index`` point into the gathered groups.
        """
        if not self.rows:
            return []
        batch = rollout.select(self.rows)
        after = self._logits(policy, batch)
        reference = self._logits(ref, batch) if ref is not None else None
        probes = []
        for j, row in enumerate(self.rows):
            length = int(rollout.completion_mask[row].sum().item())
            ids = rollout.completion_ids[row, :length]
            logits_b, logits_a = self._logits_before[j, :length], after[j, :length]
            logits_r = reference[j, :length] if reference is not None else logits_b
            got = {k: v.float().cpu() for k, v in self.captured[row].items()}
            logp_new = logprobs_from_logits(logits_a, ids)
            logp_before = logprobs_from_logits(logits_b, ids)
            ids_list = ids.tolist()
            positions = self._positions(ids_list, logits_b, logits_a, logits_r, logp_before, logp_new)
            as_np = lambda t: t[:length].float().cpu().numpy().astype(np.float32)  # noqa: E731
            group, index = divmod(row_offset + row, num_generations)
            probes.append(Probe(
                group=group, index=index,
                text=rollout.completions[row],
                token_ids=np.asarray(ids_list, dtype=np.int64),
                tokens=[self.tokenizer.decode([t]) for t in ids_list],
                logp_old=as_np(logp_old[row]), logp=as_np(got["logp"]), logp_new=as_np(logp_new),
                logp_ref=as_np(logp_ref[row] if logp_ref is not None else logp_before),
                ratio=as_np(got["ratio"]),
                clipped_low=got["clipped_low"][:length].bool().numpy(),
                clipped_high=got["clipped_high"][:length].bool().numpy(),
                advantage=as_np(got["advantage"]), kl=as_np(got["kl"]),
                values=as_np(got["values"]) if "values" in got else None,
                returns=as_np(got["returns"]) if "returns" in got else None,
                positions=positions,
            ))
        self.rows, self._logits_before = [], None
        return probes

    def _positions(self, ids, logits_b, logits_a, logits_r, logp_before, logp_new) -> list[ProbePosition]:
        chosen: list[tuple[int, str]] = []
        decision = decision_position(self.tokenizer, ids)
        if decision is not None:
            chosen.append((decision, "decision"))
        moved = (logp_new.exp() - logp_before.exp()).abs()
        for pos in torch.argsort(moved, descending=True, stable=True).tolist():
            if len(chosen) >= self.cfg.probe_moved_positions + (decision is not None):
                break
            if pos != decision:
                chosen.append((pos, "moved"))
        k = min(self.cfg.probe_top_k, logits_b.shape[-1])
        out = []
        for pos, kind in chosen:
            lb, la, lr = logits_b[pos], logits_a[pos], logits_r[pos]
            pb, pa, pr = (torch.softmax(x, -1) for x in (lb, la, lr))
            top = _top_union(pb, pa, ids[pos], k)
            f = lambda t: t[top].cpu().numpy().astype(np.float32)  # noqa: E731
            out.append(ProbePosition(
                pos=pos, kind=kind, sampled_token_id=int(ids[pos]),
                token_ids=top.cpu().numpy().astype(np.int64),
                tokens=[self.tokenizer.decode([t]) for t in top.tolist()],
                logits_before=f(lb), probs_before=f(pb), logits_after=f(la), probs_after=f(pa),
                logits_ref=f(lr), probs_ref=f(pr),
                other_before=float(1 - pb[top].sum()), other_after=float(1 - pa[top].sum()),
                other_ref=float(1 - pr[top].sum()),
            ))
        return out
