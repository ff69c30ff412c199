"""``scst_reward_criterion``: CIDEr-D optimisation of captioning (docs/tasks.md 4.2).

Mirrors the official ``criterions/scst_loss.py``:

1. with the model in eval mode, a beam search decodes every image (``--scst-beam`` hypotheses, at most
   ``--scst-max-len-b`` tokens, ``--scst-no-repeat-ngram-size`` blocking; the generator comes from the
   task's ``build_generator``, so the task's own constraints apply); **all** beam hypotheses of an image
   are its K samples;
2. hypotheses and references are normalised for the reward (strip, remove punctuation, drop a final
   ``.``, append ``" <eos>"`` as the official cached document frequencies expect) and scored with
   CIDEr-D (``ofa.metrics.cider``);
3. the advantage is the score minus the leave-one-out mean of the image's other samples;
4. with the model in train mode, each hypothesis is teacher-forced (``prev = [bos] + hyp``,
   ``target = hyp + [eos]``, the image and source repeated per hypothesis) and
   ``loss = sum_tokens -log p(token) * advantage``.

Without ``--scst-cider-cached-tokens`` the document frequencies come from the references of the
batch (one document per image). The logged ``loss`` is per token (or sentence) in nats, as the
official criterion logs it; ``score`` is the mean CIDEr-D of the samples.

The criterion asks of its task only what every OFA task has: ``build_generator(models, **options)``,
``tokenizer.decode(tokens)`` and ``target_dictionary``; references come from ``sample["refs"]`` (or the
``&&``-joined target).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.data import data_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II
from torch import Tensor

from ofa.criterions.losses import leave_one_out_advantage, mask_logits, parse_constraint_range, scst_loss
from ofa.metrics.cider import CiderD, build_document_frequency, load_document_frequency, normalize_for_reward


@dataclass
class ScstRewardCriterionConfig(FairseqDataclass):
    scst_cider_cached_tokens: Optional[str] = field(
        default=None, metadata={"help": "pickle of CIDEr document frequencies (official coco-train-words.p); "
                                        "default: frequencies of each batch's references"})
    scst_beam: int = field(default=5, metadata={"help": "hypotheses sampled per image (beam size)"})
    scst_max_len_b: int = field(default=16, metadata={"help": "max generated length of a hypothesis"})
    scst_no_repeat_ngram_size: int = field(default=3, metadata={"help": "n-gram blocking of the hypotheses"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target positions in the loss"})
    sentence_avg: bool = II("optimization.sentence_avg")
    constraint_range: Optional[str] = field(
        default=None, metadata={"help": "'start,end': only ids 0-3 and [start, end) may be predicted"})


@register_criterion("scst_reward_criterion", dataclass=ScstRewardCriterionConfig)
class ScstRewardCriterion(FairseqCriterion):
    CIDER_REWARD_WEIGHT = 1.0

    def __init__(self, task, sentence_avg, scst_cider_cached_tokens=None, scst_beam=5, scst_max_len_b=16,
                 scst_no_repeat_ngram_size=3, ignore_prefix_size=0, constraint_range=None):
        super().__init__(task)
        self.generator_options = dict(beam_size=scst_beam, max_len_b=scst_max_len_b,
                                      no_repeat_ngram_size=scst_no_repeat_ngram_size, min_len=1, max_len_a=0.0)
        self.generator = None  # built from the task on the first batch
        self.sentence_avg = sentence_avg
        self.ignore_prefix_size = ignore_prefix_size
        self.constraint_range = parse_constraint_range(constraint_range)
        self.cider = None
        if scst_cider_cached_tokens:
            df, ref_len = load_document_frequency(scst_cider_cached_tokens)
            self.cider = CiderD(df=df, ref_len=ref_len)
        d = task.target_dictionary
        self.bos_idx, self.eos_idx = d.bos(), d.eos()

    # ------------------------------------------------------------------ pieces
    def generate(self, model, sample) -> List[List[Tensor]]:
        """Per image, the hypothesis tokens of every beam, without eos and padding."""
        if self.generator is None:
            if not callable(getattr(self.task, "build_generator", None)):
                raise RuntimeError(f"scst_reward_criterion samples through its task's build_generator(models, "
                                   f"**options); the task {type(self.task).__name__} has none")
            self.generator = self.task.build_generator([model], **self.generator_options)
        generator = self.generator
        net_input = {k: v for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
        model.eval()
        with torch.no_grad():
            hypos = generator.generate([model], {**sample, "net_input": net_input})
        return [[self._strip(h["tokens"]) for h in beams] for beams in hypos]

    def _strip(self, tokens: Tensor) -> Tensor:
        tokens = tokens[tokens.ne(self.padding_idx)]
        if tokens.numel() and int(tokens[-1]) == self.eos_idx:
            tokens = tokens[:-1]
        return tokens

    def _decode(self, tokens: Tensor) -> str:
        tokenizer = getattr(self.task, "tokenizer", None)
        if tokenizer is None:
            raise RuntimeError("scst_reward_criterion needs task.tokenizer to decode hypotheses")
        return tokenizer.decode(tokens.cpu())

    def references(self, sample) -> List[List[str]]:
        """``sample["refs"]``, or the ``&&``-joined target decoded and split (the official way)."""
        if sample.get("refs") is not None:
            return [list(r) for r in sample["refs"]]
        return [self._decode(utils.strip_pad(t, self.padding_idx)).split("&&") for t in sample["target"]]

    def compute_rewards(self, hypotheses: Sequence[Sequence[str]],
                        references: Sequence[Sequence[str]]) -> Tuple[Tensor, Tensor]:
        """CIDEr-D of every hypothesis and its leave-one-out advantage.

        Args:
            hypotheses: per image, its K decoded samples.
            references: per image, its reference captions.

        Returns:
            ``(scores (M,), advantages (M,))`` float64, flattened in image-major order.
        """
        refs = [[normalize_for_reward(r) for r in rs] for rs in references]
        cider = self.cider
        if cider is None:
            df, ref_len = build_document_frequency(refs)
            cider = CiderD(df=df, ref_len=ref_len)
        gts, res = {}, {}
        for i, hyps in enumerate(hypotheses):
            for j, h in enumerate(hyps):
                gts[(i, j)] = refs[i]
                res[(i, j)] = [normalize_for_reward(h)]
        _, flat = cider.compute_score(gts, res)
        scores = torch.as_tensor(flat, dtype=torch.float64) * self.CIDER_REWARD_WEIGHT
        advantages, start = [], 0
        for hyps in hypotheses:
            advantages.append(leave_one_out_advantage(scores[start:start + len(hyps)]))
            start += len(hyps)
        return scores, torch.cat(advantages) if advantages else scores

    def teacher_force(self, model, sample, hyp_tokens: List[List[Tensor]]) -> Tuple[Tensor, Tensor]:
        """Logits ``(M, T, V)`` and targets ``(M, T)`` of the hypotheses; source and image repeated per sample."""
        counts = torch.tensor([len(h) for h in hyp_tokens])
        bsz = len(hyp_tokens)
        device = sample["net_input"]["src_tokens"].device
        index = torch.repeat_interleave(torch.arange(bsz), counts).to(device)
        net_input = {k: v.index_select(0, index) if torch.is_tensor(v) and v.dim() > 0 and v.size(0) == bsz else v
                     for k, v in sample["net_input"].items() if k != "prev_output_tokens"}
        flat = [t.to(device) for hyps in hyp_tokens for t in hyps]
        bos = torch.tensor([self.bos_idx], device=device)
        eos = torch.tensor([self.eos_idx], device=device)
        prev = data_utils.collate_tokens([torch.cat([bos, t]) for t in flat], self.padding_idx)
        target = data_utils.collate_tokens([torch.cat([t, eos]) for t in flat], self.padding_idx)
        model.train()
        logits = model(**net_input, prev_output_tokens=prev)[0]
        return logits, target

    # ------------------------------------------------------------------ fairseq contract
    def forward(self, model, sample, update_num=0, reduce=True):
        hyp_tokens = self.generate(model, sample)
        texts = [[self._decode(t) for t in hyps] for hyps in hyp_tokens]
        scores, advantages = self.compute_rewards(texts, self.references(sample))
        logits, target = self.teacher_force(model, sample, hyp_tokens)
        lprobs = F.log_softmax(mask_logits(logits, None, self.constraint_range).float(), dim=-1)
        if self.ignore_prefix_size > 0:
            lprobs = lprobs[:, self.ignore_prefix_size:]
            target = target[:, self.ignore_prefix_size:]
        loss, ntokens = scst_loss(lprobs, target, advantages.to(lprobs.device), self.padding_idx)
        nsentences = target.size(0)
        sample_size = nsentences if self.sentence_avg else ntokens
        logging_output = {
            "loss": loss.data,
            "score": float(scores.sum()),
            "ntokens": ntokens,
            "nsentences": nsentences,
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict[str, Any]]) -> None:
        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size, nsentences = total("sample_size"), total("nsentences")
        if sample_size > 0:
            metrics.log_scalar("loss", total("loss") / sample_size, sample_size, round=3)
        if nsentences > 0:
            metrics.log_scalar("score", total("score") / nsentences, nsentences, round=3)
        metrics.log_scalar("ntokens", total("ntokens"), 1, round=3)
        metrics.log_scalar("nsentences", nsentences, 1, round=3)
        metrics.log_scalar("sample_size", sample_size, 1, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
