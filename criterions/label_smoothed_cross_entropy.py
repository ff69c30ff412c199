"""``adjust_label_smoothed_cross_entropy``: OFA's training loss (docs/tasks.md 4.1).

Mirrors the official ``criterions/label_smoothed_cross_entropy.py``: label smoothing restricted to
the allowed set of each token (constraint masks or ``--constraint-range``), per-sample confidence
weights (``conf``), token-level drop-worst, R-Drop, and the pretraining pair ``[v1, v2]``. The math
lives in ``criterions/losses.py``.

Differences from the official code, all deliberate:

- ``--report-accuracy`` works (the official ``compute_accuracy`` crashes on a 3-tuple unpack).
- The batch is never modified in place: R-Drop builds a duplicated copy, the pair's
  ``sample_patch_num`` is passed as an argument (so R-Drop does not double it, as the official
  in-place duplication of ``net_input`` does), and masking produces new logits.
- ``ignore_eos`` removes eos targets by a mask rather than assuming one eos per row.
- With both a constraint mask and a constraint range, the allowed set is their intersection (the
  official code smooths over the mask row even where the range has set log-probabilities to -inf).
- The R-Drop KL skips disallowed entries instead of producing NaN on ``-inf`` log-probabilities.
- Logs follow fairseq's ``label_smoothed_cross_entropy``: ``loss``/``nll_loss`` in base 2,
  ``nll_loss`` per kept token, ``ppl = 2 ** nll_loss``; ``ntokens`` counts the tokens in the loss.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from ofa.criterions.losses import drop_worst, label_smoothed_nll_loss, mask_logits, parse_constraint_range, symmetric_kl

RDROP_KEYS = ("target", "conf", "constraint_masks")


@dataclass
class AdjustLabelSmoothedCrossEntropyConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "label-smoothing epsilon; 0 disables smoothing"})
    report_accuracy: bool = field(default=False, metadata={"help": "log token accuracy (n_correct / total)"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target positions in the loss"})
    ignore_eos: bool = field(default=False, metadata={"help": "leave eos targets out of the loss"})
    sentence_avg: bool = II("optimization.sentence_avg")
    drop_worst_ratio: float = field(
        default=0.0, metadata={"help": "drop this fraction of the highest-loss tokens of each batch"})
    drop_worst_after: int = field(
        default=0, metadata={"help": "apply drop-worst only once the update number exceeds this"})
    use_rdrop: bool = field(default=False, metadata={"help": "R-Drop: run the batch twice and add a symmetric KL"})
    reg_alpha: float = field(default=1.0, metadata={"help": "weight of the R-Drop KL term"})
    sample_patch_num: int = field(
        default=196, metadata={"help": "image patches kept for v1 of a pretraining pair [v1, v2] (0 keeps all)"})
    constraint_range: Optional[str] = field(
        default=None, metadata={"help": "'start,end': only ids 0-3 and [start, end) may be predicted"})


def duplicate_for_rdrop(sample: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``sample`` with every tensor of ``net_input``, ``target``, ``conf`` and
    ``constraint_masks`` repeated twice along dim 0, and ``ntokens``/``nsentences`` doubled."""
    def twice(x):
        return x.repeat(2, *([1] * (x.dim() - 1))) if torch.is_tensor(x) and x.dim() > 0 else x

    out = dict(sample)
    out["net_input"] = {k: twice(v) for k, v in sample["net_input"].items()}
    for key in RDROP_KEYS:
        if sample.get(key) is not None:
            out[key] = twice(sample[key])
    for key in ("ntokens", "nsentences"):
        if key in sample:
            out[key] = sample[key] * 2
    return out


