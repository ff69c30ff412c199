"""Unit tests of ``ofa.generate`` in the style of fairseq's ``tests/test_sequence_generator.py``.

A tiny fairseq ``Dictionary`` (bos=0, pad=1, eos=2, unk=3, w1..w5 = 4..8) and a fake encoder-decoder
whose next-token distribution is scripted by hand, per sample and per decoded prefix. The sample a
row belongs to is recovered from the encoder output (the encoder writes the first source token, the
"sample id", into every value of ``encoder_out``), so a generator that mixes up rows while
reordering or pruning the batch reads the wrong script and produces different hypotheses.

Expected tokens and scores below are traced by hand from the scripted probabilities, following
fairseq's SequenceGenerator: ``2 * beam`` candidates per sentence, EOS candidates finalised only
among the top ``beam``, score ``sum(logp) / len ** len_penalty``.
"""
from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict

import pytest
import torch
from torch import nn

from fairseq.data import Dictionary
from fairseq.ngram_repeat_block import NGramRepeatBlock

from ofa.generate import NGramBlocker, SequenceGenerator, TokenRange, Trie, TrieConstraint
from ofa.generate.search import BeamSearch, Sampling, beam_candidates

BOS, PAD, EOS, UNK = 0, 1, 2, 3
W1, W2, W3, W4, W5 = 4, 5, 6, 7, 8
V = 9
C = 4  # fake encoder width
ln = math.log


def make_dict() -> Dictionary:
    d = Dictionary()
    for w in ["w1", "w2", "w3", "w4", "w5"]:
        d.add_symbol(w)
    return d


DICT = make_dict()


def test_tiny_dictionary_layout():
    assert (DICT.bos(), DICT.pad(), DICT.eos(), DICT.unk()) == (BOS, PAD, EOS, UNK)
    assert [DICT.index(w) for w in ["w1", "w2", "w3", "w4", "w5"]] == [W1, W2, W3, W4, W5]
    assert len(DICT) == V


# ---------------------------------------------------------------------------- fake model
def dist(spec):
    """Probability vector over the vocabulary: the given ``{token: prob}`` entries, the remaining
    mass spread evenly over the other ids (zero when the entries already sum to one)."""
    p = [0.0] * V
    for tok, prob in spec.items():
        p[tok] = prob
    rest = 1.0 - sum(spec.values())
    others = [i for i in range(V) if i not in spec]
    if rest > 1e-9:
        for i in others:
            p[i] = rest / len(others)
    return p


class Script:
    """Next-token distribution per decoded prefix (tokens after BOS), with a default."""

    def __init__(self, table, default=None):
        self.table = {tuple(k): v for k, v in table.items()}
        self.default = default if default is not None else {EOS: 0.9}

    def __call__(self, prefix):
        return dist(self.table.get(tuple(prefix), self.default))


class FakeEncoder(nn.Module):
    def forward(self, src_tokens, src_lengths=None, **kwargs):
        bsz, t = src_tokens.shape
        out = src_tokens[:, 0].float().view(1, bsz, 1).expand(t, bsz, C).clone()
        return {
            "encoder_out": [out],
            "encoder_padding_mask": [src_tokens.eq(PAD)],
            "position_embeddings": [torch.zeros(bsz, t, C)],
        }

    def reorder_encoder_out(self, enc, new_order):
        return {
            "encoder_out": [enc["encoder_out"][0].index_select(1, new_order)],
            "encoder_padding_mask": [enc["encoder_padding_mask"][0].index_select(0, new_order)],
            "position_embeddings": [enc["position_embeddings"][0].index_select(0, new_order)],
        }


class FakeDecoder(nn.Module):
    def __init__(self, scripts):
        super().__init__()
        self.scripts = scripts
        self.calls = []  # (tokens, sample ids) of every call

    def forward(self, tokens, code_masks=None, encoder_out=None, incremental_state=None, **kwargs):
        n, t = tokens.shape
        sample_ids = encoder_out["encoder_out"][0][0, :, 0].long().tolist()
        assert len(sample_ids) == n, "encoder rows are not aligned with decoder rows"
        logits = torch.zeros(n, t, V)
        for row, sid in enumerate(sample_ids):
            logits[row, -1] = torch.tensor(self.scripts[sid](tokens[row, 1:].tolist())).log()
        self.calls.append((tokens.clone(), sample_ids))
        return logits, {}  # with features_only the "features" are these logits: output_layer is the identity

    def output_layer(self, features):
        return features

    def reorder_incremental_state_scripting(self, state, order):
        pass


class FakeModel(nn.Module):
    def __init__(self, scripts):
        super().__init__()
        if isinstance(scripts, Script):  # one script for every sample
            one = scripts
            scripts = defaultdict(lambda: one)
        self.encoder = FakeEncoder()
        self.decoder = FakeDecoder(scripts)


