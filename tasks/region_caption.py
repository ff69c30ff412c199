"""``region_caption``: grounded captioning, a caption for one region of the image (the pretraining source
``"  what does the region describe? region:" + <bin> x4`` as a finetuning task).

Data: ``region_caption`` rows (``uniq_id, image_id, caption, region_coord, image``;
``data_utils/region_datasets.RegionCaptionDataset``): the region ``x0,y0,x1,y1`` in original pixels, its
caption (training) or its ``&&``-joined references (evaluation). ``ofa-data convert refcoco_regions`` (the
referring expressions as captions) and ``vg_regions`` (Visual Genome region descriptions) write them.
Everything else is ``caption``'s: beam-search validation, CIDEr-D (``cider``) and BLEU-4 (``bleu4``),
pycocoevalcap's scores in ``ofa-evaluate``, ``--criterion scst_reward_criterion`` for CIDEr optimisation.

Inference (``ofa.inference_model``; ``text=`` the region ``"x0,y0,x1,y1"`` in pixels of the input image):
``{"caption", "region": [x0, y0, x1, y1], "logprob", "prob", "score"}``; ``--draw`` draws the region tagged
with the caption.
"""
from typing import Any, Dict, List

from fairseq.tasks import register_task

from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import box_inside, parse_box
from ofa.data_utils.region_datasets import RegionCaptionDataset
from ofa.draw import draw_box
from ofa.inference import InferenceSpec, InputError, generate_batch, hypothesis_scores, need_text, register_inference
from ofa.tasks.caption import CaptionConfig, CaptionTask


@register_task("region_caption", dataclass=CaptionConfig)
class RegionCaptionTask(CaptionTask):
    dataset_cls = RegionCaptionDataset
    schema = "region_caption"

    def prediction_records(self, predictions, sample):
        return [{"uniq_id": uid, "caption": p} for uid, p in zip(sample["uniq_ids"], predictions)]


# ---------------------------------------------------------------------------------------- inference
def _row(image, size, text, premise):
    region = need_text("region_caption", text, 'the region "x0,y0,x1,y1" in pixels of the image')
    try:
        box_inside(parse_box(region), size, region)
    except DataError as e:
        raise InputError(f"region_caption: {e.message}") from None
    return {"uniq_id": "0", "image": image, "caption": "none", "region_coord": region}


def _predict(task_name, task, model, sample, sizes, gen_over) -> List[Dict[str, Any]]:
    captions, best = generate_batch(task, model, sample, gen_over)
    return [{"caption": c, "region": [float(v) for v in r], **hypothesis_scores(h)}
            for c, r, h in zip(captions, sample["regions"], best)]


def _lines(r: Dict[str, Any]) -> List[str]:
    return ["region: " + " ".join(f"{v:.1f}" for v in r["region"]) + "  (x0 y0 x1 y1, pixels)",
            f"caption: {r['caption']}", f"logprob: {r['logprob']:.4f}  (prob {r['prob']:.4g})"]


def _draw(img, r: Dict[str, Any], label) -> None:
    draw_box(img, r["region"], r["caption"])


register_inference("region_caption", InferenceSpec(
    _row, _predict, _lines, text=lambda r: f"{r['caption']} (logprob {r['logprob']:.2f})", draw=_draw,
    aliases=("grounded_caption", "grounded_captioning", "region_captioning")))
