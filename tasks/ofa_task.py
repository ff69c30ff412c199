"""Shared base of every OFA fairseq task (official ``tasks/ofa_task.py``, without its JSON-string flags).

``OFATaskConfig`` holds the common typed arguments: data files, tokenizer folder, lengths, image size,
location bins, generation settings for evaluation (``eval_beam``, ``eval_max_len_b``, ...), and how bad
rows are handled. Subclasses set ``dataset_cls`` and implement ``inference`` (predictions for a batch)
and ``score`` (per-sample metric values); the base class turns these into validation metrics, the
``ofa-evaluate`` outputs, and fairseq logging.

Data: ``data`` is a comma-separated list of files. As in the official code, training epoch ``e`` reads
``files[(e - 1) % (n - 1)]`` (pre-shuffled copies rotate) and every other split reads the last file;
a single file serves all splits. Each distributed rank reads its own equal-sized slice, so batches
never run out on one rank before the others.

Bad rows (``--bad-rows skip``): a dataset returns ``None`` for a bad row and records it once
(``data_utils/bad_rows.py``); the batch iterator here brings what loader workers found back to the main
process and gives fairseq a real row as its dummy batch even when the first batch is all bad. A batch
left empty is dropped, or run with zero weight where other ranks have rows, by ``ofa/cli/empty_batches.py``.
"""

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from fairseq import metrics
from fairseq.data import iterators
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.distributed import utils as dist_utils
from fairseq.tasks import FairseqTask
from omegaconf import II

from ofa import lr_scale
from ofa.data_utils.datasets import DataConfig
from ofa.data_utils.readers import open_reader
from ofa.errors import ConfigError
from ofa.generate import SequenceGenerator
from ofa.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

BAD_ROWS = ChoiceEnum(["fail", "skip"])
PROMPT_TYPES = ChoiceEnum(["none", "src", "prev_output"])


@dataclass
class OFATaskConfig(FairseqDataclass):
    data: Optional[str] = field(default=None, metadata={"help": "comma-separated data files; the last is validation"})
    bpe_dir: Optional[str] = field(default=None, metadata={"help": "tokenizer folder: GPT-2 BPE files or a SentencePiece model"})
    selected_cols: Optional[str] = field(
        default=None, metadata={"help": "legacy: column indices in the order the task expects (default: by name)"})
    max_src_length: int = field(default=128, metadata={"help": "max source words"})
    max_tgt_length: int = field(default=30, metadata={"help": "max target words / tokens"})
    code_dict_size: int = field(default=8192, metadata={"help": "number of <code_i> tokens"})
    num_bins: int = field(default=1000, metadata={"help": "number of <bin_i> location tokens"})
    patch_image_size: int = field(default=480, metadata={"help": "side of the square model input image"})
    max_image_size: int = field(default=512, metadata={"help": "box coordinates are divided by this before binning"})
    imagenet_default_mean_and_std: bool = field(default=False, metadata={"help": "ImageNet normalisation"})
    bad_rows: BAD_ROWS = field(default="fail", metadata={"help": "fail on a bad data row, or skip and count it"})
    shuffle: bool = field(default=True, metadata={"help": "reshuffle the training rows every epoch"})
    image_backbone_lr_scale: float = field(
        default=1.0, metadata={"help": "the image backbone (ResNet) learns at this times the learning rate "
                                       "(0 freezes its weights); see ofa/lr_scale.py"})
    seed: int = II("common.seed")
    num_workers: int = II("dataset.num_workers")
    # generation used by validation and ofa-evaluate
    eval_beam: int = field(default=5, metadata={"help": "beam size"})
    eval_max_len_a: float = field(default=0.0, metadata={"help": "max_len = a * src_len + b"})
    eval_max_len_b: int = field(default=16, metadata={"help": "max_len = a * src_len + b"})
    eval_min_len: int = field(default=1, metadata={"help": "minimum generated length"})
    eval_no_repeat_ngram_size: int = field(default=0, metadata={"help": "block repeated n-grams"})
    eval_len_penalty: float = field(default=1.0, metadata={"help": "length penalty"})
    eval_unnormalized: bool = field(default=False, metadata={"help": "do not normalise scores by length"})
    eval_print_samples: bool = field(default=False, metadata={"help": "log a few predictions during validation"})