def run(scripts, src=((W1, W2, W3),), prefix_tokens=None, **gen_kwargs):
    """Generate with the fake model; returns (hypotheses, model)."""
    model = FakeModel(scripts)
    gen_kwargs.setdefault("max_len_b", 10)
    gen = SequenceGenerator([model], DICT, **gen_kwargs)
    src_tokens = torch.tensor(src, dtype=torch.long)
    sample = {"net_input": {"src_tokens": src_tokens, "src_lengths": src_tokens.ne(PAD).sum(1)}}
    return gen.generate([model], sample, prefix_tokens=prefix_tokens), model


def check_hyp(hyp, tokens, positional, score):
    assert hyp["tokens"].tolist() == tokens
    assert hyp["positional_scores"].tolist() == pytest.approx(positional, abs=1e-5)
    assert float(hyp["score"]) == pytest.approx(score, abs=1e-5)


# ---------------------------------------------------------------------------- 1. beam search
# Short hypothesis A = w1 eos has the larger sum of log-probs, long B = w2 w3 w4 eos the larger average.
# Traced with beam 2 (4 candidates per step):
#  step 0: w1 (ln .6), w2 (ln .39) active.
#  step 1: w1·eos (-1.204) is among the top 2 -> finalised (A); w2·w3 (-1.299), w2·w5 (-2.180) active.
#  step 2: w2·w3·w4 (-1.656), w2·w5·w5 (-2.285) active (no EOS among the top 2).
#  step 3: w2·w3·w4·eos (-2.013) is first -> finalised (B); two finished -> done.
# w2·eos at step 1 (-2.180) is candidate 4 (outside the top 2) and must NOT be finalised.
BEAM_SCRIPT = Script(
    {
        (): {W1: 0.6, W2: 0.39},
        (W1,): {EOS: 0.5},
        (W2,): {W3: 0.7, W5: 0.29},
        (W2, W3): {W4: 0.7, W1: 0.29},
        (W2, W3, W4): {EOS: 0.7, W1: 0.29},
    },
    default={W5: 0.9},
)
A_TOKENS, A_POS = [W1, EOS], [ln(0.6), ln(0.5)]
B_TOKENS, B_POS = [W2, W3, W4, EOS], [ln(0.39), ln(0.7), ln(0.7), ln(0.7)]


def test_beam_search_keeps_best_hypotheses_sorted_by_length_normalised_score():
    hypos, model = run(BEAM_SCRIPT, beam_size=2)
    assert len(hypos) == 1 and len(hypos[0]) == 2
    best, second = hypos[0]
    check_hyp(best, B_TOKENS, B_POS, sum(B_POS) / 4)
    check_hyp(second, A_TOKENS, A_POS, sum(A_POS) / 2)
    assert float(best["score"]) > float(second["score"])


@pytest.mark.parametrize("prefill", [True, False])
def test_beam_search_starts_from_bos_and_hypotheses_exclude_bos_and_end_with_eos(prefill):
    hypos, model = run(BEAM_SCRIPT, beam_size=2, prefill_prompt=prefill)
    first_tokens, _ = model.decoder.calls[0]
    # BOS only: decoded once per sample (its cache then expanded to the beams), or once per hypothesis row
    assert first_tokens.tolist() == ([[BOS]] if prefill else [[BOS], [BOS]])
    for tokens, _ in model.decoder.calls:
        assert tokens[:, 0].eq(BOS).all()
    for h in hypos[0]:
        assert h["tokens"][-1].item() == EOS
        assert BOS not in h["tokens"].tolist()
        assert h["positional_scores"].numel() == h["tokens"].numel()
    check_hyp(hypos[0][0], B_TOKENS, B_POS, sum(B_POS) / 4)


def test_beam_search_unnormalised_scores_are_sums_and_rank_short_hypothesis_first():
    hypos, _ = run(BEAM_SCRIPT, beam_size=2, normalize_scores=False)
    best, second = hypos[0]
    check_hyp(best, A_TOKENS, A_POS, sum(A_POS))
    check_hyp(second, B_TOKENS, B_POS, sum(B_POS))


def test_beam_search_len_penalty_divides_by_length_to_the_power():
    hypos, _ = run(BEAM_SCRIPT, beam_size=2, len_penalty=2.0)
    best, second = hypos[0]
    check_hyp(best, B_TOKENS, B_POS, sum(B_POS) / 4 ** 2)
    check_hyp(second, A_TOKENS, A_POS, sum(A_POS) / 2 ** 2)


def test_beam_search_step_proposes_two_beams_of_candidates_and_expands_only_first_beam_at_step_0():
    lprobs = torch.log_softmax(torch.randn(2, 3, V, generator=torch.Generator().manual_seed(0)), -1)
    scores0, idx0, beams0 = BeamSearch().step(0, lprobs.clone(), torch.zeros(2, 3, 0))
    assert scores0.shape == idx0.shape == beams0.shape == (2, 6)
    assert beams0.eq(0).all()
    want = lprobs[:, 0].topk(6)
    assert torch.equal(idx0, want.indices) and torch.allclose(scores0, want.values)
    prev = torch.tensor([[[-1.0], [-2.0], [-3.0]], [[-0.5], [-0.1], [-9.0]]])
    scores1, idx1, beams1 = BeamSearch().step(1, lprobs.clone(), prev)
    want = (lprobs + prev).view(2, -1).topk(6)
    assert torch.allclose(scores1, want.values)
    assert torch.equal(beams1 * V + idx1, want.indices)


