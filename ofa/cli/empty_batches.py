"""What ``--bad-rows skip`` needs from fairseq's training loop: batches left without a row, and the count.

With ``--bad-rows skip`` a batch whose rows are all bad collates to ``{}``. fairseq would run it as its
"dummy batch" (zero weight) and still step the optimizer, the lr scheduler and ``num_updates``, and when
the first batch is the empty one it has no dummy and stops with "Invalid dummy batch". Here
(``install()``, called once at start-up):

- ``Trainer.train_step`` / ``valid_step``: the data-parallel ranks first agree (one all-reduce of two
  flags) on how many of them hold a row. None: the step is dropped on every rank (no forward, no
  optimizer or scheduler step, ``num_updates`` unchanged). Some: a rank without rows takes part with
  fairseq's zero-weight dummy batch, so the others' update happens; the batch iterator
  (``ofa.tasks.ofa_task.SkippedRowsBatchIterator``) makes that dummy a real row even when the rank's
  first batch was all bad. A rank with no good row at all makes every rank stop with one line.
- ``fairseq_cli.train.validate_and_save``: a dropped step mid-epoch neither saves nor validates again
  (its update count was already handled by the step before).
- ``fairseq_cli.train.train`` / ``validate``: after each training epoch and each validation, the
  distinct bad rows of the split, summed over ranks, are logged once: ``train (epoch 2): skipped 3 bad
  rows of data/caption_train.tsv (--bad-rows skip)``.
"""
from __future__ import annotations

import functools
import logging
from typing import Dict, List, Optional

import torch

from ofa.data_utils.bad_rows import add_counts, describe
from ofa.data_utils.errors import DataError
from ofa.tasks.ofa_task import is_empty_batch

logger = logging.getLogger("ofa.train")


def install() -> None:
    """Patch fairseq's trainer and training loop (idempotent)."""
    import fairseq_cli.train as fairseq_train
    from fairseq.trainer import Trainer

    if getattr(Trainer, "_ofa_empty_batches", False):
        return
    Trainer.train_step = _train_step(Trainer.train_step)
    Trainer.valid_step = _valid_step(Trainer.valid_step)
    fairseq_train.train = _train_epoch(fairseq_train.train)
    fairseq_train.validate = _validate(fairseq_train.validate)
    fairseq_train.validate_and_save = _validate_and_save(fairseq_train.validate_and_save)
    Trainer._ofa_empty_batches = True


# ---------------------------------------------------------------------------------------- pure helpers
def usable_dummy(batch) -> bool:
    """Whether fairseq's dummy batch can stand in for an empty batch (a real, non-empty batch)."""
    return batch is not None and not isinstance(batch, str) and not is_empty_batch(batch)


def step_decision(ranks_with_rows: int, ranks_stuck: int) -> str:
    """``"drop"`` (no rank holds a row), ``"stuck"`` (some rank holds none and has no dummy to run while
    others train) or ``"run"``."""
    if ranks_with_rows == 0:
        return "drop"
    return "stuck" if ranks_stuck else "run"


def no_stand_in_message(path: Optional[str], stuck: int, world: int) -> str:
    where = f"{path}: " if path else ""
    check = f" (ofa-data validate {path})" if path else ""
    return (f"{where}no row builds on {stuck} of {world} ranks: with --bad-rows skip a rank needs one good row "
            f"to stand in for its empty batches while the others train; fix the bad rows{check}")


# ---------------------------------------------------------------------------------------- rank agreement
def _agree(trainer, flags: List[bool]) -> List[int]:
    """How many data-parallel ranks raised each flag (every rank calls this at the same step); one process
    needs no tensor, no collective and no device sync."""
    if trainer.data_parallel_world_size == 1:
        return [int(f) for f in flags]
    from fairseq.distributed import utils as dist_utils

    counts = torch.tensor([float(f) for f in flags], device=trainer.device)
    counts = dist_utils.all_reduce(counts, group=trainer.data_parallel_process_group)
    return [round(v) for v in counts.tolist()]


def _skipping(trainer) -> bool:
    """Only ``--bad-rows skip`` makes empty batches; with ``fail`` (the default) the steps run untouched."""
    return getattr(trainer.task.cfg, "bad_rows", "fail") == "skip"


