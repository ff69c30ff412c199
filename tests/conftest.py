"""Shared fixtures: paths to ../shared (skipped cleanly where absent) and tiny synthetic vocabularies."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OFA_SHARED_DIR", REPO.parent / "shared"))
BPE_DIR = SHARED / "ofa_bpe"
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def bpe_dir() -> str:
    if not (BPE_DIR / "dict.txt").is_file():
        pytest.skip("../shared/ofa_bpe (official GPT-2 BPE files) is not available")
    return str(BPE_DIR)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE / "ofa_micro_a.pt.gz").is_file():
        pytest.skip("../shared/reference (official reference checkpoint) is not available")
    return REFERENCE


def make_dictionary(num_text: int = 40, code_dict_size: int = 8192, num_bins: int = 1000):
    """An OFA-layout fairseq Dictionary with ``num_text`` dummy text symbols."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(num_text):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    for i in range(code_dict_size):
        d.add_symbol(f"<code_{i}>")
    for i in range(num_bins):
        d.add_symbol(f"<bin_{i}>")
    return d


@pytest.fixture(scope="session")
def small_dict():
    return make_dictionary()


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter and BN statistic so that a wrong module shows up in outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope="session")
def spm_dir(tmp_path_factory) -> str:
    """A small SentencePiece tokenizer trained on a generated corpus."""
    from ofa.tokenizer import train_sentencepiece

    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "triangle", "star"]
    lines = [f"a {c} {s} is left of a {c2} {s2} on the grass" for c in colors for s in shapes
             for c2 in colors[:3] for s2 in shapes[:2]]
    lines += ["what does the image describe?", "which region does the text describe?", "how many objects are there?"]
    out = tmp_path_factory.mktemp("spm")
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    return train_sentencepiece(str(corpus), str(out / "tok"), vocab_size=400)