def test_beam_candidates_equal_the_flat_topk_of_the_summed_scores():
    g = torch.Generator().manual_seed(1)
    for vocab in (3, 7, 500):
        lprobs = torch.log_softmax(torch.randn(4, 5, vocab, generator=g), -1)
        prev = torch.randn(4, 5, 1, generator=g)
        for k in (1, 10, min(14, 5 * vocab - 1)):
            scores, tokens, hyps = beam_candidates(lprobs, prev, k)
            want = (lprobs + prev).view(4, -1).topk(k)
            assert torch.equal(scores, want.values) and torch.equal(hyps * vocab + tokens, want.indices)


def test_beam_candidates_take_the_flat_topk_where_finite_scores_tie():
    # a forced prefix: every token but the forced one holds the same fill value, so the flat topk's own
    # choice among equal scores decides which tokens the other candidates carry
    lprobs = torch.full((2, 3, 50), -7.0)
    lprobs[:, :, 4] = -0.5
    prev = torch.tensor([[[-1.0], [-1.0], [-2.0]], [[0.0], [-3.0], [-3.0]]])
    scores, tokens, hyps = beam_candidates(lprobs, prev, 6)
    want = (lprobs + prev).view(2, -1).topk(6)
    assert torch.equal(scores, want.values) and torch.equal(hyps * 50 + tokens, want.indices)


def test_beam_candidates_leave_out_of_search_hypotheses_in_any_order():
    # under a constraint most tokens are -inf: the finite candidates come first, best first, as in the flat topk
    lprobs = torch.full((1, 3, 20), -math.inf)
    lprobs[0, 0, 5], lprobs[0, 1, 2], lprobs[0, 2, 9] = -0.1, -0.2, -0.3
    scores, tokens, hyps = beam_candidates(lprobs, torch.zeros(1, 3, 1), 6)
    assert scores[0, :3].tolist() == pytest.approx([-0.1, -0.2, -0.3])
    assert tokens[0, :3].tolist() == [5, 2, 9] and hyps[0, :3].tolist() == [0, 1, 2]
    assert torch.isinf(scores[0, 3:]).all()


# ---------------------------------------------------------------------------- 2. min_len / max_len
def test_min_len_bans_eos_before_min_len_tokens_without_renormalising():
    script = Script({}, default={EOS: 0.9, W1: 0.09})
    hypos, _ = run(script, beam_size=1, min_len=3)
    # EOS banned at steps 0..2 (its mass is removed, not redistributed: w1 keeps ln .09)
    check_hyp(hypos[0][0], [W1, W1, W1, EOS], [ln(0.09)] * 3 + [ln(0.9)], (3 * ln(0.09) + ln(0.9)) / 4)
    hypos, _ = run(script, beam_size=1, min_len=1)
    check_hyp(hypos[0][0], [W1, EOS], [ln(0.09), ln(0.9)], (ln(0.09) + ln(0.9)) / 2)


def test_max_len_forces_eos_and_uses_padded_source_length():
    script = Script({}, default={W1: 0.9, EOS: 0.05})
    # padded src_len 4 (2 real tokens): max_len = int(0.5 * 4 + 1) = 3 (it would be 2 with the real length)
    hypos, model = run(script, src=((W2, W3, PAD, PAD),), beam_size=1, max_len_a=0.5, max_len_b=1)
    check_hyp(hypos[0][0], [W1, W1, W1, EOS], [ln(0.9)] * 3 + [ln(0.05)], (3 * ln(0.9) + ln(0.05)) / 4)
    assert max(tokens.size(1) for tokens, _ in model.decoder.calls) == 4  # BOS + max_len tokens
    hypos, _ = run(script, beam_size=1, max_len_a=0.0, max_len_b=2)
    check_hyp(hypos[0][0], [W1, W1, EOS], [ln(0.9)] * 2 + [ln(0.05)], (2 * ln(0.9) + ln(0.05)) / 3)


def test_max_len_with_beam_two_finalises_every_sentence_at_max_len():
    script = Script({(): {W1: 0.6, W2: 0.3}}, default={W1: 0.5, W2: 0.45, EOS: 0.01})
    hypos, _ = run(script, beam_size=2, max_len_b=2)
    # step 1: w1·w1 (-1.204), w1·w2 (-1.309) beat w2·w1 (-1.897); step 2 = max_len: only EOS (not renormalised)
    check_hyp(hypos[0][0], [W1, W1, EOS], [ln(0.6), ln(0.5), ln(0.01)], (ln(0.6) + ln(0.5) + ln(0.01)) / 3)
    check_hyp(hypos[0][1], [W1, W2, EOS], [ln(0.6), ln(0.45), ln(0.01)], (ln(0.6) + ln(0.45) + ln(0.01)) / 3)


def test_min_len_larger_than_max_len_is_rejected():
    with pytest.raises(ValueError):
        run(Script({}), beam_size=1, min_len=5, max_len_b=3)


