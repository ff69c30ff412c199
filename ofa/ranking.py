"""Image-text matching scores: rank N candidate texts for an image, or N images for a text, by the model's
probability of answering " yes" to the pretraining ITM prompt ``' does the image describe " {text} "?'``.

    ofa.rank("ofa_base.pt", "dog.jpg", texts=["a dog on grass", "a red car"], bpe_dir="ofa_bpe")
    ofa.rank("ofa_base.pt", images=["a.jpg", "b.jpg"], text="a dog on grass", bpe_dir="ofa_bpe")

The pairs go through the model ``batch_size`` at a time (one encoder pass per chunk and one teacher-forced
decoder pass over the answer's tokens). ``recall_at_k`` turns a score matrix into retrieval recall@K.
"""
from __future__ import annotations

import io
import math
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

ITM_PROMPT = ' does the image describe " {} "?'
ANSWER = " yes"
DEFAULT_IMAGE_SIZE = 384
DEFAULT_MAX_WORDS = 30


def recall_at_k(scores: torch.Tensor, positives: Sequence[Union[int, Sequence[int]]], ks=(1, 5, 10)) -> Dict[str, float]:
    """Retrieval recall@K: the share of queries (rows of ``scores [Q, C]``, higher is better) with a positive
    candidate among their ``K`` best; ``positives[q]`` is one candidate index or several. Ties rank by index."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    order = torch.argsort(-scores, dim=1, stable=True)
    out = {}
    for k in ks:
        top = order[:, :k].tolist()
        hits = [bool(set(row) & ({p} if isinstance(p, int) else set(p))) for row, p in zip(top, positives)]
        out[f"R@{k}"] = sum(hits) / max(len(hits), 1)
    return out


def itm_source(tokenizer, text: str, max_words: int = DEFAULT_MAX_WORDS) -> torch.Tensor:
    """The encoder input of the ITM prompt for ``text`` (cleaned like captions: ``pre_caption``): ``[L]`` ids."""
    from ofa.data_utils.text import pre_caption

    return tokenizer.encode_line(ITM_PROMPT.format(pre_caption(text, max_words)))


@torch.no_grad()
def itm_logprobs(model, tokenizer, images: torch.Tensor, texts: Sequence[Union[str, torch.Tensor]],
                 batch_size: int = 16, max_words: int = DEFAULT_MAX_WORDS) -> torch.Tensor:
    """``log p(" yes" | image, ITM prompt of text)`` for every pair ``(images[i], texts[i])``: float64 ``[N]``.

    Args:
        model: an ``OFAModel`` (eval mode is set).
        tokenizer: its tokenizer (``ofa.tokenizer.load_tokenizer``).
        images: ``[N, 3, S, S]`` preprocessed (``ofa.data_utils.transforms.square_resize``).
        texts: ``N`` texts, or their ``itm_source`` ids (a caller scoring one text against many images
            encodes it once).
    """
    from fairseq.data.data_utils import collate_tokens

    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images for {len(texts)} texts")
    model.eval()
    d = tokenizer.dictionary
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    answer = tokenizer.encode(ANSWER).tolist()
    prev = torch.tensor([d.bos()] + answer[:-1], device=device)
    target = torch.tensor(answer, device=device)
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        lines = [t if isinstance(t, torch.Tensor) else itm_source(tokenizer, t, max_words) for t in chunk]
        src = collate_tokens(lines, d.pad()).to(device)  # right-padded [n, L]
        imgs = images[start:start + batch_size].to(device=device, dtype=dtype)
        logits, _ = model(src, src.ne(d.pad()).sum(1), prev.expand(len(chunk), -1), patch_images=imgs,
                          patch_masks=torch.ones(len(chunk), dtype=torch.bool, device=device))
        lp = F.log_softmax(logits.float(), dim=-1).gather(-1, target.expand(len(chunk), -1)[..., None])
        out.append(lp.squeeze(-1).double().sum(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _pixels(image, size: int) -> torch.Tensor:
    from PIL import Image

    from ofa.data_utils.transforms import square_resize
    from ofa.inference import _image_bytes

    raw, _ = _image_bytes(image)
    with Image.open(io.BytesIO(raw)) as img:
        return square_resize(img.convert("RGB"), size)


def rank(checkpoint, image=None, texts: Optional[Sequence[str]] = None, *, images: Optional[Sequence[Any]] = None,
         text: Optional[str] = None, bpe_dir: Optional[str] = None, batch_size: int = 16, device=None,
         patch_image_size: Optional[int] = None, max_words: int = DEFAULT_MAX_WORDS) -> List[Dict[str, Any]]:
    """Rank candidate texts for one image (``image`` + ``texts``) or candidate images for one text (``images`` +
    ``text``) by the yes-probability of the ITM prompt.

    Args:
        checkpoint: a path / published name / loaded handle, as ``ofa.inference_model`` takes.
        patch_image_size: the model's input size (default the checkpoint task's, else 384).

    Returns:
        the candidates best first: ``{"index": position in the input list, "text" or "image": the candidate,
        "logprob": log p(yes), "prob": p(yes)}``.
    """
    from ofa.errors import ConfigError
    from ofa.inference import _tokenizer_dir, load, resolve_device
    from ofa.tokenizer import load_tokenizer

    if (texts is None) == (images is None):
        raise ConfigError("rank: give an image and texts=[...] (rank texts), or images=[...] and text= (rank images)")
    if texts is not None and (image is None or not texts):
        raise ConfigError("rank: texts=[...] needs an image and at least one text")
    if images is not None and (text is None or not images):
        raise ConfigError("rank: images=[...] needs text= and at least one image")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    handle = load(checkpoint, bpe_dir=bpe_dir)
    tokenizer = load_tokenizer(_tokenizer_dir(handle))
    size = patch_image_size or int(handle.info.task.get("patch_image_size") or DEFAULT_IMAGE_SIZE)
    model = handle.model.to(resolve_device(device))
    if texts is not None:
        pixels = _pixels(image, size)[None].expand(len(texts), -1, -1, -1)
        pair_texts, key, cands = list(texts), "text", list(texts)
    else:
        pixels = torch.stack([_pixels(im, size) for im in images])
        pair_texts, key, cands = [text] * len(images), "image", list(images)
    lps = itm_logprobs(model, tokenizer, pixels, pair_texts, batch_size, max_words).tolist()
    order = sorted(range(len(cands)), key=lambda i: (-lps[i], i))
    return [{"index": i, key: cands[i], "logprob": lps[i], "prob": math.exp(lps[i])} for i in order]
