"""Typed model configuration and the named size presets.

``OFAModelConfig`` holds every hyper-parameter the official ``unify_transformer`` reads (same
field names, so an official checkpoint's ``cfg["model"]`` Namespace maps onto it 1:1).
``ARCHS`` is the size table (``models/ofa/ofa.py``, ``ofa_*_architecture``); ``RELEASED_FLAGS``
are the switches every released checkpoint was trained with
(``--add-type-embedding --scale-attn --scale-fc --scale-heads --disable-entangle``).
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from fairseq.dataclass import FairseqDataclass


@dataclass
class OFAModelConfig(FairseqDataclass):
    # sizes
    encoder_embed_dim: int = field(default=1024, metadata={"help": "encoder embedding dimension"})
    encoder_ffn_embed_dim: int = field(default=4096, metadata={"help": "encoder FFN inner dimension"})
    encoder_layers: int = field(default=12, metadata={"help": "number of encoder layers"})
    encoder_attention_heads: int = field(default=16, metadata={"help": "encoder attention heads"})
    decoder_embed_dim: int = field(default=1024, metadata={"help": "decoder embedding dimension"})
    decoder_ffn_embed_dim: int = field(default=4096, metadata={"help": "decoder FFN inner dimension"})
    decoder_layers: int = field(default=12, metadata={"help": "number of decoder layers"})
    decoder_attention_heads: int = field(default=16, metadata={"help": "decoder attention heads"})
    resnet_type: str = field(
        default="resnet152",
        metadata={"help": "image backbone: resnet50/101/152 (official stages 1-3) or timm:<name>"},
    )
    # layout switches
    encoder_normalize_before: bool = field(default=False, metadata={"help": "pre-LN encoder layers"})
    decoder_normalize_before: bool = field(default=False, metadata={"help": "pre-LN decoder layers"})
    layernorm_embedding: bool = field(default=False, metadata={"help": "LayerNorm on token embeddings"})
    patch_layernorm_embedding: bool = field(default=False, metadata={"help": "LayerNorm on patch embeddings"})
    code_layernorm_embedding: bool = field(default=False, metadata={"help": "LayerNorm on image-code embeddings"})
    add_type_embedding: bool = field(default=False, metadata={"help": "add text/image type embeddings"})
    entangle_position_embedding: bool = field(
        default=False, metadata={"help": "add absolute positions to encoder embeddings"}
    )
    disable_entangle: bool = field(
        default=False, metadata={"help": "do not add raw positions to decoder token embeddings"}
    )
    scale_attn: bool = field(default=False, metadata={"help": "NormFormer LayerNorm after attention"})
    scale_fc: bool = field(default=False, metadata={"help": "NormFormer LayerNorm inside the FFN"})
    scale_heads: bool = field(default=False, metadata={"help": "NormFormer per-head output scales"})
    scale_resids: bool = field(default=False, metadata={"help": "NormFormer residual scales"})
    share_all_embeddings: bool = field(default=False, metadata={"help": "share encoder/decoder/output embeddings"})
    share_decoder_input_output_embed: bool = field(default=False, metadata={"help": "tie decoder output"})
    no_scale_embedding: bool = field(default=False, metadata={"help": "do not scale embeddings by sqrt(d)"})
    # positions
    max_source_positions: int = field(default=1024, metadata={"help": "max text positions (encoder)"})
    max_target_positions: int = field(default=1024, metadata={"help": "max decoder positions"})
    token_bucket_size: int = field(default=256, metadata={"help": "text relative-position buckets"})
    image_bucket_size: int = field(default=42, metadata={"help": "side of the image position grid"})
    attn_scale_factor: float = field(default=2.0, metadata={"help": "attention temperature factor"})
    code_image_size: int = field(default=128, metadata={"help": "image size whose codes the decoder generates"})
    # regularisation
    activation_fn: str = field(default="gelu", metadata={"help": "FFN activation (gelu or relu)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "attention-probability dropout"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_drop_path_rate: float = field(default=0.0, metadata={"help": "encoder stochastic depth"})
    decoder_drop_path_rate: float = field(default=0.0, metadata={"help": "decoder stochastic depth"})
    resnet_drop_path_rate: float = field(default=0.0, metadata={"help": "ResNet stochastic depth"})
    # training switches
    freeze_resnet: bool = field(default=False, metadata={"help": "frozen BatchNorm in the ResNet"})
    freeze_encoder_embedding: bool = field(default=False, metadata={"help": "freeze the encoder embedding"})
    freeze_decoder_embedding: bool = field(default=False, metadata={"help": "freeze the decoder embedding"})
    attention_impl: str = field(
        default="sdpa", metadata={"help": "attention kernel: sdpa (torch fused) or math (explicit softmax)"}
    )
    # initialisation (a project option; it only matters when training from scratch)
    layer_init_std: float = field(
        default=0.02,
        metadata={"help": "std of the N(0, std) init of the encoder and decoder layers' attention and FFN "
                  "weights; 0.02 is the official init of every Linear (at the official widths 256-1280). At width "
                  "128 a larger value lets attention leave its uniform start sooner (ofa.model.init)"},
    )

    @classmethod
    def from_any(cls, source: Any, **overrides) -> "OFAModelConfig":
        """Build from a Namespace, dict, DictConfig or dataclass, ignoring unknown keys."""
        if dataclasses.is_dataclass(source):
            values = dataclasses.asdict(source)
        elif isinstance(source, dict):
            values = dict(source)
        elif hasattr(source, "items"):
            values = dict(source.items())
        else:
            values = vars(source)
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names and v is not None}
        # the official ``entangle_position_embedding`` quirk: bool flags may be stored as None
        kept.update(overrides)
        return cls(**kept)


# sizes of ``models/ofa/ofa.py``; every entry also fixes encoder == decoder widths
ARCHS: Dict[str, Dict[str, Any]] = {
    "ofa_tiny": dict(embed_dim=256, ffn=1024, enc_layers=4, dec_layers=4, heads=4, resnet_type="resnet50"),
    "ofa_medium": dict(embed_dim=512, ffn=2048, enc_layers=4, dec_layers=4, heads=8, resnet_type="resnet101"),
    "ofa_base": dict(embed_dim=768, ffn=3072, enc_layers=6, dec_layers=6, heads=12, resnet_type="resnet101"),
    "ofa_large": dict(embed_dim=1024, ffn=4096, enc_layers=12, dec_layers=12, heads=16, resnet_type="resnet152"),
    "ofa_huge": dict(embed_dim=1280, ffn=5120, enc_layers=24, dec_layers=12, heads=16, resnet_type="resnet152"),
    # a tiny preset for unit tests: seconds on a CPU, every code path still exercised
    "ofa_test": dict(embed_dim=32, ffn=64, enc_layers=1, dec_layers=1, heads=2, resnet_type="resnet50"),
}

RELEASED_FLAGS: Dict[str, bool] = dict(
    add_type_embedding=True, scale_attn=True, scale_fc=True, scale_heads=True, disable_entangle=True
)


# Layout switches every OFA architecture turns on (``ofa_large_architecture``). They are False in the
# dataclass, as in the official base architecture, so that the official command-line flags
# (``--encoder-normalize-before`` ...) are plain switches; the architecture functions fill them in.
ARCH_LAYOUT: Dict[str, bool] = dict(
    encoder_normalize_before=True, decoder_normalize_before=True, layernorm_embedding=True,
    patch_layernorm_embedding=True, code_layernorm_embedding=True, share_all_embeddings=True,
    share_decoder_input_output_embed=True, no_scale_embedding=True,
)


def arch_overrides(arch: str) -> Dict[str, Any]:
    """Config fields a named architecture fixes."""
    if arch not in ARCHS:
        raise ValueError(f"unknown OFA architecture {arch!r}; choose one of {sorted(ARCHS)}")
    a = ARCHS[arch]
    return dict(
        **ARCH_LAYOUT,
        encoder_embed_dim=a["embed_dim"], decoder_embed_dim=a["embed_dim"],
        encoder_ffn_embed_dim=a["ffn"], decoder_ffn_embed_dim=a["ffn"],
        encoder_layers=a["enc_layers"], decoder_layers=a["dec_layers"],
        encoder_attention_heads=a["heads"], decoder_attention_heads=a["heads"],
        resnet_type=a["resnet_type"],
    )


def config_for_arch(arch: str, released: bool = True, **overrides) -> OFAModelConfig:
    """Config of a named architecture; ``released`` turns on the flags of the released checkpoints."""
    values = arch_overrides(arch)
    if released:
        values.update(RELEASED_FLAGS)
    values.update(overrides)
    return OFAModelConfig(**values)
