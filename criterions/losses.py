"""Loss math of the OFA criteria as pure functions (docs/tasks.md 4.1 and 4.2).

Everything here works on flattened token rows: ``lprobs [N, V]`` log-probabilities (possibly
multiplied by a per-sample confidence, as the official criterion does), ``target [N]``. The
criteria in this folder only select rows and call these functions, so the numbers can be tested
without a model.

The *allowed set* ``V'`` of a row is where label-smoothing mass goes: the row of a constraint mask,
the specials ``{0, 1, 2, 3}`` plus ``[start, end)`` for a ``constraint_range``, their intersection
when both are given, or the whole vocabulary.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

NUM_SPECIALS = 4  # bos, pad, eos, unk: always inside a constraint range (official criterion)


def parse_constraint_range(value: Optional[str]) -> Optional[Tuple[int, int]]:
    """``"start,end"`` -> ``(start, end)``; ``None`` or ``""`` -> ``None``."""
    if value is None or str(value).strip() == "":
        return None
    try:
        start, end = (int(x) for x in str(value).split(","))
    except ValueError:
        raise ValueError(f"constraint_range must look like 'start,end' (e.g. '50265,58457'), got {value!r}")
    if not NUM_SPECIALS <= start < end:
        raise ValueError(f"constraint_range needs {NUM_SPECIALS} <= start < end, got {value!r}")
    return start, end


def constraint_range_columns(constraint_range: Tuple[int, int], device=None) -> Tensor:
    """Vocabulary ids ``[0, 1, 2, 3] + [start, end)`` kept by a ``constraint_range``."""
    start, end = constraint_range
    return torch.cat([torch.arange(NUM_SPECIALS, device=device), torch.arange(start, end, device=device)])


def mask_logits(logits: Tensor, constraint_masks: Optional[Tensor] = None,
                constraint_range: Optional[Tuple[int, int]] = None) -> Tensor:
    """Set logits outside the allowed set to ``-inf`` (out of place).

    Args:
        logits: ``(..., V)``.
        constraint_masks: bool ``(..., V)``, True where a token is allowed.
        constraint_range: ``(start, end)``; ids ``4..start-1`` and ``end..`` are removed.
    """
    if constraint_masks is not None:
        logits = logits.masked_fill(~constraint_masks, float("-inf"))
    if constraint_range is not None:
        start, end = constraint_range
        outside = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
        outside[NUM_SPECIALS:start] = True
        outside[end:] = True
        logits = logits.masked_fill(outside, float("-inf"))
    return logits


def _restrict(x: Tensor, allowed_mask: Optional[Tensor], constraint_range: Optional[Tuple[int, int]]):
    """Columns of ``x [N, V]`` in the constraint range, and the matching mask columns."""
    if constraint_range is None:
        return x, allowed_mask
    cols = constraint_range_columns(constraint_range, x.device)
    return x.index_select(-1, cols), None if allowed_mask is None else allowed_mask.index_select(-1, cols)


def label_smoothed_nll_loss(lprobs: Tensor, target: Tensor, epsilon: float, allowed_mask: Optional[Tensor] = None,
                            constraint_range: Optional[Tuple[int, int]] = None) -> Tuple[Tensor, Tensor]:
    """Per-token label-smoothed loss over the allowed set (official ``label_smoothed_nll_loss``).

    ``loss = (1 - eps - eps_i) * nll + eps_i * smooth`` with ``nll = -lp[y]``, ``smooth = -sum_{v in V'} lp[v]``
    and ``eps_i = eps / (|V'| - 1)`` (``+1e-6`` in the denominator when ``V'`` is constrained). As ``y`` is in
    ``V'`` this is ``(1 - eps) * nll + eps_i * sum_{v in V', v != y} -lp[v]``.

    Args:
        lprobs: ``(N, V)`` log-probabilities; entries outside ``V'`` may be ``-inf``.
        target: ``(N,)`` token ids.
        epsilon: smoothing mass.
        allowed_mask: bool ``(N, V)``, the per-row allowed set (a constraint-mask row).
        constraint_range: ``(start, end)``: the allowed set is ``{0,1,2,3} U [start, end)``.

    Returns:
        ``(loss (N,), nll (N,))``.
    """
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    lp, mask = _restrict(lprobs, allowed_mask, constraint_range)
    if mask is not None:
        smooth = -lp.masked_fill(~mask, 0.0).sum(-1)
        eps_i = epsilon / (mask.sum(-1).to(lp.dtype) - 1 + 1e-6)
    elif constraint_range is not None:
        smooth = -lp.sum(-1)
        eps_i = epsilon / (lp.size(-1) - 1 + 1e-6)
    else:
        smooth = -lp.sum(-1)
        eps_i = epsilon / (lp.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss, nll


def drop_worst(loss: Tensor, ratio: float) -> Tensor:
    """Indices of the ``int(N * (1 - ratio))`` tokens with the lowest loss (token-level drop-worst)."""
    k = int(loss.numel() * (1 - ratio))
    return torch.topk(loss.detach(), k=k, largest=False).indices


def symmetric_kl(lp: Tensor, lq: Tensor, allowed_mask: Optional[Tensor] = None,
                 constraint_range: Optional[Tuple[int, int]] = None) -> Tensor:
    """R-Drop term ``(KL(p||q) + KL(q||p)) / 2 = 1/2 sum_v (p_v - q_v)(log p_v - log q_v)`` per row.

    The sum runs over the allowed set only, so ``-inf`` log-probabilities outside it give neither
    NaN values nor NaN gradients. Like the official ``kl_loss``, ``lp``/``lq`` are used as given
    (already multiplied by ``conf`` in the criterion).

    Args:
        lp, lq: ``(N, V)`` log-probabilities of the two forward passes.
        allowed_mask: bool ``(N, V)``; constraint_range: ``(start, end)`` (see ``label_smoothed_nll_loss``).

    Returns:
        ``(N,)`` non-negative values.
    """
    lp, mask = _restrict(lp, allowed_mask, constraint_range)
    lq, _ = _restrict(lq, None, constraint_range)
    finite = torch.isfinite(lp) & torch.isfinite(lq)
    mask = finite if mask is None else mask & finite
    lp = lp.masked_fill(~mask, 0.0)
    lq = lq.masked_fill(~mask, 0.0)
    return 0.5 * ((lp.exp() - lq.exp()) * (lp - lq)).masked_fill(~mask, 0.0).sum(-1)


def leave_one_out_advantage(scores: Tensor) -> Tensor:
    """SCST reward ``r_k = s_k - b_k`` with ``b_k = (sum_j s_j - s_k) / (K - 1)`` over the last dim.

    With a single sample (``K = 1``) there is no baseline and the advantage is 0.
    """
    k = scores.size(-1)
    if k < 2:
        return torch.zeros_like(scores)
    baseline = (scores.sum(-1, keepdim=True) - scores) / (k - 1)
    return scores - baseline


def scst_loss(lprobs: Tensor, target: Tensor, reward: Tensor, pad: int) -> Tuple[Tensor, int]:
    """Policy-gradient loss ``sum_tokens -log p(token) * r_seq`` with pads masked.

    Args:
        lprobs: ``(N, T, V)`` log-probabilities of the teacher-forced hypotheses.
        target: ``(N, T)`` hypothesis tokens + eos, right-padded with ``pad``.
        reward: ``(N,)`` advantage of each hypothesis.

    Returns:
        ``(loss (scalar), ntokens)``.
    """
    keep = target.ne(pad)
    token_lp = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(~keep, 0.0)
    loss = -token_lp * reward.to(token_lp.dtype).unsqueeze(-1)
    return loss.sum(), int(keep.sum())
