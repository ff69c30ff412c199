"""Inference on images: ``inference_model(checkpoint, image, task=None, text=None, ...)`` -> a result dict, or
a list of them for a list of images, run in batches of ``batch_size``.

The task is set up exactly as ``ofa-evaluate`` sets it up (the checkpoint's saved task config,
``ofa.task_config.build_task_config``), and the examples are built by the task's own dataset class
(``task.dataset_cls``) from an in-memory stand-in reader and batched by its collater, so preprocessing
(prompts, text cleaning, image resize and normalisation, resize ratios, padding) is the same as in
evaluation, and a batch is one encoder pass and one beam search (or one candidate scoring) for all its
inputs.

This module knows no task. Each task says how it runs on its inputs with an ``InferenceSpec``, registered
next to its ``@register_task`` with ``register_inference`` (the row its dataset reads, the batched
predictor, the lines ``ofa-predict`` prints, how ``--draw`` draws a result, its aliases); the tasks of
``ofa.tasks`` do so, and a ``--user-dir`` plugin becomes runnable here and by ``ofa-predict --user-dir``
the same way.

Every result holds ``"task"`` (the registered task name), ``"image_size": [w, h]`` (of the input image; for
tasks without an input image, of the generated one), and the same two numbers for every task:

- ``logprob``: the natural log of the probability the model gives the prediction. For generated outputs
  (caption, box, image codes) it is the sum, over the output tokens with the final EOS included, of the
  log-probabilities the generator computed for them: after its constraints (log-softmax over the allowed
  tokens), temperature and ``unk_penalty``, *not* divided by the length (beam search ranks hypotheses by
  the length-normalised score, which is kept as ``score``). For closed-set tasks it is the log of the
  answer's probability among the candidate answers (softmax over the candidates' summed log-probabilities,
  as ``allcand`` scores them).
- ``prob``: ``exp(logprob)``, in ``(0, 1]`` (it underflows to ``0.0`` below about ``exp(-745)``, which a
  long generated output can reach; ``logprob`` stays exact).

``score`` is kept for code written before these two: the generator's ranking score (length-normalised
unless ``normalize_scores=False``) for generated outputs, ``prob`` for closed-set tasks.

Loaded models are kept in a small module-level cache keyed by the resolved path, ``bpe_dir`` and
``ema`` (and the file's size / modification time), so repeated calls do not reload; ``load()`` returns
an ``InferenceHandle`` that runs inputs itself (``handle.predict(images, text=..., batch_size=8)``) and can
be passed as ``checkpoint`` too; ``clear_cache()`` empties the cache.
"""
from __future__ import annotations

import collections
import dataclasses
import inspect
import io
import math
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ofa.checkpoint import load_model
from ofa.config_checks import Limit, check_value
from ofa.errors import ConfigError, UserError, did_you_mean, quoted_with_near
from ofa.hub import resolve_checkpoint

CACHE_SIZE = 2  # models kept loaded (path-loaded checkpoints and passed-in tuples each)
DEFAULT_BATCH_SIZE = 8
# task names of pretraining checkpoints: made for every task, so asking them for one is no mismatch
PRETRAIN_TASKS = frozenset({"unify", "unify_task"})

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, "PIL.Image.Image"]  # noqa: F821


class InputError(UserError, ValueError):
    """An input of ``inference_model`` that cannot be used: an image that does not decode, lists of
    different lengths, a missing text."""


class UnknownOptionError(ConfigError, TypeError):
    """A keyword argument (``--set`` key) that is neither a ``SequenceGenerator`` argument nor a task option."""


class TaskMismatchWarning(UserWarning):
    """A checkpoint finetuned for one task is asked to do another."""


