"""The CPU inference kernels (``ofa.model.onednn``) and the decoding caches (beam-grouped cross-attention,
self-attention stores with spare capacity): each fast path computes what the plain path computes, and is
left whenever it could be wrong (gradients, training, changed weights, hooks, hand-filled caches)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_dictionary, randomize_
from model_helpers import toy_batch
from ofa.model import OFAModel, config_for_arch, onednn
from ofa.model.attention import MultiheadAttention, append_to_cache, fold_rows, unfold_rows
from ofa.model.resnet import OFAResNet

pytestmark = pytest.mark.skipif(not onednn.AVAILABLE, reason="this torch has no oneDNN")


def _linear(seed=0, out=37, inp=16, bias=True):
    torch.manual_seed(seed)
    return onednn.Linear(inp, out, bias=bias).eval()


def test_packed_linear_equals_f_linear_and_packs_once():
    lin = _linear()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        y = lin(x)
        packed = onednn.packed(lin)
        torch.testing.assert_close(y, F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        lin(torch.randn(7, 16))  # another row count reuses the packed weight
        assert onednn.packed(lin) is packed


def test_packed_weight_follows_weight_changes_and_training():
    lin = _linear(bias=False)
    x = torch.randn(4, 16)
    with torch.no_grad():
        lin(x)
        lin.weight.mul_(2)  # an in-place update (optimizer step, load_state_dict) bumps the version
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight), atol=1e-5, rtol=1e-5)
    lin.train()
    assert onednn.packed(lin) is None  # no packed copy is held while training
    with torch.no_grad():
        assert torch.equal(lin(x), F.linear(x, lin.weight))  # training mode: the plain path
    lin.eval()
    assert torch.equal(lin(x), F.linear(x, lin.weight))  # autograd on: the plain path, gradients flow
    assert lin(x).requires_grad


def test_environment_switch_turns_the_fast_path_off(monkeypatch):
    lin = _linear()
    monkeypatch.setenv("OFA_ONEDNN", "0")
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    assert onednn.packed(lin) is None


def _resnet(seed=0):
    torch.manual_seed(seed)
    net = OFAResNet([1, 2, 1])
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
    return net.eval()


def test_fused_resnet_equals_the_plain_path_and_leaves_its_input(monkeypatch):
    net = _resnet()
    x = torch.randn(2, 3, 64, 48)
    before = x.clone()
    with torch.no_grad():
        fused = net(x)
        assert onednn.packed(net.layer1[0].conv1) is not None  # the fused path ran
        monkeypatch.setenv("OFA_ONEDNN", "0")
        plain = net(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    net.train()
    assert onednn.packed(net.layer1[0].conv1) is None


def test_a_forward_hook_keeps_the_blocks_outputs_intact():
    """The fused path writes a block's output into its residual; with a hook (which may keep outputs) it
    is not taken, so what the hook kept is what the block returned."""
    net = _resnet(1)
    kept = []
    hook = net.layer2[0].register_forward_hook(lambda m, args, out: kept.append(out.clone()))
    hook_ref = net.layer2[0].register_forward_hook(lambda m, args, out: kept.append(out))
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    hook.remove(), hook_ref.remove()
    assert torch.equal(kept[0], kept[1])
    assert onednn.packed(net.layer1[0].conv1) is None


def test_fold_rows_groups_consecutive_rows_and_unfolds_back():
    x = torch.arange(6 * 2 * 1 * 3.0).view(6, 2, 1, 3)
    folded = fold_rows(x, 3)
    assert folded.shape == (2, 2, 3, 3)
    assert torch.equal(folded[1, 0, 2], x[5, 0, 0])
    assert torch.equal(unfold_rows(folded, 3), x)


def test_grouped_cross_attention_cache_equals_the_expanded_one():
    """Cross-attention keys cached once per sample and read by its ``beam`` consecutive query rows give the
    rows a cache expanded to every row gives; dropping a sample keeps the others' groups."""
    torch.manual_seed(0)
    attn = MultiheadAttention(16, 4, scale_heads=True, encoder_decoder_attention=True).eval()
    bsz, beam, src = 3, 2, 5
    enc = torch.randn(bsz, src, 16)
    padding = torch.zeros(bsz, src, dtype=torch.bool)
    padding[1, -2:] = True
    bias = torch.randn(bsz * beam, 4, 1, src)
    query = torch.randn(bsz * beam, 1, 16)
    expand = torch.arange(bsz).repeat_interleave(beam)
    rows_pad = padding[expand]
    with torch.no_grad():
        grouped, full = {}, {}
        attn(query[::beam], enc, padding, bias[::beam], incremental_state=grouped, static_kv=True)
        attn.reorder_incremental_state(grouped, expand)
        assert attn._get_input_buffer(grouped)["rows_per_key"] == beam
        assert attn._get_input_buffer(grouped)["prev_key"].size(0) == bsz
        want = attn(query, enc[expand], rows_pad, bias, incremental_state=full, static_kv=True)
        got = attn(query, None, rows_pad, bias, incremental_state=grouped, static_kv=True)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        keep = torch.tensor([4, 5, 0, 1])  # sample 1 finished; samples 2 and 0 remain, in that order
        attn.reorder_incremental_state(grouped, keep)
        attn.reorder_incremental_state(full, keep)
        want = attn(query[keep], None, rows_pad[keep], bias[keep], incremental_state=full, static_kv=True)
        got = attn(query[keep], None, rows_pad[keep], bias[keep], incremental_state=grouped, static_kv=True)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        assert attn._get_input_buffer(grouped)["prev_key"].size(0) == 2


