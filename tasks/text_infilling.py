"""``text_infilling``: masked-span text reconstruction, the text objective of OFA pretraining.

The pure-text examples of ``unify_task`` (docs/tasks.md 3.3) as a task of their own: the text is
lowercased, encoded, cut to its last ``--text-max-tokens`` (256) tokens, and masked with BART-style
whole-word Poisson spans (``--mask-ratio`` 0.3, ``--poisson-lambda`` 3, ``--replace-length`` 1;
``data_utils/noising.py``). Encoder text ``' what is the complete text of " {masked} "?'`` (no
image), target the original tokens.

Evaluation is language modelling: a teacher-forced pass over the target gives ``token_acc`` (the
task metric: per-sample fraction of target tokens, EOS included, that are the arg-max, averaged
over samples) and ``lm_ppl`` (``exp`` of the mean negative log-likelihood per target token over the
whole split). Validation masks are fixed per row, so numbers are comparable across epochs.
Prediction records: ``{"uniq_id", "masked", "ref", "nll", "ntokens", "token_acc"}``.

Data: ``pretrain_text`` TSV (``uniq_id, text``), the official ``text_examples.tsv`` layout.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.tasks import register_task

from ofa.data_utils.text_datasets import TextDataConfig, TextInfillingDataset
from ofa.tasks.ofa_task import OFATask, OFATaskConfig

LM_KEYS = ("nll", "ntokens", "correct")


@dataclass
class TextInfillingConfig(OFATaskConfig):
    mask_ratio: float = field(default=0.3, metadata={"help": "fraction of words to mask (rounded up)"})
    poisson_lambda: float = field(default=3.0, metadata={"help": "mean length of a masked span, in words"})
    replace_length: int = field(
        default=1, metadata={"help": "1: one <mask> per span; 0: delete the span; -1: one <mask> per token"})
    text_max_tokens: int = field(default=256, metadata={"help": "keep the last N tokens of each text"})


def lm_ppl(nll: float, ntokens: float) -> float:
    return math.exp(min(nll / ntokens, 50.0)) if ntokens > 0 else float("nan")


@register_task("text_infilling", dataclass=TextInfillingConfig)
class TextInfillingTask(OFATask):
    """Reconstruct a text from its span-masked version; scored as language modelling."""

    dataset_cls = TextInfillingDataset
    schema = "pretrain_text"
    metric_name = "token_acc"

    def __init__(self, cfg, tokenizer):
        if cfg.replace_length not in (-1, 0, 1):
            raise ValueError(f"--replace-length must be -1, 0 or 1, got {cfg.replace_length}")
        super().__init__(cfg, tokenizer)

    def data_config(self) -> TextDataConfig:
        c = self.cfg
        return TextDataConfig(**dataclasses.asdict(super().data_config()), seed=c.seed, mask_ratio=c.mask_ratio,
                              poisson_lambda=c.poisson_lambda, replace_length=c.replace_length,
                              text_max_tokens=c.text_max_tokens)

    @torch.no_grad()
    def inference(self, model, sample) -> List[Dict[str, Any]]:
        """Teacher-forced target statistics per sample: ``{"nll", "ntokens", "correct"}``."""
        logits = model(**sample["net_input"])[0]
        lprobs = F.log_softmax(logits.float(), dim=-1)
        target = sample["target"]
        keep = target.ne(self.dict.pad())
        token_lp = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        nll = -(token_lp * keep).sum(1)
        correct = (lprobs.argmax(-1).eq(target) & keep).sum(1)
        return [{"nll": float(a), "ntokens": int(n), "correct": int(c)}
                for a, n, c in zip(nll.tolist(), keep.sum(1).tolist(), correct.tolist())]

    def score(self, predictions, sample) -> List[float]:
        return [p["correct"] / max(p["ntokens"], 1) for p in predictions]

    def log_extra(self, predictions, sample, keep, logging_output):
        for p, k in zip(predictions, keep):
            if k:
                for key in LM_KEYS:
                    logging_output[f"_lm_{key}"] = logging_output.get(f"_lm_{key}", 0.0) + p[key]

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        totals = {k: sum(float(log.get(f"_lm_{k}", 0)) for log in logging_outputs) for k in LM_KEYS}
        if totals["ntokens"] > 0:
            for k, v in totals.items():
                metrics.log_scalar(f"_lm_{k}", v)
            metrics.log_derived("lm_ppl", lambda meters: round(
                lm_ppl(meters["_lm_nll"].sum, meters["_lm_ntokens"].sum), 3))

    def corpus_metrics(self, predictions, refs):
        nll = sum(p["nll"] for p in predictions)
        ntokens = sum(p["ntokens"] for p in predictions)
        return {"lm_ppl": lm_ppl(nll, ntokens)} if ntokens else {}

    def prediction_records(self, predictions, sample):
        records = []
        for i, (uid, p) in enumerate(zip(sample["uniq_ids"], predictions)):
            records.append({"uniq_id": uid, "masked": self.decode(sample["masked"][i]),
                            "ref": self.decode(sample["target"][i]), "nll": round(p["nll"], 4),
                            "ntokens": p["ntokens"], "token_acc": round(p["correct"] / max(p["ntokens"], 1), 4)})
        return records