# ---------------------------------------------------------------------------------------- loading
class InferenceHandle:
    """A loaded model with its dictionary, ``CheckpointInfo`` and the task objects built for it.

    ``handle.predict(image, text=..., task=..., batch_size=8)`` (or ``handle(...)``) runs it; it unpacks like
    ``load_model``'s ``(model, dictionary, info)`` tuple.
    """

    def __init__(self, model, dictionary, info, path: Optional[str] = None, bpe_dir: Optional[str] = None):
        self.model, self.dictionary, self.info = model, dictionary, info
        self.path = path if path is not None else getattr(info, "path", None)
        self.bpe_dir = bpe_dir
        self._tasks: Dict[Any, Any] = {}
        self._warned: set = set()  # tasks the task-mismatch warning was given for

    def __iter__(self):  # unpacks like load_model's tuple
        return iter((self.model, self.dictionary, self.info))

    def __repr__(self) -> str:
        return f"InferenceHandle(path={self.path!r}, task={self.own_task!r})"

    @property
    def own_task(self) -> Optional[str]:
        """The task the checkpoint was saved by (``None`` when its config does not say)."""
        return self.info.task.get("_name") or None

    def predict(self, image: Union[None, ImageInput, Sequence[ImageInput]] = None,
                text: Union[None, str, Sequence[Optional[str]]] = None, task: Optional[str] = None,
                caption: Union[None, str, Sequence[Optional[str]]] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                device: Optional[Union[str, torch.device]] = None,
                out: Union[None, str, Sequence[Optional[str]]] = None, **overrides) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        """Run the model on one input or a list of inputs, ``batch_size`` at a time.

        Args:
            image: one image (a file path, encoded bytes or a PIL image) or a list of them; ``None`` for
                tasks without an input image (``image_gen``).
            text: the question (VQA), referring expression (grounding), hypothesis (entailment) or caption
                (``image_gen``): one for every input, or a list with one per input (for ``image_gen`` a
                list of captions makes the batch).
            task: a task or alias (see ``inference_model``); default the checkpoint's own. A checkpoint
                finetuned for another task gives one ``TaskMismatchWarning`` per task asked.
            caption: entailment only: the text premise (one, or one per input; ``None`` entries go without).
            batch_size: inputs per forward pass / beam search (>= 1). A batch gives the same predictions as
                one input at a time (the same tokens; scores within float rounding), except with sampling
                (``image_gen``: the draws depend on the batch) or ``max_len_a > 0`` (the padded source
                length of the batch sets the maximum length, as in evaluation).
            device: default ``cuda`` when available, else ``cpu``.
            out: ``image_gen`` only: the PNG path to write each input's best image to (others beside it):
                one path for one input, or a list with one per input.
            **overrides: ``SequenceGenerator`` arguments (``beam_size``, ``max_len_b``, ...) and task options
                (``ans2label_file``, ``patch_image_size``, ...), checked against their types and ranges.

        Returns:
            one result dict for a single input, a list (in input order) when ``image`` (or, for tasks
            without an image, ``text``) is a list; see ``inference_model`` for the keys.
        """
        return self._predict(image, text, task, caption, batch_size, device, out, overrides, stacklevel=3)

    __call__ = predict

    def _predict(self, image, text, task, caption, batch_size, device, out, overrides, stacklevel: int):
        task_name = self._resolve_task(task)
        spec = INFERENCE[task_name]
        self._warn_on_mismatch(task_name, stacklevel + 1)
        check_value("batch_size", batch_size, Limit(int, 1, None), scope="inference", style="keyword")
        batched, inputs = gather_inputs(spec, task_name, image, text, caption)
        if out is not None and spec.needs_image:
            raise ConfigError(f"out= writes generated images; task {task_name!r} generates none")
        if isinstance(out, (str, os.PathLike)) and len(inputs) > 1:
            raise InputError(f"out= names one PNG for {len(inputs)} inputs: give a list with one path per input")
        outs = _per_input(out, len(inputs), "out")
        task_over, gen_over = split_overrides(task_name, overrides)
        device = resolve_device(device)
        model = self.model
        model.to(device)
        model.eval()
        float_dtype = next(model.parameters()).dtype
        task_obj = self._task(task_name, task_over)

        rows, sizes = [], []  # every input is read and checked before the first batch runs
        for img, txt, premise in inputs:
            raw, size = _image_bytes(img) if spec.needs_image else (None, None)
            rows.append(spec.row(raw, size, txt, premise))
            sizes.append(size)
        results: List[Optional[Dict[str, Any]]] = [None] * len(inputs)
        for premise_given, idx in _groups(spec, inputs):
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                with torch.no_grad():
                    sample = _batch(spec, task_obj, [rows[i] for i in chunk], premise_given, device, float_dtype)
                    predicted = spec.predict(task_name, task_obj, model, sample, [sizes[i] for i in chunk], gen_over)
                if len(predicted) != len(chunk):
                    raise RuntimeError(f"the {task_name} predictor returned {len(predicted)} results "
                                       f"for {len(chunk)} inputs")
                for i, r in zip(chunk, predicted):
                    results[i] = _finish(task_name, spec, r, sizes[i], outs[i])
        return results if batched else results[0]

    def _resolve_task(self, task: Optional[str]) -> str:
        if task is not None:
            return canonical_task(task)
        own = self.own_task
        if not own:
            raise ConfigError(f"the checkpoint does not say which task it is for: pass task= "
                              f"(one of {', '.join(valid_task_names())})")
        try:
            return canonical_task(own)
        except ConfigError:
            raise ConfigError(f"the checkpoint's task {own!r} has no inference here: pass task= "
                              f"(one of {', '.join(valid_task_names())})") from None

    def _warn_on_mismatch(self, task_name: str, stacklevel: int) -> None:
        """One ``TaskMismatchWarning`` per task when a checkpoint finetuned for another task is asked for it."""
        own = self.own_task
        if not own or own in PRETRAIN_TASKS or task_name in self._warned:
            return
        try:
            if canonical_task(own) == task_name:
                return
        except ConfigError:  # the saved task has no inference spec: it is another task
            pass
        self._warned.add(task_name)
        where = f" {self.path}" if self.path else ""
        warnings.warn(f"checkpoint{where} was finetuned for {own!r}, not {task_name!r}: its {task_name} "
                      f"predictions may be meaningless", TaskMismatchWarning, stacklevel=stacklevel)

    def _task(self, task_name: str, task_over: Dict[str, Any]):
        """The fairseq task object for ``task_name`` with the options ``task_over`` (built once per pair)."""
        key = (task_name, tuple(sorted((k, repr(v)) for k, v in task_over.items())))
        task = self._tasks.get(key)
        if task is None:
            from fairseq.tasks import TASK_REGISTRY

            from ofa.task_config import build_task_config

            saved = dict(self.info.task, bpe_dir=_tokenizer_dir(self))  # the folder the model loaded with
            # drops another task's eval_* / answers; checks every value, and the options against the checkpoint
            cfg = build_task_config(task_name, saved, dict(task_over), checkpoint=self.info, style="keyword")
            cfg.data = None
            task = TASK_REGISTRY[task_name].setup_task(cfg)
            task.generator = task.build_generator([self.model])
            self._tasks[key] = task
        return task


