"""One-image inference: ``inference_model(checkpoint, image, task=None, text=None, ...)`` -> a result dict.

The task is set up exactly as ``ofa-evaluate`` sets it up (the checkpoint's saved task config,
``ofa.task_config.build_task_config``), and the one example is built by the task's own dataset class
(``task.dataset_cls``) from a one-row stand-in reader, so preprocessing (prompts, text cleaning, image
resize and normalisation, resize ratios) is the same as in evaluation.

This module knows no task. Each task says how it runs on one input with an ``InferenceSpec``, registered
next to its ``@register_task`` with ``register_inference`` (the row its dataset reads, the predictor,
the lines ``ofa-predict`` prints, how ``--draw`` draws a result, its aliases); the tasks of ``ofa.tasks``
do so, and a ``--user-dir`` plugin becomes runnable here and by ``ofa-predict --user-dir`` the same way.
Every result holds ``"task"`` (the registered task name) and ``"image_size": [w, h]`` (of the input
image; for tasks without an input image, of the generated one) beside the task's own keys.

Loaded models are kept in a small module-level cache keyed by the resolved path, ``bpe_dir`` and
``ema`` (and the file's size / modification time), so repeated calls do not reload; ``load()`` returns
an ``InferenceHandle`` that can be passed as ``checkpoint`` too, and ``clear_cache()`` empties it.
"""
from __future__ import annotations

import collections
import dataclasses
import inspect
import io
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from ofa.checkpoint import load_model
from ofa.hub import resolve_checkpoint

CACHE_SIZE = 2  # models kept loaded (path-loaded checkpoints and passed-in tuples each)

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, "PIL.Image.Image"]  # noqa: F821


class InferenceHandle:
    """A loaded model with its dictionary, ``CheckpointInfo`` and the task objects built for it."""

    def __init__(self, model, dictionary, info, path: Optional[str] = None, bpe_dir: Optional[str] = None):
        self.model, self.dictionary, self.info = model, dictionary, info
        self.path = path if path is not None else getattr(info, "path", None)
        self.bpe_dir = bpe_dir
        self._tasks: Dict[Any, Any] = {}

    def __iter__(self):  # unpacks like load_model's tuple
        return iter((self.model, self.dictionary, self.info))

    def __repr__(self) -> str:
        return f"InferenceHandle(path={self.path!r}, task={self.info.task.get('_name')!r})"


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


def load(checkpoint, bpe_dir: Optional[str] = None, ema: bool = False) -> InferenceHandle:
    """A (cached) ``InferenceHandle`` for a path / URL / published name, a handle or a ``(model, dict, info)`` tuple."""
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
    path = os.path.abspath(resolve_checkpoint(checkpoint))
    key = (path, os.path.abspath(bpe_dir) if bpe_dir else None, bool(ema), _file_stamp(path))
    cached = _CACHE.get(key)
    if cached is not None:
        _CACHE.move_to_end(key)
        return cached
    model, dictionary, info = load_model(path, bpe_dir=bpe_dir, ema=ema)
    return _remember(_CACHE, key, InferenceHandle(model, dictionary, info, path=path, bpe_dir=bpe_dir))


# ---------------------------------------------------------------------------------------- tasks
def valid_task_names() -> List[str]:
    """Every name ``task=`` accepts: the registered tasks and their aliases."""
    return sorted(set(INFERENCE) | {a for spec in INFERENCE.values() for a in spec.aliases})


def canonical_task(name: str) -> str:
    """Registered task name of ``name`` (an alias or a registered name); ``ValueError`` listing the valid ones."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key in INFERENCE:
        return key
    for task_name, spec in INFERENCE.items():
        if key in spec.aliases:
            return task_name
    raise ValueError(f"unknown task {name!r}; valid task names: {', '.join(valid_task_names())}")


def _generator_params() -> set:
    from ofa.generate import SequenceGenerator

    params = inspect.signature(SequenceGenerator.__init__).parameters
    return {n for n, p in params.items() if n not in ("self", "models", "tgt_dict") and p.kind != p.VAR_KEYWORD}


def _split_overrides(task_name: str, overrides: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(task config fields, SequenceGenerator arguments)``; anything else is a ``TypeError``."""
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    task_fields = {f.name for f in dataclasses.fields(TASK_DATACLASS_REGISTRY[task_name]) if not f.name.startswith("_")}
    gen_params = _generator_params()
    task_over, gen_over, unknown = {}, {}, []
    for k, v in overrides.items():
        if k in gen_params:
            gen_over[k] = v
        elif k in task_fields and k != "data":
            task_over[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for task {task_name!r}: pass SequenceGenerator arguments "
                        f"({', '.join(sorted(gen_params))}) or {task_name} task options "
                        f"({', '.join(sorted(task_fields - {'data'}))})")
    return task_over, gen_over


