"""``caption``: image captioning (official ``tasks/mm_tasks/caption.py``).

Training targets are single captions; validation targets carry every reference joined by ``&&``.
Validation generates with beam search (``--eval-beam 5 --eval-max-len-b 16
--eval-no-repeat-ngram-size 3`` in the official recipe), strips punctuation, and logs CIDEr-D
(document frequencies of the validation references, or ``--eval-cider-cached-tokens``) and corpus
BLEU-4. Stage 2 (CIDEr optimisation) is this task with ``--criterion scst_reward_criterion``.

Inference (``ofa.inference_model``; a batch is one beam search): ``{"caption", "logprob", "prob", "score"}``
(punctuation stripped as in evaluation; ``logprob`` the best hypothesis' summed token log-probabilities,
EOS included, ``prob = exp(logprob)``, ``score`` its length-normalised log-probability, which beam search
ranks by).
"""

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fairseq import metrics
from fairseq.tasks import register_task

from ofa.data_utils.datasets import CaptionDataset
from ofa.data_utils.errors import DataError
from ofa.data_utils.text import strip_punctuation
from ofa.inference import InferenceSpec, generate_batch, hypothesis_scores, register_inference
from ofa.metrics.bleu import bleu_stats, corpus_bleu
from ofa.metrics.cider import CiderD, build_document_frequency, load_document_frequency
from ofa.metrics.coco import caption_scores
from ofa.tasks.ofa_task import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)
BLEU_KEYS = ["sys_len", "ref_len"] + [f"{k}_{n}" for n in range(1, 5) for k in ("match", "total")]


@dataclass
class CaptionConfig(OFATaskConfig):
    eval_cider_cached_tokens: Optional[str] = field(
        default=None, metadata={"help": "pickle of CIDEr document frequencies (official coco-valid-words.p)"})


@register_task("caption", dataclass=CaptionConfig)
class CaptionTask(OFATask):
    dataset_cls = CaptionDataset
    schema = "caption"
    metric_name = "cider"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        self.cider: Optional[CiderD] = None
        if cfg.eval_cider_cached_tokens:
            df, ref_len = load_document_frequency(cfg.eval_cider_cached_tokens)
            self.cider = CiderD(df=df, ref_len=ref_len)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch, combine, **kwargs)
        if split != "train" and self.cider is None:
            df, ref_len = build_document_frequency(self.split_references(self.datasets[split]))
            self.cider = CiderD(df=df, ref_len=ref_len)

    def split_references(self, ds) -> List[List[str]]:
        """Every row's references (punctuation stripped), for CIDEr's document frequencies. With
        ``--bad-rows skip`` a row that cannot be read is left out and recorded in the dataset's skipped rows
        (once: evaluation meets it again), by the rank that reads it."""
        reader, refs = ds.reader, []
        caption = ds._pos[ds.columns.index("caption")]
        mine = None
        for g in range(reader.total):
            try:
                fields = reader.read_row(g)
            except DataError as e:
                if self.cfg.bad_rows != "skip":
                    raise e.at(reader.path, g) from None
                if mine is None:  # the rows this rank reads (each row is counted by one rank)
                    mine = {reader.global_index(i) for i in range(len(reader)) if not reader.is_padding(i)}
                if g in mine:
                    ds.skipped_rows.add(reader.path, g)
                continue
            refs.append([strip_punctuation(c) for c in fields[caption].split("&&")])
        return refs

    def inference(self, model, sample) -> List[str]:
        hyps = self.generator.generate([model], self.net_input_for_generation(sample))
        return [strip_punctuation(self.decode(h[0]["tokens"])) for h in hyps]

    def score(self, predictions, sample) -> List[float]:
        cider = self.cider or CiderD()
        gts = {i: refs for i, refs in enumerate(sample["refs"])}
        res = {i: [p] for i, p in enumerate(predictions)}
        _, scores = cider.compute_score(gts, res)
        return [float(s) for s in scores]

    def corpus_metrics(self, predictions, refs):
        return caption_scores(predictions, refs) if refs else {}

    def log_extra(self, predictions, sample, keep, logging_output):
        for pred, refs, k in zip(predictions, sample["refs"], keep):
            if k:
                for key, value in bleu_stats(pred, refs).items():
                    logging_output[f"_bleu_{key}"] = logging_output.get(f"_bleu_{key}", 0) + value

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        totals = {k: sum(float(log.get(f"_bleu_{k}", 0)) for log in logging_outputs) for k in BLEU_KEYS}
        if totals["sys_len"] > 0:
            for k, v in totals.items():
                metrics.log_scalar(f"_bleu_{k}", v)

            def derive(meters):
                return round(100 * corpus_bleu({k: meters[f"_bleu_{k}"].sum for k in BLEU_KEYS}), 2)
            metrics.log_derived("bleu4", derive)

    def prediction_records(self, predictions, sample):
        return [{"image_id": str(uid), "caption": p} for uid, p in zip(sample["uniq_ids"], predictions)]


# ---------------------------------------------------------------------------------------- inference
def _row(image, size, text, premise):
    return {"uniq_id": "0", "image": image, "caption": "none"}


def _predict(task_name, task, model, sample, sizes, gen_over) -> List[Dict[str, Any]]:
    captions, best = generate_batch(task, model, sample, gen_over)
    return [{"caption": c, **hypothesis_scores(h)} for c, h in zip(captions, best)]


def _lines(r: Dict[str, Any]) -> List[str]:
    return [f"caption: {r['caption']}", f"logprob: {r['logprob']:.4f}  (prob {r['prob']:.4g})"]


register_inference("caption", InferenceSpec(
    _row, _predict, lines=_lines, text=lambda r: f"{r['caption']} (logprob {r['logprob']:.2f})",
    aliases=("captioning", "image_caption")))
