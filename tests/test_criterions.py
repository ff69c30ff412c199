"""Criteria (criterions/): the pure loss math with hand values, and both criteria on a tiny fake model.

The fake model's logits are rows of a learnable table indexed by ``prev_output_tokens``, so losses
are exact functions of known numbers and gradients reach a real parameter.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions import CRITERION_DATACLASS_REGISTRY, CRITERION_REGISTRY
from fairseq.data import Dictionary
from fairseq.logging import metrics
from torch import nn

import ofa  # noqa: F401  (registers the criteria)
from ofa.criterions.label_smoothed_cross_entropy import AdjustLabelSmoothedCrossEntropyCriterion as LSCE
from ofa.criterions.label_smoothed_cross_entropy import duplicate_for_rdrop
from ofa.criterions.losses import (
    drop_worst,
    label_smoothed_nll_loss,
    leave_one_out_advantage,
    mask_logits,
    parse_constraint_range,
    scst_loss,
    symmetric_kl,
)
from ofa.criterions.scst_reward_criterion import ScstRewardCriterion
from ofa.metrics.cider import CiderD, build_document_frequency, normalize_for_reward, save_document_frequency

BOS, PAD, EOS = 0, 1, 2
WORDS = ["a", "b", "c", "d", "e", "f"]  # ids 4..9
V = 4 + len(WORDS)


def make_dict() -> Dictionary:
    d = Dictionary()
    for w in WORDS:
        d.add_symbol(w)
    return d


class FakeTokenizer:
    def __init__(self, d: Dictionary):
        self.dictionary = d

    def decode(self, ids) -> str:
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        return " ".join(self.dictionary[i] for i in ids if i >= self.dictionary.nspecial)


class FakeTask:
    """The task interface the criteria use: dictionaries, a tokenizer and (given a generator) ``build_generator``,
    which records the options it was asked for."""

    def __init__(self, generator=None):
        self.target_dictionary = self.source_dictionary = make_dict()
        self.tokenizer = FakeTokenizer(self.target_dictionary)
        self.generator_requests = []
        if generator is not None:
            def build_generator(models, **options):
                self.generator_requests.append(options)
                return generator
            self.build_generator = build_generator


class TableModel(nn.Module):
    """``forward(**net_input) -> (table[prev_output_tokens] [B, T, V], {})``; records its keyword calls."""

    def __init__(self, seed: int = 0, dropout: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(V, V, generator=g))
        self.dropout = nn.Dropout(dropout)
        self.calls = []

    def forward(self, src_tokens, src_lengths, prev_output_tokens, patch_images=None, patch_masks=None, **kwargs):
        self.calls.append({"src_tokens": src_tokens, "prev_output_tokens": prev_output_tokens, **kwargs})
        return self.dropout(self.table[prev_output_tokens]), {}


def make_sample(targets, conf=None, refs=None):
    """Right-padded batch in the data_utils/datasets.py layout; ``targets`` end with eos."""
    bsz, tlen = len(targets), max(len(t) for t in targets)
    target = torch.full((bsz, tlen), PAD)
    prev = torch.full((bsz, tlen), PAD)
    for i, t in enumerate(targets):
        target[i, :len(t)] = torch.tensor(t)
        prev[i, :len(t)] = torch.tensor([BOS] + t[:-1])
    sample = {
        "id": torch.arange(bsz),
        "nsentences": bsz,
        "ntokens": int(target.ne(PAD).sum()),
        "net_input": {
            "src_tokens": torch.tensor([[BOS, 4, EOS]] * bsz),
            "src_lengths": torch.full((bsz,), 3),
            "patch_images": torch.zeros(bsz, 3, 2, 2),
            "patch_masks": torch.ones(bsz, dtype=torch.bool),
            "prev_output_tokens": prev,
        },
        "target": target,
    }
    if conf is not None:
        sample["conf"] = torch.tensor(conf, dtype=torch.float)
    if refs is not None:
        sample["refs"] = refs
    return sample


TARGETS = [[4, 5, 6, EOS], [7, 8, EOS], [9, EOS]]


def lsce(**kw) -> LSCE:
    kw.setdefault("sentence_avg", False)
    return LSCE(FakeTask(), **kw)


def reference_tokens(model, sample, prefix=0):
    """Plain log_softmax of the fake model's logits at the non-pad targets (no masking)."""
    lp = F.log_softmax(model.table[sample["net_input"]["prev_output_tokens"]].float(), -1)[:, prefix:]
    tgt = sample["target"][:, prefix:]
    keep = tgt.ne(PAD)
    return lp[keep], tgt[keep]


