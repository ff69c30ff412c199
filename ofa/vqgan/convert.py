"""Read (and write) the official taming-transformers VQGAN checkpoint format.

OFA uses taming-transformers' "VQGAN OpenImages (f=8), 8192, GumbelQuantization" (OFA issue #236;
the same files ship in OFA's ``image_gen_large_best.zip``), loaded by ``run_scripts/image_gen/
generate_code.py`` and ``tasks/mm_tasks/image_gen.py`` as::

    GumbelVQ(**OmegaConf.load(model.yaml).model.params)
    .load_state_dict(torch.load(last.ckpt)["state_dict"], strict=False)

``last.ckpt`` is a PyTorch Lightning checkpoint: a pickled dict with ``state_dict`` (the weights)
next to Lightning bookkeeping (``epoch``, ``global_step``, ``optimizer_states``, ``callbacks``...).
``state_dict`` keys are ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``,
``quantize.proj.*``, ``quantize.embed.weight`` and, for checkpoints trained with a GAN loss,
``loss.*`` (discriminator / LPIPS weights, dropped here). ``model.yaml`` (as posted in
taming-transformers issue #67)::

    model:
      target: taming.models.vqgan.GumbelVQ
      params:
        kl_weight: 1.0e-08
        embed_dim: 256
        n_embed: 8192
        temperature_scheduler_config: {...}
        ddconfig: {double_z: false, z_channels: 256, resolution: 256, in_channels: 3, out_ch: 3,
                   ch: 128, ch_mult: [1, 1, 2, 4], num_res_blocks: 2, attn_resolutions: [32], dropout: 0.0}
        lossconfig: {target: taming.modules.losses.vqperceptual.DummyLoss}

Safety: checkpoints are read with ``torch.load(weights_only=True)``. Lightning 1.x pickles the
callback *class* ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` as a dict key, which
the weights-only unpickler refuses (CompVis checkpoints of that era fail exactly so), so that name (and
its ``lightning.pytorch`` twin) is allowlisted as an inert stand-in class. If anything else unknown is
in the file, a restricted unpickler takes over: it rebuilds tensors through torch's own rebuild
functions and turns every other global into an inert placeholder, so no code from the file runs;
only ``state_dict`` is kept, and it must hold tensors only.
"""
from __future__ import annotations

import logging
import os
import pickle
import types
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from ofa.errors import UserError
from ofa.io_utils import atomic_output, write_atomic
from ofa.vqgan.model import VQGAN, VQGANConfig, attention_levels

logger = logging.getLogger(__name__)

IGNORED_PREFIXES = ("loss.",)  # discriminator / perceptual-loss weights of the Lightning module


class CheckpointFormatError(UserError, ValueError):
    """The file is not a loadable VQGAN checkpoint (names the missing / unexpected / mismatched keys)."""


# --------------------------------------------------------------------------------------------------
# safe reading


class _InertCallback:
    """Stand-in for Lightning callback classes pickled as dict keys; never does anything."""


_LIGHTNING_CLASS_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
)


def _lightning_allowlist() -> List[Tuple[type, str]]:
    out = []
    for name in _LIGHTNING_CLASS_NAMES:
        cls = type(name.rsplit(".", 1)[1], (_InertCallback,), {"__module__": name.rsplit(".", 1)[0]})
        out.append((cls, name))
    return out


