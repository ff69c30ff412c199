"""Model behaviour on the tiny ``ofa_test`` preset: shapes, caches, padding, code positions, sizes."""
from __future__ import annotations

import pytest
import torch

from conftest import make_dictionary, randomize_
from model_helpers import toy_batch
from ofa.model import OFAModel, config_for_arch
from ofa.model.positions import image_bucket_table, patch_position_ids, token_bucket_table



def build(dictionary, seed=0, **overrides):
    torch.manual_seed(seed)
    model = OFAModel.from_config(config_for_arch("ofa_test", **overrides), dictionary)
    return randomize_(model, seed).eval()




@pytest.mark.parametrize("arch,millions", [("ofa_tiny", 33.49), ("ofa_medium", 92.89), ("ofa_base", 182.24),
                                           ("ofa_large", 472.98), ("ofa_huge", 929.49)])
def test_parameter_counts_equal_the_official_sizes(arch, millions):
    d = make_dictionary(num_text=50260)  # the official GPT-2 dict.txt size -> 59457 entries
    assert len(d) == 59457
    with torch.device("meta"):
        model = OFAModel.from_config(config_for_arch(arch), d)
    count = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert round(count / 1e6, 2) == millions


def test_unknown_arch_and_backbone_are_named_in_the_error(small_dict):
    with pytest.raises(ValueError, match="unknown OFA architecture 'ofa_giant'"):
        config_for_arch("ofa_giant")
    with pytest.raises(ValueError, match="unknown resnet_type 'resnet7'"):
        OFAModel.from_config(config_for_arch("ofa_test", resnet_type="resnet7"), small_dict)


def test_forward_shapes_follow_the_official_signature(small_dict):
    model = build(small_dict)
    b = toy_batch(small_dict)
    logits, extra = model(**b)
    assert logits.shape == (2, 5, len(small_dict))
    enc = model.encoder(b["src_tokens"], src_lengths=b["src_lengths"], patch_images=b["patch_images"],
                        patch_masks=b["patch_masks"])
    assert enc["encoder_out"][0].shape == (16 + 7, 2, 32)  # image first: 16 patches + 7 tokens
    assert enc["encoder_padding_mask"][0].shape == (2, 23)
    assert enc["position_embeddings"][0].shape == (2, 23, 32)


def test_incremental_decoding_equals_full_sequence_decoding(small_dict):
    model = build(small_dict)
    b = toy_batch(small_dict, tgt_len=6)
    with torch.no_grad():
        full, _ = model(**b)
        enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"])
        state = {}
        steps = []
        for t in range(1, 7):
            out, _ = model.decoder(b["prev_output_tokens"][:, :t], encoder_out=enc, incremental_state=state)
            assert out.shape[1] == 1
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def assert_cache_follows(model, b, order: torch.Tensor, cached_steps: int = 3):
    """Decode ``cached_steps`` tokens incrementally, reorder every cache by ``order`` (as beam search does),
    then the next cached step must equal decoding the reordered prefixes in full."""
    prev = b["prev_output_tokens"]
    with torch.no_grad():
        enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"])
        state = {}
        for t in range(1, cached_steps + 1):
            model.decoder(prev[:, :t], encoder_out=enc, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        enc_r = model.encoder.reorder_encoder_out(enc, order)
        step, _ = model.decoder(prev[order, :cached_steps + 1], encoder_out=enc_r, incremental_state=state)
        full, _ = model.decoder(prev[order, :cached_steps + 1], encoder_out=enc_r)
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


def test_beam_reordering_of_the_cache_follows_the_new_order(small_dict):
    b = toy_batch(small_dict, tgt_len=4)
    # two beams of one sample: same source and image, different prefixes (the cross-attention
    # cache is shared by a sample's beams, so only the self-attention cache needs reordering)
    for key in ("src_tokens", "patch_images"):
        b[key][1] = b[key][0]
    assert_cache_follows(build(small_dict), b, torch.tensor([1, 0]))


def test_cache_follows_a_batch_that_drops_and_reorders_samples(small_dict):
    """Beam search drops finished samples: every cache (self- and cross-attention keys/values, the source
    position keys of the cross-attention bias) must then keep the surviving samples' rows, in order."""
    b = toy_batch(small_dict, bsz=3, tgt_len=4, seed=4)  # three different sources and images
    assert_cache_follows(build(small_dict, seed=3), b, torch.tensor([2, 0]))  # sample 1 finished, 0 and 2 swap


def test_padded_batch_equals_samples_run_alone(small_dict):
    model = build(small_dict)
    d = small_dict
    a = toy_batch(d, bsz=1, src_len=9, tgt_len=6, seed=1)
    c = toy_batch(d, bsz=1, src_len=5, tgt_len=3, seed=2)
    c["patch_masks"][:] = False  # a text-only sample rides along with a dummy image
    src = torch.full((2, 9), d.pad())
    src[0], src[1, :5] = a["src_tokens"][0], c["src_tokens"][0]
    prev = torch.full((2, 6), d.pad())
    prev[0], prev[1, :3] = a["prev_output_tokens"][0], c["prev_output_tokens"][0]
    with torch.no_grad():
        both, _ = model(src, torch.tensor([9, 5]), prev, patch_images=torch.cat([a["patch_images"], c["patch_images"]]),
                        patch_masks=torch.tensor([True, False]))
        alone_a, _ = model(**a)
        alone_c, _ = model(**c)
    torch.testing.assert_close(both[0], alone_a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1, :3], alone_c[0], atol=1e-5, rtol=1e-5)