def test_a_model_with_packed_weights_copies_and_pickles():
    """The packed oneDNN tensors cannot be copied or pickled; they live beside the modules, so the model can."""
    import copy
    import io

    net, lin = _resnet(2), _linear()
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64)), lin(torch.randn(2, 16))
    for module in (net, lin):
        clone = copy.deepcopy(module)
        torch.save(module, io.BytesIO())
        assert onednn.packed(clone if module is lin else clone.conv1) is None
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(lin)(x), lin(x), atol=1e-6, rtol=1e-6)


def test_weights_made_in_inference_mode_take_the_plain_path():
    with torch.inference_mode():
        lin = _linear()
        x = torch.randn(2, 16)
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    assert onednn.packed(lin) is None


def test_a_cast_round_trip_repacks_the_weight():
    """``.half().float()`` may return the weight to the same address with the same version: ``_apply`` drops
    the packed copy, so the rounded weight is what runs."""
    lin, net = _linear(), _resnet(3)
    x = torch.randn(2, 16)
    with torch.no_grad():
        lin(x), net(torch.randn(1, 3, 64, 64))
        lin.half().float(), net.half().float()
        assert onednn.packed(lin) is None and onednn.packed(net.conv1) is None
        torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


def test_torchscript_compiles_the_plain_path():
    lin = _linear()
    x = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(torch.jit.script(lin)(x), F.linear(x, lin.weight, lin.bias))


def test_torch_mkldnn_flags_turn_the_fast_path_off():
    lin = _linear()
    x = torch.randn(2, 16)
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    assert onednn.packed(lin) is None


def test_lora_base_layers_stay_unpacked_so_a_peft_merge_is_seen():
    """peft's ``merge()`` adds the adapter into the base weight through ``.data`` (no version bump): the base
    layers of a LoRA model never take the packed path, so the merged model equals the unmerged one."""
    pytest.importorskip("peft")
    d = make_dictionary()
    torch.manual_seed(0)
    model = randomize_(OFAModel.from_config(config_for_arch("ofa_test", lora_rank=4), d), 0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter
    model.eval()
    batch = toy_batch(d)
    with torch.no_grad():
        before = model(**batch)[0]
        layers = [m for m in model.modules() if hasattr(m, "merge") and hasattr(m, "lora_A")]
        assert layers
        for m in layers:
            m.merge()
        torch.testing.assert_close(model(**batch)[0], before, atol=1e-4, rtol=1e-4)


def test_self_attention_cache_appends_in_place_and_grows_by_doubling():
    k0, v0 = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    cache = append_to_cache({}, k0, v0)
    store = cache["key_store"]
    assert store.size(2) == 16 and torch.equal(cache["prev_key"], k0)
    steps = [torch.randn(2, 3, 1, 4) for _ in range(11)]
    for i, k in enumerate(steps):
        cache = append_to_cache(cache, k, k + 1)
        if i < 11:  # 5 + 11 = 16 positions fit the first store: written in place
            assert cache["key_store"] is store
    want = torch.cat([k0, *steps], dim=2)
    assert torch.equal(cache["prev_key"], want) and torch.equal(cache["prev_value"][:, :, 5:], want[:, :, 5:] + 1)
    cache = append_to_cache(cache, steps[0], steps[0])  # the 17th position: a store twice as large
    assert cache["key_store"].size(2) == 34 and torch.equal(cache["prev_key"][:, :, :16], want)


def test_a_hand_filled_cache_is_concatenated_and_a_reorder_keeps_the_capacity():
    k0 = torch.randn(2, 3, 4, 4)
    cache = append_to_cache({"prev_key": k0, "prev_value": k0}, k0[:, :, :1], k0[:, :, :1])  # no store: as ONNX
    assert torch.equal(cache["prev_key"], torch.cat([k0, k0[:, :, :1]], dim=2))
    torch.manual_seed(0)
    attn = MultiheadAttention(12, 3).eval()
    state = {}
    x = torch.randn(2, 3, 12)
    with torch.no_grad():
        full = attn(x, attn_mask=torch.triu(torch.full((3, 3), float("-inf")), 1))
        step = [attn(x[:, i:i + 1], incremental_state=state) for i in range(2)]
        attn.reorder_incremental_state(state, torch.tensor([1, 0]))
        buffer = attn._get_input_buffer(state)
        assert buffer["key_store"].size(2) == 16 and buffer["prev_key"].size(2) == 2
        last = attn(x[[1, 0], 2:3], incremental_state=state)
    torch.testing.assert_close(torch.cat(step, 1), full[:, :2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(last, full[[1, 0], 2:3], atol=1e-6, rtol=1e-6)
