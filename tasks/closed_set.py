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
# largest (trie nodes + 1) x vocabulary table of allowed next tokens kept per device (bool entries: 64 MiB)
DENSE_TABLE_LIMIT = 1 << 26
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
        self.depth = max(len(seq) for seq in self.tokens) + 2  # the trie's longest path: bos + answer + eos
        self._dense_tables: Dict[str, Any] = {}  # device -> (compiled trie, allowed-token table)

    def __len__(self) -> int:
        return len(self.answers)

    def constraint_masks(self, prev_output_tokens: torch.Tensor, prompt_lens: torch.Tensor) -> torch.Tensor:
        """Allowed next tokens at every decoder position, ``[B, T, V]``.

        One walk of the trie along the answer part of the rows (as many steps as the trie is deep,
        ``prefix_nodes``) gives the node before every position; the nodes' children come from a cached table
        (``allowed_after``). The masks equal ``TrieConstraint.allowed`` of every prefix
        ``prev_output_tokens[:, :j + 1]``, without its ``O(T^2)`` trie steps and a host sync per position.

        Args:
            prev_output_tokens: ``[B, T]``, each row ``decoder prompt (starting with BOS) + answer``.
            prompt_lens: ``[B]`` decoder-prompt lengths including BOS.
        """
        b, t = prev_output_tokens.shape
        device = prev_output_tokens.device
        table = self.trie.compile(device)
        forced = (prompt_lens - 1).to(device).clamp(min=0)
        nodes = prefix_nodes(table, prev_output_tokens, forced, self.depth)
        masks = self.allowed_after(table, nodes.reshape(-1)).view(b, t, self.vocab_size)
        # positions whose prefix still lies inside the row's forced prompt allow everything
        inside_prompt = forced[:, None] >= torch.arange(1, t + 1, device=device)[None, :]
        return masks | inside_prompt[:, :, None]

    def allowed_after(self, table, nodes: torch.Tensor) -> torch.Tensor:
        """Bool ``[N, V]``: the trie children of each node (``-1``: only eos), as ``table.allowed_mask``.

        Where ``(trie nodes + 1) x V`` fits ``DENSE_TABLE_LIMIT``, rows of a per-device table built once
        (no host sync); a larger trie (the official VQA answers over a 59k vocabulary) asks the table."""
        dense = self._dense_table(table, nodes.device)
        if dense is None:
            return table.allowed_mask(nodes, self.vocab_size)
        return dense[torch.where(nodes.ge(0), nodes, torch.full_like(nodes, dense.size(0) - 1))]

    def _dense_table(self, table, device: torch.device) -> Optional[torch.Tensor]:
        """``[trie nodes + 1, V]`` bool: row ``n`` the children of node ``n``, the last row node ``-1``'s; ``None``
        when too large. Cached per device, built again if the trie is compiled anew."""
        num_nodes = len(self.trie)
        if (num_nodes + 1) * self.vocab_size > DENSE_TABLE_LIMIT:
            return None
        cached = self._dense_tables.get(str(device))
        if cached is None or cached[0] is not table:
            ids = torch.cat([torch.arange(num_nodes, device=device), torch.full((1,), -1, device=device)])
            cached = self._dense_tables[str(device)] = (table, table.allowed_mask(ids, self.vocab_size))
        return cached[1]

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


def prefix_nodes(table, tokens: torch.Tensor, forced: torch.Tensor, depth: int) -> torch.Tensor:
    """``[B, T]`` trie node after each prefix ``tokens[:, :j + 1]``, as ``TrieConstraint.allowed`` walks it:
    from the root through the first token (BOS), then one step per token after the row's ``forced`` prompt
    tokens; ``-1`` once a row leaves the trie.

    A path leaves a trie of ``depth`` (its longest sequence) within ``depth`` steps, so each row walks only
    the ``depth`` tokens after its own prompt, whatever the batch's length ``T``.
    """
    n, t = tokens.shape
    device = tokens.device
    first = table.step(torch.zeros(n, dtype=torch.long, device=device), tokens[:, 0])
    cols = (forced[:, None] + 1 + torch.arange(depth, device=device)[None, :]).clamp(max=t - 1)
    after_prompt = tokens.gather(1, cols)
    walked = [first]
    for k in range(depth):
        walked.append(table.step(walked[-1], after_prompt[:, k]))
    walked.append(torch.full_like(first, -1))
    # position j has walked j - forced tokens after the prompt (none inside it; past depth, off the trie)
    steps = (torch.arange(t, device=device)[None, :] - forced[:, None]).clamp(0, depth + 1)
    return torch.stack(walked, dim=1).gather(1, steps)


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

    return InferenceSpec(row=row, predict=predict, lines=lines, text=text, answer_key=answer_key, **spec_fields)
