"""``snli_ve``: visual entailment as yes / no / maybe (official ``tasks/mm_tasks/snli_ve.py``).

Labels map entailment -> yes, contradiction -> no, neutral -> maybe; ``--add-caption`` also feeds the
text premise (the official scripts do; note it leaks the premise text into the input). The metric
is accuracy.
"""
from dataclasses import dataclass, field

from fairseq.tasks import register_task

from ofa.data_utils.datasets import SnliVeDataset
from ofa.inference import need_text, register_inference
from ofa.tasks.closed_set import ClosedSetConfig, ClosedSetTask, closed_set_inference


@dataclass
class SnliVeConfig(ClosedSetConfig):
    add_caption: bool = field(default=False, metadata={"help": "also give the text premise"})


@register_task("snli_ve", dataclass=SnliVeConfig)
class SnliVeTask(ClosedSetTask):
    dataset_cls = SnliVeDataset
    schema = "snli_ve"
    metric_name = "snli_score"
    default_answers = ("no", "yes", "maybe")


def _row(image, size, text, premise):
    """One image, a hypothesis and an optional text premise -> a ``snli_ve`` row (the label is a placeholder)."""
    return {"uniq_id": "0", "image": image, "hypothesis": need_text("snli_ve", text, "the hypothesis"),
            "caption": premise or "", "label": "entailment"}


register_inference("snli_ve", closed_set_inference(_row, takes_premise=True,
                                                   aliases=("entailment", "visual_entailment")))