_CACHE: "collections.OrderedDict[Any, InferenceHandle]" = collections.OrderedDict()
_TUPLE_CACHE: "collections.OrderedDict[int, InferenceHandle]" = collections.OrderedDict()


def clear_cache() -> None:
    """Forget every cached model (their memory is freed once nothing else refers to them)."""
    _CACHE.clear()
    _TUPLE_CACHE.clear()


def _remember(cache: collections.OrderedDict, key, handle: InferenceHandle) -> InferenceHandle:
    cache[key] = handle
    cache.move_to_end(key)
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return handle


def _file_stamp(path: str) -> Tuple[int, int]:
    """Size and mtime of the weights, so that a checkpoint rewritten in place is reloaded."""
    target = path
    if os.path.isdir(path):
        target = os.path.join(path, "model.safetensors")
    try:
        st = os.stat(target)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def load(checkpoint, bpe_dir: Optional[str] = None, ema: bool = False,
         local_files_only: bool = False) -> InferenceHandle:
    """A (cached) ``InferenceHandle`` for a path / URL / published name, a handle or a ``(model, dict, info)`` tuple.

    ``local_files_only`` goes to ``ofa.hub.resolve_checkpoint``: a name or URL is then taken from the cache
    only, never downloaded.
    """
    if isinstance(checkpoint, InferenceHandle):
        return checkpoint
    if isinstance(checkpoint, (tuple, list)):
        if len(checkpoint) != 3:
            raise TypeError("a loaded checkpoint must be the (model, dictionary, info) tuple of ofa.load_model")
        model = checkpoint[0]
        cached = _TUPLE_CACHE.get(id(model))
        if cached is not None and cached.model is model and cached.info is checkpoint[2] and cached.bpe_dir == bpe_dir:
            _TUPLE_CACHE.move_to_end(id(model))
            return cached
        return _remember(_TUPLE_CACHE, id(model), InferenceHandle(*checkpoint, bpe_dir=bpe_dir))
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path, URL, published name, InferenceHandle or "
                        f"(model, dictionary, info) tuple, not {type(checkpoint).__name__}")
    path = os.path.abspath(resolve_checkpoint(checkpoint, local_files_only=local_files_only))
    key = (path, os.path.abspath(bpe_dir) if bpe_dir else None, bool(ema), _file_stamp(path))
    cached = _CACHE.get(key)
    if cached is not None:
        _CACHE.move_to_end(key)
        return cached
    model, dictionary, info = load_model(path, bpe_dir=bpe_dir, ema=ema)
    return _remember(_CACHE, key, InferenceHandle(model, dictionary, info, path=path, bpe_dir=bpe_dir))


