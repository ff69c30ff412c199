"""Parity with the official OFA code on configurations other than ../shared/reference.

``tests/data/official_oracle.pt`` holds what the *official* OFA implementation computes for three
small configurations that the reference checkpoint does not cover: ResNet-101 and ResNet-50
backbones, 3/2 and 2/3 encoder/decoder layers, 4 and 6 heads, a post-LN variant with relu,
embedding scaling and residual scales, non-square images (6x4, 3x6 and 4x4 patch grids) with a
text-only sample in the batch, decoder logits with mixed ``code_masks``, and generations: free beam
search with n-gram blocking, image-code generation (``gen_code`` + ``constraint_range``), a trie of
20 multi-token answers, and trie + per-row ``prefix_tokens`` of different lengths (the VQA
``prev_output`` prompt layout).

How the data file was produced (no official code is kept in this repository):
the official files ``models/ofa/unify_transformer.py``, ``unify_transformer_layer.py`` and
``resnet.py`` (OFA-Sys/OFA @ 0305cb7e / 6422a954), ``unify_multihead_attention.py`` (@ ab893b25, the
version with ``prompt_kv`` that the layer file calls), ``models/sequence_generator.py`` (@ 1b884031)
and ``utils/trie.py`` (@ 584e0948) were transcribed to a throw-away folder outside the repository,
only trimmed of unused code paths (argument parsing, prompt tuning, adapters, state-dict upgrades,
alignment) and imports, and run with fairseq 0.12.3.1 / torch 2.14 on CPU in fp32. A script then,
for every configuration below: built THIS project's ``OFAModel.from_config`` with the stored config,
filled it with ``ofa.model.init.seeded_weights(model, seed)``, built the official ``TransformerModel``
(``build_model`` -> ``build_encoder``/``build_decoder``) from the same values as an argparse
Namespace, checked that the derived buffers (``*_rp_bucket``, ``image_position_idx``) are equal,
loaded our state dict into it (only the official ``version`` buffers missing), ran the official
encoder, decoder and ``SequenceGenerator`` (search ``fairseq.search.BeamSearch``, as
``tasks/ofa_task.py`` builds it) in eval mode, compared against this project, and stored the
official results (images are stored in fp16; their values were drawn fp16-representable).

One deliberate deviation: for ``no_repeat_ngram_size`` the official generator calls fairseq's
``NGramRepeatBlock`` with the whole pad-filled ``tokens`` buffer. With the CUDA extension that is
fine (the kernel uses ``step``), but fairseq's CPU fallback ``_no_repeat_ngram`` compares against the
last ``n-1`` entries of that buffer, which are padding, so on CPU it never bans anything (fairseq
issue #4709). The oracle therefore fed the blocker ``tokens[:, :step + 1]``, i.e. the CUDA semantics,
which is what this project implements; everything else ran unmodified.

The weight filling is independent of module init and registration order (sorted
parameter names, one seeded generator), so the file stays valid as long as parameter names and
shapes do.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ofa.model.init import seeded_weights

DATA = Path(__file__).resolve().parent / "data" / "official_oracle.pt"



@pytest.fixture(scope="module")
def oracle():
    return torch.load(DATA, weights_only=True)


@pytest.fixture(scope="module")
def dictionary(bpe_dir):
    from ofa.tokenizer import load_tokenizer

    d = load_tokenizer(bpe_dir).dictionary
    assert len(d) == 59457
    return d


_MODELS = {}


def _model(rec, dictionary):
    """Our model for one stored configuration (built once per session)."""
    from ofa.model import OFAModel, OFAModelConfig

    if rec["name"] not in _MODELS:
        model = OFAModel.from_config(OFAModelConfig(**rec["cfg"]), dictionary)
        _MODELS[rec["name"]] = seeded_weights(model, rec["seed"]).eval()
    return _MODELS[rec["name"]]


def _net_input(rec):
    inp = dict(rec["inputs"])
    inp["patch_images"] = inp["patch_images"].float()
    return inp


CONFIG_NAMES = ["r101_e3d2_h4", "r50_e2d3_h6", "r50_postln_relu_scaled"]


@pytest.fixture(params=CONFIG_NAMES)
def case(request, oracle, dictionary):
    recs = {r["name"]: r for r in oracle["configs"]}
    rec = recs[request.param]
    return rec, _model(rec, dictionary), dictionary


def test_oracle_file_covers_the_intended_cases(oracle):
    recs = {r["name"]: r for r in oracle["configs"]}
    assert sorted(recs) == sorted(CONFIG_NAMES)
    assert {r["cfg"]["resnet_type"] for r in recs.values()} == {"resnet50", "resnet101"}
    for rec in recs.values():
        h, w = rec["image_hw"]
        assert rec["inputs"]["patch_images"].shape[-2:] == (h, w)
        assert not bool(rec["inputs"]["patch_masks"].all())  # a text-only sample in every batch
        assert set(rec["generation"]) == {"free_ngram", "gen_code", "trie", "trie_prefix", "free_prefix"}
    assert any(h != w for h, w in (r["image_hw"] for r in recs.values()))


def test_encoder_output_matches_official(case):
    rec, model, _ = case
    with torch.no_grad():
        out = model.encoder(**_net_input(rec))
    torch.testing.assert_close(out["encoder_out"][0].transpose(0, 1), rec["encoder_out"], atol=1e-4, rtol=0)
    assert torch.equal(out["encoder_padding_mask"][0], rec["encoder_padding_mask"])


@pytest.mark.parametrize("which", ["mixed", "text", "allcode"])
def test_decoder_logits_match_official(case, which):
    rec, model, _ = case
    inp = _net_input(rec)
    want = rec[f"logits_{which}"]
    with torch.no_grad():
        logits, _ = model(inp["src_tokens"], inp["src_lengths"], rec["prev_output_tokens"],
                          patch_images=inp["patch_images"], patch_masks=inp["patch_masks"],
                          code_masks=want["code_masks"])
    torch.testing.assert_close(logits[:, :, rec["logits_index"]], want["at_index"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.logsumexp(-1), want["logsumexp"], atol=1e-5, rtol=0)
    assert torch.equal(logits.argmax(-1), want["argmax"])


@pytest.mark.parametrize("which", ["free_ngram", "gen_code", "trie", "trie_prefix", "free_prefix"])
def test_generation_matches_official(case, which):
    from ofa.generate import SequenceGenerator, Trie

    rec, model, d = case
    spec = rec["generation"][which]
    kwargs = dict(spec["kwargs"])
    if spec["uses_trie"]:
        trie = Trie(d.eos())
        for ids in rec["trie_ids"]:
            trie.insert(ids)
        kwargs["constraint_trie"] = trie
    prefix = rec["prefix_tokens"] if spec["prefix"] else None
    gen = SequenceGenerator([model], d, **kwargs)
    out = gen.generate([model], {"net_input": _net_input(rec)}, prefix_tokens=prefix)
    assert [[h["tokens"].tolist() for h in hyps] for hyps in out] == spec["tokens"]
    got = torch.tensor([[float(h["score"]) for h in hyps] for hyps in out])
    torch.testing.assert_close(got, torch.tensor(spec["scores"]), atol=1e-4, rtol=0)
    for hyps, want in zip(out, spec["positional_scores"]):
        for h, w in zip(hyps, want):
            torch.testing.assert_close(h["positional_scores"], torch.tensor(w), atol=1e-4, rtol=0)
