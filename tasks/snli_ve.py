"""``snli_ve``: visual entailment as yes / no / maybe (official ``tasks/mm_tasks/snli_ve.py``).

Labels map entailment -> yes, contradiction -> no, neutral -> maybe; ``--add-caption`` also feeds the
text premise (the official scripts do; note it leaks the premise text into the input). The metric
is accuracy.
"""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from ..data_utils.datasets import SnliVeDataset
from .closed_set import ClosedSetConfig, ClosedSetTask


@dataclass
class SnliVeConfig(ClosedSetConfig):
    add_caption: bool = field(default=False, metadata={"help": "also give the text premise"})


@register_task("snli_ve", dataclass=SnliVeConfig)
class SnliVeTask(ClosedSetTask):
    dataset_cls = SnliVeDataset
    schema = "snli_ve"
    metric_name = "snli_score"
    default_answers = ("no", "yes", "maybe")