# ---------------------------------------------------------------------------------------- tasks and options
def valid_task_names() -> List[str]:
    """Every name ``task=`` accepts: the registered tasks and their aliases."""
    return sorted(set(INFERENCE) | {a for spec in INFERENCE.values() for a in spec.aliases})


def canonical_task(name: str) -> str:
    """Registered task name of ``name`` (an alias or a registered name, any case, ``-`` or ``_``).

    Raises ``ConfigError``: for an unknown name, one line with the near names (``difflib``) or, when none is
    near, every valid one; for a registered task without an ``InferenceSpec``, the tasks that have one.
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key in INFERENCE:
        return key
    for task_name, spec in INFERENCE.items():
        if key in spec.aliases:
            return task_name
    names = valid_task_names()
    from fairseq.tasks import TASK_REGISTRY

    if key in TASK_REGISTRY:
        raise ConfigError(f"task {name!r} has no inference (one input -> one prediction); "
                          f"the tasks that have: {', '.join(sorted(INFERENCE))}")
    raise ConfigError(f"unknown task {name!r}; {did_you_mean(key, names, cutoff=0.6, listing='valid task names:')}")


# ranges of the SequenceGenerator arguments beyond their types (the types come from its signature)
GENERATOR_RANGES: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "beam_size": (1, None), "max_len_a": (0, None), "max_len_b": (1, None), "min_len": (0, None),
    "no_repeat_ngram_size": (0, None), "sampling_topk": (-1, None), "sampling_topp": (-1, 1),
}


def generator_limits() -> Dict[str, Limit]:
    """``Limit`` of every ``SequenceGenerator`` argument a caller may override: the type of its default,
    the range of ``GENERATOR_RANGES``; arguments whose default is ``None`` (constraints) are not checked."""
    from ofa.generate import SequenceGenerator

    out: Dict[str, Limit] = {}
    for name, p in inspect.signature(SequenceGenerator.__init__).parameters.items():
        if name in ("self", "models", "tgt_dict") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        kind = type(p.default) if isinstance(p.default, (bool, int, float, str)) else None
        lo, hi = GENERATOR_RANGES.get(name, (None, None))
        out[name] = Limit(kind, lo, hi) if kind is not None else None
    return out


def check_generator_value(name: str, value: Any, limit: Optional[Limit]) -> None:
    """One-line ``ConfigError`` for a generator argument of the wrong type or out of range."""
    if limit is not None:
        check_value(name, value, limit, scope="generation", style="keyword")
    if name == "temperature" and not value > 0:
        raise ConfigError(f"temperature={value!r} must be > 0")


def split_overrides(task_name: str, overrides: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(task config fields, SequenceGenerator arguments)``; the generator arguments are checked here (the
    task options by ``build_task_config``). Anything else is an ``UnknownOptionError`` naming the near names."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    task_fields = {f.name for f in dataclasses.fields(TASK_DATACLASS_REGISTRY[task_name])
                   if not f.name.startswith("_")} - {"data"}
    gen_limits = generator_limits()
    task_over, gen_over, unknown = {}, {}, []
    for k, v in overrides.items():
        if k in gen_limits:
            check_generator_value(k, v, gen_limits[k])
            gen_over[k] = v
        elif k in task_fields:
            task_over[k] = v
        else:
            unknown.append(k)
    if unknown:
        known = sorted(task_fields | set(gen_limits))
        parts = [quoted_with_near(k, known) for k in unknown]
        raise UnknownOptionError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(parts)} for task "
                                 f"{task_name!r}: give SequenceGenerator arguments or {task_name} task options")
    return task_over, gen_over


def resolve_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    """``device`` as a ``torch.device`` (default ``cuda`` when available, else ``cpu``); ``ConfigError`` for a
    name torch does not know or a CUDA device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={device!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise ConfigError(f"device={device!r} is not available: this machine has {count} CUDA device(s)")
    return dev


def _tokenizer_dir(handle: InferenceHandle) -> Optional[str]:
    """Where the tokenizer is: like ``load_model``, the explicit folder, the saved one, the checkpoint's own."""
    candidates = [handle.bpe_dir, getattr(handle.info, "bpe_dir", None), handle.info.task.get("bpe_dir")]
    if handle.path:
        candidates += [handle.path if os.path.isdir(handle.path) else None, os.path.dirname(handle.path)]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "dict.txt")):
            return c
    return next((c for c in candidates if c), None)