# --------------------------------------------------------------------------- pure functions
def test_label_smoothing_of_a_uniform_prediction_is_log_v_for_any_epsilon():
    lp = torch.full((1, 4), math.log(0.25))
    for eps in (0.0, 0.1, 0.5):
        loss, nll = label_smoothed_nll_loss(lp, torch.tensor([2]), eps)
        assert loss.item() == pytest.approx(math.log(4)) and nll.item() == pytest.approx(math.log(4))


def test_label_smoothing_matches_hand_value():
    # p = (0.7, 0.1, 0.1, 0.1), y = 0, eps = 0.1: (1 - eps) * -log 0.7 + eps/3 * 3 * -log 0.1
    lp = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).log()
    loss, nll = label_smoothed_nll_loss(lp, torch.tensor([0]), 0.1)
    assert nll.item() == pytest.approx(-math.log(0.7))
    assert loss.item() == pytest.approx(0.9 * -math.log(0.7) + 0.1 * -math.log(0.1), rel=1e-6)


def test_zero_epsilon_label_smoothing_equals_nll():
    lp = torch.randn(5, 7).log_softmax(-1)
    target = torch.tensor([0, 3, 6, 2, 1])
    loss, nll = label_smoothed_nll_loss(lp, target, 0.0)
    torch.testing.assert_close(loss, nll)


def test_allowed_mask_restricts_the_smoothing_set():
    # Three allowed tokens with uniform mass, the fourth at -inf: the loss is log 3 (up to the 1e-6).
    mask = torch.tensor([[True, True, True, False]])
    lp = torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]]).log()
    loss, _ = label_smoothed_nll_loss(lp, torch.tensor([1]), 0.2, allowed_mask=mask)
    assert torch.isfinite(loss).all()
    assert loss.item() == pytest.approx(math.log(3), rel=1e-5)
    # without the mask the -inf entry is part of the smoothing sum
    assert torch.isinf(label_smoothed_nll_loss(lp, torch.tensor([1]), 0.2)[0]).all()


def test_constraint_range_smooths_over_specials_plus_range():
    lp = mask_logits(torch.randn(3, 8), constraint_range=(6, 8)).log_softmax(-1)
    target = torch.tensor([6, 7, EOS])
    by_range, _ = label_smoothed_nll_loss(lp, target, 0.1, constraint_range=(6, 8))
    mask = torch.tensor([True] * 4 + [False] * 2 + [True] * 2).expand(3, 8)
    by_mask, _ = label_smoothed_nll_loss(lp, target, 0.1, allowed_mask=mask)
    torch.testing.assert_close(by_range, by_mask)
    nll = -lp.gather(1, target[:, None]).squeeze(1)
    smooth = -lp[:, [0, 1, 2, 3, 6, 7]].sum(-1)
    eps_i = 0.1 / (6 - 1 + 1e-6)
    torch.testing.assert_close(by_range, (1 - 0.1 - eps_i) * nll + eps_i * smooth)


def test_mask_logits_applies_masks_and_range_out_of_place():
    logits = torch.zeros(1, 1, 10)
    masked = mask_logits(logits, torch.tensor([[[True] * 9 + [False]]]), (6, 8))
    assert (logits == 0).all()
    assert torch.isinf(masked[0, 0, [4, 5, 8, 9]]).all() and torch.isfinite(masked[0, 0, [0, 1, 2, 3, 6, 7]]).all()


def test_parse_constraint_range_validates_its_input():
    assert parse_constraint_range("50265,58457") == (50265, 58457)
    assert parse_constraint_range(None) is None
    with pytest.raises(ValueError, match="start,end"):
        parse_constraint_range("12")
    with pytest.raises(ValueError):
        parse_constraint_range("9,5")