# ---------------------------------------------------------------------------- 3. TokenRange
RANGE_SCRIPT = Script(
    {
        (): {BOS: 0.01, PAD: 0.01, EOS: 0.1, UNK: 0.03, W1: 0.4, W2: 0.2, W3: 0.15, W4: 0.05, W5: 0.05},
        (W2,): {EOS: 0.6, W1: 0.3, W3: 0.1},
    },
    default={EOS: 0.9},
)


def test_token_range_masks_everything_outside_range_except_specials():
    scores = torch.zeros(3, 12)
    out = TokenRange(6, 9)(scores, torch.zeros(3, 1, dtype=torch.long))
    finite = out[0].isfinite().nonzero().flatten().tolist()
    assert finite == [0, 1, 2, 3, 6, 7, 8]
    assert out.isfinite().sum(1).tolist() == [7, 7, 7]
    parsed = TokenRange.parse("6,9")
    assert (parsed.start, parsed.end) == (6, 9)
    for bad in ["3,9", "9,6", "6", "a,b"]:
        with pytest.raises(ValueError):
            TokenRange.parse(bad)


def test_token_range_before_log_softmax_renormalises_over_allowed_ids():
    hypos, _ = run(RANGE_SCRIPT, beam_size=1)
    assert hypos[0][0]["tokens"].tolist() == [W1, EOS]  # unconstrained: w1 is the most likely
    hypos, _ = run(RANGE_SCRIPT, beam_size=1, constraint_range="5,7")  # only 0..3, w2, w3
    # step 0: allowed mass .01+.01+.1+.03+.2+.15 = .5 -> w2 = .2/.5; step 1: eos = .6/(.6+.1)
    pos = [ln(0.2 / 0.5), ln(0.6 / 0.7)]
    check_hyp(hypos[0][0], [W2, EOS], pos, sum(pos) / 2)


def test_generation_with_token_range_only_produces_allowed_ids():
    script = Script({}, default={W1: 0.5, W5: 0.3, W3: 0.1, EOS: 0.05})
    hypos, _ = run(script, beam_size=3, max_len_b=4, constraint_range="6,8")
    assert len(hypos[0]) == 3
    for h in hypos[0]:
        assert set(h["tokens"].tolist()) <= {0, 2, 3, 6, 7}  # pad is always banned
        assert math.isfinite(float(h["score"]))


# ---------------------------------------------------------------------------- 4. Trie
class RefTrie:
    """Nested-dict restatement of the behaviour of the official ``utils/trie.py`` (written for this test)."""

    def __init__(self, eos):
        self.root, self.eos = {}, eos

    def insert(self, ids):
        node = self.root
        for i in ids:
            node = node.setdefault(i, {})

    def get_next_layer(self, ids):
        node = self.root
        for i in ids:
            node = node.get(i)
            if node is None:
                return [self.eos]
        return list(node.keys())


def small_trie():
    trie = Trie(EOS)
    for seq in ([BOS, W1, W2, EOS], [BOS, W1, W3, EOS], [BOS, W4, EOS]):
        trie.insert(seq)
    return trie


def test_trie_get_next_layer_children_eos_when_falling_off_and_empty_at_leaf():
    trie = small_trie()
    assert trie.get_next_layer([]) == [BOS]
    assert trie.get_next_layer([BOS]) == [W1, W4]
    assert trie.get_next_layer([BOS, W1]) == [W2, W3]
    assert trie.get_next_layer([BOS, W4]) == [EOS]
    assert trie.get_next_layer([BOS, W1, W2, EOS]) == []  # leaf
    assert trie.get_next_layer([BOS, W5]) == [EOS]  # fell off
    assert trie.get_next_layer([BOS, W1, W2, W2, W3]) == [EOS]
    assert trie.get_next_layer([W1]) == [EOS]


def test_trie_compiled_tables_follow_later_inserts():
    trie = small_trie()
    table = trie.compile()
    assert table.allowed_mask(table.walk(torch.tensor([[BOS]])), V)[0].nonzero().flatten().tolist() == [W1, W4]
    trie.insert([BOS, W5, EOS])
    table = trie.compile()
    assert table.allowed_mask(table.walk(torch.tensor([[BOS]])), V)[0].nonzero().flatten().tolist() == [W1, W4, W5]


