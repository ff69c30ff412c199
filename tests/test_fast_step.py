"""The cheaper training step gives the same numbers: closed-set constraint masks (one trie walk as deep as the
trie, a cached table of allowed tokens) equal the per-position ``TrieConstraint`` walk, and fairseq's Adam and
gradient clipping over lists of tensors (``ofa.cli.fast_step``) give bit-identical weights on the CPU, and the
fused Adam kernel that ``--optimizer adam`` steps through gives fairseq's update up to float32 rounding."""
from __future__ import annotations

import inspect
import random

import pytest
import torch
from fairseq.data import Dictionary, data_utils

import ofa.tasks.closed_set as closed_set
from ofa.cli import fast_step


# ------------------------------------------------------------------------------------- constraint masks
class _WordTokenizer:
    """Just enough of a tokenizer for ``AnswerSet``: one dictionary symbol per word."""

    def __init__(self, dictionary):
        self.dictionary = dictionary

    def encode(self, text):
        return torch.tensor([self.dictionary.index(w) for w in text.split()])


@pytest.fixture(scope="module")
def answer_set():
    d = Dictionary()
    for i in range(30):
        d.add_symbol(f"w{i}")
    answers = ["w1", "w1 w2", "w1 w3 w4", "w5", "w6 w7", "w6 w7 w8 w9"]  # shared prefixes, different depths
    return closed_set.AnswerSet(answers, _WordTokenizer(d))


def per_position_masks(aset, prev, prompt_lens):
    """The masks as they were built before: ``TrieConstraint.allowed`` of every prefix."""
    b, t = prev.shape
    masks = torch.ones(b, t, aset.vocab_size, dtype=torch.bool)
    for j in range(t):
        masks[:, j] = aset.constraint.allowed(prev[:, : j + 1], prompt_lens - 1, aset.vocab_size)
    return masks


def random_batch(aset, rng):
    """Rows of prompt + answer (a candidate, its prefix, or tokens off the trie), some with tokens after eos;
    prompt lengths as given, 0, or past the row's end."""
    bos, eos, pad = aset.bos, aset.eos, aset.pad
    rows, lens = [], []
    for _ in range(rng.randint(1, 6)):
        prompt = [bos if rng.random() < 0.9 else rng.randint(4, 33)] + [rng.randint(4, 33) for _ in range(rng.randint(0, 5))]
        answer = aset.tokens[rng.randrange(len(aset))].tolist()
        if rng.random() < 0.2:
            answer = [rng.randint(4, 33) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.1:
            answer = answer + [eos, 5, 6]
        rows.append(torch.tensor(prompt + answer))
        lens.append(rng.choice([len(prompt)] * 8 + [0, len(prompt) + len(answer), len(prompt) + len(answer) + 3]))
    return data_utils.collate_tokens(rows, pad), torch.tensor(lens)


@pytest.mark.parametrize("dense", [True, False])
def test_constraint_masks_equal_the_per_position_trie_walk(answer_set, dense, monkeypatch):
    if not dense:  # a trie too large for the cached table: the compiled trie's allowed_mask instead
        monkeypatch.setattr(closed_set, "DENSE_TABLE_LIMIT", 0)
    rng = random.Random(0)
    for _ in range(150):
        prev, lens = random_batch(answer_set, rng)
        assert torch.equal(answer_set.constraint_masks(prev, lens), per_position_masks(answer_set, prev, lens))


def test_constraint_masks_walk_only_as_deep_as_the_trie(answer_set):
    """A long prompt costs no more trie steps: the walk covers the tokens after each row's own prompt."""
    table = answer_set.trie.compile("cpu")
    calls = []
    original = table.step

    def counting(nodes, tokens):
        calls.append(1)
        return original(nodes, tokens)

    table.step = counting
    try:
        prompt = torch.tensor([answer_set.bos] + [7] * 60)
        prev = torch.stack([torch.cat([prompt, answer_set.tokens[i]]) for i in (1, 4)])
        masks = answer_set.constraint_masks(prev, torch.tensor([61, 61]))
    finally:
        del table.step
    assert len(calls) == answer_set.depth + 1
    assert torch.equal(masks, per_position_masks(answer_set, prev, torch.tensor([61, 61])))


# ------------------------------------------------------------------------------------- Adam and clipping
def _fairseq_originals():
    from fairseq import utils as fairseq_utils
    from fairseq.optim.adam import Adam

    fast_step.install()
    return Adam, inspect.unwrap(Adam.step), inspect.unwrap(fairseq_utils.clip_grad_norm_), fairseq_utils.clip_grad_norm_


def _train(step, clip, weight_decay, steps=5, amsgrad=False, dtype=torch.float32, fused=False):
    """Weights, grad norms and optimizer state after ``steps`` of random gradients (one missing once);
    ``fused``: the optimizer asks for the fused kernel, as ``FairseqAdam`` makes it do."""
    Adam = _fairseq_originals()[0]
    g = torch.Generator().manual_seed(1)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,), (64, 33)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
    opt = Adam([{"params": params[:3]}, {"params": params[3:], "lr": 3e-3}], lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
               weight_decay=weight_decay, amsgrad=amsgrad)
    opt.ofa_fused = fused
    norms = []
    for k in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (k == 1 and i == 2) else (torch.randn(p.shape, generator=g) * 3).to(dtype)
        norms.append(clip(params, 1.0))
        step(opt)
    return [p.detach().clone() for p in params], norms, opt.state_dict()["state"]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_foreach_adam_and_clipping_give_fairseqs_numbers_bit_for_bit(weight_decay):
    Adam, original_step, original_clip, patched_clip = _fairseq_originals()
    ref = _train(original_step, original_clip, weight_decay)
    new = _train(lambda opt: opt.step(), patched_clip, weight_decay)
    assert all(torch.equal(a, b) for a, b in zip(ref[0], new[0]))
    assert all(torch.equal(a, b) for a, b in zip(ref[1], new[1]))
    assert ref[2].keys() == new[2].keys()
    for key, state in ref[2].items():  # fairseq's state layout: an int step count and the two moments
        assert state["step"] == new[2][key]["step"] and isinstance(new[2][key]["step"], int)
        assert torch.equal(state["exp_avg"], new[2][key]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], new[2][key]["exp_avg_sq"])