class _Opaque:
    """Placeholder for any non-allowlisted global met by the restricted unpickler. Calling it,
    ``__new__`` and ``__setstate__`` only record their arguments."""

    _name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<opaque {self._name}>"

    # some pickles append / set items on reconstructed objects
    def append(self, item):
        self.__dict__.setdefault("items", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("items", []).extend(items)

    def __setitem__(self, key, value):
        self.__dict__.setdefault("mapping", {})[key] = value


# exactly the callables needed to rebuild plain (possibly Parameter-wrapped) CPU tensors
_TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
    ("torch", "Size"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    seen_opaque: List[str] = []

    def find_class(self, module: str, name: str):
        if (module, name) in _TENSOR_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and name.endswith("Storage"):  # storage types named in persistent ids
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        qual = f"{module}.{name}"
        type(self).seen_opaque.append(qual)
        return type(f"Opaque_{name}", (_Opaque,), {"_name": qual})


def _restricted_pickle_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


# a stand-in ``pickle`` module for ``torch.load(pickle_module=...)``
_restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=_restricted_pickle_load,
                                           __name__="restricted_pickle")


def _restricted_load(path: str):
    _RestrictedUnpickler.seen_opaque = []
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    return obj, sorted(set(_RestrictedUnpickler.seen_opaque))


def read_state_dict(path: str) -> "OrderedDict[str, torch.Tensor]":
    """The tensors of a checkpoint file: Lightning ``.ckpt`` (its ``state_dict``), a plain pickled
    state dict, our own checkpoint (``{"config", "state_dict", ...}``) or ``.safetensors``. Never runs
    code from the file (see the module docstring)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return OrderedDict(load_file(path))
    try:
        with torch.serialization.safe_globals(_lightning_allowlist()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # pragma: no cover - older torch / unusual file
            unsafe = []
        logger.warning("weights-only load of %s refused %s; reading it with the restricted unpickler "
                       "(unknown objects become inert placeholders)", path, unsafe or str(e).splitlines()[0])
        obj, opaque = _restricted_load(path)
        logger.info("restricted unpickler replaced %d global(s) by placeholders: %s", len(opaque), opaque)
    return _extract_state_dict(obj, path)


def _extract_state_dict(obj, path: str) -> "OrderedDict[str, torch.Tensor]":
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping):
        raise CheckpointFormatError(f"{path}: no state_dict mapping in the checkpoint (got {type(obj).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointFormatError(f"{path}: state_dict entries that are not tensors: {bad[:10]}")
    return OrderedDict((str(k), v) for k, v in sd.items())


# --------------------------------------------------------------------------------------------------
# configs


def config_from_yaml(path: str) -> VQGANConfig:
    """A ``VQGANConfig`` from a taming-transformers ``model.yaml`` (``model.target`` GumbelVQ or VQModel)."""
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f)
    return config_from_taming_dict(doc)


def config_from_taming_dict(doc: Mapping) -> VQGANConfig:
    model = doc.get("model", doc)
    params = model.get("params", model)
    target = str(model.get("target", "taming.models.vqgan.GumbelVQ"))
    dd = params["ddconfig"]
    if dd.get("double_z", False):
        raise CheckpointFormatError("ddconfig.double_z=True is a KL autoencoder, not a VQGAN")
    if target.endswith("GumbelVQ"):
        quantizer = "gumbel"
    elif target.endswith("VQModel"):
        quantizer = "vq"
    else:
        raise CheckpointFormatError(f"unsupported model target {target!r} (GumbelVQ or VQModel)")
    if params.get("remap"):
        raise CheckpointFormatError("codebook remapping (params.remap) is not supported")
    return VQGANConfig(
        ch=int(dd["ch"]), ch_mult=tuple(dd["ch_mult"]), num_res_blocks=int(dd["num_res_blocks"]),
        attn_resolutions=tuple(dd["attn_resolutions"]), resolution=int(dd["resolution"]),
        in_channels=int(dd.get("in_channels", 3)), out_ch=int(dd.get("out_ch", 3)),
        z_channels=int(dd["z_channels"]), embed_dim=int(params["embed_dim"]), n_embed=int(params["n_embed"]),
        dropout=float(dd.get("dropout", 0.0)), quantizer=quantizer,
        kl_weight=float(params.get("kl_weight", 1e-8)),
    )


def config_to_taming_dict(cfg: VQGANConfig) -> Dict:
    """The ``model.yaml`` content taming-transformers / OFA would need to rebuild ``cfg`` (``ema``
    becomes ``VQModel``: same inference layout)."""
    if cfg.norm_groups != 32:
        raise CheckpointFormatError("taming hard-codes GroupNorm(32); this model uses "
                                    f"{cfg.norm_groups} groups and would not rebuild there")
    params = {
        "embed_dim": cfg.embed_dim, "n_embed": cfg.n_embed,
        "ddconfig": {"double_z": False, "z_channels": cfg.z_channels, "resolution": cfg.resolution,
                     "in_channels": cfg.in_channels, "out_ch": cfg.out_ch, "ch": cfg.ch,
                     "ch_mult": list(cfg.ch_mult), "num_res_blocks": cfg.num_res_blocks,
                     "attn_resolutions": list(cfg.attn_resolutions), "dropout": cfg.dropout},
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"},
    }
    if cfg.quantizer == "gumbel":
        params["kl_weight"] = cfg.kl_weight
        params["temperature_scheduler_config"] = {
            "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
            "params": {"warm_up_steps": 0, "max_decay_steps": 1000001, "lr_start": 0.9, "lr_max": 0.9,
                       "lr_min": 1.0e-06}}
        target = "taming.models.vqgan.GumbelVQ"
    else:
        target = "taming.models.vqgan.VQModel"
    return {"model": {"base_learning_rate": 4.5e-06, "target": target, "params": params}}


def _count(prefix: str, keys: Iterable[str]) -> int:
    idx = {int(k[len(prefix):].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def infer_config(sd: Mapping[str, torch.Tensor], resolution: int = 256, norm_groups: int = 32) -> VQGANConfig:
    """Rebuild the architecture from tensor shapes alone (when no ``model.yaml`` is at hand). Where
    attention sits is inferred per level and expressed against ``resolution`` (256 for the OFA model)."""
    keys = list(sd)
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        in_channels = sd["encoder.conv_in.weight"].shape[1]
        n_levels = _count("encoder.down.", keys)
        nrb = _count("encoder.down.0.block.", keys)
        ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(n_levels))
        attn = tuple(resolution // 2 ** i for i in range(n_levels) if f"encoder.down.{i}.attn.0.q.weight" in sd)
        z_channels = sd["encoder.conv_out.weight"].shape[0]
        embed_dim = sd["quant_conv.weight"].shape[0]
        out_ch = sd["decoder.conv_out.weight"].shape[0]
        if "quantize.proj.weight" in sd:
            quantizer, n_embed = "gumbel", sd["quantize.embed.weight"].shape[0]
        elif "quantize.embedding.cluster_size" in sd:
            quantizer, n_embed = "ema", sd["quantize.embedding.weight"].shape[0]
        else:
            quantizer, n_embed = "vq", sd["quantize.embedding.weight"].shape[0]
    except KeyError as e:
        raise CheckpointFormatError(f"cannot infer the VQGAN architecture: key {e} is missing") from None
    return VQGANConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=nrb, attn_resolutions=attn, resolution=resolution,
                       in_channels=in_channels, out_ch=out_ch, z_channels=z_channels, embed_dim=embed_dim,
                       n_embed=n_embed, quantizer=quantizer, norm_groups=norm_groups)


# --------------------------------------------------------------------------------------------------
# loading


def load_state_dict_strict(model: VQGAN, sd: Mapping[str, torch.Tensor],
                           ignore_prefixes: Tuple[str, ...] = IGNORED_PREFIXES, source: str = "checkpoint") -> None:
    """Load ``sd`` into ``model`` requiring the key sets and shapes to match exactly (after dropping
    ``ignore_prefixes``); raises ``CheckpointFormatError`` naming every missing, unexpected or
    mis-shaped key."""
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(ignore_prefixes))}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {shapes}")
        raise CheckpointFormatError(f"{source} does not match the VQGAN layout; " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def load_official(ckpt_path: str, config_path: Optional[str] = None, config: Optional[VQGANConfig] = None,
                  resolution: int = 256) -> VQGAN:
    """A ``VQGAN`` (eval mode) from an official taming/OFA ``last.ckpt`` (+ ``model.yaml``). Without a
    config the architecture is inferred from tensor shapes. Loading is strict apart from ``loss.*``."""
    sd = read_state_dict(ckpt_path)
    if config is None:
        config = config_from_yaml(config_path) if config_path else infer_config(sd, resolution=resolution)
    model = VQGAN(config)
    load_state_dict_strict(model, sd, source=ckpt_path)
    return model.eval()


def load_vqgan(path: str, config_path: Optional[str] = None, map_location: str = "cpu") -> VQGAN:
    """Load either a checkpoint written by ``ofa-vqgan train`` (holds its own ``config``) or an official
    taming/OFA checkpoint (config from ``config_path`` or inferred). Returns the model in eval mode."""
    if path.endswith(".safetensors") or config_path:
        return load_official(path, config_path).to(map_location)
    try:
        with torch.serialization.safe_globals(_lightning_allowlist()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return load_official(path).to(map_location)  # Lightning file with other objects: restricted reader
    if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping) and "state_dict" in obj:
        model = VQGAN(VQGANConfig.from_dict(dict(obj["config"])))
        load_state_dict_strict(model, obj["state_dict"], ignore_prefixes=(), source=path)
        return model.eval().to(map_location)
    sd = _extract_state_dict(obj, path)
    model = VQGAN(infer_config(sd))
    load_state_dict_strict(model, sd, source=path)
    return model.eval().to(map_location)


VQGAN_FILES = ("model.pt", "last.ckpt", "vqgan.ckpt", "model.safetensors")  # looked for in a folder, in order


def find_vqgan(path: str) -> Tuple[str, Optional[str]]:
    """``(checkpoint, taming model.yaml or None)`` of a VQGAN checkpoint file or of the folder holding one
    (``VQGAN_FILES``; ``model.yaml`` beside an official ``last.ckpt``)."""
    if os.path.isfile(path):
        return path, None
    for name in VQGAN_FILES:
        p = os.path.join(path, name)
        if os.path.isfile(p):
            cfg = os.path.join(path, "model.yaml")
            return p, (cfg if name == "last.ckpt" and os.path.isfile(cfg) else None)
    raise FileNotFoundError(f"no VQGAN checkpoint ({', '.join(VQGAN_FILES)}) in {path}")


def open_vqgan(path: str, map_location: str = "cpu") -> VQGAN:
    """``load_vqgan`` of the checkpoint that ``find_vqgan`` finds at ``path`` (a file or a folder)."""
    checkpoint, config = find_vqgan(path)
    return load_vqgan(checkpoint, config, map_location=map_location)


# --------------------------------------------------------------------------------------------------
# writing


def save_official(model: VQGAN, ckpt_path: str, yaml_path: Optional[str] = None, extra_state: Optional[Dict] = None,
                  epoch: int = 0, global_step: int = 0) -> None:
    """Write ``model`` as a Lightning-style ``.ckpt`` (``state_dict`` with the official key names plus
    ``epoch`` / ``global_step`` / ``pytorch-lightning_version``) and, if asked, the matching
    ``model.yaml``; ``extra_state`` adds keys (e.g. ``loss.*`` tensors) to the state dict. ``ema``
    models are written as taming ``VQModel`` (codebook only; they load back as ``vq``)."""
    taming_cfg = config_to_taming_dict(model.config) if yaml_path else None  # fail before writing anything
    sd = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    if model.config.quantizer == "ema":  # an EMA codebook is a plain VQModel codebook at inference
        for k in ("quantize.embedding.cluster_size", "quantize.embedding.embed_avg"):
            sd.pop(k)
    sd.update(extra_state or {})
    ckpt = {"epoch": epoch, "global_step": global_step, "pytorch-lightning_version": "1.0.8",
            "state_dict": sd, "optimizer_states": [], "lr_schedulers": []}
    with atomic_output(ckpt_path) as tmp:
        torch.save(ckpt, tmp)
    if yaml_path:
        import yaml

        write_atomic(yaml_path, yaml.safe_dump(taming_cfg, sort_keys=False))


def describe(model: VQGAN) -> str:
    c = model.config
    return (f"VQGAN {c.quantizer} f={c.factor} n_embed={c.n_embed} embed_dim={c.embed_dim} ch={c.ch} "
            f"ch_mult={list(c.ch_mult)} res_blocks={c.num_res_blocks} attn_levels={list(attention_levels(c))}")