def test_text_only_sample_ignores_its_dummy_image(small_dict):
    model = build(small_dict)
    b = toy_batch(small_dict, bsz=1)
    b["patch_masks"][:] = False
    with torch.no_grad():
        one, _ = model(**b)
        b["patch_images"] = torch.randn_like(b["patch_images"])
        two, _ = model(**b)
    torch.testing.assert_close(one, two, atol=1e-6, rtol=0)


def test_code_masks_select_image_positions_per_sample(small_dict):
    model = build(small_dict)
    b = toy_batch(small_dict, bsz=2, tgt_len=6)
    with torch.no_grad():
        mixed, _ = model(**b, code_masks=torch.tensor([True, False]))
        codes, _ = model(**b, code_masks=torch.tensor([True, True]))
        text, _ = model(**b)
    torch.testing.assert_close(mixed[0], codes[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], text[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(codes[1], text[1])


def test_code_decoding_incremental_equals_full(small_dict):
    model = build(small_dict)
    b = toy_batch(small_dict, bsz=2, tgt_len=5)
    code = torch.ones(2, dtype=torch.bool)
    with torch.no_grad():
        full, _ = model(**b, code_masks=code)
        enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"])
        state, steps = {}, []
        for t in range(1, 6):
            steps.append(model.decoder(b["prev_output_tokens"][:, :t], code_masks=code, encoder_out=enc,
                                       incremental_state=state)[0])
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_non_square_images_use_row_stride_42(small_dict):
    model = build(small_dict)
    b = toy_batch(small_dict, bsz=1)
    b["patch_images"] = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"])
        logits, _ = model(**b)
    assert enc["encoder_out"][0].shape[0] == 4 * 6 + 7
    assert torch.isfinite(logits).all()
    ids = patch_position_ids(4, 6)
    assert ids[:7].tolist() == [1, 2, 3, 4, 5, 6, 43]


def test_sample_patch_num_keeps_that_many_patches(small_dict):
    model = build(small_dict)
    b = toy_batch(small_dict)
    enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"],
                        sample_patch_num=5)
    assert enc["encoder_out"][0].shape[0] == 5 + 7


def test_sdpa_and_math_attention_agree(small_dict):
    sdpa = build(small_dict, attention_impl="sdpa")
    math = build(small_dict, attention_impl="math")
    math.load_state_dict(sdpa.state_dict())
    b = toy_batch(small_dict)
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**b)[0], math(**b)[0], atol=1e-5, rtol=1e-5)


