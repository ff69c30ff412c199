"""The unified vocabulary and both tokenizers (official GPT-2 BPE, SentencePiece)."""
from __future__ import annotations


import pytest
import torch

from ofa.tokenizer import Vocab, load_tokenizer, main


def test_official_vocabulary_layout(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    d, v = tok.dictionary, tok.vocab
    assert (d.bos(), d.pad(), d.eos(), d.unk()) == (0, 1, 2, 3)
    assert (v.mask, v.code_start, v.bin_start, len(d)) == (50264, 50265, 58457, 59457)
    assert d[v.bin_token(999)] == "<bin_999>" and d[v.code_token(8191)] == "<code_8191>"


def test_special_tokens_pass_through_unsplit(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    ids = tok.encode(" what does the region describe? region: <bin_1> <bin_2> <bin_3> <bin_4>").tolist()
    assert ids[-4:] == [58458, 58459, 58460, 58461]
    assert 220 not in ids[-5:]  # no stray space tokens next to the location tokens
    assert tok.encode("<code_5> <mask>").tolist() == [50270, 50264]


def test_gpt2_decode_round_trip(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    text = " a dog sits left of <bin_10> <bin_20> <bin_30> <bin_40> two cats"
    ids = tok.encode(text)
    assert tok.decode(torch.cat([torch.tensor([0]), ids, torch.tensor([2])])) == text.strip()


def test_sentencepiece_tokenizer_has_the_same_special_layout(spm_dir):
    tok = load_tokenizer(spm_dir)
    v = Vocab.of(tok.dictionary)
    assert tok.kind == "sentencepiece"
    assert v.bin_start == len(tok.dictionary) - 1000 and v.code_start == v.bin_start - 8192
    ids = tok.encode(" a red circle <bin_3> <bin_7>").tolist()
    assert ids[-2:] == [v.bin_token(3), v.bin_token(7)]
    assert tok.dictionary.unk() not in ids
    assert tok.decode(ids) == "a red circle <bin_3> <bin_7>"


def test_missing_tokenizer_files_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither GPT-2 BPE files .* nor a SentencePiece model"):
        load_tokenizer(str(tmp_path))


def test_tokenizer_cli_trains_a_sentencepiece_model(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"the {c} ball is on the {s}" for c in ["red", "blue", "green"] * 5
                                for s in ["left", "right", "table"]) + "\n")
    main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "tok"), "--vocab-size", "300"])
    assert "wrote" in capsys.readouterr().out
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok.decode(tok.encode(" the red ball")) == "the red ball"
