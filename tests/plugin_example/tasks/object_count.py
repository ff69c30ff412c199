"""``object_count``: a new OFA task in one file: "how many objects are there?" -> a number.

It reads the official caption TSV layout (the objects are the ``&&``-joined ``predicted_objects``
column), reuses the caption dataset machinery, answers from a closed set of numbers, and reports
accuracy. Everything else (batching, generation, training, evaluation) comes from the OFA base task;
``register_inference`` makes it runnable by ``ofa.inference_model`` and ``ofa-predict --user-dir``.
"""
from dataclasses import dataclass

from fairseq.tasks import register_task

from ofa.data_utils.datasets import OFADataset
from ofa.data_utils.errors import DataError
from ofa.data_utils.transforms import square_resize
from ofa.inference import register_inference
from ofa.tasks.closed_set import ClosedSetConfig, ClosedSetTask, closed_set_inference

WORDS = ["zero", "one", "two", "three", "four", "five"]


class ObjectCountDataset(OFADataset):
    columns = ("uniq_id", "image", "predicted_objects")
    uses_prompt_type = True

    def build(self, row):
        objects = [o for o in row["predicted_objects"].split("&&") if o.strip()]
        if len(objects) >= len(WORDS):
            raise DataError(f"{len(objects)} objects; this task counts up to {len(WORDS) - 1}",
                            field="predicted_objects")
        answer = WORDS[len(objects)]
        image = square_resize(self.image(row["image"]), self.cfg.patch_image_size)
        return self.example(self.source(" how many objects are there?"), self.encode(" " + answer), image,
                            uniq_id=row["uniq_id"], conf=1.0, ref_dict={answer: 1.0})


@dataclass
class ObjectCountConfig(ClosedSetConfig):
    pass


@register_task("object_count", dataclass=ObjectCountConfig)
class ObjectCountTask(ClosedSetTask):
    dataset_cls = ObjectCountDataset
    schema = "caption"
    metric_name = "accuracy"
    default_answers = tuple(WORDS)


# one input image -> the row ObjectCountDataset reads (the object list is the target: a placeholder here)
register_inference("object_count", closed_set_inference(
    row=lambda image, size, text, premise: {"uniq_id": "0", "image": image, "predicted_objects": ""},
    aliases=("count",)))