def test_drop_worst_keeps_the_lowest_loss_tokens():
    keep = drop_worst(torch.tensor([5.0, 1.0, 3.0, 2.0]), 0.5)
    assert sorted(keep.tolist()) == [1, 3]
    assert drop_worst(torch.tensor([5.0, 1.0, 3.0]), 0.5).numel() == 1  # int(3 * 0.5)


def test_symmetric_kl_matches_hand_value_and_is_zero_for_identical_rows():
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    kl = symmetric_kl(p.log(), q.log())
    by_hand = 0.5 * (-0.4 * math.log(0.5 / 0.9) + 0.4 * math.log(0.5 / 0.1))
    assert kl.item() == pytest.approx(by_hand)
    both = 0.5 * (F.kl_div(p.log(), q, reduction="sum") + F.kl_div(q.log(), p, reduction="sum"))
    assert kl.item() == pytest.approx(both.item())
    assert symmetric_kl(p.log(), p.log()).item() == 0.0


def test_symmetric_kl_skips_disallowed_entries_without_nan_gradients():
    logits = torch.randn(2, 6, requires_grad=True)
    mask = torch.tensor([[True, True, True, False, False, True]] * 2)
    lp = mask_logits(logits, mask).log_softmax(-1)
    lq = mask_logits(logits.detach() * 0.5, mask).log_softmax(-1)
    kl = symmetric_kl(lp, lq, mask)
    kl.sum().backward()
    assert torch.isfinite(kl).all() and (kl >= 0).all() and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(kl, symmetric_kl(lp, lq))  # the -inf entries are skipped either way