class OFATask(FairseqTask):
    """Base task: data loading, batching, generation, and metric plumbing."""

    dataset_cls = None  # a data_utils.datasets.OFADataset subclass
    schema: str = ""  # data_utils.formats schema name of the files
    metric_name = "score"

    def __init__(self, cfg: OFATaskConfig, tokenizer):
        super().__init__(cfg)
        self.tokenizer = tokenizer
        self.dict = tokenizer.dictionary
        self.vocab = tokenizer.vocab

    @classmethod
    def setup_task(cls, cfg: OFATaskConfig, **kwargs):
        if not cfg.bpe_dir:
            raise ConfigError("--bpe-dir is required: the GPT-2 BPE folder (encoder.json, vocab.bpe, dict.txt), or a "
                              "SentencePiece folder from ofa-tokenizer")
        lr_scale.check_scale(getattr(cfg, "image_backbone_lr_scale", 1.0))
        tokenizer = load_tokenizer(cfg.bpe_dir, cfg.code_dict_size, cfg.num_bins)
        logger.info(f"dictionary: {len(tokenizer.dictionary)} types ({tokenizer.kind})")
        return cls(cfg, tokenizer)

    @property
    def source_dictionary(self):
        return self.dict

    @property
    def target_dictionary(self):
        return self.dict

    def max_positions(self):
        return None

    # ---------------------------------------------------------------- data
    def data_config(self) -> DataConfig:
        c = self.cfg
        return DataConfig(
            patch_image_size=c.patch_image_size, max_src_length=c.max_src_length, max_tgt_length=c.max_tgt_length,
            num_bins=c.num_bins, max_image_size=c.max_image_size, prompt_type=getattr(c, "prompt_type", "none"),
            add_caption=getattr(c, "add_caption", False), imagenet_norm=c.imagenet_default_mean_and_std,
            augment=getattr(c, "augment", False), bad_rows=c.bad_rows,
        )

    def split_path(self, split: str, epoch: int = 1) -> str:
        if not self.cfg.data:
            raise ValueError("no data files given (positional DATA argument / --data)")
        paths = [p for p in self.cfg.data.split(",") if p]
        if split == "train":
            return paths[(epoch - 1) % max(1, len(paths) - 1)]
        return paths[-1]

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        path = self.split_path(split, epoch)
        columns, schema, names = self.dataset_cls.columns, self.schema, None
        if self.cfg.selected_cols:  # legacy: indices in the order the task expects, any file layout
            columns = [int(c) for c in self.cfg.selected_cols.split(",")]
            schema, names = None, self.dataset_cls.columns
            if len(columns) != len(names):
                raise ValueError(f"--selected-cols needs {len(names)} indices for {list(names)}")
        kwargs = {"names": names} if names is not None else {}
        rank, world = data_parallel_rank_and_size()
        reader = open_reader(path, schema=schema, columns=columns, rank=rank, world_size=world,
                             shuffle=self.cfg.shuffle and split == "train", seed=self.cfg.seed, **kwargs)
        reader.set_epoch(epoch)
        self.datasets[split] = self.dataset_cls(reader, self.tokenizer, self.data_config(), split)
        logger.info(f"{split}: {path}, {len(reader)} rows on this rank of {reader.total}")

    def has_sharded_data(self, split):
        # reload every epoch: the file rotates and the reader reshuffles
        return split == "train" and bool(self.cfg.data) and len(self.cfg.data.split(",")) > 2

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1, num_shards=1,
                           shard_id=0, num_workers=0, epoch=1, data_buffer_size=0, disable_iterator_cache=False,
                           skip_remainder_batch=False, grouped_shuffling=False, update_epoch_batch_itr=False):
        """Contiguous batches over this rank's slice; fairseq's own sharding is off (the reader slices)."""
        dataset.set_epoch(epoch)
        bsz = max_sentences or 8
        n = len(dataset)
        batches = [np.arange(i, min(i + bsz, n)) for i in range(0, n, bsz)]
        return SkippedRowsBatchIterator(
            dataset=dataset, collate_fn=CollateWithSkippedRows(dataset), batch_sampler=batches, seed=seed,
            num_shards=1, shard_id=0, num_workers=num_workers, epoch=epoch, buffer_size=data_buffer_size,
            skip_remainder_batch=skip_remainder_batch,
        )

    def optimizer_step(self, optimizer, model, update_num):
        """The optimizer step, with the image backbone's update scaled by ``image_backbone_lr_scale``."""
        scale = self.cfg.image_backbone_lr_scale
        if scale == 1.0:
            return super().optimizer_step(optimizer, model, update_num)
        lr_scale.check_optimizer(optimizer)
        lr_scale.scaled_step(lambda: super(OFATask, self).optimizer_step(optimizer, model, update_num),
                             lr_scale.backbone_parameters(model), scale)

    # ---------------------------------------------------------------- model and generation
    def build_model(self, cfg, from_checkpoint=False):
        from ofa.config_checks import check_task_against_model
        from ofa.model.config import OFAModelConfig

        # image size vs the backbone's stride and positions, text lengths vs the position tables: before allocation
        model_cfg = cfg if isinstance(cfg, OFAModelConfig) else OFAModelConfig.from_any(cfg)
        check_task_against_model(model_cfg, self.cfg, given=("patch_image_size", "max_src_length", "max_tgt_length"),
                                 whose="the model's")
        model = super().build_model(cfg, from_checkpoint)
        self.generator = self.build_generator([model], self.cfg)
        return model

    def generator_kwargs(self) -> Dict[str, Any]:
        c = self.cfg
        return dict(beam_size=c.eval_beam, max_len_a=c.eval_max_len_a, max_len_b=c.eval_max_len_b,
                    min_len=c.eval_min_len, no_repeat_ngram_size=c.eval_no_repeat_ngram_size,
                    len_penalty=c.eval_len_penalty, normalize_scores=not c.eval_unnormalized)

    def build_generator(self, models, args=None, **overrides):
        kwargs = self.generator_kwargs()
        kwargs.update(overrides)
        return SequenceGenerator(models, self.dict, **kwargs)

    # ---------------------------------------------------------------- evaluation
    def inference(self, model, sample) -> List[Any]:  # pragma: no cover - abstract
        """Predictions for every sample of the batch (task-specific objects)."""
        raise NotImplementedError

    def score(self, predictions: List[Any], sample) -> List[float]:  # pragma: no cover - abstract
        """Metric value of each prediction."""
        raise NotImplementedError

    def prediction_records(self, predictions: List[Any], sample) -> List[Dict[str, Any]]:
        """JSON records in the official ``{split}_predict.json`` layout."""
        return [{"uniq_id": uid, "prediction": p} for uid, p in zip(sample["uniq_ids"], predictions)]

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if not sample:
            return loss, sample_size, logging_output
        model.eval()
        with torch.no_grad():
            predictions = self.inference(model, sample)
        scores = self.score(predictions, sample)
        keep = [not pad for pad in sample.get("padding_rows", [False] * len(scores))]
        logging_output["_score_sum"] = float(sum(s for s, k in zip(scores, keep) if k))
        logging_output["_score_cnt"] = float(sum(keep))
        self.log_extra(predictions, sample, keep, logging_output)
        if self.cfg.eval_print_samples and predictions:
            logger.info(f"example prediction: {predictions[0]!r}")
        return loss, sample_size, logging_output

    def corpus_metrics(self, predictions: List[Any], refs: List[Any]) -> Dict[str, float]:
        """Hook: metrics over a whole evaluated split (``ofa-evaluate``), beyond the mean score."""
        return {}

    def log_extra(self, predictions, sample, keep: List[bool], logging_output: Dict[str, Any]) -> None:
        """Hook: add summable statistics of a validation batch (e.g. BLEU counts)."""

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)

        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        count = total("_score_cnt")
        if count > 0:
            metrics.log_scalar("_score_sum", total("_score_sum"))
            metrics.log_scalar("_score_cnt", count)
            metrics.log_derived(self.metric_name, lambda meters: round(
                meters["_score_sum"].sum / meters["_score_cnt"].sum, 4) if meters["_score_cnt"].sum else 0.0)

    # ---------------------------------------------------------------- helpers for subclasses
    def decode(self, tokens: torch.Tensor) -> str:
        return self.tokenizer.decode(tokens).strip()

    @staticmethod
    def net_input_for_generation(sample) -> Dict[str, Any]:
        net = dict(sample["net_input"])
        net.pop("prev_output_tokens", None)
        return {"net_input": net}


