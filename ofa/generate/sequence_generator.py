"""Beam search and sampling for OFA with batched constraints.

Behaviour follows the official ``models/sequence_generator.py`` (a fairseq generator variant),
so generations equal the official ones token for token (architecture.md 8):

- decoding starts from BOS; ``max_len = int(max_len_a * src_len + max_len_b)`` with ``src_len`` the
  padded text length, not capped by the model's positions;
- per step: constraints on the logits (``TokenRange`` / ``TrieConstraint``; after log-softmax in
  zero-shot mode), prompt forcing (``prefix_tokens``), ``min_len``, NaN/pad/unk handling, ``gen_code``
  (ids 0-3 banned before ``max_len``), EOS-only at ``max_len``, n-gram blocking, then the search step;
- 2 x beam candidates per sentence; EOS candidates among the top ``beam`` are finalised with score
  ``sum(logp) / len ** len_penalty``; a sentence stops once it has ``beam`` finished hypotheses.

``generate(models, sample)`` returns, for every sample, a list of hypotheses (best first), each a dict
with ``tokens`` (ending with EOS, without BOS), ``score``, ``positional_scores``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ofa.generate.constraints import NGramBlocker, TokenRange, TrieConstraint
from ofa.generate.search import BeamSearch, Sampling
from ofa.generate.trie import Trie


def _log_softmax_into(logits: Tensor) -> Tensor:
    """``log_softmax`` over the last dim, written over ``logits`` where it is a contiguous tensor outside
    autograd (the step's fresh ``[N, V]`` logits: no second vocabulary-sized buffer per step; the values are
    the same as out of place)."""
    if logits.is_contiguous() and not logits.requires_grad:
        return torch.log_softmax(logits, dim=-1, out=logits)
    return F.log_softmax(logits, dim=-1)


class SequenceGenerator:
    """
    Args:
        models: one model or an ensemble (log-probabilities averaged in probability space).
        tgt_dict: the target dictionary.
        beam_size: hypotheses kept per sample (samples drawn per input when sampling).
        max_len_a, max_len_b: ``max_len = int(a * src_len + b)``.
        min_len: EOS is banned before this many tokens.
        normalize_scores / len_penalty: final score ``sum(logp) / len ** len_penalty``.
        unk_penalty: subtracted from ``<unk>`` log-probabilities.
        temperature: logits are divided by it.
        no_repeat_ngram_size: block repeated n-grams (0: off).
        constraint_range: ``"start,end"``: only ids 0-3 and ``[start, end)``.
        constraint_trie: a ``Trie`` of allowed sequences (exclusive with ``constraint_range``).
        logits_processors: more constraints, applied after those two, each a callable
            ``(scores [N, V], tokens [N, t], prefix_lens [N] | None) -> scores`` (``constraints.py``; e.g. the
            detection task's ``DetectionGrammar``), row by row: at prefilled steps (BOS, a prompt forced under
            a trie) the rows are one per sample, not one per hypothesis.
        zero_shot: apply constraints after log-softmax and walk the trie with the whole row.
        gen_code: image-code generation: ``code_masks`` on, ids 0-3 banned until ``max_len``.
        sampling, sampling_topk, sampling_topp: sample instead of beam search.
        use_cache: incremental decoding with a key/value cache; ``False`` recomputes the whole
            prefix every step (same outputs, slower; kept for benchmarks and checks).
        prefill_prompt: decode the first step (BOS) once per sample instead of once per hypothesis, its
            cache (the cross-attention keys and values included) then expanded to the beams; under a trie
            constraint also every prompt position that all samples force, in the same one decoder call
            (same outputs; ``False`` steps through them one hypothesis row at a time, for benchmarks).
    """

    def __init__(
        self,
        models,
        tgt_dict,
        beam_size: int = 5,
        max_len_a: float = 0.0,
        max_len_b: int = 200,
        min_len: int = 1,
        normalize_scores: bool = True,
        len_penalty: float = 1.0,
        unk_penalty: float = 0.0,
        temperature: float = 1.0,
        no_repeat_ngram_size: int = 0,
        constraint_range: Optional[str] = None,
        constraint_trie: Optional[Trie] = None,
        logits_processors: Sequence = (),
        zero_shot: bool = False,
        gen_code: bool = False,
        sampling: bool = False,
        sampling_topk: int = -1,
        sampling_topp: float = -1.0,
        use_cache: bool = True,
        prefill_prompt: bool = True,
        **unused,
    ):
        self.models = list(models) if isinstance(models, (list, tuple)) else [models]
        self.tgt_dict = tgt_dict
        self.bos, self.pad, self.eos, self.unk = tgt_dict.bos(), tgt_dict.pad(), tgt_dict.eos(), tgt_dict.unk()
        self.vocab_size = len(tgt_dict)
        self.beam_size = min(beam_size, self.vocab_size - 1)
        self.max_len_a, self.max_len_b, self.min_len = max_len_a, max_len_b, min_len
        self.normalize_scores, self.len_penalty = normalize_scores, len_penalty
        self.unk_penalty = unk_penalty
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature
        if constraint_range and constraint_trie is not None:
            raise ValueError("constraint_range and constraint_trie are mutually exclusive")
        self.zero_shot = zero_shot
        self.constraints: List = []
        if constraint_range:
            self.constraints.append(
                constraint_range if isinstance(constraint_range, TokenRange) else TokenRange.parse(constraint_range)
            )
        self.constraint_trie = constraint_trie
        if constraint_trie is not None:
            self.constraints.append(TrieConstraint(constraint_trie, zero_shot=zero_shot))
        self.constraints.extend(logits_processors)
        self.ngram_blocker = NGramBlocker(no_repeat_ngram_size) if no_repeat_ngram_size > 0 else None
        self.gen_code = gen_code
        self.search = Sampling(sampling_topk, sampling_topp) if sampling else BeamSearch()
        self.use_cache = use_cache
        self.prefill_prompt = prefill_prompt

    # ------------------------------------------------------------------ model calls
    def _encode(self, net_input: Dict[str, Tensor]):
        kwargs = {k: v for k, v in net_input.items() if k not in ("prev_output_tokens",)}
        return [m.encoder(**kwargs) for m in self.models]

    def _decode_step(self, tokens: Tensor, encoder_outs, states, prefix_lens: Optional[Tensor],
                     prefilled: Optional[List[Tensor]] = None) -> Tensor:
        """Log-probabilities ``[N, V]`` of the next token for every row of ``tokens [N, t]``.

        ``prefilled``: per model, the decoder features ``[N, C]`` of this step when ``_prefill`` has
        already computed them (the decoder is then not called; the rest of the step is unchanged; the
        caller passes one row per sample and copies the result to the sample's hypotheses).
        """
        code_masks = torch.full((tokens.size(0),), self.gen_code, dtype=torch.bool, device=tokens.device)
        per_model = []
        for k, (model, enc, state) in enumerate(zip(self.models, encoder_outs, states)):
            if prefilled is not None:
                logits = model.decoder.output_layer(prefilled[k])
            else:
                logits, _ = model.decoder(tokens, code_masks=code_masks, encoder_out=enc,
                                          incremental_state=state if self.use_cache else None)
                logits = logits[:, -1, :]
            logits = logits.float()
            if self.temperature != 1.0:
                logits = logits / self.temperature
            if not self.zero_shot:
                for c in self.constraints:
                    logits = c(logits, tokens, prefix_lens)
            lprobs = _log_softmax_into(logits)
            if self.zero_shot:
                for c in self.constraints:
                    lprobs = c(lprobs, tokens, prefix_lens)
            per_model.append(lprobs)
        if len(per_model) == 1:
            return per_model[0]
        return torch.logsumexp(torch.stack(per_model), 0) - math.log(len(per_model))

    def _prefill_len(self, prefix_lens: Optional[Tensor], max_len: int) -> int:
        """Steps whose decoder features ``_prefill`` computes at once: the prompt positions forced in every
        row. Only under a trie constraint, where every token but the forced one is ``-inf``, so that each
        live hypothesis holds exactly the prompt (without it the official generator only lowers the
        other tokens and hypotheses may leave the prompt); 0 when there is nothing to gain."""
        if prefix_lens is None or not (self.use_cache and self.prefill_prompt) or self.constraint_trie is None:
            return 0
        n = min(int(prefix_lens.min()), max_len)
        return n if n > 1 else 0

    def _prefill(self, encoder_outs, states, prefix_tokens: Tensor, n: int, beam: int) -> List[Tensor]:
        """Run every model's decoder once over BOS + the first ``n - 1`` prompt tokens of each sample
        (``encoder_outs`` one row per sample), fill its cache with those ``n`` positions for all ``beam``
        rows of the sample, and return the features ``[B, n, C]``: row ``b``, position ``s`` is what step
        ``s`` of the search would compute for any live hypothesis of sample ``b`` (they all hold the prompt).
        One batched pass over ``B`` rows instead of ``n`` single-token steps over ``B x beam`` rows; with
        ``n == 1`` (BOS only) ``prefix_tokens`` may be ``None``."""
        enc = encoder_outs[0]["encoder_out"][0]  # [S, B, C]
        bsz = enc.size(1)
        inp = torch.full((bsz, 1), self.bos, dtype=torch.long, device=enc.device)
        if n > 1:
            inp = torch.cat([inp, prefix_tokens[:, : n - 1]], dim=1)
        code_masks = torch.full((bsz,), self.gen_code, dtype=torch.bool, device=inp.device)
        expand = torch.arange(bsz, device=inp.device).repeat_interleave(beam)
        feats = []
        for model, enc, state in zip(self.models, encoder_outs, states):
            x, _ = model.decoder(inp, code_masks=code_masks, encoder_out=enc, incremental_state=state,
                                 features_only=True)
            model.decoder.reorder_incremental_state_scripting(state, expand)
            feats.append(x)
        return feats

    def _reorder(self, encoder_outs, states, order: Tensor, rows_dropped: bool):
        """Reorder the decoder caches to the surviving hypotheses ``order``. The encoder output rows of a
        sample are copies of one another and ``order`` only moves rows within a sample, so the encoder
        output is gathered only when finished sentences left the batch (``rows_dropped``). An order that
        moves nothing (beam 1, sampling until a hypothesis ends) copies nothing."""
        if not rows_dropped and torch.equal(order, torch.arange(order.numel(), device=order.device)):
            return encoder_outs
        for model, state in zip(self.models, states):
            model.decoder.reorder_incremental_state_scripting(state, order)
        if not rows_dropped:
            return encoder_outs
        return [m.encoder.reorder_encoder_out(e, order) for m, e in zip(self.models, encoder_outs)]

    # ------------------------------------------------------------------ main loop
    @torch.no_grad()
    def generate(self, models=None, sample: Optional[Dict] = None, prefix_tokens: Optional[Tensor] = None,
                 **unused) -> List[List[Dict[str, Tensor]]]:
        """fairseq contract: ``generate(models, sample)``; ``models`` may be omitted (the constructor's)."""
        if sample is None and isinstance(models, dict):
            models, sample = None, models
        if models is not None:
            self.models = list(models) if isinstance(models, (list, tuple)) else [models]
        for m in self.models:
            m.eval()
        net_input = sample["net_input"]
        src_tokens = net_input["src_tokens"]
        bsz, src_len = src_tokens.shape[:2]
        beam = self.beam_size
        if (isinstance(self.search, BeamSearch) and self.constraint_trie is not None
                and 0 < self.constraint_trie.num_sequences < beam):
            # K < beam answers (entailment: yes / no / maybe): K beams already hold every live answer
            # prefix, so the hypotheses are the same, and the sentence stops once its K answers are
            # finished instead of stepping on to max_len for beam of them (entailment: 15x slower before)
            beam = self.constraint_trie.num_sequences
        max_len = int(self.max_len_a * src_len + self.max_len_b)
        if self.min_len > max_len:
            raise ValueError(f"min_len {self.min_len} is larger than max_len {max_len}")
        device = src_tokens.device

        encoder_outs = self._encode(net_input)
        states: List[Dict] = [{} for _ in self.models]
        prefix_lens = None
        if prefix_tokens is not None:
            prefix_lens = prefix_tokens.ne(self.pad).sum(1)
        # a prompt forced in every row is decoded in one pass (features per sample; see _prefill)
        n_prefill = self._prefill_len(prefix_lens, max_len) or int(self.use_cache and self.prefill_prompt)
        prefilled = self._prefill(encoder_outs, states, prefix_tokens, n_prefill, beam) if n_prefill else None
        pre_rows = torch.arange(bsz * beam, device=device)  # current row -> its row when the search began
        expand = torch.arange(bsz, device=device).repeat_interleave(beam)
        encoder_outs = [m.encoder.reorder_encoder_out(e, expand) for m, e in zip(self.models, encoder_outs)]

        scores = torch.zeros(bsz * beam, max_len + 1, device=device)
        tokens = torch.full((bsz * beam, max_len + 2), self.pad, dtype=torch.long, device=device)
        tokens[:, 0] = self.bos
        cands_to_ignore = torch.zeros(bsz, beam, dtype=torch.bool, device=device)
        finalized: List[List[Dict[str, Tensor]]] = [[] for _ in range(bsz)]
        finished = [False] * bsz
        remaining = bsz
        cand_size = 2 * beam
        bbsz_offsets = (torch.arange(bsz, device=device) * beam)[:, None]
        cand_offsets = torch.arange(cand_size, device=device)
        original_idx = torch.arange(bsz, device=device)  # current row -> sample index
        reorder: Optional[Tensor] = None
        rows_dropped = False

        for step in range(max_len + 1):
            if reorder is not None:
                encoder_outs = self._reorder(encoder_outs, states, reorder, rows_dropped)
                if prefilled is not None:
                    pre_rows = pre_rows[reorder]
            row_prefix = prefix_lens.repeat_interleave(beam) if prefix_lens is not None else None
            if prefilled is not None and step < n_prefill:
                # every hypothesis of a sample has the sample's prefilled features (BOS, or a prompt forced
                # under a trie, where the constraint allows everything): one row per sample, then copied
                samples = (pre_rows // beam).view(-1, beam)[:, 0]
                pre = [f[samples, step] for f in prefilled]
                lprobs = self._decode_step(tokens[::beam, : step + 1], encoder_outs, states,
                                           None if row_prefix is None else row_prefix[::beam], pre)
                lprobs = lprobs.repeat_interleave(beam, dim=0)
            else:
                prefilled = None  # past the prompt: decode step by step from the filled cache
                lprobs = self._decode_step(tokens[:, : step + 1], encoder_outs, states, row_prefix)

            if prefix_tokens is not None and step < prefix_tokens.size(1) and step < max_len:
                lprobs, tokens, scores = self._force_prefix(step, lprobs, scores, tokens, prefix_tokens, beam)
            elif step < self.min_len:
                lprobs[:, self.eos] = -math.inf
            lprobs.nan_to_num_(nan=-math.inf, posinf=math.inf, neginf=-math.inf)  # NaN -> -inf, in one pass
            lprobs[:, self.pad] = -math.inf
            lprobs[:, self.unk] -= self.unk_penalty
            if self.gen_code and step < max_len:
                lprobs[:, :4] = -math.inf
            if step >= max_len:
                lprobs[:, : self.eos] = -math.inf
                lprobs[:, self.eos + 1:] = -math.inf
            if self.ngram_blocker is not None:
                lprobs = self.ngram_blocker(lprobs, tokens[:, : step + 1])

            cand_scores, cand_indices, cand_beams = self.search.step(
                step, lprobs.view(bsz, -1, self.vocab_size), scores.view(bsz, beam, -1)[:, :, :step]
            )
            cand_bbsz = cand_beams + bbsz_offsets
            eos_mask = cand_indices.eq(self.eos) & cand_scores.ne(-math.inf)
            eos_mask[:, :beam][cands_to_ignore] = False
            eos_bbsz = torch.masked_select(cand_bbsz[:, :beam], eos_mask[:, :beam])
            done_rows: List[int] = []
            if eos_bbsz.numel() > 0:
                eos_scores = torch.masked_select(cand_scores[:, :beam], eos_mask[:, :beam])
                done_rows = self._finalize(step, eos_bbsz, eos_scores, tokens, scores, finalized, finished,
                                           original_idx, beam, max_len)
                remaining -= len(done_rows)
            if remaining == 0:
                break
            if self.search.stop_on_max_len and step >= max_len:
                break

            if done_rows:  # drop finished sentences from the batch
                keep = torch.ones(bsz, dtype=torch.bool, device=device)
                keep[done_rows] = False
                batch_idxs = torch.arange(bsz, device=device)[keep]
                bsz = int(keep.sum())
                eos_mask, cand_beams = eos_mask[batch_idxs], cand_beams[batch_idxs]
                bbsz_offsets = (torch.arange(bsz, device=device) * beam)[:, None]
                cand_bbsz = cand_beams + bbsz_offsets
                cand_scores, cand_indices = cand_scores[batch_idxs], cand_indices[batch_idxs]
                if prefix_tokens is not None:
                    prefix_tokens, prefix_lens = prefix_tokens[batch_idxs], prefix_lens[batch_idxs]
                cands_to_ignore = cands_to_ignore[batch_idxs]
                scores = scores.view(-1, beam, scores.size(1))[batch_idxs].view(bsz * beam, -1)
                tokens = tokens.view(-1, beam, tokens.size(1))[batch_idxs].view(bsz * beam, -1)
                original_idx = original_idx[batch_idxs]
                row_map = (batch_idxs[:, None] * beam + torch.arange(beam, device=device)).view(-1)
            else:
                row_map = None

            # keep the best `beam` candidates that did not just finish
            eos_mask[:, :beam] = cands_to_ignore | eos_mask[:, :beam]
            active_mask = eos_mask.long() * cand_size + cand_offsets[: eos_mask.size(1)]
            new_ignore, active_hypos = torch.topk(active_mask, k=beam, dim=1, largest=False)
            cands_to_ignore = new_ignore.ge(cand_size)[:, :beam]
            active_bbsz = cand_bbsz.gather(1, active_hypos).view(-1)
            tokens[:, : step + 1] = tokens[:, : step + 1].index_select(0, active_bbsz)
            tokens.view(bsz, beam, -1)[:, :, step + 1] = cand_indices.gather(1, active_hypos)
            if step > 0:
                scores[:, :step] = scores[:, :step].index_select(0, active_bbsz)
            scores.view(bsz, beam, -1)[:, :, step] = cand_scores.gather(1, active_hypos)
            # cached states still hold the rows of the previous (unpruned) batch
            reorder = active_bbsz if row_map is None else row_map[active_bbsz]
            rows_dropped = row_map is not None

        for i, hyps in enumerate(finalized):
            finalized[i] = sorted(hyps, key=lambda h: float(h["score"]), reverse=True)
        return finalized

    # ------------------------------------------------------------------ helpers
    def _force_prefix(self, step, lprobs, scores, tokens, prefix_tokens, beam):
        """Force each row's prompt token at this step (official behaviour, including its quirks)."""
        toks = prefix_tokens[:, step].repeat_interleave(beam)
        tok_lprobs = lprobs.gather(-1, toks[:, None])
        forced = toks.ne(self.pad)
        # the official generator lowers, not removes, the other tokens when no trie is set
        fill = tok_lprobs.min() - 1 if self.constraint_trie is None else -math.inf
        if bool(forced.all()):  # every row forced (the usual case): one fill and one scatter, no masked copies
            lprobs = torch.empty_like(lprobs).fill_(fill).scatter_(-1, toks[:, None], tok_lprobs)
        else:
            lprobs[forced] = fill
            lprobs[forced] = lprobs[forced].scatter(-1, toks[forced][:, None], tok_lprobs[forced])
        eos_rows = toks.eq(self.eos)
        if bool(eos_rows.any()):  # prompt ends here: make every beam a copy of the first
            sent_mask = eos_rows.view(-1, beam)[:, 0]
            for t in (tokens, scores, lprobs):
                view = t.view(-1, beam, t.size(-1))
                view[sent_mask] = view[sent_mask][:, :1, :]
        return lprobs, tokens, scores

    def _finalize(self, step, bbsz_idx, eos_scores, tokens, scores, finalized, finished, original_idx,
                  beam, max_len) -> List[int]:
        """Store finished hypotheses; return the current-batch rows of sentences now complete."""
        hyp_tokens = tokens.index_select(0, bbsz_idx)[:, 1: step + 2].clone()
        hyp_tokens[:, step] = self.eos
        pos_scores = scores.index_select(0, bbsz_idx)[:, : step + 1].clone()
        pos_scores[:, step] = eos_scores
        pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]
        if self.normalize_scores:
            eos_scores = eos_scores / (step + 1) ** self.len_penalty
        batch_rows = (bbsz_idx // beam).tolist()
        for i, row in enumerate(batch_rows):
            sent = int(original_idx[row])
            if len(finalized[sent]) < beam:
                finalized[sent].append({
                    "tokens": hyp_tokens[i], "score": eos_scores[i], "attention": torch.empty(0),
                    "alignment": torch.empty(0), "positional_scores": pos_scores[i],
                })
        done = []
        for row in sorted(set(batch_rows)):
            sent = int(original_idx[row])
            if not finished[sent] and (len(finalized[sent]) == beam or step == max_len):
                finished[sent] = True
                done.append(row)
        return done
