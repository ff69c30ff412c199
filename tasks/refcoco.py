"""``refcoco``: visual grounding for RefCOCO / RefCOCO+ / RefCOCOg (official ``tasks/mm_tasks/refcoco.py``).

The target is four ``<bin_i>`` tokens ``x0 y0 x1 y1``; decoding is restricted to bin tokens
(``constraint_range`` over the bins, min and max length 4) and the bins are mapped back to
original-image pixels with the resize ratios. The metric is Acc@0.5 with the official IoU rule.

Inference (``ofa.inference_model``; a batch is one beam search): ``{"box": [x0, y0, x1, y1] (original-image
pixels, clamped to the image), "bins", "logprob" (the four bin tokens' and EOS's summed log-probabilities),
"prob" (its exp), "score" (the length-normalised log-probability beam search ranks by)}``; ``--draw``
draws the box tagged with the expression and the log-probability.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
from fairseq.tasks import register_task

from ofa.data_utils.boxes import bins_to_box, clamp_box, grounding_hits
from ofa.data_utils.datasets import RefcocoDataset
from ofa.draw import draw_box
from ofa.inference import InferenceSpec, generate_batch, hypothesis_scores, need_text, register_inference
from ofa.tasks.ofa_task import OFATask, OFATaskConfig


@dataclass
class RefcocoConfig(OFATaskConfig):
    patch_image_size: int = field(default=512, metadata={"help": "side of the square model input image"})
    eval_max_len_b: int = field(default=4, metadata={"help": "a box is exactly four tokens"})
    eval_min_len: int = field(default=4, metadata={"help": "a box is exactly four tokens"})


@register_task("refcoco", dataclass=RefcocoConfig)
class RefcocoTask(OFATask):
    dataset_cls = RefcocoDataset
    schema = "refcoco"
    metric_name = "acc"

    def generator_kwargs(self):
        kwargs = super().generator_kwargs()
        kwargs["constraint_range"] = f"{self.vocab.bin_start},{self.vocab.bin_start + self.vocab.num_bins}"
        return kwargs

    def inference(self, model, sample) -> List[List[float]]:
        hyps = self.generator.generate([model], self.net_input_for_generation(sample))
        boxes = []
        for i, h in enumerate(hyps):
            bins = (h[0]["tokens"][:4] - self.vocab.bin_start).clamp(0, self.vocab.num_bins - 1)
            boxes.append(list(bins_to_box(bins, float(sample["w_resize_ratios"][i]), float(sample["h_resize_ratios"][i]),
                                          self.cfg.max_image_size, self.cfg.num_bins)))
        return boxes

    def score(self, predictions, sample) -> List[float]:
        pred = torch.tensor(predictions, dtype=torch.float64)
        gold = sample["region_coords"].to(torch.float64).cpu()
        return grounding_hits(pred, gold).float().tolist()

    def prediction_records(self, predictions, sample):
        return [{"uniq_id": uid, "box": [round(v, 2) for v in box]} for uid, box in zip(sample["uniq_ids"], predictions)]


# ---------------------------------------------------------------------------------------- inference
def _row(image, size, text, premise):
    w, h = size
    return {"uniq_id": "0", "image": image, "text": need_text("refcoco", text, "the referring expression"),
            "region_coord": f"0,0,{w},{h}"}


def _predict(task_name, task, model, sample, sizes, gen_over) -> List[Dict[str, Any]]:
    boxes, best = generate_batch(task, model, sample, gen_over)
    results = []
    for box, hyp, (w, h) in zip(boxes, best, sizes):
        bins = (hyp["tokens"][:4] - task.vocab.bin_start).clamp(0, task.vocab.num_bins - 1)
        box = clamp_box(box, (w, h))
        results.append({"box": [round(v, 2) for v in box], "bins": [int(b) for b in bins], **hypothesis_scores(hyp)})
    return results


def _lines(r: Dict[str, Any]) -> List[str]:
    return ["box: " + " ".join(f"{v:.1f}" for v in r["box"]) + "  (x0 y0 x1 y1, pixels)",
            f"logprob: {r['logprob']:.4f}  (prob {r['prob']:.4g})"]


def _text(r: Dict[str, Any]) -> str:
    return "box " + ", ".join(f"{v:.1f}" for v in r["box"]) + f" (logprob {r['logprob']:.2f})"


def _draw(img, r: Dict[str, Any], label) -> None:
    draw_box(img, r["box"], f"{label} ({r['logprob']:.2f})" if label else f"{r['logprob']:.2f}")


register_inference("refcoco", InferenceSpec(_row, _predict, _lines, _text, _draw,
                                            aliases=("grounding", "visual_grounding")))
