"""The OFA encoder-decoder as a fairseq model, and its named architectures.

Registers model ``ofa`` and the architectures ``ofa_tiny``, ``ofa_medium``, ``ofa_base``,
``ofa_large``, ``ofa_huge`` (sizes of the official ``models/ofa/ofa.py``) plus ``ofa_test``, a tiny
preset for fast tests. The forward signature is the official one so scripts port unchanged.
``from_config`` applies the finetuning options (LoRA through peft, BitFit, ``--freeze``;
``ofa.model.finetune``) to the built model.
"""
from __future__ import annotations

from typing import Optional

from fairseq.models import FairseqEncoderDecoderModel, register_model, register_model_architecture
from torch import Tensor, nn

from ofa.model.config import ARCHS, OFAModelConfig, arch_overrides
from ofa.model.decoder import OFADecoder
from ofa.model.encoder import OFAEncoder
from ofa.model.finetune import adapt_plain_state, apply_finetuning
from ofa.model.init import init_bert_params, init_layer_weights


@register_model("ofa", dataclass=OFAModelConfig)
class OFAModel(FairseqEncoderDecoderModel):
    """OFA: a ResNet-stem Transformer encoder-decoder over a unified text/code/location vocabulary."""

    def __init__(self, cfg: OFAModelConfig, encoder: OFAEncoder, decoder: OFADecoder):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        # the official model re-initialises every Linear/Embedding after construction; the ResNet
        # convolutions and BatchNorms keep their own init
        for name, module in self.named_modules():
            if not name.startswith("encoder.embed_images"):
                init_bert_params(module)
        init_layer_weights(self, cfg.layer_init_std)

    @classmethod
    def build_model(cls, cfg, task) -> "OFAModel":
        return cls.from_config(cfg, task.source_dictionary)

    @classmethod
    def from_config(cls, cfg, dictionary) -> "OFAModel":
        """Build from any config object (dataclass, Namespace, dict) and the OFA dictionary."""
        cfg = cfg if isinstance(cfg, OFAModelConfig) else OFAModelConfig.from_any(cfg)
        if cfg.encoder_embed_dim != cfg.decoder_embed_dim:
            raise ValueError("OFA shares one embedding table: encoder_embed_dim must equal decoder_embed_dim")
        embed = nn.Embedding(len(dictionary), cfg.encoder_embed_dim, padding_idx=dictionary.pad())
        model = cls(cfg, OFAEncoder(cfg, dictionary, embed), OFADecoder(cfg, dictionary, embed))
        if cfg.freeze_encoder_embedding or cfg.freeze_decoder_embedding:
            embed.weight.requires_grad_(False)
        # LoRA adapters, BitFit, frozen patterns (ofa.model.finetune): after construction and init, so that a
        # default model draws exactly the official init sequence
        return apply_finetuning(model, cfg)

    def forward(
        self,
        src_tokens: Tensor,
        src_lengths: Optional[Tensor],
        prev_output_tokens: Tensor,
        patch_images: Optional[Tensor] = None,
        patch_masks: Optional[Tensor] = None,
        code_masks: Optional[Tensor] = None,
        sample_patch_num: Optional[int] = None,
        features_only: bool = False,
        return_all_hiddens: bool = False,
        **unused,
    ):
        """Teacher-forced forward.

        Args:
            src_tokens: ``[B, L]``; src_lengths ``[B]``.
            prev_output_tokens: ``[B, Lt]`` (``[bos] + target``).
            patch_images: ``[B, 3, S, S]``; patch_masks bool ``[B]``; code_masks bool ``[B]``.

        Returns:
            ``(logits [B, Lt, V], extra)``; ``extra["encoder_out"]`` holds the encoder dict.
        """
        encoder_out = self.encoder(
            src_tokens, src_lengths=src_lengths, patch_images=patch_images, patch_masks=patch_masks,
            sample_patch_num=sample_patch_num, return_all_hiddens=return_all_hiddens,
        )
        logits, extra = self.decoder(
            prev_output_tokens, code_masks=code_masks, encoder_out=encoder_out, features_only=features_only
        )
        extra["encoder_out"] = encoder_out
        return logits, extra

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    def upgrade_state_dict_named(self, state_dict, name):
        """Called by fairseq's loader (``--restore-file``, in place): rebuild derived buffers instead of trusting
        the file, and fit a plain (e.g. official) state dict to a LoRA model: ``M.weight`` ->
        ``M.base_layer.weight``, the adapters it lacks keep their fresh init (``adapt_plain_state``)."""
        prefix = name + "." if name else ""
        own = self.state_dict()
        adapted = adapt_plain_state(state_dict, own, prefix)
        if adapted.keys() != state_dict.keys():
            state_dict.clear()
            state_dict.update(adapted)
        for key, value in own.items():
            if key.endswith(("_rp_bucket", "image_position_idx")):
                state_dict[prefix + key] = value
        return state_dict


def _make_arch(arch: str):
    def fill(args):
        for key, value in arch_overrides(arch).items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
        for f_name, f in OFAModelConfig.__dataclass_fields__.items():
            if not f_name.startswith("_") and getattr(args, f_name, None) is None:
                setattr(args, f_name, f.default)
    fill.__name__ = f"{arch}_architecture"
    fill.__doc__ = f"Defaults of ``{arch}``: {ARCHS[arch]}"
    return fill


for _arch in ARCHS:
    register_model_architecture("ofa", _arch)(_make_arch(_arch))