def test_compiled_trie_step_and_allowed_mask_agree_with_get_next_layer_on_random_tries():
    rng = random.Random(20240611)
    vocab = 12
    for trial in range(8):
        trie, ref = Trie(EOS), RefTrie(EOS)
        seqs = []
        for _ in range(rng.randint(0, 8)):
            seq = [BOS] + [rng.randint(3, vocab - 1) for _ in range(rng.randint(0, 4))] + [EOS]
            trie.insert(seq)
            ref.insert(seq)
            seqs.append(seq)
        prefixes = [s[:k] for s in seqs for k in range(1, len(s) + 1)]
        prefixes += [[BOS] + [rng.randint(0, vocab - 1) for _ in range(rng.randint(0, 5))] for _ in range(15)]
        prefixes += [[rng.randint(0, vocab - 1) for _ in range(rng.randint(1, 4))] for _ in range(5)]
        assert trie.get_next_layer([]) == ref.get_next_layer([])
        table = trie.compile()
        root_mask = table.allowed_mask(torch.zeros(1, dtype=torch.long), vocab)
        assert root_mask[0].nonzero().flatten().tolist() == sorted(ref.get_next_layer([]))
        by_len = defaultdict(list)
        for p in prefixes:
            by_len[len(p)].append(p)
        for length, group in by_len.items():  # every prefix of one length walked at once
            seqs_t = torch.tensor(group)
            nodes = torch.zeros(len(group), dtype=torch.long)
            for j in range(length):
                nodes = table.step(nodes, seqs_t[:, j])
            assert torch.equal(nodes, table.walk(seqs_t))
            mask = table.allowed_mask(nodes, vocab)
            for row, p in zip(mask, group):
                expected = ref.get_next_layer(p)
                assert trie.get_next_layer(p) == expected
                assert row.nonzero().flatten().tolist() == sorted(expected), (trial, p)


def test_trie_constraint_matches_official_walk_with_prompt_lengths():
    rng = random.Random(7)
    vocab = 10
    trie, ref = Trie(EOS), RefTrie(EOS)
    for _ in range(6):
        seq = [BOS] + [rng.randint(4, vocab - 1) for _ in range(rng.randint(1, 3))] + [EOS]
        trie.insert(seq)
        ref.insert(seq)
    for t in range(1, 6):
        tokens = torch.tensor([[BOS] + [rng.randint(3, vocab - 1) for _ in range(t - 1)] for _ in range(8)])
        prefix_lens = torch.tensor([rng.randint(0, 6) for _ in range(8)])
        for zero_shot in (False, True):
            mask = TrieConstraint(trie, zero_shot=zero_shot).allowed(tokens, prefix_lens, vocab)
            for row in range(8):
                toks, plen = tokens[row].tolist(), int(prefix_lens[row])
                if zero_shot:
                    want = sorted(ref.get_next_layer(toks))
                elif len(toks) > plen:  # official: [0] + tokens[prefix_len + 1:]
                    want = sorted(ref.get_next_layer([0] + toks[plen + 1:]))
                else:  # still inside the prompt: everything allowed
                    want = list(range(vocab))
                assert mask[row].nonzero().flatten().tolist() == want, (zero_shot, toks, plen)


def test_trie_constraint_falling_off_allows_only_eos_and_leaf_allows_nothing():
    trie = small_trie()
    c = TrieConstraint(trie)
    mask = c.allowed(torch.tensor([[BOS, W5], [BOS, W1], [BOS, W4]]), None, V)
    assert mask[0].nonzero().flatten().tolist() == [EOS]
    assert mask[1].nonzero().flatten().tolist() == [W2, W3]
    assert mask[2].nonzero().flatten().tolist() == [EOS]
    mask = c.allowed(torch.tensor([[BOS, W4, EOS]]), None, V)
    assert not mask.any()
    scores = c(torch.zeros(1, V), torch.tensor([[BOS, W1]]))
    assert scores[0].isfinite().nonzero().flatten().tolist() == [W2, W3]


# Trie {w1 w2, w1 w3, w4}; the model prefers w5 (not in the trie) at every step.
TRIE_SCRIPT = Script(
    {
        (): {W5: 0.5, W1: 0.2, W4: 0.3},
        (W4,): {EOS: 0.5, W5: 0.5},
        (W1,): {W2: 0.1, W3: 0.3, W5: 0.6},
        (W1, W3): {EOS: 0.2, W5: 0.8},
        (W1, W2): {EOS: 0.5, W1: 0.5},
    },
    default={W5: 0.9},
)


def test_trie_constrained_beam_search_only_generates_trie_sequences_with_renormalised_scores():
    hypos, _ = run(TRIE_SCRIPT, beam_size=2, constraint_trie=small_trie())
    # step 0: w4 = .3/.5, w1 = .2/.5; step 1: w4·eos (eos the only child: ln 1) is finalised, w1·w3 and
    # w1·w2 (.3/.4, .1/.4) continue; step 2: both end with EOS; only the first fills the beam.
    best, second = hypos[0]
    check_hyp(best, [W4, EOS], [ln(0.6), 0.0], ln(0.6) / 2)
    check_hyp(second, [W1, W3, EOS], [ln(0.4), ln(0.75), 0.0], (ln(0.4) + ln(0.75)) / 3)


def test_trie_constraint_with_token_range_is_rejected():
    with pytest.raises(ValueError):
        SequenceGenerator([FakeModel(TRIE_SCRIPT)], DICT, constraint_range="4,6", constraint_trie=small_trie())


# ---------------------------------------------------------------------------- 5. zero-shot
def test_zero_shot_applies_token_range_after_log_softmax_without_renormalising():
    hypos, _ = run(RANGE_SCRIPT, beam_size=1, constraint_range="5,7", zero_shot=True)
    pos = [ln(0.2), ln(0.6)]
    check_hyp(hypos[0][0], [W2, EOS], pos, sum(pos) / 2)


