"""Single-image inference: ``inference_model(checkpoint, image, task=None, text=None, ...)`` -> a result dict.

The task is set up exactly as ``ofa-evaluate`` sets it up (the checkpoint's saved task config, see
``ofa.cli.evaluate.build_task_config``), and the one example is built by the task's own dataset class
(``task.dataset_cls``) from a one-row stand-in reader, so preprocessing (prompts, text cleaning, image
resize and normalisation, resize ratios) is the same as in evaluation. Predictions:

- ``caption``: beam search with the task's generator; ``{"caption", "score"}`` (punctuation stripped as
  the task does; ``score`` is the best hypothesis' length-normalised log-probability);
- ``refcoco``: ``task.inference`` (bin tokens -> box in ORIGINAL image pixels), clamped to the image;
  ``{"box": [x0, y0, x1, y1], "score", "bins"}``;
- ``vqa_gen`` / ``snli_ve`` / ``image_classify``: every candidate answer is scored
  (``AnswerSet.score_candidates``, the official "allcand"), then softmax over the candidates;
  ``{"answer" | "label", "score" (probability), "top": [(answer, probability)] x 5}``;
- ``image_gen`` (no input image; ``text`` is the caption, ``vqgan_path=`` the VQGAN): sampled image
  codes decoded into ``{"images": [PIL] (best first), "codes", "score" (mean log-probability of the
  best sample), "scores", "caption"}``, plus ``"paths"`` when ``out=`` names a PNG to write.

Every result also holds ``"task"`` (the registered task name) and ``"image_size": [w, h]`` (of the
input image; for ``image_gen`` of the generated one).

Each task runs through its ``InferenceSpec`` in ``INFERENCE`` (the input row its dataset reads, the
predictor, the lines ``ofa-predict`` prints, its aliases); a plugin task becomes runnable here, and by
``ofa-predict --user-dir``, by calling ``register_inference`` next to its ``@register_task``.

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

from .checkpoint import load_model
from .hub import resolve_checkpoint

TOP_K = 5
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
    from .generate import SequenceGenerator

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

        from .cli.evaluate import build_task_config

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


def _need_text(task_name: str, text: Optional[str], what: str) -> str:
    if text is None or not str(text).strip():
        raise ValueError(f"task {task_name!r} needs text= ({what})")
    return str(text)


def _caption_row(image: bytes, size: Tuple[int, int], text: Optional[str], premise: Optional[str]):
    return {"uniq_id": "0", "image": image, "caption": "none"}


def _refcoco_row(image: bytes, size: Tuple[int, int], text: Optional[str], premise: Optional[str]):
    w, h = size
    return {"uniq_id": "0", "image": image, "text": _need_text("refcoco", text, "the referring expression"),
            "region_coord": f"0,0,{w},{h}"}


def _vqa_row(image: bytes, size: Tuple[int, int], text: Optional[str], premise: Optional[str]):
    return {"question_id": "0", "image": image, "question": _need_text("vqa_gen", text, "the question"),
            "answers": "1.0|!+none"}


def _snli_ve_row(image: bytes, size: Tuple[int, int], text: Optional[str], premise: Optional[str]):
    return {"uniq_id": "0", "image": image, "hypothesis": _need_text("snli_ve", text, "the hypothesis"),
            "caption": premise or "", "label": "entailment"}


def _classify_row(image: bytes, size: Tuple[int, int], text: Optional[str], premise: Optional[str]):
    return {"image": image, "label_name": "none"}


def _image_gen_row(image: Optional[bytes], size: Optional[Tuple[int, int]], text: Optional[str],
                   premise: Optional[str]):
    # no image; an empty code column (generation from the caption alone)
    return {"uniq_id": "0", "code": "", "caption": _need_text("image_gen", text, "the caption")}


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


def _generate(task, model, sample, gen_over: Dict[str, Any]):
    generator = task.build_generator([model], **gen_over) if gen_over else task.generator
    recorder = _RecordingGenerator(generator)
    saved, task.generator = task.generator, recorder
    try:
        predictions = task.inference(model, sample)
    finally:
        task.generator = saved
    return predictions[0], recorder.hyps[0][0]


def _predict_caption(task_name, task, model, sample, size, gen_over):
    caption, best = _generate(task, model, sample, gen_over)
    return {"caption": caption, "score": float(best["score"])}


def _predict_refcoco(task_name, task, model, sample, size, gen_over):
    box, best = _generate(task, model, sample, gen_over)
    w, h = size
    bins = (best["tokens"][:4] - task.vocab.bin_start).clamp(0, task.vocab.num_bins - 1)
    x0, y0, x1, y1 = (float(v) for v in box)
    box = [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]
    return {"box": [round(v, 2) for v in box], "score": float(best["score"]), "bins": [int(b) for b in bins]}


def _predict_closed_set(task_name, task, model, sample, size, gen_over):
    answers = task.answer_set.answers
    logprobs = task.answer_set.score_candidates(model, sample, task.cfg.valid_batch_size)[0].float()
    probs = torch.softmax(logprobs, dim=0)
    values, idx = probs.topk(min(TOP_K, len(answers)))
    top = [(answers[i], float(p)) for i, p in zip(idx.tolist(), values.tolist())]
    return {INFERENCE[task_name].answer_key: top[0][0], "score": top[0][1], "top": top}


def _predict_image_gen(task_name, task, model, sample, size, gen_over):
    generator = task.build_generator([model], **gen_over) if gen_over else task.generator
    hyps = task.generate_codes(model, sample, generator)[0]
    codes = torch.stack([h["codes"] for h in hyps])  # [S, N]
    from .vqgan.data import to_pil

    images = [to_pil(img) for img in task.decode_images(codes)]
    return {"caption": sample["captions"][0], "images": images, "codes": codes.tolist(),
            "score": hyps[0]["score"], "scores": [h["score"] for h in hyps]}


def save_pngs(images, out: str) -> List[str]:
    """Write ``out`` (the first image) and ``{stem}_{j}{ext}`` (the others) atomically; returns the paths."""
    from .io_utils import atomic_output

    stem, ext = os.path.splitext(out)
    paths = []
    for j, img in enumerate(images):
        path = out if j == 0 else f"{stem}_{j}{ext or '.png'}"
        with atomic_output(path) as tmp:
            img.save(tmp, format="PNG")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------- the registry
def _caption_lines(r: Dict[str, Any]) -> List[str]:
    return [f"caption: {r['caption']}", f"score: {r['score']:.4f}"]


def _refcoco_lines(r: Dict[str, Any]) -> List[str]:
    return ["box: " + " ".join(f"{v:.1f}" for v in r["box"]) + "  (x0 y0 x1 y1, pixels)", f"score: {r['score']:.4f}"]


def _closed_set_lines(r: Dict[str, Any]) -> List[str]:
    key = "label" if "label" in r else "answer"
    return [f"{key}: {r[key]}  (p={r['score']:.4f})"] + [f"  {prob:7.4f}  {answer}" for answer, prob in r["top"]]


def _image_gen_lines(r: Dict[str, Any]) -> List[str]:
    return [f"caption: {r['caption']}", f"score: {r['score']:.4f}"] + [f"image: {p}" for p in r.get("paths", [])]


def _caption_text(r: Dict[str, Any]) -> str:
    return f"{r['caption']} ({r['score']:.3f})"


def _refcoco_text(r: Dict[str, Any]) -> str:
    return "box " + ", ".join(f"{v:.1f}" for v in r["box"]) + f" ({r['score']:.3f})"


def _closed_set_text(r: Dict[str, Any]) -> str:
    key = "label" if "label" in r else "answer"
    return f"{r[key]} (p={r['score']:.3f})"


def _image_gen_text(r: Dict[str, Any]) -> str:
    return f"image for '{r['caption']}' ({r['score']:.3f})"


RowBuilder = Callable[[Optional[bytes], Optional[Tuple[int, int]], Optional[str], Optional[str]], Dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """How ``inference_model`` (and ``ofa-predict``) runs one registered fairseq task on one input.

    Attributes:
        row: ``(image bytes, (w, h), text, premise) -> row``: the dict the task's dataset reads for this
            input (column name -> value; target columns hold placeholders). ``image`` and the size are
            ``None`` when ``needs_image`` is False; raise ``ValueError`` when ``text`` is required and missing.
        predict: ``(task_name, task, model, sample, (w, h), generator_overrides) -> result keys`` (the
            ``task``/``image_size`` keys are added by ``inference_model``); ``closed_set_predict`` scores
            every candidate answer of a ``ClosedSetTask`` (``{answer_key, "score", "top"}``).
        lines: ``result -> lines`` that ``ofa-predict`` prints under its header.
        text: ``result -> one line`` written on the image by ``--draw`` / ``draw_result``.
        aliases: other names ``task=`` accepts (lower case, ``_`` for spaces and dashes).
        needs_image: False for tasks without an input image (``image_gen``).
        takes_premise: the dataset's ``add_caption`` follows whether ``caption=`` (a premise) was given.
        answer_key: the result key of a closed-set answer (``answer`` or ``label``).
    """

    row: RowBuilder
    predict: Callable[..., Dict[str, Any]]
    lines: Callable[[Dict[str, Any]], List[str]] = _closed_set_lines
    text: Callable[[Dict[str, Any]], str] = _closed_set_text
    aliases: Tuple[str, ...] = ()
    needs_image: bool = True
    takes_premise: bool = False
    answer_key: str = "answer"


INFERENCE: Dict[str, InferenceSpec] = {}


def register_inference(task_name: str, spec: InferenceSpec) -> InferenceSpec:
    """Make ``task_name`` (a task registered with fairseq) runnable by ``inference_model`` / ``ofa-predict``.

    A ``--user-dir`` plugin calls this next to its ``@register_task``; e.g. a closed-set task::

        register_inference("object_count", InferenceSpec(row=lambda image, size, text, premise: {...},
                                                         predict=closed_set_predict))

    Re-registering a name replaces it; an alias already used by another task is a ``ValueError``.
    """
    for alias in spec.aliases:
        owner = canonical_task(alias) if alias in valid_task_names() else None
        if owner not in (None, task_name):
            raise ValueError(f"alias {alias!r} of {task_name!r} already names the task {owner!r}")
    INFERENCE[task_name] = spec
    return spec


closed_set_predict = _predict_closed_set  # for plugins: score every candidate answer, softmax over them

register_inference("caption", InferenceSpec(_caption_row, _predict_caption, _caption_lines, _caption_text,
                                            aliases=("captioning", "image_caption")))
register_inference("refcoco", InferenceSpec(_refcoco_row, _predict_refcoco, _refcoco_lines, _refcoco_text,
                                            aliases=("grounding", "visual_grounding")))
register_inference("vqa_gen", InferenceSpec(_vqa_row, _predict_closed_set, aliases=("vqa",)))
register_inference("snli_ve", InferenceSpec(_snli_ve_row, _predict_closed_set, takes_premise=True,
                                            aliases=("entailment", "visual_entailment")))
register_inference("image_classify", InferenceSpec(_classify_row, _predict_closed_set, answer_key="label",
                                                   aliases=("classify", "classification")))
register_inference("image_gen", InferenceSpec(_image_gen_row, _predict_image_gen, _image_gen_lines, _image_gen_text,
                                              aliases=("text_to_image", "generation"), needs_image=False))


def inference_model(checkpoint, image: Optional[ImageInput] = None, task: Optional[str] = None, text: Optional[str] = None,
                    bpe_dir: Optional[str] = None, ema: bool = False, device: Optional[Union[str, torch.device]] = None,
                    caption: Optional[str] = None, out: Optional[str] = None, **generation_overrides) -> Dict[str, Any]:
    """Run an OFA checkpoint on one image.

    Args:
        checkpoint: a local path, URL or published name (``ofa.resolve_checkpoint``), an ``InferenceHandle``
            (``ofa.inference.load``) or the ``(model, dictionary, info)`` tuple of ``ofa.load_model``.
            Models loaded from a path are cached (path, ``bpe_dir``, ``ema``), so repeated calls do not reload.
        image: a file path, encoded image bytes or a PIL image (``None`` for ``image_gen``).
        task: a registered task (``caption``, ``refcoco``, ``vqa_gen``, ``snli_ve``, ``image_classify``) or an
            alias (``grounding``, ``visual_grounding``, ``vqa``, ``entailment``, ``classify``, ...); default the
            checkpoint's own task.
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
        ``{"task", "image_size": [w, h], ...}`` with ``caption``/``score`` (captioning), ``box``/``score``/``bins``
        (grounding; the box in original-image pixels) or ``answer``|``label``/``score``/``top`` (closed-set
        tasks; probabilities over the candidate answers).
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
            result["paths"] = save_pngs(result["images"], out)
    return {"task": task_name, **result, "image_size": [int(size[0]), int(size[1])]}


