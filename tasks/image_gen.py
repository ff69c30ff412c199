"""``image_gen``: text-to-image generation with VQGAN image codes (official ``tasks/mm_tasks/image_gen.py``,
docs/tasks.md 2.6).

Data: ``image_gen`` TSVs ``(uniq_id, code, caption)``, see ``data_utils/image_gen_dataset.py``. The
encoder reads `` what is the complete image? caption: {caption}`` (no image: a zero placeholder with
``patch_masks`` False); the decoder emits ``N = (code_image_size / vqgan_factor) ** 2`` ``<code_i>``
tokens + EOS at image positions (``code_masks`` True). The model's ``--code-image-size`` is shared with
the task, and its code positions assume a factor-8 VQGAN (``code_image_size // 8`` codes per side).

Training: ``--criterion adjust_label_smoothed_cross_entropy``; when the criterion has no
``--constraint-range`` the task sets it to the code tokens in use
(``[code_start, code_start + code_vocab_size)``; ``code_vocab_size`` defaults to the VQGAN's codebook).

Generation (validation, ``ofa-evaluate``, ``ofa-predict``): sampling (``--sampling-topk``,
``--sampling-topp``, ``--temperature``), ``--sampling-times`` samples per caption ranked by their
mean log-probability, exactly N code tokens constrained to the code range (``TokenRange``), then
decoded by the VQGAN of ``--vqgan-path`` into images; with ``--gen-images-path`` the PNGs are
written (atomically) as ``{uniq_id}.png`` (best sample) and ``{uniq_id}_{j}.png`` (others).
``--sampling-seed`` makes the draws reproducible (per batch; ``-1``: the global RNG).

Metrics: ``code_acc`` (the score: teacher-forced arg-max accuracy of the reference codes, argmax over
the code range), ``code_nll`` (nats per reference code) and ``sample_logprob`` (mean log-probability
of the best sample). What the generated images show is judged outside the task, from the PNGs of
``--gen-images-path`` and the records of ``{split}_predict.json`` (``uniq_id``, ``caption``, ``image``).

Inference (``ofa.inference_model``; no input image: ``text`` is the caption, a list of captions a batch,
``vqgan_path=`` the VQGAN): sampled image codes decoded into ``{"caption", "images": [PIL] (best first),
"codes", "logprob" (the best sample's summed code and EOS log-probabilities, not length-normalised),
"prob" (its exp; it underflows to 0 for large images), "score" (the best sample's mean log-probability,
which ranks the samples), "scores" (every sample's)}``, plus ``"paths"`` when ``out=`` names a PNG to
write. Sampling draws depend on the batch, so a batch does not repeat single calls' images.
"""
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.tasks import register_task

from ofa.criterions.losses import mask_logits
from ofa.data_utils.image_gen_dataset import ImageGenDataConfig, ImageGenDataset
from ofa.generate import TokenRange
from ofa.inference import InferenceSpec, hypothesis_scores, need_text, recording_generator, register_inference
from ofa.io_utils import save_pngs
from ofa.tasks.ofa_task import OFATask, OFATaskConfig

logger = logging.getLogger(__name__)


