"""Initialisation of a model built from scratch: the official BERT-style init, and ``layer_init_std``."""
from __future__ import annotations

import pytest
import torch

from ofa.model import OFAModel, config_for_arch
from ofa.model.init import layer_weight_names

# ofa_test is 32 wide: a fresh 64-d model gives each layer weight 4,096+ draws, enough to tell 0.02 from 0.06
OVERRIDES = dict(encoder_embed_dim=64, decoder_embed_dim=64, encoder_ffn_embed_dim=128, decoder_ffn_embed_dim=128)


def fresh(small_dict, seed=0, **overrides):
    torch.manual_seed(seed)
    return OFAModel.from_config(config_for_arch("ofa_test", **OVERRIDES, **overrides), small_dict)


def test_default_init_draws_every_linear_and_embedding_from_n_0_002_with_zero_biases(small_dict):
    model = fresh(small_dict)
    linears = [(n, m) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not n.startswith("encoder.embed_images")]
    assert len(linears) > 20
    for name, m in linears:
        assert abs(m.weight.std().item() - 0.02) < 0.003, name
        assert m.bias is None or not m.bias.any(), name
    assert abs(model.encoder.embed_tokens.weight[1:].std().item() - 0.02) < 0.002


def test_layer_init_std_redraws_the_layers_attention_and_ffn_weights_and_nothing_else(small_dict):
    base, wide = fresh(small_dict), fresh(small_dict, layer_init_std=0.06)
    names = set(layer_weight_names(wide))
    # one encoder layer: q, k, v, out, fc1, fc2; one decoder layer: self q, k, v, out, cross q, k, v, out, fc1, fc2
    assert len(names) == 16
    assert "decoder.layers.0.encoder_attn.k_proj" in names and "encoder.layers.0.fc2" in names
    a, b = dict(base.named_parameters()), dict(wide.named_parameters())
    redrawn = {f"{n}.weight" for n in names}
    for key in a:
        if key in redrawn:
            assert abs(b[key].std().item() - 0.06) < 0.006, key
        else:  # the same random draws as the official init: the re-draw comes after all of it
            assert torch.equal(a[key], b[key]), key


def test_layer_init_std_at_the_official_value_is_the_official_init(small_dict):
    a, b = fresh(small_dict), fresh(small_dict, layer_init_std=0.02)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("std", [0.0, -0.1])
def test_layer_init_std_must_be_positive(small_dict, std):
    with pytest.raises(ValueError, match=f"layer_init_std must be > 0, got {std}"):
        fresh(small_dict, layer_init_std=std)
