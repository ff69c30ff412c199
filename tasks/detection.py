"""``detection``: object detection as a sequence, Pix2Seq-style (the pretraining detection source as a task).

Data: ``detection`` rows (``uniq_id, image, boxes``; ``data_utils/region_datasets.DetectionDataset``): the
target lists each object as four ``<bin_i>`` tokens then its class name, in a random order in training
and by position in evaluation, at most ``--max-objects``. The class list is ``--class-names`` (a text file,
one name per line; ``ofa-data convert coco_detection`` writes one) or, without it, every name in the
validation file.

Decoding is held to the grammar ``(<bin> x4, class name)*`` then EOS (``ofa.generate.constraints.
DetectionGrammar``: bins, then a path of the class-name trie, then the next bins or EOS), greedy by default
(``--eval-beam 1``; beam search prefers short sequences and so stops early). Each predicted object's
``score`` is the probability of its class-name tokens (Pix2Seq's class-token likelihood), which ranks the
detections for AP.

Metrics: validation logs ``ap`` (COCO AP, IoU .50:.95) and ``ap50`` over the validation images
(``ofa.metrics.detection.coco_map``, equal to pycocotools) and ``recall50``, the mean per-image share of
objects found (a box of the right class at IoU >= 0.5; an image without objects scores 1 when nothing is
predicted); ``ofa-evaluate`` adds pycocotools' own numbers, as ``ap``, ``ap50``, ``ap75``, ``aps``, ``apm``,
``apl`` (0-1; -1 where an area range has no ground truth). With several processes, each validation batch's
detections are gathered to every process (``torch.distributed.all_gather_object``) before the AP is updated.

Inference (``ofa.inference_model``; a batch is one search): ``{"objects": [{"box": [x0, y0, x1, y1] (original
pixels, clamped to the image), "label", "score", "bins"}], "logprob", "prob", "score"}`` (``logprob`` the whole
sequence's, EOS included); ``--draw`` draws every box with its label and score.
"""

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from fairseq import metrics
from fairseq.tasks import register_task

from ofa.data_utils.boxes import bins_to_box, box_iou, clamp_box
from ofa.data_utils.formats import parse_detection_boxes
from ofa.data_utils.readers import open_reader
from ofa.data_utils.region_datasets import DetectionDataset
from ofa.draw import draw_box
from ofa.errors import ConfigError
from ofa.generate import Trie
from ofa.generate.constraints import DetectionGrammar
from ofa.inference import InferenceSpec, generate_batch, hypothesis_scores, register_inference
from ofa.metrics.detection import DetectionAccumulator, pycocotools_map
from ofa.tasks.ofa_task import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)


@dataclass
class DetectionConfig(OFATaskConfig):
    class_names: Optional[str] = field(
        default=None, metadata={"help": "class names, one per line (default: every name in the validation file)"})
    max_objects: int = field(default=100, metadata={"help": "objects per target sequence and per prediction"})
    eval_beam: int = field(default=1, metadata={"help": "beam size (1: greedy, as Pix2Seq decodes)"})
    eval_min_len: int = field(default=0, metadata={"help": "minimum generated length (0: no objects is allowed)"})


def load_class_names(path: str) -> List[str]:
    """Class names from a text file, one per line (blank lines skipped, duplicates refused)."""
    if not os.path.isfile(path):
        raise ConfigError(f"class names file not found: {path}")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    seen = set()
    for k, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"{path}: class name {name!r} appears twice (line {k + 1})")
        seen.add(name)
    if not names:
        raise ConfigError(f"{path} holds no class names")
    return names


def names_in_file(path: str) -> List[str]:
    """Every class name of a detection file's ``boxes`` column, in order of first appearance."""
    reader = open_reader(path, schema="detection", columns=("boxes",))
    seen: Dict[str, None] = {}
    for g in range(reader.total):
        field_ = reader.read_row(g)[0]
        if field_.strip():
            for _, _, name in parse_detection_boxes(field_):
                seen.setdefault(name, None)
    return list(seen)


def split_objects(tokens: Sequence[int], logprobs: Sequence[float], bin_start: int, num_bins: int,
                  decode: Callable[[List[int]], str]) -> List[Tuple[List[int], str, float]]:
    """A generated object list -> ``[(bins [4], name, name log-probability)]``.

    ``tokens``: the hypothesis (EOS last, no BOS), ``logprobs`` its per-token log-probabilities. An object
    is four bin tokens followed by its name's tokens (up to the next bin or EOS); an incomplete last object
    (fewer than four bins, or no name: the length limit cut it) is dropped."""
    out, k, n = [], 0, len(tokens)

    def is_bin(t):
        return bin_start <= t < bin_start + num_bins

    while k + 4 <= n and all(is_bin(int(t)) for t in tokens[k:k + 4]):
        j = k + 4
        while j < n - 1 and not is_bin(int(tokens[j])):  # the last token is EOS
            j += 1
        if j == k + 4:
            break
        bins = [int(t) - bin_start for t in tokens[k:k + 4]]
        out.append((bins, decode([int(t) for t in tokens[k + 4:j]]).strip(), float(sum(logprobs[k + 4:j]))))
        k = j
    return out


