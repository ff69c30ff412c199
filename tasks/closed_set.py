"""Shared machinery of the closed-set answer tasks (VQA, visual entailment, classification).

``AnswerSet`` holds the candidate answers as token sequences and as a ``Trie`` of
``[bos] + bpe(" " + answer) + [eos]`` (architecture.md 8), and provides, batched:

- ``constraint_masks(prev_output_tokens, prompt_lens)``: bool ``[B, T, V]`` masks for training
  (at each answer position only the trie children of the answer prefix are allowed; prompt
  positions allow everything, their targets are padding);
- ``score_candidates(model, sample, chunk)``: the official "allcand" evaluation: run the encoder
  once, teacher-force every candidate after the decoder prompt in chunks, renormalise each
  position's log-probabilities over its trie children, sum, and take the arg-max.

``ClosedSetTask`` adds the common options (answer file, prompt type, inference mode) and the
prediction / scoring logic: score = the answer's confidence in ``ref_dict`` (VQA score; 1/0
accuracy for entailment and classification).

Inference (``closed_set_inference``; a batch is one encoder pass and one candidate scoring): every
candidate is scored as in allcand, then a log-softmax over the candidates gives ``{answer_key: best,
"logprob": log of its probability among the candidates, "prob": exp(logprob), "score": prob (kept for
compatibility), "top": [(answer, probability)] x TOP_K, best first}``.
"""

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from fairseq.data import data_utils
from fairseq.dataclass import ChoiceEnum

from ofa.generate import Trie, TrieConstraint
from ofa.inference import InferenceSpec, RowBuilder
from ofa.tasks.ofa_task import PROMPT_TYPES, OFATask, OFATaskConfig

logger = logging.getLogger(__name__)

INFERENCE = ChoiceEnum(["allcand", "beamsearch"])
TOP_K = 5  # answers listed in a one-image prediction


class AnswerSet:
    """Candidate answers of a closed-set task, tokenised once."""

    def __init__(self, answers: Sequence[str], tokenizer):
        if not answers:
            raise ValueError("the candidate answer list is empty")
        d = tokenizer.dictionary
        self.answers = list(answers)
        self.index = {a: i for i, a in enumerate(self.answers)}
        self.bos, self.eos, self.pad = d.bos(), d.eos(), d.pad()
        self.vocab_size = len(d)
        self.tokens = [tokenizer.encode(" " + a) for a in self.answers]  # no bos / eos
        self.trie = Trie(self.eos)
        for seq in self.tokens:
            self.trie.insert([self.bos] + seq.tolist() + [self.eos])
        self.constraint = TrieConstraint(self.trie)

    def __len__(self) -> int:
        return len(self.answers)

    def constraint_masks(self, prev_output_tokens: torch.Tensor, prompt_lens: torch.Tensor) -> torch.Tensor:
        """Allowed next tokens at every decoder position, ``[B, T, V]``.

        Args:
            prev_output_tokens: ``[B, T]``, each row ``decoder prompt (starting with BOS) + answer``.
            prompt_lens: ``[B]`` decoder-prompt lengths including BOS.
        """
        b, t = prev_output_tokens.shape
        masks = torch.ones(b, t, self.vocab_size, dtype=torch.bool, device=prev_output_tokens.device)
        forced = (prompt_lens - 1).to(prev_output_tokens.device)
        for j in range(t):
            masks[:, j] = self.constraint.allowed(prev_output_tokens[:, : j + 1], forced, self.vocab_size)
        return masks

    @torch.no_grad()
    def score_candidates(self, model, sample, chunk: int = 20) -> torch.Tensor:
        """Log-probability of every candidate for every sample, ``[B, K]`` (official allcand)."""
        net = sample["net_input"]
        enc = model.encoder(net["src_tokens"], src_lengths=net["src_lengths"], patch_images=net.get("patch_images"),
                            patch_masks=net.get("patch_masks"))
        prompts: List[torch.Tensor] = sample["decoder_prompts"]
        device = net["src_tokens"].device
        bsz = len(prompts)
        table = self.trie.compile(device)
        out = torch.empty(bsz, len(self), device=device)
        for start in range(0, len(self), chunk):
            cands = self.tokens[start:start + chunk]
            c = len(cands)
            rows_prev, rows_tgt, rows_plen = [], [], []
            for p in prompts:
                for cand in cands:
                    seq = torch.cat([p.to(device), cand.to(device)])
                    rows_prev.append(seq)
                    rows_tgt.append(torch.cat([seq[1:], torch.tensor([self.eos], device=device)]))
                    rows_plen.append(len(p))
            prev = data_utils.collate_tokens(rows_prev, self.pad)
            tgt = data_utils.collate_tokens(rows_tgt, self.pad)
            plen = torch.tensor(rows_plen, device=device)
            order = torch.arange(bsz, device=device).repeat_interleave(c)
            logits, _ = model.decoder(prev, encoder_out=model.encoder.reorder_encoder_out(enc, order))
            # node of the trie before each position; answer positions start at plen - 1
            pos = torch.arange(prev.size(1), device=device)[None, :]
            answer_pos = (pos >= plen[:, None] - 1) & tgt.ne(self.pad)
            nodes = table.step(torch.zeros(len(rows_prev), dtype=torch.long, device=device),
                               torch.full((len(rows_prev),), self.bos, device=device))
            total = torch.zeros(len(rows_prev), device=device)
            for j in range(prev.size(1)):
                active = answer_pos[:, j]
                if not bool(active.any()):
                    if j >= 1:
                        nodes = torch.where(pos[0, j] >= plen, table.step(nodes, prev[:, j]), nodes)
                    continue
                if j >= 1:
                    nodes = torch.where(pos[0, j] >= plen, table.step(nodes, prev[:, j]), nodes)
                allowed = table.allowed_mask(nodes, logits.size(-1))
                lp = F.log_softmax(logits[:, j].float().masked_fill(~allowed, float("-inf")), dim=-1)
                total += torch.where(active, lp.gather(1, tgt[:, j:j + 1]).squeeze(1), torch.zeros_like(total))
            out[:, start:start + c] = total.view(bsz, c)
        return out