# ---------------------------------------------------------------------------------------- drawing
BOX_COLOR = (0, 255, 0)


def result_text(result: Dict[str, Any]) -> str:
    """One line describing a prediction."""
    spec = INFERENCE.get(result.get("task"))
    return spec.text(result) if spec is not None else _closed_set_text(result)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_result(image: ImageInput, result: Dict[str, Any], label: Optional[str] = None):
    """A copy of the image (same size) with the predicted box and ``label`` drawn (grounding), or with the
    prediction written on it (other tasks)."""
    from PIL import Image, ImageDraw

    raw, _ = _image_bytes(image)
    img = Image.open(io.BytesIO(raw)).convert("RGB")
    w, h = img.size
    draw = ImageDraw.Draw(img)
    font = _font(max(10, min(w, h) // 24))
    line = max(2, round(min(w, h) / 150))
    if "box" in result:  # grounding (and any task whose result holds a box)
        x0, y0, x1, y1 = result["box"]
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        grow = max(0.0, 2 * line - (x1 - x0)) / 2, max(0.0, 2 * line - (y1 - y0)) / 2  # keep tiny boxes visible
        x0, x1, y0, y1 = x0 - grow[0], x1 + grow[0], y0 - grow[1], y1 + grow[1]
        # a dark halo under a bright outline stays visible on light and dark images alike
        draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(0, 0, 0), width=line + 2)
        draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOR, width=line)
        text = f"{label} ({result['score']:.2f})" if label else f"{result['score']:.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y0 - th - 3 * line if y0 - th - 3 * line >= 0 else min(y1 + line + 1, max(h - th - 2 * line, 0))
        tx = min(max(x0, 0), max(w - tw - 2 * line, 0))
        draw.rectangle([tx, ty, tx + tw + 2 * line, ty + th + 2 * line], fill=BOX_COLOR, outline=(0, 0, 0))
        draw.text((tx + line - tb[0], ty + line - tb[1]), text, fill=(0, 0, 0), font=font)
    else:
        text = result_text(result)
        tb = draw.textbbox((0, 0), text, font=font)
        th = tb[3] - tb[1]
        draw.rectangle([0, 0, w, th + 2 * line], fill=(0, 0, 0))
        draw.text((line - tb[0], line - tb[1]), text, fill=(255, 255, 255), font=font)
    return img
