"""Checks of the configuration values that come from outside: checkpoints, export JSON, command lines.

A checkpoint or an export's ``config.json`` is input like any data file: a value read from it is checked
against its type and a sane range before anything is built from it (an ``encoder_layers`` of 10**9 would
otherwise allocate gigabytes before failing). This module owns the generic machinery and the task side:

- ``Limit``: one field's type, inclusive range or choices; ``check_value`` raises a one-line
  ``ConfigError``: ``model config 'encoder_layers' = 1000000000 in ckpt.pt is out of range [1, 256]``
  (``--num-bins 0 is out of range [1, 100000]`` for a command-line option, ``num_bins=0 ...`` for a keyword).
- ``TASK_LIMITS``: ranges of the task options by field name (the task dataclasses live in ``ofa.tasks`` and
  plugins; any field not listed is checked against its annotation's type by ``task_field_limits``).
  The model's table is ``ofa.model.config.MODEL_LIMITS``.
- Unknown keys: ``warn_unknown_keys`` logs one warning line (logger ``ofa.config_checks``) for keys a
  checkpoint carries that nothing here reads (fairseq and the official code save every argument of the run,
  so ``ignorable_keys`` lists those that are fine to drop),
  ``reject_unknown_keys`` for keys a user gave explicitly.
- ``check_against_checkpoint``: task options that contradict the loaded checkpoint (vocabulary layout,
  tokenizer size, image size vs the backbone's stride and the model's image positions, text lengths vs the
  position tables), each an error naming both values.

Pure functions; nothing here imports the model or the tasks at module level.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
import numbers
import os
import typing
from dataclasses import dataclass
from typing import Any, Collection, Dict, Iterable, List, Mapping, Optional, Tuple

from ofa.errors import ConfigError, quoted_with_near

STYLES = ("config", "cli", "keyword")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    """What one config field accepts.

    Attributes:
        kind: ``int``, ``float``, ``bool`` or ``str`` (an ``int`` is accepted for a ``float``; a ``bool`` is
            never taken for a number).
        lo, hi: inclusive bounds for numbers (``None``: unbounded on that side).
        choices: the accepted strings, when closed.
        optional: ``None`` is accepted.
    """

    kind: type
    lo: Optional[float] = None
    hi: Optional[float] = None
    choices: Tuple[str, ...] = ()
    optional: bool = False

    def range_text(self) -> str:
        lo = "-inf" if self.lo is None else _number(self.lo)
        hi = "inf" if self.hi is None else _number(self.hi)
        return f"[{lo}, {hi}]"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_ without importing numpy


def problem(value: Any, limit: Limit) -> Optional[str]:
    """What is wrong with ``value`` under ``limit`` as a predicate ("is out of range [1, 256]"), or ``None``."""
    if value is None:
        return None if limit.optional else "is missing (None)"
    if isinstance(value, enum.Enum):
        value = value.value
    kind = limit.kind
    if kind is bool:
        return None if _is_bool(value) else "is not true or false"
    if kind is str:
        if not isinstance(value, str):
            return "is not a string"
        if limit.choices and value not in limit.choices:
            return f"is not one of {', '.join(limit.choices)}"
        return None
    if _is_bool(value) or not isinstance(value, numbers.Real):
        return "is not an integer" if kind is int else "is not a number"
    if kind is int and not isinstance(value, numbers.Integral):
        return "is not an integer"
    if not math.isfinite(float(value)):
        return "is not a finite number"
    if (limit.lo is not None and value < limit.lo) or (limit.hi is not None and value > limit.hi):
        return f"is out of range {limit.range_text()}"
    return None


def option_name(name: str) -> str:
    """``num_bins`` -> ``--num-bins``."""
    return "--" + name.replace("_", "-")


def subject(scope: str, name: str, value: Any, where: Optional[str] = None, style: str = "config") -> str:
    """How a value is named in a message.

    Args:
        scope: ``"model config"`` or ``"task config"`` (used by the ``config`` style).
        where: the file the value was read from (``config`` style), or ``None``.
        style: ``config`` (``task config 'num_bins' = 0 in FILE``), ``cli`` (``--num-bins 0``) or
            ``keyword`` (``num_bins=0``, for Python callers).
    """
    if isinstance(value, enum.Enum):
        value = value.value
    if style == "cli":
        return f"{option_name(name)} {value}"
    if style == "keyword":
        return f"{name}={value!r}"
    if style != "config":
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return f"{scope} {name!r} = {value!r}" + (f" in {where}" if where else "")


def check_value(name: str, value: Any, limit: Limit, *, scope: str, where: Optional[str] = None,
                style: str = "config") -> None:
    """Raise a one-line ``ConfigError`` when ``value`` breaks ``limit``."""
    wrong = problem(value, limit)
    if wrong:
        raise ConfigError(f"{subject(scope, name, value, where, style)} {wrong}")


def check_values(values: Mapping[str, Any], limits: Mapping[str, Limit], *, scope: str,
                 where: Optional[str] = None, style: str = "config") -> None:
    """``check_value`` for every key of ``values`` that ``limits`` knows (others are left to the caller)."""
    for name, value in values.items():
        if name in limits:
            check_value(name, value, limits[name], scope=scope, where=where, style=style)


# ---------------------------------------------------------------------------- task options
# Ranges of the task options, by field name, for every task that has the field. Generous: they stop absurd
# values (what would allocate gigabytes or index out of the model), not unusual ones.
_MAX_TOKENS = 65536
TASK_LIMITS: Dict[str, Limit] = {
    # vocabulary layout: the dictionary gets one symbol per code and per bin (10**9 bins took 36 s to fail)
    "num_bins": Limit(int, 1, 100_000),
    "code_dict_size": Limit(int, 1, 100_000),
    "code_vocab_size": Limit(int, 0, 100_000),
    # images: the side of the resized square, and the box-coordinate divisor
    "patch_image_size": Limit(int, 1, 8192),
    "max_image_size": Limit(int, 1, 65536),
    "code_image_size": Limit(int, 8, 8192),
    "vqgan_factor": Limit(int, 1, 1024),
    # text lengths (the model's position tables bound them further: ``check_against_checkpoint``)
    "max_src_length": Limit(int, 1, _MAX_TOKENS),
    "max_tgt_length": Limit(int, 1, _MAX_TOKENS),
    "text_max_tokens": Limit(int, 1, _MAX_TOKENS),
    # generation: the beam search allocates (batch x beam) rows of max_len tokens
    "eval_beam": Limit(int, 1, 1024),
    "eval_max_len_a": Limit(float, 0, 1000),
    "eval_max_len_b": Limit(int, 0, _MAX_TOKENS),
    "eval_min_len": Limit(int, 0, _MAX_TOKENS),
    "eval_no_repeat_ngram_size": Limit(int, 0, 1024),
    "eval_len_penalty": Limit(float, -1000, 1000),
    "valid_batch_size": Limit(int, 1, 100_000),
    "sampling_times": Limit(int, 1, 1024),
    "sampling_topk": Limit(int, -1, 1_000_000),
    "sampling_topp": Limit(float, -1, 1),
    "temperature": Limit(float, 1e-6, 1000),
    # noising
    "mask_ratio": Limit(float, 0, 1),
    "noise_ratio": Limit(float, 0, 1),
    "poisson_lambda": Limit(float, 0, 1000),
    "replace_length": Limit(int, -1, 1),
    "num_workers": Limit(int, 0, 1024),
}


def limit_from_annotation(annotation: Any) -> Optional[Limit]:
    """The type part of a dataclass field's annotation as a ``Limit`` (``None`` for types not checked here:
    lists, unions of several types, ``Any``)."""
    optional = False
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        annotation, optional = args[0], True
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return Limit(str, choices=tuple(str(e.value) for e in annotation), optional=optional)
    if annotation in (int, float, bool, str):
        return Limit(annotation, optional=optional)
    return None


def task_field_limits(dataclass_type: type) -> Dict[str, Limit]:
    """``Limit`` of every public field of a task config dataclass: ``TASK_LIMITS`` where it lists the field
    (``None`` allowed when the field is ``Optional``), else the annotation's type."""
    try:
        hints = typing.get_type_hints(dataclass_type)
    except Exception:  # an annotation that does not resolve: check only what the table knows
        hints = {}
    out: Dict[str, Limit] = {}
    for f in dataclasses.fields(dataclass_type):
        if f.name.startswith("_"):
            continue
        typed = limit_from_annotation(hints.get(f.name))
        table = TASK_LIMITS.get(f.name)
        if table is not None:
            out[f.name] = dataclasses.replace(table, optional=bool(typed and typed.optional))
        elif typed is not None:
            out[f.name] = typed
    return out