def data_parallel_rank_and_size():
    """``(rank, world size)`` of data parallelism; ``(0, 1)`` outside distributed runs."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return dist_utils.get_data_parallel_rank(), dist_utils.get_data_parallel_world_size()
    return 0, 1


def mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ---------------------------------------------------------------------------------------- --bad-rows skip
def is_empty_batch(sample) -> bool:
    """True for a batch without a row: every row of it was bad and skipped (``{}``, or a list of such)."""
    if isinstance(sample, (list, tuple)):
        return all(is_empty_batch(s) for s in sample)
    return not sample


def first_good_batch(dataset):
    """A one-row batch of the first row of this rank's slice that builds (``{}`` when none does): what a
    rank trains on with zero weight when its own batch is empty (fairseq's dummy batch)."""
    for i in range(len(dataset)):
        example = dataset[i]
        if example is not None:
            return dataset.collater([example])
    return {}


class CollateWithSkippedRows:
    """``dataset.collater``, sending along the bad rows found since the last batch: in a DataLoader
    worker they are found in the worker's copy of the dataset, and only the batch comes back."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __call__(self, samples):
        batch = self.dataset.collater(samples)
        log = getattr(self.dataset, "skipped_rows", None)
        return batch, (log.take_fresh() if log is not None else [])


class _Receiving:
    """Batches from ``CollateWithSkippedRows``: the bad rows go into the main process' dataset."""

    def __init__(self, iterable, dataset):
        self._itr, self.dataset = iterable, dataset

    def __iter__(self):
        return self

    def __next__(self):
        batch, fresh = next(self._itr)
        if fresh:
            self.dataset.skipped_rows.merge(fresh)
        return batch

    def take(self, n):  # fairseq's CountingIterator passes truncation down (BufferedIterator)
        if hasattr(self._itr, "take"):
            self._itr.take(n)
        return self


class SkippedRowsBatchIterator(iterators.EpochBatchIterator):
    """fairseq's ``EpochBatchIterator`` over ``CollateWithSkippedRows`` batches. Each batch's bad rows are
    recorded in the main process' dataset (``dataset.skipped`` is right with ``--num-workers`` > 0), and
    ``first_batch`` (fairseq's dummy batch, what a rank with an empty batch runs with zero weight) is a
    real row even when every row of the first batch is bad."""

    @property
    def first_batch(self):
        first = super().first_batch
        if isinstance(first, str):  # fairseq's "DUMMY"
            return first
        batch, fresh = first
        log = getattr(self.dataset, "skipped_rows", None)
        if log is not None:
            log.merge(fresh)
        if is_empty_batch(batch):
            batch = first_good_batch(self.dataset)
            if log is not None:
                log.take_fresh()  # read here, in the main process: already known
        return batch

    def _get_iterator_for_epoch(self, epoch, shuffle, fix_batches_to_gpus=False, offset=0):
        itr = super()._get_iterator_for_epoch(epoch, shuffle, fix_batches_to_gpus=fix_batches_to_gpus,
                                              offset=offset)
        if itr is not None:
            itr._itr = _Receiving(itr._itr, self.dataset)
        return itr