@register_criterion("adjust_label_smoothed_cross_entropy", dataclass=AdjustLabelSmoothedCrossEntropyConfig)
class AdjustLabelSmoothedCrossEntropyCriterion(FairseqCriterion):
    def __init__(self, task, sentence_avg, label_smoothing=0.0, ignore_prefix_size=0, ignore_eos=False,
                 report_accuracy=False, drop_worst_ratio=0.0, drop_worst_after=0, use_rdrop=False, reg_alpha=1.0,
                 sample_patch_num=196, constraint_range=None):
        super().__init__(task)
        self.sentence_avg = sentence_avg
        self.eps = label_smoothing
        self.ignore_prefix_size = ignore_prefix_size
        self.ignore_eos = ignore_eos
        self.report_accuracy = report_accuracy
        self.drop_worst_ratio = drop_worst_ratio
        self.drop_worst_after = drop_worst_after
        self.use_rdrop = use_rdrop
        self.reg_alpha = reg_alpha
        self.sample_patch_num = sample_patch_num
        self.constraint_range = parse_constraint_range(constraint_range)
        tgt_dict = getattr(task, "target_dictionary", None)
        self.eos_idx = tgt_dict.eos() if tgt_dict is not None else 2

    # ------------------------------------------------------------------ fairseq contract
    def forward(self, model, sample, update_num=0, reduce=True):
        """Returns ``(loss, sample_size, logging_output)``; ``sample`` is a batch or the pair ``[v1, v2]``."""
        if isinstance(sample, (list, tuple)):
            return self.forward_pair(model, sample, update_num)
        return self.forward_batch(model, sample, update_num)

    def forward_pair(self, model, pair, update_num):
        """Pretraining pair: each part token-averaged, ``loss = l1 / n1 + l2 / n2``, ``sample_size = 1``."""
        if len(pair) != 2:
            raise ValueError(f"a list sample must be the pretraining pair [v1, v2], got {len(pair)} batches")
        patches = self.sample_patch_num if self.sample_patch_num > 0 else None
        loss_v1, size_v1, log_v1 = self.forward_batch(model, pair[0], update_num, sample_patch_num=patches)
        loss_v2, size_v2, log_v2 = self.forward_batch(model, pair[1], update_num)
        loss = loss_v1 / max(size_v1, 1) + loss_v2 / max(size_v2, 1)
        logging_output = {
            "loss": loss.data,
            "loss_v1": loss_v1.data,
            "loss_v2": loss_v2.data,
            "sample_size": 1,
            "sample_size_v1": size_v1,
            "sample_size_v2": size_v2,
        }
        for key in ("nll_loss", "ntokens", "nsentences", "n_correct", "total"):
            if key in log_v1:
                logging_output[key] = log_v1[key] + log_v2[key]
        return loss, 1, logging_output

    def forward_batch(self, model, sample, update_num=0, sample_patch_num: Optional[int] = None):
        if self.use_rdrop:
            sample = duplicate_for_rdrop(sample)
        net_input = sample["net_input"]
        if sample_patch_num is not None:
            net_input = {**net_input, "sample_patch_num": sample_patch_num}
        net_output = model(**net_input)
        stats = self.compute_loss(net_output[0], sample, update_num)
        nsentences = sample["target"].size(0)
        sample_size = nsentences if self.sentence_avg else stats["ntokens"]
        logging_output = {
            "loss": stats["loss"].data,
            "nll_loss": stats["nll_loss"].data,
            "ntokens": stats["ntokens"],
            "nsentences": nsentences,
            "sample_size": sample_size,
        }
        if self.report_accuracy:
            logging_output["n_correct"] = stats["n_correct"]
            logging_output["total"] = stats["ntokens"]
        return stats["loss"], sample_size, logging_output

    # ------------------------------------------------------------------ loss
    def lprobs_and_target(self, logits, sample):
        """Masked, conf-weighted log-probabilities of the loss tokens.

        Returns:
            ``lprobs (N, V)``, ``target (N,)``, ``allowed_mask (N, V) or None`` for the non-pad (and, with
            ``ignore_eos``, non-eos) targets after the first ``ignore_prefix_size`` steps, in batch order.
        """
        masks = sample.get("constraint_masks")
        logits = mask_logits(logits, masks, self.constraint_range)
        lprobs = F.log_softmax(logits.float(), dim=-1)
        conf = sample.get("conf")
        if conf is not None:
            lprobs = lprobs * conf.to(lprobs)[:, None, None]
        target = sample["target"]
        if self.ignore_prefix_size > 0:
            lprobs = lprobs[:, self.ignore_prefix_size:]
            target = target[:, self.ignore_prefix_size:]
            masks = None if masks is None else masks[:, self.ignore_prefix_size:]
        keep = target.ne(self.padding_idx)
        if self.ignore_eos:
            keep &= target.ne(self.eos_idx)
        # the kept positions once (the step's one host sync for them); indexing by them is what ``[keep]`` does,
        # without a sync for each tensor and for the gradient's scatter
        rows, cols = keep.nonzero(as_tuple=True)
        return lprobs[rows, cols], target[rows, cols], None if masks is None else masks[rows, cols]

    def compute_loss(self, logits, sample, update_num=0) -> Dict[str, Any]:
        lprobs, target, masks = self.lprobs_and_target(logits, sample)
        loss, nll = label_smoothed_nll_loss(lprobs, target, self.eps, masks, self.constraint_range)
        if self.drop_worst_ratio > 0 and update_num > self.drop_worst_after:
            if self.use_rdrop:  # select on the first copy, mirror onto the second
                half = loss.size(0) // 2
                idx = drop_worst(loss[:half], self.drop_worst_ratio)
                idx = torch.cat([idx, idx + half])
            else:
                idx = drop_worst(loss, self.drop_worst_ratio)
            loss, nll, lprobs, target = loss[idx], nll[idx], lprobs[idx], target[idx]
            masks = None if masks is None else masks[idx]
        total = loss.sum()
        if self.use_rdrop:
            half = lprobs.size(0) // 2
            kl = symmetric_kl(lprobs[:half], lprobs[half:], None if masks is None else masks[:half],
                              self.constraint_range)
            total = total + self.reg_alpha * kl.sum()
        stats = {"loss": total, "nll_loss": nll.sum(), "ntokens": int(target.numel())}
        if self.report_accuracy:
            stats["n_correct"] = int(lprobs.detach().argmax(-1).eq(target).sum())
        return stats

    # ------------------------------------------------------------------ logging
    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, Any]]) -> None:
        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        loss_sum, nll_sum = total("loss"), total("nll_loss")
        ntokens, nsentences, sample_size = total("ntokens"), total("nsentences"), total("sample_size")
        if sample_size > 0:
            metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
        if ntokens > 0:
            metrics.log_scalar("nll_loss", nll_sum / ntokens / math.log(2), ntokens, round=3)
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        metrics.log_scalar("ntokens", ntokens, 1, round=3)
        metrics.log_scalar("nsentences", nsentences, 1, round=3)
        metrics.log_scalar("sample_size", sample_size, 1, round=3)
        for part in ("v1", "v2"):
            size = total(f"sample_size_{part}")
            if size > 0:
                metrics.log_scalar(f"loss_{part}", total(f"loss_{part}") / size / math.log(2), size, round=3)
                metrics.log_scalar(f"sample_size_{part}", size, 1, round=3)
        n_total = total("total")
        if n_total > 0:
            metrics.log_scalar("total", n_total)
            metrics.log_scalar("n_correct", total("n_correct"))
            metrics.log_derived(
                "accuracy",
                lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum, 3)
                if meters["total"].sum > 0 else float("nan"),
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
