"""``vqa_gen``: VQA as answer generation (official ``tasks/mm_tasks/vqa_gen.py``).

Encoder text is the question; the target is the most confident answer, its confidence weights the
loss. Evaluation scores every candidate answer (``allcand``) or runs trie-constrained beam search
(``beamsearch``); the metric is the VQA score ``ref_dict[answer]`` (0 for answers not in the refs).
"""
from dataclasses import dataclass

from fairseq.tasks import register_task

from ..data_utils.datasets import VqaDataset
from .closed_set import ClosedSetConfig, ClosedSetTask


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
