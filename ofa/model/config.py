"""Typed model configuration and the named size presets.

``OFAModelConfig`` holds every hyper-parameter the official ``unify_transformer`` reads (same
field names, so an official checkpoint's ``cfg["model"]`` Namespace maps onto it 1:1).
``ARCHS`` is the size table (``models/ofa/ofa.py``, ``ofa_*_architecture``); ``RELEASED_FLAGS``
are the switches every released checkpoint was trained with
(``--add-type-embedding --scale-attn --scale-fc --scale-heads --disable-entangle``).
``MODEL_LIMITS`` is every field's type and sane range; ``check_model_config`` applies it (and the rules
between fields) to values from a checkpoint, an export's JSON or a command line before anything is built,
and every ``OFAModelConfig`` checks itself when constructed.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from fairseq.dataclass import FairseqDataclass

from ofa.config_checks import Limit, check_values
from ofa.errors import ConfigError
from ofa.model.positions import TOKEN_MAX_POSITION
from ofa.model.resnet import RESNET_LAYERS


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
    # parameter-efficient finetuning and memory (project options; ofa.model.finetune applies them)
    lora_rank: int = field(
        default=0, metadata={"help": "LoRA adapters of this rank (through peft) on the layers' --lora-targets; "
                             "only the adapters train. 0: off"},
    )
    lora_alpha: float = field(
        default=0.0, metadata={"help": "LoRA scale numerator: the update is (alpha / rank) B A; 0: alpha = rank"},
    )
    lora_targets: str = field(
        default="q,k,v,out,fc1,fc2",
        metadata={"help": "comma list of the encoder and decoder layers' linear maps that get adapters: q, k, v, "
                  "out (attention projections; self- and cross-attention), fc1, fc2 (FFN)"},
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA adapters' input"})
    freeze: str = field(
        default="",
        metadata={"help": "comma list of parameter-name patterns to freeze, fnmatch style "
                  "(encoder.embed_images.* is the ResNet, *embed_tokens* the embeddings) or re:REGEX; "
                  "applied last, so it wins over --lora-rank and --bitfit"},
    )
    bitfit: bool = field(default=False, metadata={"help": "train only bias terms (with --lora-rank: and adapters)"})
    checkpoint_activations: bool = field(
        default=False, metadata={"help": "recompute each encoder and decoder layer in the backward pass instead "
                                 "of keeping its activations (less memory, about a third more compute)"},
    )
    # initialisation (a project option; it only matters when training from scratch)
    layer_init_std: float = field(
        default=0.02,
        metadata={"help": "std of the N(0, std) init of the encoder and decoder layers' attention and FFN "
                  "weights; 0.02 is the official init of every Linear (at the official widths 256-1280). At width "
                  "128 a larger value lets attention leave its uniform start sooner (ofa.model.init)"},
    )

    def __post_init__(self):
        check_model_config({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

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


# Type and inclusive range of every field (a test keeps this table complete). Generous bounds that still
# stop absurd values before they allocate: an FFN or position table of 10**9 rows asked for 128 GB.
_DIM = Limit(int, 1, 65536)  # widths; embedding widths must also be divisible by the head count
_LAYERS = Limit(int, 1, 256)
_HEADS = Limit(int, 1, 1024)
# the text relative-position tables are built for TOKEN_MAX_POSITION (1024) positions, so longer
# sequences could not be attended to whatever the absolute table holds
_POSITIONS = Limit(int, 1, TOKEN_MAX_POSITION)
_RATE = Limit(float, 0, 1)
_FLAG = Limit(bool)
MAX_IMAGE_BUCKET = 64  # the image relative-position table is (S*S + 1)**2 int64: 134 MB at 64, 25 MB at 42
MODEL_LIMITS: Dict[str, Limit] = {
    "encoder_embed_dim": _DIM, "decoder_embed_dim": _DIM,
    "encoder_ffn_embed_dim": _DIM, "decoder_ffn_embed_dim": _DIM,
    "encoder_layers": _LAYERS, "decoder_layers": _LAYERS,
    "encoder_attention_heads": _HEADS, "decoder_attention_heads": _HEADS,
    "resnet_type": Limit(str),  # one of RESNET_LAYERS or timm:<name>[@<stride>] (``check_model_config``)
    "max_source_positions": _POSITIONS, "max_target_positions": _POSITIONS,
    "token_bucket_size": Limit(int, 2, TOKEN_MAX_POSITION),  # buckets on each side; 1 divides by zero
    "image_bucket_size": Limit(int, 1, MAX_IMAGE_BUCKET),
    "attn_scale_factor": Limit(float, 1e-3, 1e3),  # positions are scaled by (d / heads * factor) ** -0.5
    "code_image_size": Limit(int, 8, 8 * MAX_IMAGE_BUCKET),  # 8 px a code; the grid must fit the image positions
    "activation_fn": Limit(str, choices=("gelu", "relu")),
    "dropout": _RATE, "attention_dropout": _RATE, "activation_dropout": _RATE,
    "encoder_drop_path_rate": _RATE, "decoder_drop_path_rate": _RATE, "resnet_drop_path_rate": _RATE,
    "attention_impl": Limit(str, choices=("sdpa", "math")),
    "layer_init_std": Limit(float, None, 10),  # > 0 is checked where it is used (ofa.model.init)
    "lora_rank": Limit(int, 0, 4096), "lora_alpha": Limit(float, 0, 1e6), "lora_dropout": _RATE,
    "lora_targets": Limit(str),  # a comma list of LORA_TARGETS names (``check_model_config``)
    "freeze": Limit(str),  # comma list of patterns; a bad re: pattern is refused by ``check_model_config``
    **{name: _FLAG for name in (
        "encoder_normalize_before", "decoder_normalize_before", "layernorm_embedding", "patch_layernorm_embedding",
        "code_layernorm_embedding", "add_type_embedding", "entangle_position_embedding", "disable_entangle",
        "scale_attn", "scale_fc", "scale_heads", "scale_resids", "share_all_embeddings",
        "share_decoder_input_output_embed", "no_scale_embedding", "freeze_resnet", "freeze_encoder_embedding",
        "freeze_decoder_embedding", "bitfit", "checkpoint_activations")},
}

# ``--lora-targets`` names -> the module names of the encoder and decoder layers they adapt
LORA_TARGETS: Dict[str, str] = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj", "fc1": "fc1",
                                "fc2": "fc2"}


def lora_target_names(text: str, where: str = "") -> List[str]:
    """``"q,v,fc1"`` -> ``["q_proj", "v_proj", "fc1"]`` (``LORA_TARGETS``); ``where`` (`` in FILE``) ends the
    subject of the message.

    Raises:
        ConfigError: an empty list or a name outside ``LORA_TARGETS``, in one line.
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in LORA_TARGETS]
    if bad or not names:
        raise ConfigError(f"model config 'lora_targets' = {text!r}{where}: "
                          f"{'unknown target ' + repr(bad[0]) if bad else 'no target'}; "
                          f"choose from {', '.join(LORA_TARGETS)}")
    return [LORA_TARGETS[t] for t in dict.fromkeys(names)]