@dataclass
class ImageGenConfig(OFATaskConfig):
    patch_image_size: int = field(
        default=64, metadata={"help": "side of the zero placeholder image (masked out: any size gives the same outputs)"})
    max_src_length: int = field(default=64, metadata={"help": "max caption words"})
    code_image_size: int = field(default=256, metadata={"help": "image side whose codes are generated"})
    vqgan_factor: int = field(default=8, metadata={"help": "VQGAN downsampling: (code_image_size / f)^2 codes"})
    code_vocab_size: int = field(
        default=0, metadata={"help": "codes in use; 0: the VQGAN's codebook size, else --code-dict-size"})
    vqgan_path: Optional[str] = field(
        default=None, metadata={"help": "VQGAN checkpoint (model.pt of ofa-vqgan, official last.ckpt) or its folder"})
    vqgan_config_path: Optional[str] = field(default=None, metadata={"help": "taming model.yaml (official ckpt)"})
    sampling_topk: int = field(default=256, metadata={"help": "sample among the k most likely codes (-1: off)"})
    sampling_topp: float = field(default=-1.0, metadata={"help": "nucleus sampling mass (-1: off)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    sampling_times: int = field(default=1, metadata={"help": "samples per caption (best first by mean log-prob)"})
    sampling_seed: int = field(default=1, metadata={"help": "seed of each batch's draws (-1: the global RNG)"})
    gen_images_path: Optional[str] = field(default=None, metadata={"help": "write the generated PNGs here"})
    eval_generate: bool = field(
        default=True, metadata={"help": "generate images in validation (off: teacher-forced code metrics only)"})


@register_task("image_gen", dataclass=ImageGenConfig)
class ImageGenTask(OFATask):
    dataset_cls = ImageGenDataset
    schema = "image_gen"
    metric_name = "code_acc"

    def __init__(self, cfg: ImageGenConfig, tokenizer):
        super().__init__(cfg, tokenizer)
        if cfg.code_image_size % cfg.vqgan_factor:
            raise ValueError(f"--code-image-size {cfg.code_image_size} is not a multiple of --vqgan-factor "
                             f"{cfg.vqgan_factor}")
        self.grid = cfg.code_image_size // cfg.vqgan_factor
        self.num_codes = self.grid * self.grid
        self._vqgan = None
        size = cfg.code_vocab_size
        if size <= 0:
            size = self.vqgan.n_embed if cfg.vqgan_path else self.vocab.code_dict_size
        if size > self.vocab.code_dict_size:
            raise ValueError(f"{size} codes in use but the dictionary has {self.vocab.code_dict_size} <code_i> "
                             f"tokens (--code-dict-size)")
        self.code_vocab_size = size
        self.code_range = (self.vocab.code_start, self.vocab.code_start + size)

    # ---------------------------------------------------------------- helpers
    @property
    def vqgan(self):
        """The frozen VQGAN of ``--vqgan-path`` (loaded on first use); ``None`` without one."""
        if self._vqgan is None and self.cfg.vqgan_path:
            from ofa.vqgan import find_vqgan, load_vqgan

            path, yaml = find_vqgan(self.cfg.vqgan_path)
            self._vqgan = load_vqgan(path, self.cfg.vqgan_config_path or yaml).eval()
            if self._vqgan.factor != self.cfg.vqgan_factor:
                raise ValueError(f"the VQGAN at {path} has factor {self._vqgan.factor}, --vqgan-factor is "
                                 f"{self.cfg.vqgan_factor}")
        return self._vqgan

    def data_config(self) -> ImageGenDataConfig:
        base = super().data_config()
        return ImageGenDataConfig(**base.__dict__, code_image_size=self.cfg.code_image_size,
                                  vqgan_factor=self.cfg.vqgan_factor, code_vocab_size=self.code_vocab_size)

    # ---------------------------------------------------------------- model, criterion, generator
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        window = getattr(getattr(model, "decoder", None), "cfg", None)
        if window is not None and window.code_image_size // 8 != self.grid:
            raise ValueError(f"the model's code positions cover {window.code_image_size // 8}^2 codes "
                             f"(--code-image-size {window.code_image_size} / 8) but the task generates "
                             f"{self.grid}^2: use a factor-8 VQGAN and the same --code-image-size")
        return model

    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if hasattr(criterion, "constraint_range") and criterion.constraint_range is None:
            criterion.constraint_range = self.code_range
            logger.info(f"image_gen: criterion constraint range = code tokens {self.code_range}")
        return criterion

    def generator_kwargs(self) -> Dict[str, Any]:
        c = self.cfg
        return dict(beam_size=c.sampling_times, max_len_a=0.0, max_len_b=self.num_codes, min_len=self.num_codes,
                    constraint_range=TokenRange(*self.code_range), gen_code=True, sampling=True,
                    sampling_topk=c.sampling_topk, sampling_topp=c.sampling_topp, temperature=c.temperature,
                    normalize_scores=True, len_penalty=1.0)

    # ---------------------------------------------------------------- inference
    def generate_codes(self, model, sample, generator=None) -> List[List[Dict[str, Any]]]:
        """Per sample, its hypotheses (best first): ``{"codes": LongTensor [N] (0-based), "score": float}``."""
        gen = generator or self.generator
        net = self.net_input_for_generation(sample)
        seed = self.cfg.sampling_seed
        if seed < 0:
            hyps = gen.generate([model], net)
        else:
            device = sample["net_input"]["src_tokens"].device
            devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed * 1_000_003 + int(sample["id"][0]))
                hyps = gen.generate([model], net)
        out = []
        for per in hyps:
            rows = []
            for h in per:
                toks = h["tokens"][:-1]  # drop EOS
                if toks.numel() != self.num_codes or bool(toks.lt(self.code_range[0]).any()) \
                        or bool(toks.ge(self.code_range[1]).any()):
                    raise RuntimeError(f"generated {toks.numel()} tokens outside the code range; "
                                       f"expected {self.num_codes} codes")
                rows.append({"codes": (toks - self.code_range[0]).cpu(), "score": float(h["score"])})
            out.append(rows)
        return out

    def decode_images(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``[B, N]`` -> images ``[B, 3, S, S]`` in [-1, 1] (S = code_image_size); needs ``--vqgan-path``."""
        if self.vqgan is None:
            raise ValueError("decoding codes into images needs --vqgan-path")
        return self.vqgan.decode(codes.view(-1, self.grid, self.grid).to(next(self.vqgan.parameters()).device))

    def teacher_forced(self, model, sample) -> Dict[str, List[Optional[float]]]:
        """Per sample: arg-max accuracy and mean NLL of the reference codes (``None`` without codes)."""
        n = len(sample["uniq_ids"])
        if sample.get("codes") is None:
            return {"code_acc": [None] * n, "code_nll": [None] * n}
        logits = model(**sample["net_input"])[0]
        lprobs = F.log_softmax(mask_logits(logits.float(), None, self.code_range), dim=-1)
        target = sample["target"]
        is_code = target.ge(self.code_range[0]) & target.lt(self.code_range[1])
        tok_lp = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        correct = lprobs.argmax(-1).eq(target) & is_code
        count = is_code.sum(1).clamp(min=1).float()
        acc = (correct.sum(1).float() / count).tolist()
        nll = (-(tok_lp * is_code).sum(1) / count).tolist()
        return {"code_acc": acc, "code_nll": nll}

    def inference(self, model, sample) -> List[Dict[str, Any]]:
        """One dict per sample: ``uniq_id``, ``caption``, ``codes`` ``[S, N]``, ``scores`` ``[S]``,
        ``images`` (PIL, best first, with a VQGAN), ``paths`` (with ``--gen-images-path``), ``code_acc``,
        and ``code_nll``."""
        tf = self.teacher_forced(model, sample)
        preds = [{"uniq_id": uid, "caption": cap, "code_acc": a, "code_nll": nl, "codes": None, "scores": [],
                  "images": [], "paths": []}
                 for uid, cap, a, nl in zip(sample["uniq_ids"], sample["captions"], tf["code_acc"], tf["code_nll"])]
        if not self.cfg.eval_generate:
            return preds
        hyps = self.generate_codes(model, sample)
        for p, per in zip(preds, hyps):
            p["codes"] = torch.stack([h["codes"] for h in per])
            p["scores"] = [h["score"] for h in per]
        if self.vqgan is None:
            return preds
        from ofa.vqgan.data import to_pil

        for p in preds:
            images = self.decode_images(p["codes"])
            p["images"] = [to_pil(img) for img in images]
            if self.cfg.gen_images_path:
                p["paths"] = self.save_images(p["images"], p["uniq_id"], self.cfg.gen_images_path)
        return preds

    @staticmethod
    def save_images(images, uniq_id, folder: str) -> List[str]:
        """Write ``{id}.png`` (first) and ``{id}_{j}.png`` atomically (the id made file-name safe); returns
        the paths."""
        return save_pngs(images, os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]", "_", str(uniq_id)) + ".png"))

    # ---------------------------------------------------------------- metrics
    def score(self, predictions, sample) -> List[float]:
        return [p["code_acc"] if p["code_acc"] is not None else 0.0 for p in predictions]

    def log_extra(self, predictions, sample, keep, logging_output):
        for p, k in zip(predictions, keep):
            if not k:
                continue
            if p["code_nll"] is not None:
                logging_output["_nll_sum"] = logging_output.get("_nll_sum", 0.0) + p["code_nll"]
                logging_output["_nll_cnt"] = logging_output.get("_nll_cnt", 0) + 1

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)

        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        if total("_nll_cnt") > 0:
            metrics.log_scalar("_nll_sum", total("_nll_sum"))
            metrics.log_scalar("_nll_cnt", total("_nll_cnt"))
            metrics.log_derived("code_nll", lambda m: round(m["_nll_sum"].sum / m["_nll_cnt"].sum, 4))

    def corpus_metrics(self, predictions, refs) -> Dict[str, float]:
        out: Dict[str, float] = {}
        nll = [p["code_nll"] for p in predictions if p["code_nll"] is not None]
        if nll:
            out["code_nll"] = sum(nll) / len(nll)
        scores = [p["scores"][0] for p in predictions if p["scores"]]
        if scores:
            out["sample_logprob"] = sum(scores) / len(scores)
        return out

    def prediction_records(self, predictions, sample) -> List[Dict[str, Any]]:
        recs = []
        for p in predictions:
            rec = {"uniq_id": p["uniq_id"], "caption": p["caption"], "code_acc": p["code_acc"],
                   "code_nll": p["code_nll"]}
            if p["codes"] is not None:
                rec["codes"] = [int(c) for c in p["codes"][0]]
                rec["score"] = p["scores"][0]
            if p["paths"]:
                rec["image"] = p["paths"][0]
            recs.append(rec)
        return recs


# ---------------------------------------------------------------------------------------- inference
def _row(image, size, text, premise):
    # no image; an empty code column (generation from the caption alone)
    return {"uniq_id": "0", "code": "", "caption": need_text("image_gen", text, "the caption")}


def _predict(task_name, task, model, sample, sizes, gen_over) -> List[Dict[str, Any]]:
    recorder = recording_generator(task, model, gen_over)  # keeps the hypotheses' positional scores
    per_sample = task.generate_codes(model, sample, recorder)
    from ofa.vqgan.data import to_pil

    results = []
    for caption, hyps, raw in zip(sample["captions"], per_sample, recorder.hyps):
        codes = torch.stack([h["codes"] for h in hyps])  # [S, N]
        images = [to_pil(img) for img in task.decode_images(codes)]
        results.append({"caption": caption, "images": images, "codes": codes.tolist(),
                        **hypothesis_scores(raw[0]), "scores": [h["score"] for h in hyps]})
    return results


def _lines(r: Dict[str, Any]) -> List[str]:
    return [f"caption: {r['caption']}", f"logprob: {r['logprob']:.4f}  (prob {r['prob']:.4g})"] + \
        [f"image: {p}" for p in r.get("paths", [])]


register_inference("image_gen", InferenceSpec(_row, _predict, _lines,
                                              text=lambda r: f"image for '{r['caption']}' (logprob {r['logprob']:.2f})",
                                              aliases=("text_to_image", "generation"), needs_image=False))