def check_saved_task_values(task_cfg: Mapping[str, Any], where: Optional[str]) -> None:
    """The values of ``TASK_LIMITS`` fields in a checkpoint's task config (unresolved ``${...}`` and ``None``
    skipped), before the tokenizer is built from them."""
    for name, value in task_cfg.items():
        if name in TASK_LIMITS and value is not None and not (isinstance(value, str) and "${" in value):
            check_value(name, value, TASK_LIMITS[name], scope="task config", where=where)


# ---------------------------------------------------------------------------- unknown keys
# Arguments of the official model (``models/ofa/unify_transformer.py`` and ``ofa.py`` ``add_args``) that this
# implementation does not model: fairseq options it never used in a release (prompt tuning, adapters,
# layer dropping, quantisation noise ...). An official checkpoint's ``cfg.model`` Namespace carries all of them.
OFFICIAL_MODEL_ARGS = frozenset("""
    adapter adapter_dim adaptive_input adaptive_softmax_cutoff adaptive_softmax_dropout bitfit checkpoint_activations
    cross_self_attention decoder_embed_path decoder_input_dim decoder_layerdrop decoder_layers_to_keep
    decoder_learned_pos decoder_output_dim decoder_prompt decoder_prompt_dim decoder_prompt_length
    decoder_prompt_projection decoder_prompt_type encoder_embed_path encoder_layerdrop encoder_layers_to_keep
    encoder_learned_pos encoder_prompt encoder_prompt_dim encoder_prompt_length encoder_prompt_projection
    encoder_prompt_type freeze_decoder freeze_encoder interpolate_position min_params_to_wrap no_cross_attention
    no_token_positional_embeddings offload_activations pooler_activation_fn pooler_classifier pooler_dropout
    quant_noise_pq quant_noise_pq_block_size quant_noise_scalar relu_dropout resnet_model_path
    spectral_norm_classification_head sync_bn tie_adaptive_weights
""".split())