def test_foreach_adam_chunks_and_fallbacks_change_nothing(monkeypatch):
    Adam, original_step, original_clip, patched_clip = _fairseq_originals()
    ref = _train(original_step, original_clip, 0.01)
    monkeypatch.setattr(fast_step, "CHUNK_ELEMENTS", 8)  # many foreach calls per group
    assert all(torch.equal(a, b) for a, b in zip(ref[0], _train(lambda o: o.step(), patched_clip, 0.01)[0]))
    # amsgrad and half precision are fairseq's own loop
    for kwargs in ({"amsgrad": True}, {"dtype": torch.bfloat16}):
        ref = _train(original_step, original_clip, 0.01, **kwargs)
        new = _train(lambda o: o.step(), patched_clip, 0.01, **kwargs)
        assert all(torch.equal(a, b) for a, b in zip(ref[0], new[0]))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_adam_gives_fairseqs_update_up_to_rounding(weight_decay):
    """fairseq's eps placement and decoupled decay through torch's fused kernel: the same weights within float32
    rounding after 5 steps (eps matters: some gradients are tiny), and fairseq's state layout."""
    Adam, original_step, original_clip, patched_clip = _fairseq_originals()
    ref = _train(original_step, original_clip, weight_decay, steps=5)
    new = _train(lambda opt: opt.step(), patched_clip, weight_decay, steps=5, fused=True)
    assert not all(torch.equal(a, b) for a, b in zip(ref[0], new[0]))  # the fused kernel did run
    for a, b in zip(ref[0], new[0]):
        torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-7)
    for key, state in ref[2].items():
        assert state["step"] == new[2][key]["step"] and isinstance(new[2][key]["step"], int)
        torch.testing.assert_close(new[2][key]["exp_avg"], state["exp_avg"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(new[2][key]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-6, atol=1e-9)


def test_fused_adam_follows_fairseqs_eps_placement():
    """With eps as large as sqrt(v), torch's own placement (eps added after dividing by sqrt(1 - beta2^t)) would
    move the first step far off (its eps is 1 / sqrt(1 - 0.999) times fairseq's); the fused path keeps fairseq's."""
    Adam, original_step, _, _ = _fairseq_originals()
    results = []
    for fused in (False, True):
        p = torch.nn.Parameter(torch.zeros(4))
        opt = Adam([p], lr=1.0, betas=(0.9, 0.999), eps=0.5)
        opt.ofa_fused = fused
        p.grad = torch.tensor([0.5, -0.5, 2.0, 1e-3])
        (opt.step() if fused else original_step(opt))
        results.append(p.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=0)


def _one_layout_step(fused, moments_layout, grad_layout):
    """One fairseq Adam step of a channels-last weight from a given state (step 3), moments and gradient in the
    given memory formats; the updated weight and moments."""
    Adam, original_step, _, _ = _fairseq_originals()
    g = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8, 3, 3, generator=g).contiguous(memory_format=torch.channels_last))
    opt = Adam([w], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt.ofa_fused = fused
    m = torch.randn(16, 8, 3, 3, generator=g).contiguous(memory_format=moments_layout)
    v = torch.rand(16, 8, 3, 3, generator=g).contiguous(memory_format=moments_layout)
    opt.state[w] = {"step": 3, "exp_avg": m, "exp_avg_sq": v}
    w.grad = torch.randn(16, 8, 3, 3, generator=g).contiguous(memory_format=grad_layout)
    (opt.step() if fused is not None else original_step(opt))
    return w.detach().clone(), opt.state[w]["exp_avg"].clone(), opt.state[w]["exp_avg_sq"].clone()


@pytest.mark.parametrize("moments_layout, grad_layout", [
    (torch.contiguous_format, torch.channels_last),   # a checkpoint's state for a channels-last weight
    (torch.channels_last, torch.contiguous_format),   # a gradient in another layout than its weight
    (torch.channels_last, torch.channels_last),
])
def test_fused_adam_pairs_elements_across_memory_layouts(moments_layout, grad_layout):
    """The fused kernel walks memory in order: a weight, its gradient and its moments in different layouts
    must still be updated element by element as fairseq's loop does."""
    ref = _one_layout_step(None, moments_layout, grad_layout)
    new = _one_layout_step(True, moments_layout, grad_layout)
    for a, b in zip(ref, new):
        torch.testing.assert_close(b, a, rtol=2e-6, atol=1e-7)


def test_dense_tells_gapless_layouts_from_slices_and_expansions():
    dense = fast_step._dense
    assert dense(torch.zeros(4, 3)) and dense(torch.zeros(4, 3).t()) and dense(torch.zeros(10, 20)[2:5])
    assert dense(torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))
    assert dense(torch.zeros(1, 5, 1)) and dense(torch.zeros(0, 3)) and dense(torch.tensor(1.0))
    assert not dense(torch.zeros(10, 20)[:, ::2]) and not dense(torch.zeros(3, 1).expand(3, 4))