def _tokenizer_dir(handle: InferenceHandle) -> Optional[str]:
    """Where the tokenizer is: like ``load_model``, the explicit folder, the saved one, the checkpoint's own."""
    candidates = [handle.bpe_dir, handle.info.task.get("bpe_dir")]
    if handle.path:
        candidates += [handle.path if os.path.isdir(handle.path) else None, os.path.dirname(handle.path)]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "dict.txt")):
            return c
    return next((c for c in candidates if c), None)


def _get_task(handle: InferenceHandle, task_name: str, task_over: Dict[str, Any]):
    key = (task_name, tuple(sorted((k, repr(v)) for k, v in task_over.items())))
    task = handle._tasks.get(key)
    if task is None:
        from fairseq.tasks import TASK_REGISTRY

        from ofa.task_config import build_task_config

        cli = dict(task_over)
        cli["bpe_dir"] = task_over.get("bpe_dir") or _tokenizer_dir(handle)
        cfg = build_task_config(task_name, handle.info.task, cli)  # drops another task's eval_* / answers
        cfg.data = None
        task = TASK_REGISTRY[task_name].setup_task(cfg)
        task.generator = task.build_generator([handle.model])
        handle._tasks[key] = task
    return task


# ---------------------------------------------------------------------------------------- inputs
def _image_bytes(image: ImageInput) -> Tuple[bytes, Tuple[int, int]]:
    """Encoded image bytes (what the datasets decode) and the original ``(w, h)``."""
    from PIL import Image

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
    else:
        raise TypeError(f"image must be a path, bytes or a PIL image, not {type(image).__name__}")
    try:
        with Image.open(io.BytesIO(raw)) as probe:  # the header is enough for the size
            size = probe.size
    except Exception as e:
        raise ValueError(f"the image does not decode ({type(e).__name__}: {e})") from None
    return raw, size


def need_text(task_name: str, text: Optional[str], what: str) -> str:
    """``text`` for a row builder, or a ``ValueError`` saying that ``task_name`` needs it (``what`` it is)."""
    if text is None or not str(text).strip():
        raise ValueError(f"task {task_name!r} needs text= ({what})")
    return str(text)


class _OneRowReader:
    """The reader interface ``OFADataset`` uses, over a single in-memory row."""

    path = "<inference input>"

    def __init__(self, row: Dict[str, Any]):
        self.column_names = list(row)
        self._values = tuple(row.values())
        self.total = 1

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        if i != 0:
            raise IndexError(i)
        return self._values

    def global_index(self, i: int) -> int:
        return 0

    def is_padding(self, i: int) -> bool:
        return False

    def set_epoch(self, epoch: int) -> None:
        pass


def _to_device(obj, device: torch.device, float_dtype: torch.dtype):
    if isinstance(obj, torch.Tensor):
        obj = obj.to(device)
        return obj.to(float_dtype) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _to_device(v, device, float_dtype) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device, float_dtype) for v in obj]
    return obj


def _sample(spec: "InferenceSpec", task, row: Dict[str, Any], premise_given: bool, device, float_dtype):
    cfg = dataclasses.replace(task.data_config(), bad_rows="fail", augment=False)
    if spec.takes_premise:  # the prompt includes the text premise only when one is given
        cfg = dataclasses.replace(cfg, add_caption=premise_given)
    dataset = task.dataset_cls(_OneRowReader(row), task.tokenizer, cfg, split="test")
    batch = dataset.collater([dataset[0]])
    batch = _to_device(batch, device, torch.float32)
    batch["net_input"]["patch_images"] = batch["net_input"]["patch_images"].to(float_dtype)
    return batch


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


def generate_one(task, model, sample, gen_over: Dict[str, Any]):
    """``task.inference`` on a one-sample batch, with the task's generator (or one built with the
    ``SequenceGenerator`` overrides ``gen_over``); returns ``(the task's prediction, the best hypothesis:
    {"tokens", "score", ...})``, for predictors of generating tasks."""
    generator = task.build_generator([model], **gen_over) if gen_over else task.generator
    recorder = _RecordingGenerator(generator)
    saved, task.generator = task.generator, recorder
    try:
        predictions = task.inference(model, sample)
    finally:
        task.generator = saved
    return predictions[0], recorder.hyps[0][0]


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
    """How ``inference_model`` (and ``ofa-predict``) runs one registered fairseq task on one input.

    Attributes:
        row: ``(image bytes, (w, h), text, premise) -> row``: the dict the task's dataset reads for this
            input (column name -> value; target columns hold placeholders). ``image`` and the size are
            ``None`` when ``needs_image`` is False; raise ``ValueError`` when ``text`` is required and
            missing (``need_text``).
        predict: ``(task_name, task, model, sample, (w, h), generator_overrides) -> result keys`` (the
            ``task`` / ``image_size`` keys are added by ``inference_model``).
        lines: ``result -> lines`` that ``ofa-predict`` prints under its header.
        text: ``result -> one line`` describing the prediction (``result_text``).
        draw: ``(PIL image, result, label) -> None`` draws the result on a copy of the input image, in
            place (``draw_result``, ``ofa-predict --draw``; ``ofa.draw`` has the primitives); the default
            writes ``text`` across the top.
        aliases: other names ``task=`` accepts (lower case, ``_`` for spaces and dashes).
        needs_image: False for tasks without an input image (``image_gen``).
        takes_premise: the dataset's ``add_caption`` follows whether ``caption=`` (a premise) was given.
    """

    row: RowBuilder
    predict: Callable[..., Dict[str, Any]]
    lines: Callable[[Dict[str, Any]], List[str]] = default_lines
    text: Callable[[Dict[str, Any]], str] = default_text
    draw: Callable[[Any, Dict[str, Any], Optional[str]], None] = default_draw
    aliases: Tuple[str, ...] = ()
    needs_image: bool = True
    takes_premise: bool = False


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


