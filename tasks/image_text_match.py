"""``image_text_match``: image-text matching and retrieval, finetuning the pretraining ITM prompt
``' does the image describe " {text} "?'`` -> `` yes`` / `` no`` (``ofa.ranking``).

Data: ``caption`` rows (``uniq_id, image_id, caption, predicted_objects, image``; read: ``uniq_id, image,
caption``; ``data_utils/itm_dataset.ImageTextMatchDataset``). Training rows hold one caption each; the collater
turns a seeded half of every batch into negatives (another row's caption, target `` no``; a batch of one row
has none). Evaluation rows hold one image with its references ``&&``-joined (the official caption val/test
files).

Evaluation is retrieval over the split: every reference of the split is a candidate text, and every image is
scored against all of them, ``score(image, text) = log p(" yes" | image, ITM prompt of text)``
(``ofa.ranking.itm_logprobs``, ``--valid-batch-size`` pairs per model call). That is images x texts model
calls (the 5,000 Karpathy test images x 25,000 captions are 125M pairs), so ``--max-eval-images N`` keeps an
evaluation split's first N rows and only their texts as candidates (1,000 COCO images: 5M pairs).
Validation logs ``i2t_r1``, the share of images whose best text is one of their references (ties go to the
earlier text); ``ofa-evaluate`` adds, from the whole score matrix, image->text ``i2t_r1/5/10``, text->image
``t2i_r1/5/10`` (each text's positive is its image; texts of images that were not scored, e.g. skipped bad
rows, are left out) and ``rsum``, their sum (0-6). Records: ``{"uniq_id", "top_texts": the 5 best
candidates, best first, "hit1"}``.

Inference (``ofa.inference_model``; ``text=`` the text to match; a batch is one model call):
``{"match": p(yes), "logprob": log p(yes), "prob": p(yes), "score": p(yes)}`` (the probability of the answer
`` yes`` over the whole vocabulary, as ``ofa.rank`` scores).
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from fairseq.tasks import register_task

from ofa.data_utils.itm_dataset import FirstRows, ImageTextMatchDataset
from ofa.errors import ConfigError
from ofa.inference import InferenceSpec, need_text, register_inference
from ofa.ranking import itm_logprobs, itm_source, recall_at_k
from ofa.tasks.ofa_task import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)
KS = (1, 5, 10)
TOP_TEXTS = 5  # candidates listed in a prediction record


@dataclass
class ImageTextMatchConfig(OFATaskConfig):
    valid_batch_size: int = field(
        default=64, metadata={"help": "image-text pairs per model call when evaluation scores every image against "
                                      "every candidate text"})
    max_eval_images: int = field(
        default=0, metadata={"help": "evaluation splits keep their first N rows (images), and only those rows' "
                                     "texts as candidates: scoring costs images x texts model passes; 0: all rows"})


def retrieval_metrics(scores: torch.Tensor, positives: Sequence[Sequence[int]]) -> Dict[str, float]:
    """Image->text and text->image recall@1/5/10 and their sum from a score matrix.

    Args:
        scores: ``[I, T]``, higher is better: image ``i`` against candidate text ``t``.
        positives: ``I`` lists: the texts of each image (each text belongs to at most one image).

    Returns:
        ``i2t_r{k}`` (share of images with one of their texts among their ``k`` best), ``t2i_r{k}`` (share of
        the texts of these images with their image among the ``k`` best images; texts of no listed image are
        left out) and ``rsum`` (the sum of the six). Ties rank by index (``ofa.ranking.recall_at_k``).
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    owner = {t: i for i, texts in enumerate(positives) for t in texts}
    texts = sorted(owner)
    out = {f"i2t_r{k}": v for k, v in zip(KS, recall_at_k(scores, [list(p) for p in positives], KS).values())}
    t2i = recall_at_k(scores[:, texts].T, [owner[t] for t in texts], KS) if texts else {}
    out.update({f"t2i_r{k}": v for k, v in zip(KS, t2i.values())})
    out["rsum"] = sum(out.values())
    return out