def test_same_layout_ignores_the_strides_of_size_one_dimensions():
    same = fast_step._same_layout
    weight = torch.zeros(64, 32, 1, 1)  # a 1 x 1 convolution: strides (32, 1, 1, 1)
    grad = torch.zeros(64 * 32).as_strided((64, 32, 1, 1), (32, 1, 32, 32))  # as the ResNet's backward gives it
    assert weight.stride() != grad.stride() and same(weight, grad)
    conv3 = torch.zeros(64, 32, 3, 3)
    assert not same(conv3, conv3.contiguous(memory_format=torch.channels_last))
    assert not same(torch.zeros(4, 3), torch.zeros(3, 4).t()) and same(torch.zeros(4, 3), torch.zeros(4, 3))


def test_optimizer_adam_is_fused_unless_use_old_adam():
    from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

    fast_step.install()
    for old in (False, True):
        cfg = FairseqAdamConfig(lr=[1e-3], adam_betas="(0.9, 0.999)", use_old_adam=old, tpu=False)
        param = torch.nn.Parameter(torch.randn(3))
        param.grad = torch.randn(3)
        opt = FairseqAdam(cfg, [param])
        assert opt._optimizer.ofa_fused is (not old) and fast_step.fused_ready(opt._optimizer) is (not old)


def test_install_is_idempotent():
    from fairseq import utils as fairseq_utils
    from fairseq.optim.adam import Adam

    fast_step.install()
    from fairseq.optim.adam import FairseqAdam

    step, clip, init = Adam.step, fairseq_utils.clip_grad_norm_, FairseqAdam.__init__
    fast_step.install()
    assert Adam.step is step and fairseq_utils.clip_grad_norm_ is clip and FairseqAdam.__init__ is init