def test_zero_shot_applies_trie_after_log_softmax_without_renormalising():
    hypos, _ = run(TRIE_SCRIPT, beam_size=1, constraint_trie=small_trie(), zero_shot=True)
    pos = [ln(0.3), ln(0.5)]
    check_hyp(hypos[0][0], [W4, EOS], pos, sum(pos) / 2)
    hypos, _ = run(TRIE_SCRIPT, beam_size=1, constraint_trie=small_trie(), zero_shot=False)
    check_hyp(hypos[0][0], [W4, EOS], [ln(0.6), 0.0], ln(0.6) / 2)


# ---------------------------------------------------------------------------- 6. n-gram blocking
def banned(scores):
    return [row.isinf().nonzero().flatten().tolist() for row in scores]


def test_ngram_blocker_bans_token_completing_a_repeated_bigram():
    tokens = torch.tensor([[BOS, W1, W2, W1], [BOS, W1, W3, W1], [BOS, W1, W2, W3]])
    out = NGramBlocker(2)(torch.zeros(3, V), tokens)
    assert banned(out) == [[W2], [W3], []]
    # two earlier bigrams start with the last token: both continuations banned
    out = NGramBlocker(2)(torch.zeros(1, V), torch.tensor([[BOS, W1, W2, W1, W3, W1]]))
    assert banned(out) == [[W2, W3]]


def test_ngram_blocker_bans_token_completing_a_repeated_trigram():
    tokens = torch.tensor([[BOS, W1, W2, W3, W1, W2], [BOS, W1, W2, W3, W4, W5], [BOS, W1, W2, W3, W2, W1]])
    out = NGramBlocker(3)(torch.zeros(3, V), tokens)
    assert banned(out) == [[W3], [], []]


def test_ngram_blocker_counts_the_bos_position():
    # a generated BOS id repeats the (BOS, w1) bigram / (BOS, w1, w2) trigram of the start
    out = NGramBlocker(2)(torch.zeros(1, V), torch.tensor([[BOS, W1, W3, BOS]]))
    assert banned(out) == [[W1]]
    out = NGramBlocker(3)(torch.zeros(1, V), torch.tensor([[BOS, W1, W2, W4, BOS, W1]]))
    assert banned(out) == [[W2]]


def test_ngram_blocker_does_nothing_without_repeats_or_on_short_rows():
    scores = torch.randn(2, V)
    for n in (2, 3, 4):
        out = NGramBlocker(n)(scores.clone(), torch.tensor([[BOS, W1, W2, W3], [BOS, W4, W5, W1]]))
        assert torch.equal(out, scores)
    out = NGramBlocker(3)(scores.clone(), torch.tensor([[BOS, W1], [BOS, BOS]]))
    assert torch.equal(out, scores)
    with pytest.raises(ValueError):
        NGramBlocker(0)


def test_ngram_blocker_matches_fairseq_reference_on_random_cpu_rows():
    g = torch.Generator().manual_seed(3)
    for n in (2, 3, 4):
        for t in range(1, 9):
            tokens = torch.randint(4, 7, (6, t), generator=g)  # 3 symbols: many repeats
            tokens[:, 0] = BOS
            scores = torch.randn(6, V, generator=g)
            want = NGramRepeatBlock(n, use_extension=False)(tokens, scores.clone(), 6, 1, t - 1)
            got = NGramBlocker(n)(scores.clone(), tokens)
            assert got.device.type == "cpu"
            assert torch.equal(got, want), (n, tokens)


def test_generation_with_no_repeat_ngram_size_never_repeats_a_bigram():
    script = Script({}, default={W1: 0.6, W2: 0.3, EOS: 0.05})
    hypos, _ = run(script, beam_size=1)
    assert hypos[0][0]["tokens"].tolist()[:4] == [W1, W1, W1, W1]
    hypos, _ = run(script, beam_size=1, no_repeat_ngram_size=2)
    # w1 w1 -> (w1 w1) banned -> w2 -> w1 -> (w1 w1), (w1 w2) banned -> eos (.05 > .05/6 for the rest)
    pos = [ln(0.6), ln(0.6), ln(0.3), ln(0.6), ln(0.05)]
    check_hyp(hypos[0][0], [W1, W1, W2, W1, EOS], pos, sum(pos) / 5)


# ---------------------------------------------------------------------------- 7. prefix tokens
PREFIX_SCRIPT = Script(
    {
        (): {W1: 0.5, W3: 0.1, W4: 0.1},
        (W3,): {W1: 0.6, W4: 0.2, EOS: 0.1},
        (W3, W4): {W5: 0.8, EOS: 0.1},
        (W3, W4, W5): {EOS: 0.9},
    }
)


def test_prefix_tokens_are_forced_with_their_own_logprob_and_generation_continues():
    hypos, model = run(PREFIX_SCRIPT, beam_size=1, prefix_tokens=torch.tensor([[W3, W4]]))
    pos = [ln(0.1), ln(0.2), ln(0.8), ln(0.9)]
    check_hyp(hypos[0][0], [W3, W4, W5, EOS], pos, sum(pos) / 4)
    assert model.decoder.calls[2][0].tolist() == [[BOS, W3, W4]]