# Fields of the official tasks and criteria (``tasks/**``, ``criterions/*`` of OFA-Sys/OFA): a legacy
# checkpoint's Namespace mixes them into the model arguments, and its ``cfg.task`` holds them.
OFFICIAL_TASK_ARGS = frozenset("""
    add_caption add_object ans2label_dict ans2label_file audio_code_dict_size audio_data audio_selected_cols bpe
    bpe_dir clip_model_path code_dict_size code_image_size config_yaml_path constraint_range data detection_data
    detection_selected_cols drop_best_after drop_best_ratio drop_worst_after drop_worst_ratio eval_acc eval_args
    eval_bleu eval_cider eval_cider_cached_tokens eval_clip_method eval_detok eval_detok_args eval_print_samples
    eval_remove_bpe eval_rouge eval_wer gen_images_path ignore_eos ignore_prefix_size image_data
    image_selected_cols imagenet_default_mean_and_std is_document keep_ratio label_smoothing lang log_end
    mask_length mask_ratio max_image_size max_object_length max_source_positions max_src_length
    max_target_positions max_tgt_length n_frames_per_step neg_sample_dir noise_ratio num_bins
    orig_patch_image_size patch_image_size phone_dict_path poisson_lambda pretrain_seed prompt_type random_ratio
    reg_alpha replace_length report_accuracy sample_patch_num sample_rate sampling_times scst scst_args
    scst_cider_cached_tokens selected_cols speech_text_data speech_text_selected_cols text2phone_path text_data
    text_selected_cols train_stage unconstrained_training use_rdrop uses_ema val_inference_type valid_batch_size
    valid_data vqgan_config_path vqgan_model_path
""".split())

