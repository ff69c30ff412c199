"""``caption``: image captioning (official ``tasks/mm_tasks/caption.py``).

Training targets are single captions; validation targets carry every reference joined by ``&&``.
Validation generates with beam search (``--eval-beam 5 --eval-max-len-b 16
--eval-no-repeat-ngram-size 3`` in the official recipe), strips punctuation, and logs CIDEr-D
(document frequencies of the validation references, or ``--eval-cider-cached-tokens``) and corpus
BLEU-4. ``--scst`` builds the generator the CIDEr-optimisation criterion samples from.
"""

import logging
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq import metrics
from fairseq.tasks import register_task

from ofa.metrics.bleu import bleu_stats, corpus_bleu
from ofa.metrics.cider import CiderD, build_document_frequency, load_document_frequency
from ofa.metrics.coco import caption_scores

from ..data_utils.datasets import CaptionDataset
from ..data_utils.text import strip_punctuation
from .ofa_task import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)
BLEU_KEYS = ["sys_len", "ref_len"] + [f"{k}_{n}" for n in range(1, 5) for k in ("match", "total")]


@dataclass
class CaptionConfig(OFATaskConfig):
    eval_cider_cached_tokens: Optional[str] = field(
        default=None, metadata={"help": "pickle of CIDEr document frequencies (official coco-valid-words.p)"})
    scst: bool = field(default=False, metadata={"help": "build the generator used by scst_reward_criterion"})
    scst_beam: int = field(default=5, metadata={"help": "SCST: hypotheses per image (beam size)"})
    scst_max_len_b: int = field(default=16, metadata={"help": "SCST: max generated length"})
    scst_no_repeat_ngram_size: int = field(default=3, metadata={"help": "SCST: n-gram blocking"})


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

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.scst:
            self.scst_generator = self.build_generator(
                [model], beam_size=self.cfg.scst_beam, max_len_b=self.cfg.scst_max_len_b,
                no_repeat_ngram_size=self.cfg.scst_no_repeat_ngram_size, min_len=1, max_len_a=0.0)
        return model

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch, combine, **kwargs)
        if split != "train" and self.cider is None:
            ds = self.datasets[split]
            refs = []
            for g in range(ds.reader.total):  # document frequencies of this split's references
                fields = ds.reader.read_row(g)
                refs.append([strip_punctuation(c) for c in fields[ds._pos[2]].split("&&")])
            df, ref_len = build_document_frequency(refs)
            self.cider = CiderD(df=df, ref_len=ref_len)

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