def inference_model(checkpoint, image: Optional[ImageInput] = None, task: Optional[str] = None, text: Optional[str] = None,
                    bpe_dir: Optional[str] = None, ema: bool = False, device: Optional[Union[str, torch.device]] = None,
                    caption: Optional[str] = None, out: Optional[str] = None, **generation_overrides) -> Dict[str, Any]:
    """Run an OFA checkpoint on one image.

    Args:
        checkpoint: a local path, URL or published name (``ofa.resolve_checkpoint``), an ``InferenceHandle``
            (``ofa.inference.load``) or the ``(model, dictionary, info)`` tuple of ``ofa.load_model``.
            Models loaded from a path are cached (path, ``bpe_dir``, ``ema``), so repeated calls do not reload.
        image: a file path, encoded image bytes or a PIL image (``None`` for ``image_gen``).
        task: a task with an ``InferenceSpec`` (``caption``, ``refcoco``, ``vqa_gen``, ``snli_ve``,
            ``image_classify``, ``image_gen``, a plugin's) or an alias (``grounding``, ``visual_grounding``,
            ``vqa``, ``entailment``, ``classify``, ...); default the checkpoint's own task.
        text: the question (VQA), the referring expression (grounding) or the hypothesis (entailment);
            unused for captioning and classification.
        bpe_dir: tokenizer folder (default: the checkpoint's saved ``bpe_dir`` or its own folder).
        ema: use the checkpoint's EMA weights.
        device: default ``cuda`` when available, else ``cpu``.
        caption: entailment only: the text premise (the prompt then includes it, as ``--add-caption``).
        out: ``image_gen`` only: write the best generated image to this PNG path (others beside it).
        **generation_overrides: ``SequenceGenerator`` arguments (``beam_size``, ``max_len_b``, ...) and task
            options (``eval_beam``, ``ans2label_file``, ``patch_image_size``, ``prompt_type``, ...).

    Returns:
        ``{"task", "image_size": [w, h], ...}`` with the task's keys: ``caption``/``score`` (captioning),
        ``box``/``score``/``bins`` (grounding; the box in original-image pixels),
        ``answer``|``label``/``score``/``top`` (closed-set tasks; probabilities over the candidate answers),
        ``images``/``codes``/``score`` (``image_gen``); each task's module documents its own.
    """
    handle = load(checkpoint, bpe_dir=bpe_dir, ema=ema)
    if task is None:
        task = handle.info.task.get("_name")
        if not task:
            raise ValueError(f"the checkpoint does not say which task it is for: pass task= "
                             f"(one of {', '.join(valid_task_names())})")
    task_name = canonical_task(task)
    spec = INFERENCE[task_name]
    task_over, gen_over = _split_overrides(task_name, generation_overrides)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = handle.model
    model.to(device)
    model.eval()
    float_dtype = next(model.parameters()).dtype
    task_obj = _get_task(handle, task_name, task_over)
    if not spec.needs_image:
        raw, size = None, None
    elif image is None:
        raise ValueError(f"task {task_name!r} needs an image")
    else:
        raw, size = _image_bytes(image)
    row = spec.row(raw, size, text, caption)
    with torch.no_grad():
        sample = _sample(spec, task_obj, row, caption is not None, device, float_dtype)
        result = spec.predict(task_name, task_obj, model, sample, size, gen_over)
    if not spec.needs_image:
        size = result["images"][0].size
        if out:
            from ofa.io_utils import save_pngs

            result["paths"] = save_pngs(result["images"], out)
    return {"task": task_name, **result, "image_size": [int(size[0]), int(size[1])]}


# ---------------------------------------------------------------------------------------- drawing
def result_text(result: Dict[str, Any]) -> str:
    """One line describing a prediction (its task's ``InferenceSpec.text``)."""
    spec = INFERENCE.get(result.get("task"))
    return spec.text(result) if spec is not None else default_text(result)


def draw_result(image: ImageInput, result: Dict[str, Any], label: Optional[str] = None):
    """A copy of the input image (same size) with the prediction drawn by its task's ``InferenceSpec.draw``
    (grounding: the box, tagged with ``label`` and the score; by default the result's line across the top)."""
    from PIL import Image

    raw, _ = _image_bytes(image)
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    spec = INFERENCE.get(result.get("task"))
    (spec.draw if spec is not None else default_draw)(img, result, label)
    return img