def test_leave_one_out_advantage_matches_hand_values():
    adv = leave_one_out_advantage(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(adv, torch.tensor([1 - 2.5, 2 - 2.0, 3 - 1.5]))
    assert leave_one_out_advantage(torch.tensor([4.0])).item() == 0.0


def test_scst_loss_weights_token_log_probs_by_reward_and_masks_pads():
    lprobs = torch.full((2, 3, 4), math.log(0.25))
    target = torch.tensor([[3, EOS, PAD], [3, 3, EOS]])
    loss, ntokens = scst_loss(lprobs, target, torch.tensor([2.0, -1.0]), PAD)
    assert ntokens == 5
    assert loss.item() == pytest.approx(math.log(4) * (2 * 2.0 + 3 * -1.0))


# --------------------------------------------------------------------------- label-smoothed criterion
def test_criteria_are_registered_under_the_official_names():
    assert "adjust_label_smoothed_cross_entropy" in CRITERION_REGISTRY
    assert "scst_reward_criterion" in CRITERION_REGISTRY
    cfg = CRITERION_DATACLASS_REGISTRY["adjust_label_smoothed_cross_entropy"]
    fields = cfg.__dataclass_fields__
    defaults = {"label_smoothing": 0.0, "report_accuracy": False, "ignore_prefix_size": 0, "ignore_eos": False,
                "drop_worst_ratio": 0.0, "drop_worst_after": 0, "use_rdrop": False, "reg_alpha": 1.0,
                "sample_patch_num": 196, "constraint_range": None}
    for name, value in defaults.items():
        assert fields[name].default == value, name
        assert fields[name].metadata.get("help"), name
    assert "sentence_avg" in fields
    scst = CRITERION_DATACLASS_REGISTRY["scst_reward_criterion"].__dataclass_fields__
    assert scst["scst_cider_cached_tokens"].default is None and "sentence_avg" in scst


def test_build_criterion_maps_every_config_field_to_the_constructor():
    cfg_cls = CRITERION_DATACLASS_REGISTRY["adjust_label_smoothed_cross_entropy"]
    fields = {k: f.default for k, f in cfg_cls.__dataclass_fields__.items() if k not in ("sentence_avg", "_name")}
    cfg = SimpleNamespace(**fields, sentence_avg=True)
    cfg.label_smoothing, cfg.constraint_range = 0.1, "6,8"
    crit = CRITERION_REGISTRY["adjust_label_smoothed_cross_entropy"].build_criterion(cfg, FakeTask())
    assert crit.eps == 0.1 and crit.sentence_avg and crit.constraint_range == (6, 8)
    scst_cfg = SimpleNamespace(scst_cider_cached_tokens=None, ignore_prefix_size=0, sentence_avg=False,
                               constraint_range=None)
    assert isinstance(ScstRewardCriterion.build_criterion(scst_cfg, FakeTask()), ScstRewardCriterion)


def test_loss_equals_the_pure_function_summed_over_non_pad_tokens():
    model, sample = TableModel(), make_sample(TARGETS)
    loss, sample_size, log = lsce(label_smoothing=0.1)(model, sample)
    lp, tgt = reference_tokens(model, sample)
    expected, nll = label_smoothed_nll_loss(lp, tgt, 0.1)
    assert sample_size == log["ntokens"] == 9 and log["nsentences"] == 3
    torch.testing.assert_close(loss, expected.sum())
    torch.testing.assert_close(log["nll_loss"], nll.sum())


def test_sentence_avg_uses_the_number_of_sentences_as_sample_size():
    _, sample_size, log = lsce(sentence_avg=True)(TableModel(), make_sample(TARGETS))
    assert sample_size == 3 == log["sample_size"]


def test_gradients_reach_the_model_parameters():
    model = TableModel()
    loss, _, _ = lsce(label_smoothing=0.1)(model, make_sample(TARGETS))
    loss.backward()
    assert model.table.grad is not None and model.table.grad.abs().sum() > 0


def test_constraint_masks_mask_logits_and_change_the_smoothing_set():
    model, sample = TableModel(), make_sample(TARGETS)
    masks = torch.zeros(3, 4, V, dtype=torch.bool)
    masks[..., [EOS, 4, 5, 6, 7, 8, 9]] = True
    masks[0, 0, 9] = False  # one row with a smaller allowed set
    sample["constraint_masks"] = masks
    loss, _, _ = lsce(label_smoothing=0.1)(model, sample)
    logits = mask_logits(model.table[sample["net_input"]["prev_output_tokens"]], masks)
    keep = sample["target"].ne(PAD)
    expected, _ = label_smoothed_nll_loss(logits.log_softmax(-1)[keep], sample["target"][keep], 0.1, masks[keep])
    torch.testing.assert_close(loss, expected.sum())
    unmasked, _, _ = lsce(label_smoothing=0.1)(model, make_sample(TARGETS))
    assert not torch.allclose(loss, unmasked)


def test_constraint_range_restricts_predictions_to_specials_and_the_range():
    model, sample = TableModel(), make_sample([[6, 7, EOS], [7, EOS]])
    loss, _, _ = lsce(label_smoothing=0.1, constraint_range="6,8")(model, sample)
    logits = mask_logits(model.table[sample["net_input"]["prev_output_tokens"]], constraint_range=(6, 8))
    keep = sample["target"].ne(PAD)
    lp = logits.log_softmax(-1)[keep]
    assert torch.isinf(lp[:, [4, 5, 8, 9]]).all()
    expected, _ = label_smoothed_nll_loss(lp, sample["target"][keep], 0.1, constraint_range=(6, 8))
    torch.testing.assert_close(loss, expected.sum())
    assert torch.isfinite(loss)


def test_conf_multiplies_each_samples_log_probs():
    model = TableModel()
    plain, _, _ = lsce()(model, make_sample(TARGETS[:2]))
    weighted, _, _ = lsce()(model, make_sample(TARGETS[:2], conf=[2.0, 0.5]))
    lp, tgt = reference_tokens(model, make_sample(TARGETS[:2]))
    nll = -lp.gather(1, tgt[:, None]).squeeze(1)
    torch.testing.assert_close(plain, nll.sum())
    torch.testing.assert_close(weighted, 2.0 * nll[:4].sum() + 0.5 * nll[4:].sum())


def test_ignore_prefix_size_drops_the_first_target_steps():
    model, sample = TableModel(), make_sample(TARGETS)
    loss, sample_size, _ = lsce(ignore_prefix_size=1)(model, sample)
    lp, tgt = reference_tokens(model, sample, prefix=1)
    assert sample_size == 9 - 3
    torch.testing.assert_close(loss, -lp.gather(1, tgt[:, None]).sum())


def test_ignore_eos_drops_eos_targets():
    model, sample = TableModel(), make_sample(TARGETS)
    loss, sample_size, _ = lsce(ignore_eos=True)(model, sample)
    lp, tgt = reference_tokens(model, sample)
    keep = tgt.ne(EOS)
    assert sample_size == 6
    torch.testing.assert_close(loss, -lp[keep].gather(1, tgt[keep][:, None]).sum())


def test_drop_worst_removes_the_worst_tokens_only_after_drop_worst_after():
    model, sample = TableModel(), make_sample(TARGETS)
    crit = lsce(drop_worst_ratio=0.3, drop_worst_after=10)
    lp, tgt = reference_tokens(model, sample)
    nll = -lp.gather(1, tgt[:, None]).squeeze(1)
    before, size_before, _ = crit(model, sample, update_num=10)
    assert size_before == 9
    torch.testing.assert_close(before, nll.sum())
    after, size_after, log = crit(model, sample, update_num=11)
    assert size_after == int(9 * 0.7) == log["ntokens"]
    torch.testing.assert_close(after, nll.sort().values[:size_after].sum())


def test_rdrop_without_dropout_adds_zero_kl_and_doubles_the_batch():
    model, sample = TableModel(), make_sample(TARGETS)
    plain, plain_size, _ = lsce(label_smoothing=0.1)(model, sample)
    rdrop, size, log = lsce(label_smoothing=0.1, use_rdrop=True)(model, sample)
    assert size == 2 * plain_size and log["nsentences"] == 6
    torch.testing.assert_close(rdrop, 2 * plain)
    assert model.calls[-1]["prev_output_tokens"].size(0) == 6


def test_rdrop_with_dropout_adds_a_positive_kl_term():
    model, sample = TableModel(dropout=0.3).train(), make_sample(TARGETS)
    torch.manual_seed(0)
    without_kl, _, _ = lsce(use_rdrop=True, reg_alpha=0.0)(model, sample)
    torch.manual_seed(0)
    with_kl, _, _ = lsce(use_rdrop=True, reg_alpha=1.0)(model, sample)
    assert with_kl.item() > without_kl.item()


def test_rdrop_drop_worst_selects_on_the_first_copy_and_mirrors_it():
    model, sample = TableModel(), make_sample(TARGETS)
    crit = lsce(use_rdrop=True, drop_worst_ratio=0.3)
    loss, size, _ = crit(model, sample, update_num=1)
    plain, plain_size, _ = lsce(drop_worst_ratio=0.3)(model, sample, update_num=1)
    assert size == 2 * plain_size == 2 * int(9 * 0.7)
    torch.testing.assert_close(loss, 2 * plain)


def test_rdrop_duplicates_tensors_without_touching_the_callers_sample():
    sample = make_sample(TARGETS, conf=[1.0, 2.0, 3.0])
    sample["constraint_masks"] = torch.ones(3, 4, V, dtype=torch.bool)
    dup = duplicate_for_rdrop(sample)
    assert dup["target"].shape == (6, 4) and dup["conf"].tolist() == [1.0, 2.0, 3.0] * 2
    assert dup["constraint_masks"].shape == (6, 4, V) and dup["net_input"]["patch_images"].shape[0] == 6
    assert dup["ntokens"] == 18 and dup["nsentences"] == 6
    assert sample["target"].shape == (3, 4) and sample["ntokens"] == 9


def test_report_accuracy_counts_argmax_matches_over_kept_tokens():
    model, sample = TableModel(), make_sample(TARGETS)
    with torch.no_grad():  # make the prediction after BOS correct for every row, nothing else
        model.table.fill_(0.0)
        model.table[:, 3] = 5.0  # unk wins everywhere ...
        model.table[BOS, 3] = 0.0
        model.table[BOS, 4] = 5.0  # ... except after BOS, where "a" (the first target of row 0) wins
    _, _, log = lsce(report_accuracy=True)(model, sample)
    assert log["total"] == 9 and log["n_correct"] == 1
    with metrics.aggregate() as agg:
        LSCE.reduce_metrics([log])
        assert agg.get_smoothed_values()["accuracy"] == pytest.approx(100 / 9, abs=1e-3)


def test_pretraining_pair_normalises_each_part_and_passes_sample_patch_num_to_v1_only():
    model = TableModel()
    v1, v2 = make_sample(TARGETS), make_sample([[5, EOS], [6, 7, EOS]], conf=[2.0, 2.0])
    crit = lsce(label_smoothing=0.1, report_accuracy=True)
    l1, n1, _ = crit(model, v1)
    l2, n2, _ = crit(model, v2)
    model.calls.clear()
    loss, size, log = crit(model, [v1, v2])
    assert size == 1 and log["sample_size"] == 1
    torch.testing.assert_close(loss, l1 / n1 + l2 / n2)
    assert log["sample_size_v1"] == n1 and log["sample_size_v2"] == n2
    torch.testing.assert_close(log["loss_v1"], l1.data)
    assert log["ntokens"] == 9 + 5 and log["nsentences"] == 5 and log["total"] == 14
    assert model.calls[0]["sample_patch_num"] == 196 and "sample_patch_num" not in model.calls[1]
    crit(model, v1)
    assert "sample_patch_num" not in model.calls[-1]
    assert "sample_patch_num" not in v1["net_input"]


def test_reduce_metrics_logs_the_expected_names_in_base_two():
    model = TableModel()
    crit = lsce(label_smoothing=0.1, report_accuracy=True)
    _, _, log_a = crit(model, make_sample(TARGETS))
    _, _, log_b = crit(model, [make_sample(TARGETS), make_sample([[5, EOS]])])
    with metrics.aggregate() as agg:
        LSCE.reduce_metrics([log_a])
        values = agg.get_smoothed_values()
    expected = {"loss", "nll_loss", "ppl", "ntokens", "nsentences", "sample_size", "n_correct", "total", "accuracy"}
    assert expected <= set(values)
    assert values["loss"] == pytest.approx(float(log_a["loss"]) / 9 / math.log(2), abs=1e-3)
    assert values["ppl"] == pytest.approx(2 ** values["nll_loss"], rel=1e-2)
    with metrics.aggregate() as agg:
        LSCE.reduce_metrics([log_b])
        assert {"loss_v1", "loss_v2", "sample_size_v1", "sample_size_v2"} <= set(agg.get_smoothed_values())
    assert LSCE.logging_outputs_can_be_summed()


# --------------------------------------------------------------------------- SCST
class FakeGenerator:
    """Returns fixed hypotheses (token lists without eos) per batch row and records the sample it saw."""

    def __init__(self, hyps):
        self.hyps = hyps
        self.seen = None

    def generate(self, models, sample, **kw):
        self.seen = sample
        assert not models[0].training
        return [[{"tokens": torch.tensor(h + [EOS]), "score": torch.tensor(0.0)} for h in beams]
                for beams in self.hyps]


A, B_, C, D = 4, 5, 6, 7  # "a", "b", "c", "d"
# image 0: references "a b"; image 1: references "c d" (hand values in test_scst_rewards_match_cider_d_by_hand)
SCST_HYPS = [[[A, B_], [C, D], [A, D]], [[C, D], [C, D], [A, B_]]]
SCST_REFS = [["a, b."], ["c d"]]


def scst(generator=None, **kw):
    kw.setdefault("sentence_avg", False)
    return ScstRewardCriterion(FakeTask(generator), **kw)


def test_normalize_for_reward_strips_punctuation_and_appends_eos():
    assert normalize_for_reward("  a dog, running. ") == "a dog running <eos>"
    assert normalize_for_reward("") == " <eos>"


def test_scst_with_a_task_that_builds_no_generator_raises_a_clear_error():
    with pytest.raises(RuntimeError, match="samples through its task's build_generator"):
        scst()(TableModel(), make_sample(TARGETS[:2], refs=SCST_REFS))


def test_scst_builds_its_beam_search_once_through_the_task_with_its_own_options():
    crit = scst(FakeGenerator(SCST_HYPS), scst_beam=3, scst_max_len_b=7, scst_no_repeat_ngram_size=2)
    model, sample = TableModel(), make_sample(TARGETS[:2], refs=SCST_REFS)
    crit(model, sample)
    crit(model, sample)
    assert crit.task.generator_requests == [dict(beam_size=3, max_len_b=7, no_repeat_ngram_size=2, min_len=1,
                                                 max_len_a=0.0)]


def test_scst_rewards_match_cider_d_by_hand():
    # Corpus df over the 2 images' normalised references "a b <eos>" / "c d <eos>": ref_len = log 2, every
    # n-gram has df 1 except "<eos>" (df 2, idf 0). "a b" vs "a b": cosine 1 for n = 1, 2, 3 and no 4-grams
    # -> 7.5; "c d" vs "a b": 0; "a d" vs "a b": unigram cosine 1/2 only -> 1.25.
    crit = scst()
    texts = [["a b", "c d", "a d"], ["c d", "c d", "a b"]]
    scores, adv = crit.compute_rewards(texts, SCST_REFS)
    torch.testing.assert_close(scores, torch.tensor([7.5, 0.0, 1.25, 7.5, 7.5, 0.0], dtype=torch.float64))
    expected = [7.5 - 1.25 / 2, 0 - 8.75 / 2, 1.25 - 7.5 / 2, 7.5 - 7.5 / 2, 7.5 - 7.5 / 2, 0 - 15 / 2]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))
    refs = [[normalize_for_reward(r) for r in rs] for rs in SCST_REFS]
    df, ref_len = build_document_frequency(refs)
    direct = CiderD(df=df, ref_len=ref_len).compute_score(
        {i: refs[i // 3] for i in range(6)}, {i: [normalize_for_reward(t)] for i, t in enumerate(sum(texts, []))})[1]
    torch.testing.assert_close(scores, torch.as_tensor(direct))


def test_scst_uses_the_cached_document_frequency_pickle(tmp_path):
    df, ref_len = build_document_frequency([["a b <eos>"], ["c d <eos>"], ["a c <eos>"], ["e f <eos>"]])
    path = tmp_path / "words.p"
    save_document_frequency(path, df, ref_len)
    texts = [["a b", "c d", "a d"]]
    scores, _ = scst(scst_cider_cached_tokens=str(path)).compute_rewards(texts, [["a b"]])
    expected = CiderD(df=df, ref_len=ref_len).compute_score(
        {i: ["a b <eos>"] for i in range(3)}, {i: [t + " <eos>"] for i, t in enumerate(texts[0])})[1]
    torch.testing.assert_close(scores, torch.as_tensor(expected))
    corpus, _ = scst().compute_rewards(texts, [["a b"]])
    assert not torch.allclose(scores, corpus)


def test_scst_teacher_forces_every_hypothesis_with_repeated_source():
    gen = FakeGenerator(SCST_HYPS)
    model = TableModel()
    sample = make_sample(TARGETS[:2], refs=SCST_REFS)
    loss, sample_size, log = scst(gen)(model, sample)
    assert "prev_output_tokens" not in gen.seen["net_input"]
    call = model.calls[-1]
    assert call["prev_output_tokens"].tolist() == [[BOS] + h for beams in SCST_HYPS for h in beams]
    assert call["src_tokens"].size(0) == 6
    assert model.training
    assert sample_size == log["ntokens"] == 6 * 3 and log["nsentences"] == 6
    assert log["score"] == pytest.approx(7.5 + 0 + 1.25 + 7.5 + 7.5 + 0)
    _, sentence_size, _ = scst(gen, sentence_avg=True)(model, sample)
    assert sentence_size == 6


def test_scst_loss_matches_reward_weighted_nll():
    gen = FakeGenerator(SCST_HYPS)
    model = TableModel()
    crit = scst(gen)
    loss, _, _ = crit(model, make_sample(TARGETS[:2], refs=SCST_REFS))
    _, adv = crit.compute_rewards([["a b", "c d", "a d"], ["c d", "c d", "a b"]], SCST_REFS)
    expected = 0.0
    for k, h in enumerate(h for beams in SCST_HYPS for h in beams):
        lp = model.table[torch.tensor([BOS] + h)].log_softmax(-1)
        expected += -lp.gather(1, torch.tensor(h + [EOS])[:, None]).sum() * adv[k].item()
    torch.testing.assert_close(loss, expected)


def test_scst_gradient_step_raises_the_better_than_average_hypothesis():
    # image 0: "a b" (advantage > 0), "c d" and "a d" (advantage < 0); image 1 keeps the corpus idf non-zero
    gen = FakeGenerator([SCST_HYPS[0], [[C, D]] * 3])
    model = TableModel()

    def seq_logp(h):
        lp = model.table[torch.tensor([BOS] + h)].log_softmax(-1)
        return lp.gather(1, torch.tensor(h + [EOS])[:, None]).sum().item()

    before = [seq_logp(h) for h in SCST_HYPS[0]]
    loss, _, _ = scst(gen)(model, make_sample(TARGETS[:2], refs=SCST_REFS))
    loss.backward()
    with torch.no_grad():
        model.table -= 0.05 * model.table.grad
    after = [seq_logp(h) for h in SCST_HYPS[0]]
    assert after[0] > before[0]  # the best hypothesis "a b" becomes more likely
    assert after[1] < before[1]  # the worst one "c d" less likely


def test_scst_references_fall_back_to_the_decoded_target():
    crit = scst()
    sample = make_sample([[A, B_, EOS]])
    assert crit.references(sample) == [["a b"]]


def test_scst_reduce_metrics_logs_loss_and_mean_score():
    logs = [{"loss": torch.tensor(6.0), "score": 9.0, "ntokens": 6, "nsentences": 3, "sample_size": 6},
            {"loss": torch.tensor(2.0), "score": 3.0, "ntokens": 2, "nsentences": 1, "sample_size": 2}]
    with metrics.aggregate() as agg:
        ScstRewardCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(1.0) and values["score"] == pytest.approx(3.0)
    assert {"ntokens", "nsentences", "sample_size"} <= set(values)
    assert ScstRewardCriterion.logging_outputs_can_be_summed()


# --------------------------------------------------------------------------- the real ofa_test model
def test_both_criteria_run_on_the_ofa_test_model_with_the_real_generator(small_dict):
    from ofa.generate import SequenceGenerator
    from ofa.model import OFAModel, config_for_arch

    torch.manual_seed(0)
    model = OFAModel.from_config(config_for_arch("ofa_test"), small_dict)
    d = small_dict

    def real_batch(bsz, image=32):
        g = torch.Generator().manual_seed(bsz)
        target = torch.randint(4, 44, (bsz, 4), generator=g)
        target[:, -1] = d.eos()
        target[0, -2:] = torch.tensor([d.eos(), d.pad()])
        prev = torch.cat([torch.full((bsz, 1), d.bos()), target[:, :-1]], 1).masked_fill(target.eq(d.pad()), d.pad())
        return {"nsentences": bsz, "ntokens": int(target.ne(d.pad()).sum()), "target": target,
                "net_input": {"src_tokens": torch.randint(4, 44, (bsz, 6), generator=g),
                              "src_lengths": torch.full((bsz,), 6), "prev_output_tokens": prev,
                              "patch_images": torch.randn(bsz, 3, image, image, generator=g),
                              "patch_masks": torch.ones(bsz, dtype=torch.bool)},
                "refs": [["w4 w5 w6", "w7 w8"]] * bsz}

    task = SimpleNamespace(target_dictionary=d, tokenizer=FakeTokenizer(d))
    model.train()
    crit = LSCE(task, sentence_avg=False, label_smoothing=0.1, use_rdrop=True, report_accuracy=True,
                sample_patch_num=2)
    loss, size, log = crit(model, [real_batch(2), real_batch(3, image=16)])  # (backward: covered above)
    assert torch.isfinite(loss) and size == 1 and log["total"] == 2 * (7 + 11)  # R-Drop doubles; row 0 has one pad

    task.build_generator = lambda models, **options: SequenceGenerator(models, d, **options)
    loss, size, log = ScstRewardCriterion(task, sentence_avg=False, scst_beam=3, scst_max_len_b=4)(model, real_batch(2))
    assert torch.isfinite(loss) and log["nsentences"] == 6 and size == log["ntokens"] > 0 and model.training
