"""``image_classify``: classification by generating the class name (official ``tasks/cv_tasks/image_classify.py``).

The class list comes from ``--ans2label-file`` (JSON/pickle ``{name: id}`` or a text file with one name
per line); evaluation scores every class name (``allcand``) or decodes through the class trie. The
metric is accuracy.
"""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from ..data_utils.datasets import ImageClassifyDataset
from .closed_set import ClosedSetConfig, ClosedSetTask


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
