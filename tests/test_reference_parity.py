"""Parity with the official OFA code on ../shared/reference (see its README).

The reference checkpoint is loaded in both published formats (official fairseq ``.pt`` and the
mmpretrain conversion); each must reproduce the official encoder output, logits, the three
generations (free beam search, bins-only constraint range, answer trie) and the BPE ids.
"""
from __future__ import annotations


import pytest
import torch

from ofa.checkpoint import load_model, official_to_mmpretrain, safe_load
from ofa.generate import SequenceGenerator, Trie
from ofa.model.positions import code_position_ids, image_bucket_table, token_bucket_table
from ofa.tokenizer import load_tokenizer

CKPT = "ofa_micro_a.pt.gz"


@pytest.fixture(scope="module")
def expected(reference_dir):
    return torch.load(reference_dir / "ofa_micro_a.expected.pt", weights_only=False)


@pytest.fixture(scope="module")
def mm_checkpoint(reference_dir, tmp_path_factory):
    """The mmpretrain file, rebuilt exactly as the reference README describes."""
    official = safe_load(str(reference_dir / CKPT))["model"]
    rows = [line.split("\t") for line in (reference_dir / "ofa_micro_a.mmpretrain_keys.tsv").read_text().splitlines()]
    state = {mm: official[off] for mm, off in rows}
    path = tmp_path_factory.mktemp("mm") / "ofa_micro_a_mmpretrain.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module", params=["fairseq", "mmpretrain"])
def model_and_dict(request, reference_dir, bpe_dir, mm_checkpoint):
    path = reference_dir / CKPT if request.param == "fairseq" else mm_checkpoint
    model, dictionary, info = load_model(str(path), bpe_dir=bpe_dir)
    assert info.format == request.param
    return model, dictionary


def _net_input(expected):
    inp = dict(expected["inputs"])
    inp.pop("prev_output_tokens")
    inp.pop("code_masks")
    return inp


def test_encoder_output_matches_official(model_and_dict, expected):
    model, _ = model_and_dict
    inp = _net_input(expected)
    with torch.no_grad():
        out = model.encoder(**inp)
    torch.testing.assert_close(out["encoder_out"][0].transpose(0, 1), expected["encoder_out"], atol=1e-4, rtol=0)
    assert torch.equal(out["encoder_padding_mask"][0], expected["encoder_padding_mask"])


def test_decoder_logits_match_official(model_and_dict, expected):
    model, _ = model_and_dict
    inp = expected["inputs"]
    with torch.no_grad():
        logits, _ = model(inp["src_tokens"], inp["src_lengths"], inp["prev_output_tokens"],
                          patch_images=inp["patch_images"], patch_masks=inp["patch_masks"])
    torch.testing.assert_close(logits[:, :, expected["logits_index"]], expected["logits_at_index"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.logsumexp(-1), expected["logsumexp"], atol=1e-5, rtol=0)
    assert torch.equal(logits.argmax(-1), expected["argmax"])


def _check_generation(hypos, want_tokens, want_scores=None):
    assert len(hypos) == len(want_tokens)
    for sample_hyps, sample_want in zip(hypos, want_tokens):
        assert [h["tokens"].tolist() for h in sample_hyps] == [list(t) for t in sample_want]
    if want_scores is not None:
        got = torch.tensor([[float(h["score"]) for h in s] for s in hypos])
        torch.testing.assert_close(got, torch.tensor(want_scores), atol=1e-4, rtol=0)


def test_free_beam_search_matches_official(model_and_dict, expected):
    model, d = model_and_dict
    gen = SequenceGenerator([model], d, beam_size=3, max_len_a=0, max_len_b=6, min_len=1)
    out = gen.generate([model], {"net_input": _net_input(expected)})
    _check_generation(out, expected["generation"]["free"], expected["generation"]["free_scores"])


def test_bins_constraint_range_matches_official(model_and_dict, expected):
    model, d = model_and_dict
    gen = SequenceGenerator([model], d, beam_size=3, max_len_b=4, min_len=4, constraint_range="58457,59457")
    out = gen.generate([model], {"net_input": _net_input(expected)})
    _check_generation(out, expected["generation"]["bins"])
    for hyps in out:
        for h in hyps:
            assert all(58457 <= t < 59457 for t in h["tokens"][:-1].tolist())


def test_trie_constrained_generation_matches_official(model_and_dict, expected, bpe_dir):
    model, d = model_and_dict
    tok = load_tokenizer(bpe_dir)
    trie = Trie(d.eos())
    for answer, ids in zip(expected["trie_answers"], expected["trie_ids"]):
        built = [d.bos()] + tok.encode(" " + answer).tolist() + [d.eos()]
        assert built == list(ids)
        trie.insert(built)
    gen = SequenceGenerator([model], d, beam_size=3, max_len_b=8, min_len=1, constraint_trie=trie)
    out = gen.generate([model], {"net_input": _net_input(expected)})
    _check_generation(out, expected["generation"]["trie"])


def test_bpe_ids_match_official(bpe_dir, expected):
    tok = load_tokenizer(bpe_dir)
    assert len(tok.dictionary) == 59457
    for text, ids in expected["text_ids"].items():
        assert tok.encode(text).tolist() == list(ids), text


def test_rebuilt_buffers_equal_the_stored_ones(reference_dir):
    state = safe_load(str(reference_dir / CKPT))["model"]
    assert torch.equal(state["encoder.token_rp_bucket"], token_bucket_table(256))
    assert torch.equal(state["encoder.image_rp_bucket"], image_bucket_table(42))
    assert torch.equal(state["decoder.image_position_idx"], code_position_ids(128))


def test_mmpretrain_key_mapping_reproduces_the_converter(reference_dir):
    rows = [line.split("\t") for line in (reference_dir / "ofa_micro_a.mmpretrain_keys.tsv").read_text().splitlines()]
    for mm_key, official_key in rows:
        assert official_to_mmpretrain(official_key) == mm_key
    state = safe_load(str(reference_dir / CKPT))["model"]
    dropped = {k for k in state if official_to_mmpretrain(k) is None}
    assert dropped == {k for k in state if "version" in k}
    assert len(rows) == len(state) - len(dropped)
