"""Beam search over an ONNX export with numpy, step for step the project's ``SequenceGenerator``.

The same rules, so that the hypotheses are the same token for token:

- ``max_len = int(max_len_a * src_len + max_len_b)`` with ``src_len`` the padded source length;
- per step: constraints on the logits (after log-softmax in zero-shot mode), the forced prompt
  (``prefix_tokens``, with the official generator's quirks), ``min_len``, NaN / pad / unk handling, EOS only
  at ``max_len``, n-gram blocking, then ``2 x beam`` candidates; EOS candidates among the top ``beam`` are
  finished with score ``sum(logp) / len ** len_penalty`` (``normalize_scores``); a sample stops once it has
  ``beam`` finished hypotheses;
- under an answer trie with fewer complete answers ``K`` than the beam, the beam is ``K``.

The first step (BOS), and under a trie every prompt position all samples force, is decoded once per sample
and its cache then copied to the sample's beams (the same numbers as decoding every hypothesis row).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from ofa_runtime.constraints import NEG_INF, AnswerTrie, NGramBlocker, TokenRange
from ofa_runtime.model import EncoderState, OnnxModel

SETTINGS = ("beam_size", "max_len_a", "max_len_b", "min_len", "normalize_scores", "len_penalty", "unk_penalty",
            "temperature", "no_repeat_ngram_size", "constraint_range", "constraint_trie", "zero_shot")


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (``-inf`` entries stay ``-inf``)."""
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0))
    shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _topk(x: np.ndarray, k: int, largest: bool = True):
    """Values and indices of the ``k`` largest (smallest) entries of each row, best first; among equal values
    the lower index first. A partial selection, then a sort of the ``k`` picked (a full sort of a
    ``beam x 59,457`` row at every step cost more than the decoder itself)."""
    key = -x if largest else x
    if x.shape[1] <= 4 * k:
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(x, order, axis=1), order
    part = np.argpartition(key, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(key, part, axis=1).max(axis=1)
    order = np.empty((x.shape[0], k), dtype=np.int64)
    for r in range(x.shape[0]):
        below = np.nonzero(key[r] < kth[r])[0]
        ties = np.nonzero(key[r] == kth[r])[0][: k - len(below)]  # the lowest indices among equal values
        picked = np.concatenate([below, ties])
        order[r] = picked[np.lexsort((picked, key[r, picked]))]
    return np.take_along_axis(x, order, axis=1), order


class BeamSearch:
    """Beam search with the settings of a ``SequenceGenerator`` (``generation.json`` of an export).

    Args:
        model: the ``OnnxModel``.
        beam_size, max_len_a, max_len_b, min_len, normalize_scores, len_penalty, unk_penalty, temperature,
        no_repeat_ngram_size: as ``ofa.generate.SequenceGenerator``'s.
        constraint_range: ``[start, end)`` of the allowed ids besides 0-3 (or ``"start,end"``).
        constraint_trie: candidate sequences ``[bos] + answer + [eos]`` (exclusive with the range).
        zero_shot: constraints after the log-softmax, the trie walked over the whole row.
    """

    def __init__(self, model: OnnxModel, beam_size: int = 5, max_len_a: float = 0.0, max_len_b: int = 200,
                 min_len: int = 1, normalize_scores: bool = True, len_penalty: float = 1.0, unk_penalty: float = 0.0,
                 temperature: float = 1.0, no_repeat_ngram_size: int = 0, constraint_range=None,
                 constraint_trie=None, zero_shot: bool = False):
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if constraint_range and constraint_trie is not None:
            raise ValueError("constraint_range and constraint_trie are mutually exclusive")
        self.model = model
        self.vocab_size = model.vocab_size
        self.bos, self.pad, self.eos, self.unk = model.bos, model.pad, model.eos, model.unk
        self.beam_size = min(int(beam_size), self.vocab_size - 1)
        self.max_len_a, self.max_len_b, self.min_len = max_len_a, max_len_b, min_len
        self.normalize_scores, self.len_penalty = normalize_scores, len_penalty
        self.unk_penalty, self.temperature, self.zero_shot = unk_penalty, temperature, zero_shot
        self.constraints: List = []
        if constraint_range:
            if isinstance(constraint_range, str):
                constraint_range = [int(v) for v in constraint_range.split(",")]
            self.constraints.append(TokenRange(*constraint_range))
        self.trie = None
        if constraint_trie is not None:
            self.trie = constraint_trie if isinstance(constraint_trie, AnswerTrie) else \
                AnswerTrie(constraint_trie, self.eos, zero_shot)
            self.constraints.append(self.trie)
        self.ngram_blocker = NGramBlocker(no_repeat_ngram_size) if no_repeat_ngram_size > 0 else None

    @classmethod
    def from_export(cls, model: OnnxModel, **overrides) -> "BeamSearch":
        """The export's ``generation.json`` settings, with ``overrides`` on top (unknown names are an error)."""
        unknown = sorted(set(overrides) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown beam-search setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
        settings = {k: v for k, v in model.generation.items() if k in SETTINGS}
        settings.update(overrides)
        return cls(model, **settings)

    # ------------------------------------------------------------------ one step's scores
    def _lprobs(self, logits: np.ndarray, tokens: np.ndarray, prefix_lens: Optional[np.ndarray]) -> np.ndarray:
        logits = logits.astype(np.float32) / np.float32(self.temperature)
        if not self.zero_shot:
            for c in self.constraints:
                logits = c(logits, tokens, prefix_lens)
        lprobs = log_softmax(logits)
        if self.zero_shot:
            for c in self.constraints:
                lprobs = c(lprobs, tokens, prefix_lens)
        return lprobs

    def _prefill_len(self, prefix_lens: Optional[np.ndarray], max_len: int) -> int:
        """Steps decoded once per sample: BOS, and under a trie the prompt positions every row forces."""
        if prefix_lens is None or self.trie is None:
            return 1
        n = min(int(prefix_lens.min()), max_len)
        return n if n > 1 else 1

    # ------------------------------------------------------------------ the search
    def generate(self, src_tokens: np.ndarray, patch_images: np.ndarray,
                 prefix_tokens: Optional[np.ndarray] = None,
                 patch_masks: Optional[np.ndarray] = None) -> List[List[Dict[str, Any]]]:
        """Hypotheses of every sample, best first: ``{"tokens": int64 [len] ending with EOS (no BOS), "score",
        "positional_scores": float32 [len]}``.

        Args:
            src_tokens: ``[B, L]`` int64, right-padded.
            patch_images: ``[B, 3, S, S]`` float32, normalised as the export's ``image_mean`` / ``image_std``.
            prefix_tokens: ``[B, P]`` int64 prompt tokens to force (right-padded), or ``None``.
            patch_masks: bool ``[B]``, False for samples without an image (default all True).
        """
        src_tokens = np.asarray(src_tokens, dtype=np.int64)
        bsz, src_len = src_tokens.shape
        beam = self.beam_size
        if self.trie is not None and 0 < self.trie.num_sequences < beam:
            beam = self.trie.num_sequences  # K answers: K beams hold every live answer prefix
        max_len = int(self.max_len_a * src_len + self.max_len_b)
        if self.min_len > max_len:
            raise ValueError(f"min_len {self.min_len} is larger than max_len {max_len}")
        model = self.model
        enc_sample = model.encode(src_tokens, patch_images, patch_masks)
        prefix_lens = None
        if prefix_tokens is not None:
            prefix_tokens = np.asarray(prefix_tokens, dtype=np.int64)
            prefix_lens = (prefix_tokens != self.pad).sum(1)
        all_prefix = prefix_tokens
        n_prefill = self._prefill_len(prefix_lens, max_len)
        cache_sample = model.empty_cache(bsz)
        pre_rows = np.arange(bsz * beam)  # current row -> its row when the search began
        enc: Optional[EncoderState] = None
        cache: List[np.ndarray] = []

        scores = np.zeros((bsz * beam, max_len + 1), np.float32)
        tokens = np.full((bsz * beam, max_len + 2), self.pad, np.int64)
        tokens[:, 0] = self.bos
        cands_to_ignore = np.zeros((bsz, beam), dtype=bool)
        finalized: List[List[Dict[str, Any]]] = [[] for _ in range(bsz)]
        finished = [False] * bsz
        remaining = bsz
        cand_size = 2 * beam
        bbsz_offsets = (np.arange(bsz) * beam)[:, None]
        cand_offsets = np.arange(cand_size)
        original_idx = np.arange(bsz)
        reorder: Optional[np.ndarray] = None

        for step in range(max_len + 1):
            if reorder is not None:
                if step <= n_prefill:  # the per-sample cache is copied out at step n_prefill
                    pre_rows = pre_rows[reorder]
                else:
                    cache = [c[reorder] for c in cache]
                    if len(reorder) != enc.rows:  # finished samples left: keep the others' rows
                        enc = enc.take(reorder)
            if step < n_prefill:  # every live row of a sample holds the same prefix: decode once per sample
                if step == 0:
                    step_tok = np.full((enc_sample.rows, 1), self.bos, np.int64)
                else:  # the prompt token every row of the sample was forced to at the previous step
                    step_tok = all_prefix[:, step - 1:step]
                logits_s, cache_sample = model.step(step_tok, enc_sample, cache_sample)
                logits = logits_s[pre_rows // beam]
            else:
                if step == n_prefill:  # leave the shared prefix: one cache row per hypothesis from here on
                    enc = enc_sample.take(pre_rows // beam)
                    cache = [c[pre_rows // beam] for c in cache_sample]
                logits, cache = model.step(tokens[:, step:step + 1], enc, cache)
            row_prefix = np.repeat(prefix_lens, beam) if prefix_lens is not None else None
            lprobs = self._lprobs(logits, tokens[:, :step + 1], row_prefix)

            if prefix_tokens is not None and step < prefix_tokens.shape[1] and step < max_len:
                lprobs = self._force_prefix(step, lprobs, scores, tokens, prefix_tokens, beam)
            elif step < self.min_len:
                lprobs[:, self.eos] = NEG_INF
            lprobs[np.isnan(lprobs)] = NEG_INF
            lprobs[:, self.pad] = NEG_INF
            lprobs[:, self.unk] -= np.float32(self.unk_penalty)
            if step >= max_len:
                lprobs[:, :self.eos] = NEG_INF
                lprobs[:, self.eos + 1:] = NEG_INF
            if self.ngram_blocker is not None:
                lprobs = self.ngram_blocker(lprobs, tokens[:, :step + 1])

            cand_scores, cand_indices, cand_beams = self._search_step(step, lprobs.reshape(bsz, -1, self.vocab_size),
                                                                      scores.reshape(bsz, beam, -1), beam)
            cand_bbsz = cand_beams + bbsz_offsets
            eos_mask = (cand_indices == self.eos) & (cand_scores != NEG_INF)
            head = eos_mask[:, :beam]
            head[cands_to_ignore] = False
            eos_bbsz = cand_bbsz[:, :beam][head]
            done_rows: List[int] = []
            if eos_bbsz.size > 0:
                eos_scores = cand_scores[:, :beam][head]
                done_rows = self._finalize(step, eos_bbsz, eos_scores, tokens, scores, finalized, finished,
                                           original_idx, beam, max_len)
                remaining -= len(done_rows)
            if remaining == 0:
                break

            if done_rows:  # drop finished samples from the batch
                keep = np.ones(bsz, dtype=bool)
                keep[done_rows] = False
                batch_idxs = np.nonzero(keep)[0]
                bsz = len(batch_idxs)
                eos_mask, cand_beams = eos_mask[batch_idxs], cand_beams[batch_idxs]
                bbsz_offsets = (np.arange(bsz) * beam)[:, None]
                cand_bbsz = cand_beams + bbsz_offsets
                cand_scores, cand_indices = cand_scores[batch_idxs], cand_indices[batch_idxs]
                if prefix_tokens is not None:
                    prefix_tokens, prefix_lens = prefix_tokens[batch_idxs], prefix_lens[batch_idxs]
                cands_to_ignore = cands_to_ignore[batch_idxs]
                scores = scores.reshape(-1, beam, scores.shape[1])[batch_idxs].reshape(bsz * beam, -1)
                tokens = tokens.reshape(-1, beam, tokens.shape[1])[batch_idxs].reshape(bsz * beam, -1)
                original_idx = original_idx[batch_idxs]
                row_map = (batch_idxs[:, None] * beam + np.arange(beam)).reshape(-1)
            else:
                row_map = None

            eos_mask[:, :beam] = cands_to_ignore | eos_mask[:, :beam]
            active_mask = eos_mask.astype(np.int64) * cand_size + cand_offsets[:eos_mask.shape[1]]
            new_ignore, active_hypos = _topk(active_mask, beam, largest=False)
            cands_to_ignore = (new_ignore >= cand_size)[:, :beam]
            active_bbsz = np.take_along_axis(cand_bbsz, active_hypos, axis=1).reshape(-1)
            tokens[:, :step + 1] = tokens[active_bbsz, :step + 1]
            tokens.reshape(bsz, beam, -1)[:, :, step + 1] = np.take_along_axis(cand_indices, active_hypos, axis=1)
            if step > 0:
                scores[:, :step] = scores[active_bbsz, :step]
            scores.reshape(bsz, beam, -1)[:, :, step] = np.take_along_axis(cand_scores, active_hypos, axis=1)
            reorder = active_bbsz if row_map is None else row_map[active_bbsz]

        return [sorted(h, key=lambda x: x["score"], reverse=True) for h in finalized]

    __call__ = generate

    # ------------------------------------------------------------------ helpers
    def _search_step(self, step: int, lprobs: np.ndarray, scores: np.ndarray, beam: int):
        bsz, _, vocab = lprobs.shape
        if step == 0:
            lprobs = lprobs[:, ::beam, :]
        else:
            lprobs = lprobs + scores[:, :, step - 1][:, :, None]
        flat = lprobs.reshape(bsz, -1)
        values, idx = _topk(flat, min(beam * 2, flat.shape[1] - 1))
        return values, idx % vocab, idx // vocab

    def _force_prefix(self, step, lprobs, scores, tokens, prefix_tokens, beam):
        """Force each row's prompt token at this step (the official generator's rule and quirks)."""
        toks = np.repeat(prefix_tokens[:, step], beam)
        rows = np.arange(len(toks))
        tok_lprobs = lprobs[rows, toks]
        forced = toks != self.pad
        if self.trie is None:
            lprobs[forced] = tok_lprobs.min() - np.float32(1)  # lowered, not removed, without a trie
        else:
            lprobs[forced] = NEG_INF
        lprobs[rows[forced], toks[forced]] = tok_lprobs[forced]
        eos_rows = toks == self.eos
        if eos_rows.any():  # the prompt ends here: every beam becomes a copy of the first
            sent = eos_rows.reshape(-1, beam)[:, 0]
            for t in (tokens, scores, lprobs):
                view = t.reshape(-1, beam, t.shape[-1])
                view[sent] = view[sent][:, :1, :]
        return lprobs

    def _finalize(self, step, bbsz_idx, eos_scores, tokens, scores, finalized, finished, original_idx,
                  beam, max_len) -> List[int]:
        hyp_tokens = tokens[bbsz_idx, 1:step + 2].copy()
        hyp_tokens[:, step] = self.eos
        pos_scores = scores[bbsz_idx, :step + 1].copy()
        pos_scores[:, step] = eos_scores
        pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]
        if self.normalize_scores:
            eos_scores = eos_scores / np.float32((step + 1) ** self.len_penalty)
        batch_rows = (bbsz_idx // beam).tolist()
        for i, row in enumerate(batch_rows):
            sent = int(original_idx[row])
            if len(finalized[sent]) < beam:
                finalized[sent].append({"tokens": hyp_tokens[i], "score": float(eos_scores[i]),
                                        "positional_scores": pos_scores[i]})
        done = []
        for row in sorted(set(batch_rows)):
            sent = int(original_idx[row])
            if not finished[sent] and (len(finalized[sent]) == beam or step == max_len):
                finished[sent] = True
                done.append(row)
        return done


def hypothesis_logprob(hyp: Dict[str, Any]) -> float:
    """The summed token log-probability of a hypothesis (EOS included), as ``ofa-predict`` reports it."""
    return float(np.asarray(hyp["positional_scores"], dtype=np.float64).sum())