# What fairseq's legacy argparse path adds to every Namespace besides the config groups' fields: the
# registry choices and the dictionary's special symbols (``vocab_size`` is set by the official
# ``build_embedding``).
FAIRSEQ_LEGACY_ARGS = frozenset("""
    _name arch task criterion optimizer lr_scheduler scoring tokenizer bpe pad eos unk bos vocab_size
""".split())


def fairseq_config_keys() -> frozenset:
    """Every field of fairseq's own config groups (``FairseqConfig``: common, dataset, optimization,
    checkpoint, generation, ...) and of its registered criteria, optimizers, schedulers, tokenizers, BPEs
    and scorers, and of every registered task (``ofa.tasks`` and plugins included)."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    classes: List[type] = []
    for group in dataclasses.fields(FairseqConfig):  # each group's type is its config dataclass
        for candidate in (group.type, group.default):
            if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
                classes.append(candidate)
                break
    for registry in REGISTRIES.values():
        classes += list(registry["dataclass_registry"].values())
    classes += list(TASK_DATACLASS_REGISTRY.values())
    return frozenset(f.name for c in classes if dataclasses.is_dataclass(c) for f in dataclasses.fields(c))


def ignorable_keys() -> frozenset:
    """Keys a checkpoint's config may carry that are fine to drop without a word (see the tables above)."""
    return OFFICIAL_MODEL_ARGS | OFFICIAL_TASK_ARGS | FAIRSEQ_LEGACY_ARGS | fairseq_config_keys()


def unknown_keys(keys: Iterable[str], known: Collection[str], ignorable: Collection[str] = ()) -> List[str]:
    """The keys that are neither ``known`` nor ``ignorable``, sorted."""
    return sorted(k for k in set(keys) if k not in known and k not in ignorable)


def warn_unknown_keys(keys: Iterable[str], known: Collection[str], *, scope: str, where: str) -> List[str]:
    """Log one warning line about keys of a checkpoint's config that nothing reads and that are not on the
    ignorable lists; returns them (a log line rather than a Python warning: a warning prints its source
    line too, and shows only once per place)."""
    found = unknown_keys(keys, known, ignorable_keys())
    if found:
        logger.warning(f"{where}: {scope} keys this version does not know, ignored: {', '.join(found)}")
    return found


def reject_unknown_keys(keys: Iterable[str], known: Collection[str], *, scope: str, given_as: str) -> None:
    """A ``ConfigError`` naming the keys a user gave that are not fields (with the closest field names)."""
    found = unknown_keys(keys, known)
    if not found:
        return
    hints = [quoted_with_near(key, known) for key in found]
    raise ConfigError(f"unknown {scope} key{'s' if len(found) > 1 else ''} in {given_as}: {', '.join(hints)}")


# ---------------------------------------------------------------------------- task vs checkpoint
def _named(name: str, value: Any, given: Collection[str], style: str) -> str:
    """A task option in a message: as the user wrote it when given, else as the resolved task config's."""
    if name in given and style in ("cli", "keyword"):
        return subject("task config", name, value, style=style)
    return f"the task config's {name} {value}"