def test_prefix_tokens_with_trie_set_other_tokens_to_minus_inf_and_walk_trie_after_prompt():
    # prompt w5 (not in the trie); the answers w1 / w2 w3 follow it
    trie = Trie(EOS)
    trie.insert([BOS, W1, EOS])
    trie.insert([BOS, W2, W3, EOS])
    script = Script(
        {
            (): {W1: 0.5, W5: 0.2, W2: 0.2},
            (W5,): {W1: 0.27, W2: 0.03, W4: 0.6},
            (W5, W1): {EOS: 0.5, W3: 0.5},
            (W5, W2): {W3: 0.5, EOS: 0.5},
            (W5, W2, W3): {EOS: 0.5, W1: 0.5},
        },
        default={W1: 0.9},
    )
    hypos, model = run(script, beam_size=2, constraint_trie=trie, prefix_tokens=torch.tensor([[W5]]))
    # step 0: only the forced w5 is finite (ln .2); the second beam gets -inf and stays dead.
    # step 1: after the prompt the trie is walked from [bos]: w1 = .27/.3, w2 = .03/.3 (w4 banned).
    # step 2: w5·w1·eos (-1.715) finishes; step 3: w5·w2·w3·eos (-3.912) finishes.
    # (Were the other step-0 tokens only lowered to ln .2 - 1, the second beam x·w1 (-2.62) would beat
    # w5·w2 (-3.91) at step 1 and finish at step 2 as a hypothesis that skips the prompt.)
    best, second = hypos[0]
    check_hyp(best, [W5, W1, EOS], [ln(0.2), ln(0.9), 0.0], (ln(0.2) + ln(0.9)) / 3)
    check_hyp(second, [W5, W2, W3, EOS], [ln(0.2), ln(0.1), 0.0, 0.0], (ln(0.2) + ln(0.1)) / 4)
    assert model.decoder.calls[1][0][0].tolist() == [BOS, W5]


def test_prefix_tokens_of_different_lengths_are_forced_per_sample_after_batch_pruning():
    # sample P (prompt w1) finishes at step 1 while sample Q is still inside its 3-token prompt
    scripts = {W1: Script({(): {W1: 0.7}, (W1,): {EOS: 0.9}}), W2: PREFIX_SCRIPT}
    prefix = torch.tensor([[W1, PAD, PAD], [W3, W4, W2]])
    hypos, model = run(scripts, src=((W1, W5), (W2, W5)), beam_size=1, prefix_tokens=prefix)
    check_hyp(hypos[0][0], [W1, EOS], [ln(0.7), ln(0.9)], (ln(0.7) + ln(0.9)) / 2)
    # Q: w3, w4 and the unlikely w2 (.1 / 7) forced, then the default eos (.9)
    pos = [ln(0.1), ln(0.2), ln(0.1 / 7), ln(0.9)]
    check_hyp(hypos[1][0], [W3, W4, W2, EOS], pos, sum(pos) / 4)
    assert [tokens.size(0) for tokens, _ in model.decoder.calls] == [2, 2, 1, 1]


# ---------------------------------------------------------------------------- 8. batches
# A finishes at step 1, C at step 2, B at step 3 (beam 2: each finishes with two hypotheses at once).
SAMPLE_A = Script({(): {W1: 0.6, W2: 0.35}, (W1,): {EOS: 0.9}, (W2,): {EOS: 0.9}}, default={EOS: 0.9})
SAMPLE_B = Script(
    {
        (): {W3: 0.7, W4: 0.25},
        (W3,): {W5: 0.9},
        (W4,): {W5: 0.9},
        (W3, W5): {W1: 0.9},
        (W4, W5): {W2: 0.9},
        (W3, W5, W1): {EOS: 0.9},
        (W4, W5, W2): {EOS: 0.9},
    },
    default={W4: 0.9},
)
SAMPLE_C = Script(
    {(): {W5: 0.8, W1: 0.15}, (W5,): {W4: 0.9}, (W1,): {W4: 0.9}, (W5, W4): {EOS: 0.9}, (W1, W4): {EOS: 0.9}},
    default={W3: 0.9},
)
BATCH_SCRIPTS = {W1: SAMPLE_A, W2: SAMPLE_B, W3: SAMPLE_C}
BATCH_SRC = {W1: (W1, W5, W5), W2: (W2, W5, PAD), W3: (W3, PAD, PAD)}
BATCH_EXPECTED = {
    W1: [([W1, EOS], [ln(0.6), ln(0.9)]), ([W2, EOS], [ln(0.35), ln(0.9)])],
    W2: [([W3, W5, W1, EOS], [ln(0.7)] + [ln(0.9)] * 3), ([W4, W5, W2, EOS], [ln(0.25)] + [ln(0.9)] * 3)],
    W3: [([W5, W4, EOS], [ln(0.8), ln(0.9), ln(0.9)]), ([W1, W4, EOS], [ln(0.15), ln(0.9), ln(0.9)])],
}


