"""GLUE as text classification over candidate label words (official ``tasks/nlu_tasks/*.py``).

One fairseq task per GLUE dataset: ``cola``, ``sst2``, ``mrpc``, ``qqp``, ``mnli``, ``rte``, ``qnli``,
registered by a loop over ``data_utils.text_datasets.GLUE`` (prompt template, label words,
file layout and extra metrics of each; docs/tasks.md 2.8). Example (SST-2)::

    ' is the sentiment of text " {sentence} " positive or negative?'  ->  positive | negative

The labels are the candidate answers of ``ClosedSetTask``: training restricts the label position to
the label words (trie masks), evaluation scores every label (``allcand``; with single-token labels
this is the official arg-max over the label tokens at the last decoder position). The official
scripts use ``--prompt-type src`` (the default here): the decoder is fed the whole source and the
only target is the label. With the GPT-2 BPE every label must be one token, as officially asserted;
other tokenizers may split a label, which the trie handles.

Metrics: ``acc`` for all; ``f1`` (positive class ``yes``) for MRPC and QQP, ``mcc`` (Matthews) for
CoLA, from summable confusion counts. Official best-checkpoint metric: ``mcc`` for CoLA, ``acc``
otherwise. Prediction records: ``{"uniq_id", "hyp", "ref"}`` (``uniq_id``: row number in the file).

Data: ``sentence, label`` (SST-2, CoLA) or ``sentence1, sentence2, label`` TSV files, the official
SST-2 / MRPC / MNLI layouts; the official CoLA, QNLI, RTE and QQP files load with
``--selected-cols 1,2``, ``1,2,3``, ``1,2,3`` and ``3,4,5``. Label fields: the official codes
(``0``/``1``; MNLI ``0`` maybe, ``1`` yes, ``2`` no), the GLUE strings (``entailment``,
``not_entailment``, ``neutral``, ``contradiction``) or the label words themselves.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List

from fairseq import metrics
from fairseq.tasks import register_task

from ofa.data_utils.text_datasets import GLUE, GLUE_DATASETS, GlueSpec
from ofa.tasks.closed_set import ClosedSetConfig, ClosedSetTask
from ofa.tasks.ofa_task import PROMPT_TYPES

COUNTS = ("tp", "fp", "fn", "tn")


def binary_f1(tp: float, fp: float, fn: float) -> float:
    """F1 of the positive class; 0 when there is no positive prediction or label."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0


def matthews_corrcoef(tp: float, fp: float, fn: float, tn: float) -> float:
    """Matthews correlation coefficient; 0 when a row or column of the confusion matrix is empty."""
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom > 0 else 0.0


EXTRA_METRICS = {
    "f1": lambda c: binary_f1(c["tp"], c["fp"], c["fn"]),
    "mcc": lambda c: matthews_corrcoef(c["tp"], c["fp"], c["fn"], c["tn"]),
}


@dataclass
class GlueConfig(ClosedSetConfig):
    max_src_length: int = field(default=512, metadata={"help": "max words of each sentence"})
    prompt_type: PROMPT_TYPES = field(
        default="src", metadata={"help": "decoder prompt: src (official GLUE), prev_output or none"})


class GlueTask(ClosedSetTask):
    """Base of the GLUE tasks; subclasses set ``spec`` (and the dataset / schema that follow from it)."""

    spec: GlueSpec
    metric_name = "acc"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        if getattr(tokenizer, "kind", "") == "gpt2":
            multi = [a for a, t in zip(self.answer_set.answers, self.answer_set.tokens) if len(t) != 1]
            if multi:
                raise ValueError(f"GLUE labels must be single BPE tokens (official assertion): {multi}")

    def confusion(self, predictions, refs, keep) -> Dict[str, float]:
        c = {k: 0.0 for k in COUNTS}
        pos = self.spec.positive
        for p, r, k in zip(predictions, refs, keep):
            if k:
                key = ("t" if (p == pos) == (r == pos) else "f") + ("p" if p == pos else "n")
                c[key] += 1
        return c

    def log_extra(self, predictions, sample, keep, logging_output):
        if self.spec.metrics:
            refs = [r[0] for r in sample["refs"]]
            for key, v in self.confusion(predictions, refs, keep).items():
                logging_output[f"_glue_{key}"] = logging_output.get(f"_glue_{key}", 0.0) + v

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if not self.spec.metrics or not any("_glue_tp" in log for log in logging_outputs):
            return
        for key in COUNTS:
            metrics.log_scalar(f"_glue_{key}", sum(float(log.get(f"_glue_{key}", 0)) for log in logging_outputs))
        for name in self.spec.metrics:
            metrics.log_derived(name, lambda meters, name=name: round(
                EXTRA_METRICS[name]({k: meters[f"_glue_{k}"].sum for k in COUNTS}), 4))

    def corpus_metrics(self, predictions, refs):
        if not refs or not self.spec.metrics:
            return {}
        counts = self.confusion(predictions, [r[0] for r in refs], [True] * len(refs))
        return {name: EXTRA_METRICS[name](counts) for name in self.spec.metrics}

    def prediction_records(self, predictions, sample) -> List[Dict[str, str]]:
        return [{"uniq_id": uid, "hyp": p, "ref": r[0]}
                for uid, p, r in zip(sample["uniq_ids"], predictions, sample["refs"])]


def _register(name: str, spec: GlueSpec) -> type:
    cls_name = name.capitalize() + "Task"
    cls = type(cls_name, (GlueTask,), {
        "spec": spec, "dataset_cls": GLUE_DATASETS[name], "schema": spec.schema, "default_answers": spec.answers,
        "__module__": __name__, "__qualname__": cls_name,
        "__doc__": f"GLUE {name}: {spec.template!r} -> {' / '.join(spec.answers)}",
    })
    return register_task(name, dataclass=GlueConfig)(cls)


GLUE_TASKS: Dict[str, type] = {name: _register(name, spec) for name, spec in GLUE.items()}
globals().update({cls.__name__: cls for cls in GLUE_TASKS.values()})