def check_task_against_model(model_cfg: Any, task_cfg: Any, given: Collection[str] = (), style: str = "cli",
                             whose: str = "the checkpoint's") -> None:
    """Task options that cannot work with this model config, each a one-line ``ConfigError``.

    - ``patch_image_size`` must be a multiple of the image backbone's stride (``ofa.model.config.
      backbone_stride``; the padded convolutions would silently round a side it does not divide up to a
      patch that is partly padding: refused rather than rounded), and its patch grid (``patch_image_size /
      stride`` a side) must fit the model's image position table (``image_bucket_size`` a side). A smaller
      size than the training one is legitimate.
    - ``max_src_length`` / ``max_tgt_length`` must not exceed the model's ``max_source_positions`` /
      ``max_target_positions`` (the position tables' rows).

    Args:
        model_cfg: an ``OFAModelConfig`` (or anything with its attributes).
        task_cfg: the task's config dataclass (or anything with the attributes it has).
        given: names of the options the user gave explicitly (the messages quote them as given).
        style: ``cli`` or ``keyword``, how given options are written (``--num-bins 5`` or ``num_bins=5``).
        whose: how the model is named (``the checkpoint's``, ``the model's``).
    """
    from ofa.model.config import backbone_stride

    patch = getattr(task_cfg, "patch_image_size", None)
    if patch is not None:
        stride = backbone_stride(model_cfg.resnet_type)
        if patch % stride:
            lower, upper = max(stride, patch // stride * stride), (patch // stride + 1) * stride
            raise ConfigError(f"{_named('patch_image_size', patch, given, style)} is not a multiple of the image "
                              f"backbone's stride {stride} ({whose} resnet_type {model_cfg.resnet_type!r}): "
                              f"use {lower} or {upper}")
        side, grid = patch // stride, model_cfg.image_bucket_size
        if side > grid:
            raise ConfigError(f"{_named('patch_image_size', patch, given, style)} contradicts {whose} image "
                              f"positions: {side}x{side} patches but image_bucket_size {grid} covers "
                              f"{grid}x{grid} (patch_image_size at most {grid * stride})")
    for option, positions in (("max_src_length", "max_source_positions"), ("max_tgt_length", "max_target_positions")):
        length = getattr(task_cfg, option, None)
        limit = getattr(model_cfg, positions)
        if length is not None and length > limit:
            raise ConfigError(f"{_named(option, length, given, style)} contradicts {whose} {positions} {limit}")


def check_against_checkpoint(info: Any, task_cfg: Any, given: Collection[str] = (), style: str = "cli") -> None:
    """Task options that contradict a loaded checkpoint, each a one-line ``ConfigError`` naming both values:
    ``--num-bins 500 contradicts the checkpoint's num_bins 1000``.

    Contradictions (the model's tensors fix them): ``num_bins`` and ``code_dict_size`` (the vocabulary
    layout), the tokenizer folder's dictionary size (``bpe_dir``), and ``check_task_against_model``'s
    image-size and text-length rules. The task itself is not one: a checkpoint may be evaluated zero-shot as
    another task (all tasks share the vocabulary).

    Call it after the task config is resolved and before the task is set up (``ofa.task_config.
    build_task_config(..., checkpoint=info)`` does).

    Args:
        info: the ``ofa.checkpoint.CheckpointInfo`` of ``load_model``.
        task_cfg: the resolved task config dataclass.
        given: names of the task options the user gave explicitly.
        style: ``cli`` (``--num-bins 500``) or ``keyword`` (``num_bins=500``).
    """
    for name in ("num_bins", "code_dict_size"):
        ours, theirs = getattr(task_cfg, name, None), getattr(info, name, None)
        if ours is not None and theirs is not None and ours != theirs:
            raise ConfigError(f"{_named(name, ours, given, style)} contradicts the checkpoint's {name} {theirs}")
    check_task_against_model(info.model, task_cfg, given, style)
    bpe_dir = getattr(task_cfg, "bpe_dir", None)
    used = getattr(info, "bpe_dir", None)
    rows = getattr(info, "vocab_size", None)
    if bpe_dir and rows and not (used and os.path.realpath(bpe_dir) == os.path.realpath(used)):
        from ofa.tokenizer import load_tokenizer

        codes = getattr(task_cfg, "code_dict_size", None) or getattr(info, "code_dict_size", 8192)
        bins = getattr(task_cfg, "num_bins", None) or getattr(info, "num_bins", 1000)
        size = len(load_tokenizer(bpe_dir, codes, bins, option=_bpe_option(given, style)).dictionary)
        if size != rows:
            raise ConfigError(f"{_named('bpe_dir', bpe_dir, given, style)} gives a dictionary of {size} entries, "
                              f"which contradicts the checkpoint's {rows} embedding rows")


def _bpe_option(given: Collection[str], style: str) -> str:
    if "bpe_dir" in given and style == "cli":
        return "--bpe-dir"
    return "bpe_dir"
