"""Follow a few completions through one optimizer update, token by token and logit by logit.

For each probe completion the recorder keeps the per-token quantities the loss used
(ρ, clip flags, advantage, k3 KL, log π before the step) and re-scores the completion
right after the step (log π_new) and under the frozen reference. At a few positions —
the answer decision (first token inside ``<answer>``) and the positions whose
sampled-token probability moved most — it keeps the top-k tokens' logits and
probabilities before, after and under the reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .losses import logprobs_from_logits
from .rollout import Rollout, forward_completion, hidden_gives_logits, logits_from_hidden
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
    (``rollout.forward_completion`` here, TRL's forward in ``integrations.trl``).

    The probes' logits cost no forward pass of their own where the numbers already exist: the
    logits "before" are the output layer of the last hidden states the update's own forward pass
    hands to ``capture`` (``start(..., hidden_from_update=True)``), the reference's are the output
    layer of the hidden states π_ref's scoring pass kept (``finish(..., ref_hidden=)``); only the
    logits "after" need a pass, after the optimizer step.
    """

    def __init__(self, tokenizer, cfg, pick=pick_probe_rows, forward=forward_completion):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.pick = pick
        self.forward = forward
        self.rows: list[int] = []
        self.captured: dict[int, dict[str, torch.Tensor]] = {}
        self._logits_before: torch.Tensor | None = None
        self._head_model = None  # the policy, while its logits before the step come from captured hidden states

    @property
    def active(self) -> bool:
        return self.cfg.trace and self.cfg.probe_completions != 0

    def start(self, policy, rollout: Rollout, step_rows: list[int], seq_advantages: torch.Tensor,
              hidden_from_update: bool = False) -> None:
        """Choose this update's probes among its rows and keep the policy's logits before the step:
        with ``hidden_from_update`` from the hidden states the update passes to ``capture``
        (``wants_hidden`` says for which micro-batches), else from a forward pass now."""
        self.captured, self._logits_before, self._head_model = {}, None, None
        if not self.active:
            self.rows = []
            return
        picks = self.pick(seq_advantages[step_rows], self.cfg.probe_completions)
        self.rows = [step_rows[i] for i in picks]
        if not self.rows:
            return
        if hidden_from_update and self.forward is forward_completion and hidden_gives_logits(policy):
            self._head_model = policy
        else:
            self._logits_before = self._logits(policy, rollout.select(self.rows))

    def wants_hidden(self, rows: list[int]) -> bool:
        """Whether the update's forward over ``rows`` should hand its hidden states to ``capture``."""
        return self._head_model is not None and any(row in self.rows for row in rows)

    def capture(self, row: int, hidden: torch.Tensor | None = None, **per_token: torch.Tensor) -> None:
        """Per-token tensors the loss used for a probe row (called from inside the update, before
        the optimizer step), and the row's last hidden states when ``wants_hidden``."""
        got = {k: v.detach() for k, v in per_token.items()}  # to the host in finish(): no sync here
        if self._head_model is not None:
            if hidden is None:
                raise RuntimeError("the probes were told the update hands them hidden states, and it did not")
            with torch.no_grad():  # now: the optimizer step is about to change the output layer
                got["logits_before"] = logits_from_hidden(self._head_model, hidden.detach(), self.cfg.temperature)
        self.captured[row] = got

    def capture_rows(self, rows: list[int], hidden: torch.Tensor | None = None, **batched: torch.Tensor) -> None:
        """``capture`` for each probe among a micro-batch's ``rows``: ``hidden`` and every tensor in
        ``batched`` hold one row per entry of ``rows``."""
        for i, row in enumerate(rows):
            if row in self.rows:
                self.capture(row, hidden=hidden[i] if hidden is not None else None,
                             **{name: t[i] for name, t in batched.items()})

    def _logits(self, model, batch: Rollout) -> torch.Tensor:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits, _ = self.forward(model, batch, self.cfg.temperature)
        model.train(was_training)
        return logits

    def finish(self, policy, ref, rollout: Rollout, num_generations: int, logp_old: torch.Tensor,
               logp_ref: torch.Tensor | None, row_offset: int = 0,
               ref_hidden: torch.Tensor | None = None) -> list[Probe]:
        """After the optimizer step: re-score the probes and build trace records.

        ``row_offset``: index of ``rollout``'s first row in the whole rollout (a data-parallel
        rank holds one block of it), so that ``group``/``index`` point into the gathered groups.
        ``ref_hidden``: π_ref's last hidden states of ``rollout``'s rows, if its scoring pass kept them.
        """
        if not self.rows:
            return []
        rows = self.rows
        batch = rollout.select(rows)
        after = self._logits(policy, batch)
        if self._logits_before is not None:
            before = self._logits_before
        else:
            before = torch.stack([self.captured[row].pop("logits_before") for row in rows])
        if ref is None:  # no reference model (TRL with β = 0): nothing to record for it
            reference = torch.full_like(before, math.nan)
        elif ref_hidden is not None and self.forward is forward_completion:
            with torch.no_grad():
                index = torch.as_tensor(rows, device=ref_hidden.device)
                reference = logits_from_hidden(ref, ref_hidden[index], self.cfg.temperature)
        else:
            reference = self._logits(ref, batch)
        ids_all = batch.completion_ids
        logp_new_all = logprobs_from_logits(after, ids_all)
        logp_before_all = logprobs_from_logits(before, ids_all)
        lengths = batch.completion_mask.sum(1).long().tolist()
        probes = []
        for j, row in enumerate(rows):
            length = lengths[j]
            ids_list = ids_all[j, :length].tolist()
            got = {k: v.float().cpu() for k, v in self.captured[row].items()}
            logp_new, logp_before = logp_new_all[j, :length], logp_before_all[j, :length]
            positions = self._positions(ids_list, before[j], after[j], reference[j], logp_before, logp_new)
            as_np = lambda t: t[:length].float().cpu().numpy().astype(np.float32)  # noqa: E731
            group, index = divmod(row_offset + row, num_generations)
            probes.append(Probe(
                group=group, index=index,
                text=rollout.completions[row],
                token_ids=np.asarray(ids_list, dtype=np.int64),
                tokens=self.tokenizer.batch_decode([[t] for t in ids_list]),
                logp_old=as_np(logp_old[row]), logp=as_np(got["logp"]), logp_new=as_np(logp_new),
                logp_ref=as_np(logp_ref[row]) if logp_ref is not None else np.full(length, np.nan, np.float32),
                ratio=as_np(got["ratio"]),
                clipped_low=got["clipped_low"][:length].bool().numpy(),
                clipped_high=got["clipped_high"][:length].bool().numpy(),
                advantage=as_np(got["advantage"]), kl=as_np(got["kl"]),
                values=as_np(got["values"]) if "values" in got else None,
                returns=as_np(got["returns"]) if "returns" in got else None,
                positions=positions,
            ))
        self.rows, self._logits_before, self._head_model = [], None, None
        return probes

    def _positions(self, ids, logits_b, logits_a, logits_r, logp_before, logp_new) -> list[ProbePosition]:
        """The chosen positions' top tokens; ``logits_*`` (Lc, V) on any device, one copy to the host."""
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
        if not chosen:
            return []
        at = torch.as_tensor([pos for pos, _ in chosen], device=logits_b.device)
        rows = torch.stack([logits_b[at], logits_a[at], logits_r[at]], dim=1).float().cpu()  # (P, 3, V)
        probs = torch.softmax(rows, dim=-1)
        k = min(self.cfg.probe_top_k, rows.shape[-1])
        out = []
        for (pos, kind), (lb, la, lr), (pb, pa, pr) in zip(chosen, rows, probs):
            top = _top_union(pb, pa, ids[pos], k)
            f = lambda t: t[top].numpy().astype(np.float32)  # noqa: E731
            out.append(ProbePosition(
                pos=pos, kind=kind, sampled_token_id=int(ids[pos]),
                token_ids=top.numpy().astype(np.int64),
                tokens=self.tokenizer.batch_decode([[t] for t in top.tolist()]),
                logits_before=f(lb), probs_before=f(pb), logits_after=f(la), probs_after=f(pa),
                logits_ref=f(lr), probs_ref=f(pr),
                other_before=float(1 - pb[top].sum()), other_after=float(1 - pa[top].sum()),
                other_ref=float(1 - pr[top].sum()),
            ))
        return out