# ---------------------------------------------------------------------------------------- inputs
def _image_bytes(image: ImageInput) -> Tuple[bytes, Tuple[int, int]]:
    """Encoded image bytes (what the datasets decode) and the original ``(w, h)``."""
    from PIL import Image

    name = "the image"
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        img = image if image.mode in ("RGB", "L", "RGBA", "P") else image.convert("RGB")
        img.save(buf, format="PNG")
        raw = buf.getvalue()
    elif isinstance(image, (bytes, bytearray)):
        raw = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(image))
        if not os.path.isfile(path):
            raise FileNotFoundError(2, f"image not found: {path}", path)
        with open(path, "rb") as f:
            raw = f.read()
        name = f"image {path}"
    else:
        raise TypeError(f"image must be a path, bytes or a PIL image, not {type(image).__name__}")
    try:
        with Image.open(io.BytesIO(raw)) as probe:  # the header is enough for the size
            size = probe.size
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"{name} does not decode ({type(e).__name__}: {detail})") from None
    return raw, size


def need_text(task_name: str, text: Optional[str], what: str) -> str:
    """``text`` for a row builder, or an ``InputError`` saying that ``task_name`` needs it (``what`` it is)."""
    if text is None or not str(text).strip():
        raise InputError(f"task {task_name!r} needs text (text= / --text): {what}")
    return str(text)


def _is_many(value) -> bool:
    return isinstance(value, (list, tuple))


def _per_input(value, n: int, name: str) -> List[Any]:
    """``value`` for each of ``n`` inputs: a list of ``n`` as it is, anything else repeated."""
    if not _is_many(value):
        return [value] * n
    if len(value) != n:
        raise InputError(f"{name}= has {len(value)} entries for {n} inputs: give one per input, or one for all")
    return list(value)


def gather_inputs(spec: "InferenceSpec", task_name: str, image, text,
                  caption) -> Tuple[bool, List[Tuple[Any, Any, Any]]]:
    """``(batched, [(image, text, premise)] per input)``: the inputs are the images (for tasks without an
    input image, the texts); ``text`` and ``caption`` are one for all or one per input."""
    if spec.needs_image:
        if image is None:
            raise InputError(f"task {task_name!r} needs an image (image= / --image)")
        batched = _is_many(image)
        images = list(image) if batched else [image]
        if not batched:
            for name, value in (("text", text), ("caption", caption)):
                if _is_many(value):
                    raise InputError(f"{name}= is a list but image= is one image: pass a list of images")
    else:
        if image is not None and not (_is_many(image) and not image):
            raise InputError(f"task {task_name!r} takes no input image (it generates one from text=)")
        batched = _is_many(text)
        images = [None] * (len(text) if batched else 1)
    n = len(images)
    return batched, list(zip(images, _per_input(text, n, "text"), _per_input(caption, n, "caption")))


def _groups(spec: "InferenceSpec", inputs: List[Tuple[Any, Any, Any]]) -> List[Tuple[bool, List[int]]]:
    """Input indices grouped by whether a premise is given (it changes the dataset's ``add_caption``, so
    each group is batched on its own), in input order; one group for tasks without premises."""
    if not spec.takes_premise:
        return [(False, list(range(len(inputs))))]
    given = [i for i, (_, _, p) in enumerate(inputs) if p is not None]
    without = [i for i, (_, _, p) in enumerate(inputs) if p is None]
    return [(flag, idx) for flag, idx in ((False, without), (True, given)) if idx]