def test_training_mode_backward_reaches_every_parameter(small_dict):
    model = build(small_dict, dropout=0.1, encoder_drop_path_rate=0.1, decoder_drop_path_rate=0.1).train()
    b = toy_batch(small_dict)
    logits, _ = model(**b, code_masks=torch.tensor([True, False]))
    logits.logsumexp(-1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    # only the second image table rows / type rows may legitimately be unused; all modules get gradients
    assert not [n for n in no_grad if "rel_pos_table" not in n], no_grad


def test_timm_backbone_option_builds_a_stride16_extractor(small_dict):
    model = OFAModel.from_config(config_for_arch("ofa_test", resnet_type="timm:resnet18"), small_dict).eval()
    b = toy_batch(small_dict, bsz=1)
    with torch.no_grad():
        enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"])
    assert enc["encoder_out"][0].shape[0] == 16 + 7


def test_timm_backbone_at_stride_8_gives_a_finer_patch_grid(small_dict):
    from ofa.model.resnet import build_image_backbone

    model = OFAModel.from_config(config_for_arch("ofa_test", resnet_type="timm:resnet18@8"), small_dict).eval()
    b = toy_batch(small_dict, bsz=1)
    with torch.no_grad():
        enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"])
    assert enc["encoder_out"][0].shape[0] == 64 + 7  # 64 px image / 8 = 8 x 8 patches, then the text
    with pytest.raises(ValueError, match="stride-3"):
        build_image_backbone("timm:resnet18@3")
    with pytest.raises(ValueError, match="integer"):
        build_image_backbone("timm:resnet18@x")


def test_relative_position_buckets_follow_the_official_formula():
    table = token_bucket_table(256)
    rel = {129: 129, 130: 129, 200: 156, 500: 212, 1023: 255, -200: -156, 0: 0, 128: 128}
    for r, bucket in rel.items():
        i, j = (r, 0) if r >= 0 else (0, -r)
        assert table[i, j].item() == bucket + 255
    img = image_bucket_table(42)
    assert img.shape == (1765, 1765)
    assert img[0, 0] == 6891 and img[0, 5] == 6889 and img[5, 0] == 6890
    # cell (0,0) -> id 1, cell (1,2) -> id 45: query (1,2) minus key (0,0) = (1,2)
    assert img[45, 1] == (1 + 41) * 83 + (2 + 41)


def test_a_prompt_decoded_in_one_call_then_step_by_step_equals_full_decoding(small_dict):
    """The generator's prompt prefill: an empty cache given 4 positions computes them all (causally) and
    keeps them; the next calls add one position each, as fairseq's generators call the decoder."""
    model = build(small_dict, seed=5)
    b = toy_batch(small_dict, tgt_len=7, seed=5)
    prev = b["prev_output_tokens"]
    with torch.no_grad():
        full, _ = model(**b)
        enc = model.encoder(b["src_tokens"], patch_images=b["patch_images"], patch_masks=b["patch_masks"])
        state = {}
        first, _ = model.decoder(prev[:, :4], encoder_out=enc, incremental_state=state)
        assert first.shape[1] == 4
        steps = [first] + [model.decoder(prev[:, :t], encoder_out=enc, incremental_state=state)[0] for t in (5, 6, 7)]
        with pytest.raises(ValueError, match="already holds 7 positions"):
            model.decoder(prev[:, :7], encoder_out=enc, incremental_state=state)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_trie_constrained_beam_search_with_prompts_prefills_them_and_equals_stepwise_decoding(small_dict):
    """Closed-set beam search after a forced decoder prompt (VQA / entailment with prev_output): the prompt
    positions every sample forces are decoded in one call; hypotheses and scores equal decoding without a
    cache (every step recomputed), for prompts of different lengths and samples finishing apart."""
    from ofa.generate import SequenceGenerator, Trie

    d = small_dict
    model = build(d, seed=6)
    b = toy_batch(d, bsz=3, src_len=8, seed=6)
    trie = Trie(d.eos())
    for answer in ([10], [11, 12], [13], [11, 14, 15], [16, 12]):
        trie.insert([d.bos(), *answer, d.eos()])
    prefix = torch.full((3, 6), d.pad())
    for row, length in enumerate((4, 6, 5)):
        prefix[row, :length] = torch.randint(20, 40, (length,), generator=torch.Generator().manual_seed(row))
    sample = {"net_input": {k: v for k, v in b.items() if k != "prev_output_tokens"}}
    calls = []
    hook = model.decoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    try:
        got = {}
        for use_cache in (True, False):
            calls.clear()
            gen = SequenceGenerator([model], d, beam_size=3, max_len_b=12, constraint_trie=trie,
                                    normalize_scores=False, use_cache=use_cache)
            got[use_cache] = gen.generate([model], sample, prefix_tokens=prefix)
            if use_cache:
                assert calls[0] == 4  # BOS + the first 3 prompt tokens at once: the shortest prompt is 4
    finally:
        hook.remove()
    for cached, plain in zip(got[True], got[False]):
        assert len(cached) == len(plain) == 3
        for h, r in zip(cached, plain):
            assert h["tokens"].tolist() == r["tokens"].tolist()
            torch.testing.assert_close(h["positional_scores"], r["positional_scores"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h["score"], r["score"], atol=1e-5, rtol=1e-5)
    for row, hyps in enumerate(got[True]):  # every hypothesis: the row's prompt, then an answer of the trie
        n = int(prefix[row].ne(d.pad()).sum())
        assert all(h["tokens"][:n].tolist() == prefix[row, :n].tolist() for h in hyps)


def test_dummy_images_stay_out_of_the_backbone_and_its_batchnorm_statistics(small_dict):
    """A text-only sample's dummy image is masked anyway; in a batch with real images it is not run through
    the ResNet, so training-mode BatchNorm statistics come from the real images alone (and eval outputs
    are unchanged: test_padded_batch_equals_samples_run_alone)."""
    b = toy_batch(small_dict, bsz=3, seed=7)
    b["patch_masks"] = torch.tensor([True, False, True])
    b["patch_images"][1] = 0.0
    real = {k: (v[[0, 2]] if torch.is_tensor(v) and v.dim() and v.size(0) == 3 else v) for k, v in b.items()}

    def running_stats(inputs):
        model = build(small_dict, seed=8).train()
        with torch.no_grad():
            model(**inputs)
        return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}

    mixed, alone = running_stats(b), running_stats(real)
    assert mixed.keys() == alone.keys() and mixed
    for k in mixed:
        torch.testing.assert_close(mixed[k], alone[k], atol=1e-6, rtol=1e-5, msg=k)


def test_conv_bn_folds_fixed_statistics_and_keeps_batch_statistics_in_training():
    """``conv_bn`` equals ``bn(conv(x))``: folded into the kernel in eval mode and for frozen BatchNorm, the
    plain two-step path while BatchNorm trains on batch statistics (and its running statistics update)."""
    from ofa.model.resnet import FrozenBatchNorm2d, conv_bn

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    x = torch.randn(2, 4, 9, 7).contiguous(memory_format=torch.channels_last)
    bn = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(), bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict({k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"})
    bn.eval()
    torch.testing.assert_close(conv_bn(conv, bn, x), bn(conv(x)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv_bn(conv, frozen, x), frozen(conv(x)), atol=1e-5, rtol=1e-5)
    bn.train()
    before = bn.running_mean.clone()
    torch.testing.assert_close(conv_bn(conv, bn, x), torch.nn.functional.batch_norm(
        conv(x), None, None, bn.weight, bn.bias, training=True), atol=1e-5, rtol=1e-5)
    assert not torch.equal(bn.running_mean, before)