def load_answer_file(path: str) -> List[str]:
    """Answers from a JSON/pickle ``{answer: id}`` mapping (ordered by id) or a text file, one per line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"answer file not found: {path}")
    if path.endswith(".json"):
        with open(path) as f:
            mapping = json.load(f)
    elif path.endswith((".pkl", ".pickle", ".p")):
        from ofa.data_utils.converters.safe_pickle import safe_load

        mapping = safe_load(path, "answer list")
    else:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    if isinstance(mapping, dict):
        return [a for a, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
    return list(mapping)


@dataclass
class ClosedSetConfig(OFATaskConfig):
    ans2label_file: Optional[str] = field(
        default=None, metadata={"help": "candidate answers: JSON/pickle {answer: id}, or a text file, one per line"})
    prompt_type: PROMPT_TYPES = field(default="none", metadata={"help": "decoder prompt: none, src or prev_output"})
    val_inference_type: INFERENCE = field(
        default="allcand", metadata={"help": "allcand: score every candidate; beamsearch: trie-constrained beam search"})
    valid_batch_size: int = field(default=20, metadata={"help": "candidates scored per decoder call (allcand)"})
    unconstrained_training: bool = field(
        default=False, metadata={"help": "do not restrict training logits to the candidate trie"})


class ClosedSetTask(OFATask):
    default_answers: Sequence[str] = ()

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        answers = load_answer_file(cfg.ans2label_file) if cfg.ans2label_file else list(self.default_answers)
        self.answer_set = AnswerSet(answers, tokenizer)
        logger.info(f"{len(self.answer_set)} candidate answers")

    def build_generator(self, models, args=None, **overrides):
        # open-ended models (--unconstrained-training) decode freely; closed-set ones through the trie
        if (self.cfg.val_inference_type == "beamsearch" and not self.cfg.unconstrained_training
                and "constraint_trie" not in overrides):
            overrides["constraint_trie"] = self.answer_set.trie
        # a closed set is ranked by each answer's summed log-probability, as allcand ranks it (the official
        # VQA beam evaluation passes --unnormalized): length normalisation would divide by the forced
        # prompt's length too and favour long answers
        overrides.setdefault("normalize_scores", False)
        if self.cfg.prompt_type != "none" and "max_len_b" not in overrides:
            # the decoder prompt (up to the whole source) is forced before the answer: leave room for both
            longest = max(len(t) for t in self.answer_set.tokens)
            overrides["max_len_b"] = max(self.cfg.eval_max_len_b, self.cfg.max_src_length + longest + 3)
        return super().build_generator(models, args, **overrides)

    def add_constraints(self, sample):
        if sample and not self.cfg.unconstrained_training and "constraint_masks" not in sample:
            prompt_lens = torch.tensor([len(p) for p in sample["decoder_prompts"]],
                                       device=sample["target"].device)
            sample["constraint_masks"] = self.answer_set.constraint_masks(
                sample["net_input"]["prev_output_tokens"], prompt_lens)
        return sample

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        return super().train_step(self.add_constraints(sample), model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        return super().valid_step(self.add_constraints(sample), model, criterion)

    def inference(self, model, sample) -> List[str]:
        if self.cfg.val_inference_type == "allcand":
            if self.cfg.unconstrained_training:
                raise ValueError("open-ended (--unconstrained-training) models need --val-inference-type beamsearch")
            scores = self.answer_set.score_candidates(model, sample, self.cfg.valid_batch_size)
            return [self.answer_set.answers[i] for i in scores.argmax(1).tolist()]
        prefix = sample.get("prefix_tokens")
        hyps = self.generator.generate([model], self.net_input_for_generation(sample), prefix_tokens=prefix)
        out = []
        for i, h in enumerate(hyps):
            if not h:
                raise RuntimeError(f"beam search finished no hypothesis for sample {sample['uniq_ids'][i]!r} "
                                   f"(decoder prompt + answer longer than the generator's max_len?)")
            skip = int(prefix[i].ne(self.dict.pad()).sum()) if prefix is not None else 0
            out.append(self.decode(h[0]["tokens"][skip:]))
        return out

    def score(self, predictions: List[str], sample) -> List[float]:
        return [float(refs.get(p, 0.0)) for p, refs in zip(predictions, sample["ref_dict"])]

    def prediction_records(self, predictions, sample):
        return [{"uniq_id": uid, "answer": p} for uid, p in zip(sample["uniq_ids"], predictions)]


# ---------------------------------------------------------------------------------------- inference
def closed_set_predict(task, model, sample, answer_key: str = "answer") -> List[Dict[str, Any]]:
    """Score every candidate answer of a ``ClosedSetTask`` for every sample of the batch (allcand, one
    encoder pass), log-softmax over the candidates; per sample ``{answer_key: best, "logprob": its
    log-probability among the candidates, "prob": exp(logprob), "score": prob, "top": [(answer, probability)]
    x TOP_K}`` (the probabilities of ``top`` are ``exp`` of the same log-probabilities, so ``top[0]`` is
    ``(best, prob)`` exactly)."""
    answers = task.answer_set.answers
    logprobs = F.log_softmax(task.answer_set.score_candidates(model, sample, task.cfg.valid_batch_size).double(), dim=1)
    values, idx = logprobs.topk(min(TOP_K, len(answers)), dim=1)
    results = []
    for row_values, row_idx in zip(values.tolist(), idx.tolist()):
        top = [(answers[i], math.exp(lp)) for i, lp in zip(row_idx, row_values)]
        best_lp = float(row_values[0])
        results.append({answer_key: top[0][0], "logprob": best_lp, "prob": top[0][1], "score": top[0][1], "top": top})
    return results


def closed_set_inference(row: RowBuilder, answer_key: str = "answer", **spec_fields) -> InferenceSpec:
    """The ``InferenceSpec`` of a closed-set task: ``row`` plus the closed-set predictor (``closed_set_predict``;
    the best answer under ``answer_key``, ``answer`` or ``label``) and its printed lines; ``spec_fields``
    (``aliases``, ``takes_premise``) as ``InferenceSpec``'s."""
    def predict(task_name, task, model, sample, sizes, gen_over):
        return closed_set_predict(task, model, sample, answer_key)

    def lines(r: Dict[str, Any]) -> List[str]:
        return [f"{answer_key}: {r[answer_key]}  (prob {r['prob']:.4f}, logprob {r['logprob']:.4f})"] + \
            [f"  {prob:7.4f}  {answer}" for answer, prob in r["top"]]

    def text(r: Dict[str, Any]) -> str:
        return f"{r[answer_key]} (p={r['prob']:.3f})"

    return InferenceSpec(row=row, predict=predict, lines=lines, text=text, **spec_fields)