def freeze_patterns(text: str, where: str = "") -> List[str]:
    """The patterns of a ``--freeze`` comma list (``re:`` ones compiled to check them).

    Raises:
        ConfigError: a ``re:`` pattern that is not a regular expression, in one line.
    """
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise ConfigError(f"model config 'freeze' pattern {p!r}{where} is not a regular expression ({e})") \
                    from None
    return patterns


OFFICIAL_STRIDE = 16  # the official ResNet stages 1-3: one patch token per 16 x 16 pixels
_TIMM_RE = re.compile(r"timm:([^@\s]+)(?:@(\d+))?")


def backbone_stride(resnet_type: str) -> int:
    """Pixels per patch token of an image backbone: 16 for the official ResNets and ``timm:<name>``, N for
    ``timm:<name>@N``."""
    found = _TIMM_RE.fullmatch(resnet_type)
    if found and found.group(2):
        return int(found.group(2))
    return OFFICIAL_STRIDE


def check_model_config(values: Mapping[str, Any], where: Optional[str] = None) -> None:
    """Check model config values before anything is built from them: each field's type and range
    (``MODEL_LIMITS``), then the rules between fields. Keys that are not fields are left to the caller.

    Args:
        values: field values (a subset is fine: missing fields take their defaults for the rules between
            fields). ``None`` values are skipped (the official Namespace stores unset switches as ``None``).
        where: the file the values come from, for the message.

    Raises:
        ConfigError: one line, e.g. ``model config 'encoder_layers' = 1000000000 in FILE is out of range
            [1, 256]`` or ``model config in FILE: encoder_embed_dim 100 is not divisible by
            encoder_attention_heads 3``.
    """
    given = {k: v for k, v in values.items() if v is not None and not k.startswith("_")}
    check_values(given, MODEL_LIMITS, scope="model config", where=where)
    defaults = {f.name: f.default for f in dataclasses.fields(OFAModelConfig)
                if f.default is not dataclasses.MISSING}
    cfg = {**defaults, **given}
    at = f" in {where}" if where else ""
    resnet = cfg["resnet_type"]
    if resnet not in RESNET_LAYERS and not _TIMM_RE.fullmatch(resnet):
        raise ConfigError(f"unknown resnet_type {resnet!r}{at}; choose one of {sorted(RESNET_LAYERS)} or "
                          "'timm:<model name>[@<stride>]'")
    if cfg["encoder_embed_dim"] != cfg["decoder_embed_dim"]:
        raise ConfigError(f"model config{at}: encoder_embed_dim {cfg['encoder_embed_dim']} must equal "
                          f"decoder_embed_dim {cfg['decoder_embed_dim']} (OFA shares one embedding table)")
    for side in ("encoder", "decoder"):
        dim, heads = cfg[f"{side}_embed_dim"], cfg[f"{side}_attention_heads"]
        if dim % heads:
            raise ConfigError(f"model config{at}: {side}_embed_dim {dim} is not divisible by "
                              f"{side}_attention_heads {heads}")
    lora_target_names(cfg["lora_targets"], where=at)
    freeze_patterns(cfg["freeze"], where=at)
    code, grid = cfg["code_image_size"], cfg["image_bucket_size"]
    if code % 8 or code // 8 > grid:
        raise ConfigError(f"model config{at}: code_image_size {code} must be a multiple of 8 whose code grid "
                          f"({code // 8} a side) fits image_bucket_size {grid} (at most {8 * grid})")


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