def test_each_sample_alone_gives_the_hand_traced_hypotheses():
    for sid, expected in BATCH_EXPECTED.items():
        hypos, _ = run(BATCH_SCRIPTS, src=(BATCH_SRC[sid],), beam_size=2, max_len_b=6)
        assert len(hypos[0]) == 2
        for h, (tokens, pos) in zip(hypos[0], expected):
            check_hyp(h, tokens, pos, sum(pos) / len(tokens))


@pytest.mark.parametrize("order", list(itertools.permutations([W1, W2, W3])))
def test_batch_gives_same_hypotheses_as_each_sample_alone_when_samples_finish_at_different_steps(order):
    hypos, model = run(BATCH_SCRIPTS, src=tuple(BATCH_SRC[s] for s in order), beam_size=2, max_len_b=6)
    assert len(hypos) == 3
    for sid, sample_hyps in zip(order, hypos):
        alone, _ = run(BATCH_SCRIPTS, src=(BATCH_SRC[sid],), beam_size=2, max_len_b=6)
        assert [h["tokens"].tolist() for h in sample_hyps] == [h["tokens"].tolist() for h in alone[0]]
        for h, a in zip(sample_hyps, alone[0]):
            assert float(h["score"]) == pytest.approx(float(a["score"]), abs=1e-6)
            assert torch.allclose(h["positional_scores"], a["positional_scores"], atol=1e-6)
        for h, (tokens, pos) in zip(sample_hyps, BATCH_EXPECTED[sid]):
            check_hyp(h, tokens, pos, sum(pos) / len(tokens))
    # BOS is decoded once per sample; after pruning, the batch shrinks: only B's two rows remain at step 2..3
    sizes = [tokens.size(0) for tokens, _ in model.decoder.calls]
    assert sizes == [3, 6, 4, 2]
    assert model.decoder.calls[-1][1] == [W2, W2]


# ---------------------------------------------------------------------------- 9. sampling
GREEDY_SCRIPT = Script({(): {W2: 0.5, W1: 0.3}, (W2,): {W4: 0.6, EOS: 0.2}, (W2, W4): {EOS: 0.7}}, default={EOS: 0.5})


def test_sampling_step_with_topk_1_picks_the_argmax():
    g = torch.Generator().manual_seed(1)
    lprobs = torch.log_softmax(torch.randn(2, 3, V, generator=g), -1)
    prev = torch.randn(2, 3, 1, generator=g)
    scores, idx, beams = Sampling(topk=1).step(1, lprobs.clone(), prev)
    assert torch.equal(idx, lprobs.argmax(-1))
    assert torch.allclose(scores, lprobs.max(-1).values + prev[:, :, 0])
    assert torch.equal(beams, torch.arange(3).repeat(2, 1))
    scores, idx, beams = Sampling(topk=1).step(0, lprobs.clone(), torch.zeros(2, 3, 0))
    assert torch.equal(idx, lprobs[:, 0].argmax(-1, keepdim=True).expand(2, 3))
    assert beams.eq(0).all()


def test_sampling_with_topk_1_equals_greedy_decoding():
    pos = [ln(0.5), ln(0.6), ln(0.7)]
    greedy, _ = run(GREEDY_SCRIPT, beam_size=1)
    check_hyp(greedy[0][0], [W2, W4, EOS], pos, sum(pos) / 3)
    torch.manual_seed(0)
    sampled, _ = run(GREEDY_SCRIPT, beam_size=2, sampling=True, sampling_topk=1)
    assert len(sampled[0]) == 2
    for h in sampled[0]:
        check_hyp(h, [W2, W4, EOS], pos, sum(pos) / 3)


def test_trie_with_fewer_answers_than_beams_keeps_every_answer_and_stops_when_they_are_finished():
    # two answers (w1 / w2 w3) and beam 4: both hypotheses come out with their scores, and the search
    # stops after the longer answer's eos instead of stepping on to max_len (30) for four hypotheses
    trie = Trie(EOS)
    trie.insert([BOS, W1, EOS])
    trie.insert([BOS, W2, W3, EOS])
    trie.insert([BOS, W1, EOS])  # a repeated answer is one sequence
    assert trie.num_sequences == 2
    script = Script({(): {W1: 0.3, W2: 0.6}, (W1,): {EOS: 0.5}, (W2,): {W3: 0.4}, (W2, W3): {EOS: 0.8}})
    hypos, model = run(script, beam_size=4, constraint_trie=trie, normalize_scores=False, max_len_b=30)
    # renormalised over the trie's choices: w1 .3/.9, w2 .6/.9, then w3 and eos are the only children
    first, second = hypos[0]
    check_hyp(first, [W2, W3, EOS], [ln(0.6 / 0.9), 0.0, 0.0], ln(0.6 / 0.9))
    check_hyp(second, [W1, EOS], [ln(0.3 / 0.9), 0.0], ln(0.3 / 0.9))
    assert len(model.decoder.calls) == 3