class _RowsReader:
    """The reader interface ``OFADataset`` uses, over rows in memory (a bad row is reported as
    ``<inference input>, row N``: the N-th input)."""

    path = "<inference input>"

    def __init__(self, rows: List[Dict[str, Any]]):
        self.column_names = list(rows[0])
        self._values = [tuple(row[c] for c in self.column_names) for row in rows]
        self.total = len(rows)

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, i: int):
        return self._values[i]

    def global_index(self, i: int) -> int:
        return i

    def is_padding(self, i: int) -> bool:
        return False

    def set_epoch(self, epoch: int) -> None:
        pass


def _to_device(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def _batch(spec: "InferenceSpec", task, rows: List[Dict[str, Any]], premise_given: bool, device, float_dtype):
    """The rows as one batch, built and collated by the task's own dataset class, on ``device``."""
    cfg = dataclasses.replace(task.data_config(), bad_rows="fail", augment=False)
    if spec.takes_premise:  # the prompt includes the text premise only when one is given
        cfg = dataclasses.replace(cfg, add_caption=premise_given)
    dataset = task.dataset_cls(_RowsReader(rows), task.tokenizer, cfg, split="test")
    batch = _to_device(dataset.collater([dataset[i] for i in range(len(rows))]), device)
    batch["net_input"]["patch_images"] = batch["net_input"]["patch_images"].to(float_dtype)
    return batch


def _finish(task_name: str, spec: "InferenceSpec", result: Dict[str, Any], size, out: Optional[str]) -> Dict[str, Any]:
    """A predictor's result with ``task``, ``prob`` (from ``logprob``), ``image_size`` and written images."""
    if "logprob" in result and "prob" not in result:
        result["prob"] = math.exp(result["logprob"])
    if not spec.needs_image:
        size = result["images"][0].size
        if out:
            from ofa.io_utils import save_pngs

            result["paths"] = save_pngs(result["images"], out)
    return {"task": task_name, **result, "image_size": [int(size[0]), int(size[1])]}


# ---------------------------------------------------------------------------------------- predictions
class _RecordingGenerator:
    """Wraps the task's generator so that ``task.inference`` runs unchanged and the hypotheses are kept."""

    def __init__(self, generator):
        self.generator = generator
        self.hyps = None

    def generate(self, *args, **kwargs):
        self.hyps = self.generator.generate(*args, **kwargs)
        return self.hyps

    def __getattr__(self, name):
        return getattr(self.generator, name)


def recording_generator(task, model, gen_over: Dict[str, Any]) -> _RecordingGenerator:
    """The task's generator (or one built with the ``SequenceGenerator`` overrides ``gen_over``), wrapped so
    that the hypotheses of its last ``generate`` call stay in ``.hyps``."""
    return _RecordingGenerator(task.build_generator([model], **gen_over) if gen_over else task.generator)


def generate_batch(task, model, sample, gen_over: Dict[str, Any]) -> Tuple[List[Any], List[Dict[str, Any]]]:
    """``task.inference`` on a batch, with the task's generator (or one built with the ``SequenceGenerator``
    overrides ``gen_over``); returns ``(the task's predictions, the best hypothesis of each sample:
    {"tokens", "score", "positional_scores", ...})``, for predictors of generating tasks (one beam search
    for the whole batch)."""
    recorder = recording_generator(task, model, gen_over)
    saved, task.generator = task.generator, recorder
    try:
        predictions = task.inference(model, sample)
    finally:
        task.generator = saved
    return predictions, [hyps[0] for hyps in recorder.hyps]


def hypothesis_scores(hyp: Dict[str, Any]) -> Dict[str, float]:
    """``{"logprob", "prob", "score"}`` of a generator hypothesis: ``logprob`` the sum of its
    ``positional_scores`` (every output token, EOS included, as the generator scored it; not length
    normalised), ``prob`` its ``exp``, ``score`` the generator's ranking score (normalised by length unless
    ``normalize_scores=False``)."""
    logprob = float(hyp["positional_scores"].double().sum())
    return {"logprob": logprob, "prob": math.exp(logprob), "score": float(hyp["score"])}


# ---------------------------------------------------------------------------------------- the registry
def default_lines(result: Dict[str, Any]) -> List[str]:
    """``key: value`` for every result key but ``task`` and ``image_size``."""
    return [f"{k}: {v}" for k, v in result.items() if k not in ("task", "image_size")]


def default_text(result: Dict[str, Any]) -> str:
    return "; ".join(default_lines(result))


def default_draw(img, result: Dict[str, Any], label: Optional[str]) -> None:
    """The result's one line (``result_text``) written across the top of the image."""
    from ofa.draw import draw_banner

    draw_banner(img, result_text(result))


RowBuilder = Callable[[Optional[bytes], Optional[Tuple[int, int]], Optional[str], Optional[str]], Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """How ``inference_model`` (and ``ofa-predict``) runs one registered fairseq task on its inputs.

    Attributes:
        row: ``(image bytes, (w, h), text, premise) -> row``: the dict the task's dataset reads for one
            input (column name -> value; target columns hold placeholders). ``image`` and the size are
            ``None`` when ``needs_image`` is False; raise ``InputError`` when ``text`` is required and
            missing (``need_text``).
        predict: ``(task_name, task, model, sample, sizes, generator_overrides) -> [result keys]``: one dict
            per sample of the batch ``sample``, in its order (``sizes``: each input's ``(w, h)``, ``None``
            without an image), each with ``logprob`` (see the module docstring; ``prob`` is added from it
            when missing); the ``task`` / ``image_size`` keys are added by ``inference_model``. One model
            call for the batch (``generate_batch``, a batched candidate scoring), not one per sample.
        lines: ``result -> lines`` that ``ofa-predict`` prints under its header.
        text: ``result -> one line`` describing the prediction (``result_text``).
        draw: ``(PIL image, result, label) -> None`` draws the result on a copy of the input image, in
            place (``draw_result``, ``ofa-predict --draw``; ``ofa.draw`` has the primitives); the default
            writes ``text`` across the top.
        aliases: other names ``task=`` accepts (lower case, ``_`` for spaces and dashes).
        needs_image: False for tasks without an input image (``image_gen``).
        takes_premise: the dataset's ``add_caption`` follows whether ``caption=`` (a premise) was given.
        answer_key: closed-set tasks: the result key of the chosen answer (``answer``, ``label``); ``None``
            for generating tasks. Runners without the PyTorch model (``ofa-predict --onnx``) decode these by
            trie-constrained beam search and report the answer under this key.
    """

    row: RowBuilder
    predict: Callable[..., List[Dict[str, Any]]]
    lines: Callable[[Dict[str, Any]], List[str]] = default_lines
    text: Callable[[Dict[str, Any]], str] = default_text
    draw: Callable[[Any, Dict[str, Any], Optional[str]], None] = default_draw
    aliases: Tuple[str, ...] = ()
    needs_image: bool = True
    takes_premise: bool = False
    answer_key: Optional[str] = None


INFERENCE: Dict[str, InferenceSpec] = {}


def register_inference(task_name: str, spec: InferenceSpec) -> InferenceSpec:
    """Make ``task_name`` (a task registered with fairseq) runnable by ``inference_model`` / ``ofa-predict``.

    A ``--user-dir`` plugin calls this next to its ``@register_task``; e.g. a closed-set task
    (``ofa.tasks.closed_set.closed_set_inference`` fills in the closed-set predictor and its lines)::

        register_inference("object_count", closed_set_inference(
            row=lambda image, size, text, premise: {...}, aliases=("count",)))

    Re-registering a name replaces it; an alias already used by another task is a ``ValueError``.
    """
    for alias in spec.aliases:
        owner = canonical_task(alias) if alias in valid_task_names() else None
        if owner not in (None, task_name):
            raise ValueError(f"alias {alias!r} of {task_name!r} already names the task {owner!r}")
    INFERENCE[task_name] = spec
    return spec


def inference_model(checkpoint, image: Union[None, ImageInput, Sequence[ImageInput]] = None,
                    task: Optional[str] = None, text: Union[None, str, Sequence[Optional[str]]] = None,
                    bpe_dir: Optional[str] = None, ema: bool = False, device: Optional[Union[str, torch.device]] = None,
                    caption: Union[None, str, Sequence[Optional[str]]] = None,
                    out: Union[None, str, Sequence[Optional[str]]] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    local_files_only: bool = False,
                    **generation_overrides) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
    """Run an OFA checkpoint on one image, or on a list of images in batches.

    Args:
        checkpoint: a local path, URL or published name (``ofa.resolve_checkpoint``), an ``InferenceHandle``
            (``ofa.inference.load``) or the ``(model, dictionary, info)`` tuple of ``ofa.load_model``.
            Models loaded from a path are cached (path, ``bpe_dir``, ``ema``), so repeated calls do not reload.
        image: a file path, encoded image bytes or a PIL image, or a list of them (then a list of results
            comes back, in the same order); ``None`` for ``image_gen``.
        task: a task with an ``InferenceSpec`` (``caption``, ``refcoco``, ``vqa_gen``, ``snli_ve``,
            ``image_classify``, ``image_gen``, a plugin's) or an alias (``grounding``, ``visual_grounding``,
            ``vqa``, ``entailment``, ``classify``, ...); default the checkpoint's own task. Asking a
            checkpoint finetuned for another task warns once (``TaskMismatchWarning``); pretrained
            (``unify``) checkpoints do not.
        text: the question (VQA), the referring expression (grounding), the hypothesis (entailment) or the
            caption (``image_gen``; a list of captions makes a batch); unused for captioning and
            classification. One for all inputs, or a list with one per input.
        bpe_dir: tokenizer folder (default: the checkpoint's saved ``bpe_dir`` or its own folder).
        ema: use the checkpoint's EMA weights.
        device: default ``cuda`` when available, else ``cpu``.
        caption: entailment only: the text premise (the prompt then includes it, as ``--add-caption``).
        out: ``image_gen`` only: write the best generated image to this PNG path (others beside it); a list
            with one path per caption for a batch.
        batch_size: inputs run together (one encoder pass and one beam search per batch); a batch gives the
            same predictions as single calls (see ``InferenceHandle.predict`` for the exceptions).
        local_files_only: a published name or URL is taken from the download cache only, never downloaded
            (``ofa.hub.resolve_checkpoint``).
        **generation_overrides: ``SequenceGenerator`` arguments (``beam_size``, ``max_len_b``, ...) and task
            options (``eval_beam``, ``ans2label_file``, ``patch_image_size``, ``prompt_type``, ...).

    Returns:
        ``{"task", ..., "logprob", "prob", "image_size": [w, h]}`` (a list of them for a list of inputs) with
        the task's keys: ``caption`` (captioning), ``box`` / ``bins`` (grounding; the box in original-image
        pixels), ``answer`` | ``label`` and ``top`` (closed-set tasks: the best answers with their
        probabilities among the candidates), ``images`` / ``codes`` / ``scores`` (``image_gen``).
        ``logprob`` is the log-probability of the prediction (generated outputs: the sum of the token
        log-probabilities as the generator scored them, EOS included, not length-normalised; closed-set
        tasks: the log of the answer's probability among the candidates) and ``prob = exp(logprob)``, with
        the same meaning for every task. ``score`` is kept for compatibility: the generator's
        length-normalised ranking score for generated outputs, ``prob`` for closed-set tasks.

    Raises:
        ofa.errors.UserError subclasses (``ConfigError``, ``InputError``, ``UnknownOptionError``,
        ``ofa.hub.HubError``, ``ofa.checkpoint.CheckpointError``) and ``FileNotFoundError`` for a mistake in
        what was given, each with a one-line message.
    """
    if task is not None:
        canonical_task(task)  # a wrong name fails before the model is loaded
    handle = load(checkpoint, bpe_dir=bpe_dir, ema=ema, local_files_only=local_files_only)
    return handle._predict(image, text, task, caption, batch_size, device, out, generation_overrides, stacklevel=3)


# ---------------------------------------------------------------------------------------- drawing
def result_text(result: Dict[str, Any]) -> str:
    """One line describing a prediction (its task's ``InferenceSpec.text``)."""
    spec = INFERENCE.get(result.get("task"))
    return spec.text(result) if spec is not None else default_text(result)


def draw_result(image: ImageInput, result: Dict[str, Any], label: Optional[str] = None):
    """A copy of the input image (same size) with the prediction drawn by its task's ``InferenceSpec.draw``
    (grounding: the box, tagged with ``label`` and the log-probability; by default the result's line across
    the top)."""
    from PIL import Image

    raw, _ = _image_bytes(image)
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    spec = INFERENCE.get(result.get("task"))
    (spec.draw if spec is not None else default_draw)(img, result, label)
    return img