def _split_path(trainer, split: str) -> Optional[str]:
    dataset = trainer.task.datasets.get(split)
    reader = getattr(dataset, "reader", None)
    return getattr(reader, "path", None)


def _decide(trainer, has_rows: bool, split: str) -> str:
    stuck = not has_rows and not usable_dummy(trainer._dummy_batch)
    with_rows, stuck_ranks = _agree(trainer, [has_rows, stuck])
    decision = step_decision(with_rows, stuck_ranks)
    if decision == "stuck":
        raise DataError(no_stand_in_message(_split_path(trainer, split), stuck_ranks,
                                            trainer.data_parallel_world_size))
    return decision


def _train_step(original):
    @functools.wraps(original)
    def train_step(self, samples, raise_oom=False):
        if not _skipping(self):
            return original(self, samples, raise_oom)
        rows = [s for s in samples if not is_empty_batch(s)]
        if _decide(self, bool(rows), self.cfg.dataset.train_subset) == "drop":
            self._ofa_dropped_step = True
            self._ofa_dropped_batches = getattr(self, "_ofa_dropped_batches", 0) + 1
            return None
        self._ofa_dropped_step = False
        # the empty batches of this rank add nothing; with none left it runs one zero-weight dummy batch
        # (and fairseq zeroes the sample size when the *last* batch is a dummy: never mix them)
        return original(self, rows or [{}], raise_oom)

    return train_step


def _valid_step(original):
    @functools.wraps(original)
    def valid_step(self, sample, raise_oom=False):
        if not _skipping(self):
            return original(self, sample, raise_oom)
        has_rows = not is_empty_batch(sample)
        if _decide(self, has_rows, self.cfg.dataset.valid_subset.split(",")[0]) == "drop":
            return None
        return original(self, sample if has_rows else {}, raise_oom)

    return valid_step


def _validate_and_save(original):
    @functools.wraps(original)
    def validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch):
        if getattr(trainer, "_ofa_dropped_step", False) and not end_of_epoch:
            return [None], False
        return original(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch)

    return validate_and_save


# ---------------------------------------------------------------------------------------- the count
def skipped_by_file(trainer, task, split: str) -> Dict[str, int]:
    """``{file: distinct bad rows}`` of ``split`` over all data-parallel ranks (a collective call)."""
    dataset = task.datasets.get(split) if hasattr(task, "datasets") else None
    log = getattr(dataset, "skipped_rows", None)
    counts = log.by_file() if log is not None else {}
    if trainer.data_parallel_world_size > 1:
        gathered: List[Dict[str, int]] = [{} for _ in range(trainer.data_parallel_world_size)]
        torch.distributed.all_gather_object(gathered, counts, group=trainer.data_parallel_process_group)
        counts = add_counts(*gathered)
    return counts


def report_skipped(trainer, task, split: str, label: str, dropped: int = 0) -> Optional[str]:
    """Log (on the first rank) and return the line for ``split``'s skipped rows; ``None`` when none."""
    text = describe(skipped_by_file(trainer, task, split))
    if not text:
        return None
    line = f"{label}: {text} (--bad-rows skip)"
    if dropped:
        line += f"; {dropped} batch{'es' if dropped != 1 else ''} with no good row on any rank dropped (no update)"
    if trainer.data_parallel_rank == 0:
        logger.warning(line)
    return line


def _train_epoch(original):
    @functools.wraps(original)
    def train(cfg, trainer, task, epoch_itr):
        trainer._ofa_dropped_batches = 0
        result = original(cfg, trainer, task, epoch_itr)
        split = cfg.dataset.train_subset
        report_skipped(trainer, task, split, f"{split} (epoch {epoch_itr.epoch})", trainer._ofa_dropped_batches)
        return result

    return train


def _validate(original):
    @functools.wraps(original)
    def validate(cfg, trainer, task, epoch_itr, subsets):
        result = original(cfg, trainer, task, epoch_itr, subsets)
        for subset in subsets:
            report_skipped(trainer, task, subset, subset)
        return result

    return validate