def image_recall(gt: Sequence[Tuple[Sequence[float], str]], pred: Sequence[Dict[str, Any]],
                 threshold: float = 0.5) -> float:
    """Share of ground-truth objects with a predicted box of the same label at IoU >= ``threshold`` (1 for an
    image without objects and without predictions, 0 with predictions)."""
    if not gt:
        return 0.0 if pred else 1.0
    found = 0
    for box, name in gt:
        cands = [p["box"] for p in pred if p["label"] == name]
        if cands:
            ious = box_iou(torch.tensor(cands, dtype=torch.float64),
                           torch.tensor([list(box)] * len(cands), dtype=torch.float64))
            found += bool((ious >= threshold).any())
    return found / len(gt)


@register_task("detection", dataclass=DetectionConfig)
class DetectionTask(OFATask):
    dataset_cls = DetectionDataset
    schema = "detection"
    metric_name = "recall50"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        if cfg.max_objects < 1:
            raise ConfigError(f"--max-objects must be at least 1, got {cfg.max_objects}")
        self._names: Optional[List[str]] = load_class_names(cfg.class_names) if cfg.class_names else None
        self._names_trie: Optional[Trie] = None
        # a validation batch's (ground truth, detections) per image, until reduce_metrics gathers them (lists
        # cannot travel in fairseq's logging outputs, which several processes sum), and the matches of this
        # validation's images so far: the logged ``ap`` / ``ap50`` are derived from them (nothing of it is
        # kept in a checkpoint's meters)
        self._pending: List[Tuple[Any, Any]] = []
        self._validated = False
        self._accumulator: Optional[DetectionAccumulator] = None
        self._summary: Tuple[int, Dict[str, float]] = (-1, {})

    def data_config(self):
        import dataclasses

        return dataclasses.replace(super().data_config(), max_objects=self.cfg.max_objects)

    @property
    def class_names(self) -> List[str]:
        if self._names is None:
            if not self.cfg.data:
                raise ConfigError("detection needs its class list: --class-names FILE (one name per line)")
            path = self.split_path("valid")
            self._names = names_in_file(path)
            if not self._names:
                raise ConfigError(f"{path} names no objects: give the class list with --class-names FILE")
            logger.info(f"{len(self._names)} class names from {path} (give --class-names to fix the list)")
        return self._names

    def grammar(self, max_objects: int) -> DetectionGrammar:
        """The object grammar over this task's class names (their trie built once), ending the list after
        ``max_objects``."""
        if self._names_trie is None:
            self._names_trie = Trie(self.dict.eos())
            for name in self.class_names:
                self._names_trie.insert(self.tokenizer.encode(" " + name).tolist() + [self.dict.eos()])
        start = self.vocab.bin_start
        return DetectionGrammar(self._names_trie, start, start + self.vocab.num_bins, self.dict.eos(), max_objects)

    def object_tokens(self) -> int:
        """The most tokens one object can take: four bins and the longest class name."""
        return 4 + max(len(self.tokenizer.encode(" " + n)) for n in self.class_names)

    def generator_kwargs(self):
        kwargs = super().generator_kwargs()
        kwargs["max_len_a"] = 0.0
        kwargs["max_len_b"] = self.cfg.max_objects * self.object_tokens() + 1
        return kwargs

    def build_generator(self, models, args=None, **overrides):
        """The task's generator under the object grammar. A ``max_len_b`` below what ``max_objects`` objects
        can take lowers the number of objects instead (at the length limit only EOS may come, and the grammar
        does not allow it inside an object: no hypothesis would finish)."""
        objects = self.cfg.max_objects
        if "max_len_b" in overrides:
            objects = min(objects, max(0, (int(overrides["max_len_b"]) - 1) // self.object_tokens()))
            overrides["max_len_b"] = max(int(overrides["max_len_b"]), objects * self.object_tokens() + 1)
            overrides["max_len_a"] = 0.0
        overrides.setdefault("logits_processors", [self.grammar(objects)])
        return super().build_generator(models, args, **overrides)

    # ------------------------------------------------------------------ evaluation
    def objects_of(self, hyp, w_ratio: float, h_ratio: float, size) -> List[Dict[str, Any]]:
        """A hypothesis' objects with their boxes in original-image pixels (corners ordered: ``x0 <= x1``,
        ``y0 <= y1``), clamped to the ``(w, h)`` image."""
        out = []
        for bins, name, name_lp in split_objects(hyp["tokens"].tolist(), hyp["positional_scores"].tolist(),
                                                 self.vocab.bin_start, self.vocab.num_bins, self._decode_ids):
            x0, y0, x1, y1 = bins_to_box(bins, w_ratio, h_ratio, self.cfg.max_image_size, self.cfg.num_bins)
            (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))  # corners in order, whatever was generated
            box = clamp_box((x0, y0, x1, y1), size)
            out.append({"box": [round(v, 2) for v in box], "label": name, "score": math.exp(name_lp), "bins": bins})
        return out

    def _decode_ids(self, ids: List[int]) -> str:
        return self.tokenizer.decode(torch.tensor(ids, dtype=torch.long))

    def inference(self, model, sample) -> List[List[Dict[str, Any]]]:
        hyps = self.generator.generate([model], self.net_input_for_generation(sample))
        return [self.objects_of(h[0], float(sample["w_resize_ratios"][i]), float(sample["h_resize_ratios"][i]),
                                sample["image_sizes"][i]) for i, h in enumerate(hyps)]

    def score(self, predictions, sample) -> List[float]:
        return [image_recall(gt, pred) for gt, pred in zip(sample["refs"], predictions)]

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        self._accumulator, self._pending, self._summary = None, [], (-1, {})

    def validation_summary(self) -> Dict[str, float]:
        """COCO AP numbers over the images of the current validation so far (``coco_map``'s keys)."""
        acc = self._accumulator
        if acc is None:
            return {"AP": 0.0, "AP50": 0.0}
        if self._summary[0] != len(acc.images):
            self._summary = (len(acc.images), acc.summary())
        return self._summary[1]

    def valid_step(self, sample, model, criterion):
        self._validated = True  # every process validates the same number of batches (empty ones included)
        return super().valid_step(sample, model, criterion)

    def log_extra(self, predictions, sample, keep, logging_output):
        self._pending += [([(tuple(b), n) for b, n in gt], [(tuple(p["box"]), p["label"], p["score"]) for p in pred])
                          for gt, pred, k in zip(sample["refs"], predictions, keep) if k]

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if not self._validated:
            return
        items, self._pending, self._validated = self._pending, [], False
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: List[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, items)  # after a valid_step on every process
            items = [item for part in gathered for item in part]
        if items:
            if self._accumulator is None:
                self._accumulator = DetectionAccumulator(self.class_names)
            for gt, dets in items:
                self._accumulator.add(gt, dets)
            metrics.log_derived("ap", lambda meters: round(self.validation_summary()["AP"], 4))
            metrics.log_derived("ap50", lambda meters: round(self.validation_summary()["AP50"], 4))

    def corpus_metrics(self, predictions, refs):
        if not refs:
            return {}
        known = set(self.class_names)
        unknown = sorted({n for r in refs for _, n in r if n not in known})
        if unknown:  # the model cannot name them: they are left out of the AP (as coco_map leaves them)
            logger.warning(f"{len(unknown)} ground-truth classes are not in the class list and are left out of the "
                           f"AP: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        gt = {i: [(tuple(b), n) for b, n in r] for i, r in enumerate(refs)}  # pycocotools_map leaves unknowns out
        dets = {i: [(tuple(p["box"]), p["label"], p["score"]) for p in pred] for i, pred in enumerate(predictions)}
        return {k.lower(): v for k, v in pycocotools_map(gt, dets, categories=self.class_names).items()}

    def prediction_records(self, predictions, sample):
        return [{"uniq_id": uid, "objects": [{"box": p["box"], "label": p["label"], "score": round(p["score"], 5)}
                                             for p in pred]}
                for uid, pred in zip(sample["uniq_ids"], predictions)]


# ---------------------------------------------------------------------------------------- inference
def _row(image, size, text, premise):
    return {"uniq_id": "0", "image": image, "boxes": ""}


def _predict(task_name, task, model, sample, sizes, gen_over) -> List[Dict[str, Any]]:
    objects, best = generate_batch(task, model, sample, gen_over)
    return [{"objects": objs, **hypothesis_scores(hyp)} for objs, hyp in zip(objects, best)]


def _lines(r: Dict[str, Any]) -> List[str]:
    lines = [f"objects: {len(r['objects'])}"]
    lines += [f"  {o['label']}: " + " ".join(f"{v:.1f}" for v in o["box"]) + f"  (x0 y0 x1 y1, pixels; score "
              f"{o['score']:.3f})" for o in r["objects"]]
    return lines + [f"logprob: {r['logprob']:.4f}  (prob {r['prob']:.4g})"]


def _text(r: Dict[str, Any]) -> str:
    if not r["objects"]:
        return "no objects"
    return ", ".join(f"{o['label']} ({o['score']:.2f})" for o in r["objects"])


PALETTE = [(0, 255, 0), (255, 64, 64), (64, 160, 255), (255, 200, 0), (220, 80, 255), (0, 230, 230), (255, 140, 0)]


def _draw(img, r: Dict[str, Any], label) -> None:
    colors: Dict[str, Tuple[int, int, int]] = {}
    for o in r["objects"]:
        color = colors.setdefault(o["label"], PALETTE[len(colors) % len(PALETTE)])
        draw_box(img, o["box"], f"{o['label']} {o['score']:.2f}", color=color)


register_inference("detection", InferenceSpec(_row, _predict, _lines, _text, _draw,
                                              aliases=("object_detection", "detect")))
