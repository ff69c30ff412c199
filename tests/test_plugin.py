"""The package is a fairseq plugin: importing it, or --user-dir, registers the model and its archs."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import ofa

ARCHS = ["ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge", "ofa_test"]


def test_importing_ofa_registers_model_and_architectures():
    from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY

    assert MODEL_REGISTRY["ofa"].__name__ == "OFAModel"
    for arch in ARCHS:
        assert ARCH_MODEL_REGISTRY[arch] is MODEL_REGISTRY["ofa"]


def test_arch_functions_fill_sizes_but_keep_user_overrides():
    from fairseq.models import ARCH_CONFIG_REGISTRY

    args = argparse.Namespace(encoder_layers=2, scale_attn=True)
    ARCH_CONFIG_REGISTRY["ofa_base"](args)
    assert (args.encoder_embed_dim, args.encoder_attention_heads, args.resnet_type) == (768, 12, "resnet101")
    assert args.encoder_layers == 2 and args.decoder_layers == 6
    assert args.scale_attn is True and args.attn_scale_factor == 2.0


def test_fairseq_user_dir_imports_the_package():
    user_dir = Path(ofa.__file__).resolve().parent
    code = (
        "import argparse, warnings; warnings.filterwarnings('ignore');"
        "from fairseq import utils;"
        f"utils.import_user_module(argparse.Namespace(user_dir={str(user_dir)!r}));"
        "from fairseq.models import ARCH_MODEL_REGISTRY; print(sorted(a for a in ARCH_MODEL_REGISTRY if a.startswith('ofa_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(sorted(ARCHS))
