"""``vqa_gen``: VQA as answer generation (official ``tasks/mm_tasks/vqa_gen.py``).

Encoder text is the question; the target is the most confident answer, its confidence weights the
loss. Evaluation scores every candidate answer (``allcand``) or runs trie-constrained beam search
(``beamsearch``); the metric is the VQA score ``ref_dict[answer]`` (0 for answers not in the refs).
"""
from dataclasses import dataclass

from fairseq.tasks import register_task

from ofa.data_utils.datasets import VqaDataset
from ofa.inference import need_text, register_inference
from ofa.tasks.closed_set import ClosedSetConfig, ClosedSetTask, closed_set_inference


@dataclass
class VqaGenConfig(ClosedSetConfig):
    pass


@register_task("vqa_gen", dataclass=VqaGenConfig)
class VqaGenTask(ClosedSetTask):
    dataset_cls = VqaDataset
    schema = "vqa"
    metric_name = "vqa_score"
    default_answers = ("no", "yes")

    def prediction_records(self, predictions, sample):
        return [{"question_id": _int_or_str(uid), "answer": p} for uid, p in zip(sample["uniq_ids"], predictions)]


def _int_or_str(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _row(image, size, text, premise):
    """One image and a question -> a ``vqa`` row (the answers are a placeholder)."""
    return {"question_id": "0", "image": image, "question": need_text("vqa_gen", text, "the question"),
            "answers": "1.0|!+none"}


register_inference("vqa_gen", closed_set_inference(_row, aliases=("vqa",)))
