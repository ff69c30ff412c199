"""``gigaword``: abstractive summarisation, article -> headline (official ``tasks/nlg_tasks/gigaword.py``).

Encoder text ``' what is the summary of article " {source} "?'`` (no image), target the
``pre_caption``'d headline (``data_utils/text_datasets.py::SummaryDataset``). ``--noise-ratio``
(0.2 in the official script) corrupts training ``prev_output_tokens`` with random text tokens.

Validation and ``ofa-evaluate`` generate with the ``--eval-*`` settings, whose defaults here are the
official evaluation's (beam 6, length penalty 0.7, ``max_len_b`` 32, no-repeat 3), lowercase the
hypothesis, and score it against the lowercased raw headline with ROUGE-1/2/L F1
(``ofa/metrics/rouge.py``; fractions in [0, 1], Porter stemmer on, as the official ``rouge_score``
call). The task metric and official best checkpoint metric is ``rougeL``; ``rouge1`` and ``rouge2`` are
logged beside it. Prediction records are ``{"hyp", "ref"}``.

Data: ``text_pair`` TSV (``uniq_id, source, target``); the official two-column files load with
``--selected-cols 0,1``.
"""
import dataclasses
import re
from dataclasses import dataclass, field
from typing import List

from fairseq import metrics
from fairseq.tasks import register_task

from ofa.data_utils.text_datasets import SummaryDataset, TextDataConfig
from ofa.metrics.rouge import corpus_rouge, rouge_scores
from ofa.tasks.ofa_task import OFATask, OFATaskConfig


@dataclass
class GigawordConfig(OFATaskConfig):
    max_src_length: int = field(default=512, metadata={"help": "max article words, and max prompt tokens"})
    max_tgt_length: int = field(default=64, metadata={"help": "max headline words"})
    noise_ratio: float = field(
        default=0.0, metadata={"help": "training: replace each prev_output token by a random one with this "
                                       "probability (official script: 0.2)"})
    # official evaluation: beam 6, lenpen 0.7, max_len_b 32, no-repeat 3
    eval_beam: int = field(default=6, metadata={"help": "beam size"})
    eval_max_len_b: int = field(default=32, metadata={"help": "max_len = a * src_len + b"})
    eval_no_repeat_ngram_size: int = field(default=3, metadata={"help": "block repeated n-grams"})
    eval_len_penalty: float = field(default=0.7, metadata={"help": "length penalty"})


def postprocess(text: str) -> str:
    """Generated headline -> scored text: lowercase, ``<unk>`` -> ``unk``, single spaces."""
    return re.sub(r"\s+", " ", text.lower().replace("<unk>", " unk ")).strip()


@register_task("gigaword", dataclass=GigawordConfig)
class GigawordTask(OFATask):
    """Gigaword-style summarisation (headline generation) scored with ROUGE."""

    dataset_cls = SummaryDataset
    schema = "text_pair"
    metric_name = "rougeL"

    def data_config(self) -> TextDataConfig:
        return TextDataConfig(**dataclasses.asdict(super().data_config()), seed=self.cfg.seed,
                              noise_ratio=self.cfg.noise_ratio)

    def inference(self, model, sample) -> List[str]:
        hyps = self.generator.generate([model], self.net_input_for_generation(sample))
        return [postprocess(self.decode(h[0]["tokens"])) for h in hyps]

    def score(self, predictions, sample) -> List[float]:
        return [rouge_scores(p, refs)["rougeL"].fmeasure for p, refs in zip(predictions, sample["refs"])]

    def log_extra(self, predictions, sample, keep, logging_output):
        for p, refs, k in zip(predictions, sample["refs"], keep):
            if k:
                s = rouge_scores(p, refs)
                for key in ("rouge1", "rouge2"):
                    logging_output[f"_{key}_sum"] = logging_output.get(f"_{key}_sum", 0.0) + s[key].fmeasure

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if sum(float(log.get("_score_cnt", 0)) for log in logging_outputs) <= 0:
            return
        for key in ("rouge1", "rouge2"):
            metrics.log_scalar(f"_{key}_sum", sum(float(log.get(f"_{key}_sum", 0)) for log in logging_outputs))
            metrics.log_derived(key, lambda meters, key=key: round(
                meters[f"_{key}_sum"].sum / meters["_score_cnt"].sum, 4) if meters["_score_cnt"].sum else 0.0)

    def corpus_metrics(self, predictions, refs):
        return corpus_rouge(predictions, refs) if refs else {}

    def prediction_records(self, predictions, sample):
        return [{"hyp": p, "ref": refs[0]} for p, refs in zip(predictions, sample["refs"])]