@register_task("image_text_match", dataclass=ImageTextMatchConfig)
class ImageTextMatchTask(OFATask):
    dataset_cls = ImageTextMatchDataset
    schema = "caption"
    metric_name = "i2t_r1"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        if cfg.valid_batch_size < 1:
            raise ConfigError(f"--valid-batch-size must be at least 1, got {cfg.valid_batch_size}")
        if cfg.max_eval_images < 0:
            raise ConfigError(f"--max-eval-images must be >= 0 (0: every row), got {cfg.max_eval_images}")
        self.candidates: Optional[List[str]] = None  # the evaluation split's texts (every split but train's)
        self._candidate_sources: List[torch.Tensor] = []  # their ITM prompts' ids (ofa.ranking.itm_source)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """As ``OFATask``'s; an evaluation split is then cut to ``--max-eval-images`` rows and its candidate texts
        are gathered (every evaluation split reads the same, last, data file)."""
        super().load_dataset(split, epoch, combine, **kwargs)
        if split == "train":
            return
        ds = self.datasets[split]
        if self.cfg.max_eval_images:
            total = ds.reader.total
            ds = self.datasets[split] = self.dataset_cls(FirstRows(ds.reader, self.cfg.max_eval_images),
                                                         self.tokenizer, self.data_config(), split)
            logger.info(f"{split}: the first {ds.reader.total} of {total} rows (--max-eval-images)")
        self.candidates = ds.gather_candidates()
        # each candidate's prompt is encoded once here, not once per image it is scored against
        self._candidate_sources = [itm_source(self.tokenizer, t, self.cfg.max_src_length) for t in self.candidates]
        logger.info(f"{split}: {ds.reader.total} images x {len(self.candidates)} candidate texts to score")

    def inference(self, model, sample) -> List[torch.Tensor]:
        """Every image of the batch against every candidate text: a float32 ``[N texts]`` score vector (log p(yes))
        per sample, computed ``valid_batch_size`` pairs at a time (chunks run across the batch's images)."""
        if self.candidates is None:
            raise ConfigError("image_text_match scores images against an evaluation split's texts: load one first")
        images = sample["net_input"]["patch_images"]  # [B, 3, S, S]
        texts, n = self._candidate_sources, len(self.candidates)
        per_call, total, parts = self.cfg.valid_batch_size, len(images) * n, []
        for start in range(0, total, per_call):  # pair p = (image p // n, text p % n)
            pairs = torch.arange(start, min(start + per_call, total))
            parts.append(itm_logprobs(model, self.tokenizer, images[pairs.to(images.device) // n],
                                      [texts[t] for t in (pairs % n).tolist()], per_call, self.cfg.max_src_length))
        scores = torch.cat(parts).float() if parts else torch.zeros(0)
        return list(scores.view(len(images), n))

    def score(self, predictions, sample) -> List[float]:
        """Per image: 1.0 when its best candidate text is one of its references."""
        return [recall_at_k(p[None], [refs], ks=(1,))["R@1"] for p, refs in zip(predictions, sample["refs"])]

    def corpus_metrics(self, predictions, refs):
        if not predictions:
            return {}
        return retrieval_metrics(torch.stack([torch.as_tensor(p) for p in predictions]), refs)

    def prediction_records(self, predictions, sample):
        records = []
        for uid, p, refs in zip(sample["uniq_ids"], predictions, sample["refs"]):
            top = torch.argsort(-p.double(), stable=True)[:TOP_TEXTS].tolist()
            records.append({"uniq_id": uid, "top_texts": [self.candidates[t] for t in top],
                            "hit1": bool(top) and top[0] in set(refs)})
        return records


# ---------------------------------------------------------------------------------------- inference
def _row(image, size, text, premise):
    return {"uniq_id": "0", "image": image,
            "caption": need_text("image_text_match", text, "the text to match against the image")}


def _predict(task_name, task, model, sample, sizes, gen_over) -> List[Dict[str, Any]]:
    if model is None:  # ofa-predict --onnx: the export decodes text; this task scores with the PyTorch model
        raise ConfigError("image_text_match needs the PyTorch model (a checkpoint), not an ONNX export")
    texts = sample["texts"]
    logprobs = itm_logprobs(model, task.tokenizer, sample["net_input"]["patch_images"], texts, len(texts),
                            task.cfg.max_src_length)
    out = []
    for lp in logprobs.tolist():
        p = math.exp(lp)
        out.append({"match": p, "logprob": lp, "prob": p, "score": p})
    return out


def _lines(r: Dict[str, Any]) -> List[str]:
    return [f"match: {r['match']:.4f}  (p(yes); logprob {r['logprob']:.4f})"]


register_inference("image_text_match", InferenceSpec(
    _row, _predict, _lines, text=lambda r: f"match p(yes)={r['match']:.3f}",
    aliases=("itm", "image_text_matching", "retrieval")))
