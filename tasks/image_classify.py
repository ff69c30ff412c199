"""``image_classify``: classification by generating the class name (official ``tasks/cv_tasks/image_classify.py``).

The class list comes from ``--ans2label-file`` (JSON/pickle ``{name: id}`` or a text file with one name
per line); evaluation scores every class name (``allcand``) or decodes through the class trie. The
metric is accuracy.
"""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from ofa.data_utils.datasets import ImageClassifyDataset
from ofa.inference import register_inference
from ofa.tasks.closed_set import ClosedSetConfig, ClosedSetTask, closed_set_inference


@dataclass
class ImageClassifyConfig(ClosedSetConfig):
    augment: bool = field(default=False, metadata={"help": "RandAugment + random resized crop when training"})


@register_task("image_classify", dataclass=ImageClassifyConfig)
class ImageClassifyTask(ClosedSetTask):
    dataset_cls = ImageClassifyDataset
    schema = "image_classify"
    metric_name = "accuracy"

    def __init__(self, cfg, tokenizer):
        if not cfg.ans2label_file:
            raise ValueError("image_classify needs --ans2label-file with the class names")
        super().__init__(cfg, tokenizer)


def _row(image, size, text, premise):
    """One image -> an ``image_classify`` row (the label is a placeholder)."""
    return {"image": image, "label_name": "none"}


register_inference("image_classify", closed_set_inference(_row, answer_key="label",
                                                          aliases=("classify", "classification")))
