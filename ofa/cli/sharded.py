"""Fully-sharded data parallel training (``ofa-train --ddp-backend fully_sharded``) with torch's own FSDP.

    torchrun --nproc_per_node=8 $(which ofa-train) ... --ddp-backend fully_sharded            # GPUs (NCCL)
    torchrun --nproc_per_node=2 $(which ofa-train) ... --ddp-backend fully_sharded --cpu      # CPU processes (gloo)

Each process keeps 1/N of the weights, of their gradients and of the optimizer's moments between updates
(ZeRO-3 style); the whole model is gathered for the forward and backward pass. fairseq implements the flag
with fairscale's FSDP, which runs on CUDA only (its all-gathers use CUDA streams, even with
``compute_device=cpu``) and is no longer maintained; ``install()`` (called once by ``ofa.cli.common.setup``)
makes fairseq's ``fsdp_enable_wrap`` / ``fsdp_wrap`` wrap the model in ``torch.distributed.fsdp``'s
``FullyShardedDataParallel`` (``use_orig_params``) instead, and gives it the interface fairseq's trainer
expects of its FSDP wrapper. fairscale is not needed.

- The numbers: the gradients are reduce-scattered and averaged like DDP's, so N processes with N times
  smaller batches give the loss and the update of one process with the whole batch (up to float summation
  order). The gradient norm (``--clip-norm``, the logged ``gnorm``) is summed over the shards.
- Checkpoints are full, unsharded files written by rank 0 (the same layout as any other run: they load with
  ``ofa.load_model``, ``ofa-evaluate``, and resume a sharded or an unsharded run alike); the optimizer's
  moments are gathered into fairseq's usual layout. Resuming re-shards the weights and the moments; every
  rank reads the checkpoint itself, so ``--save-dir`` must be visible to all ranks (one filesystem).
- Validation gathers the whole model on every rank for the duration of the step (generation calls the
  encoder and decoder directly, outside the wrapper's forward).
- One process (no torchrun, or ``WORLD_SIZE=1``) has nothing to shard: it trains unsharded (``c10d``).

On GPUs: ``--fp16`` keeps fp32 weights and runs the forward/backward in fp16 (FSDP ``MixedPrecision``, the
gradients reduced in fp16 unless ``--fp32-reduce-scatter``; fairseq's loss scaling), ``--cpu-offload`` keeps
the sharded weights and gradients in CPU memory, ``--no-reshard-after-forward`` keeps the gathered weights
from the forward to the backward pass (``SHARD_GRAD_OP``: more memory, less communication).
(The GPU settings follow torch's FSDP API; the tests exercise the CPU path.) On CPUs (gloo) only float32 runs: ``--fp16`` and ``--cpu-offload`` are refused.
Not supported (refused with one line): ``--bf16`` / ``--memory-efficient-bf16``, ``--use-sharded-state``
(per-rank checkpoint files), ``--zero-sharding``, ``--store-ema``, criteria with parameters.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ofa.errors import ConfigError

logger = logging.getLogger("ofa.train")

BACKEND = "fully_sharded"
_PREFIX = "_fsdp_wrapped_module."
# torch's deprecation notices for FSDP1's state-dict API, printed at every checkpoint
_QUIET = r"FSDP\.state_dict_type\(\) and FSDP\.set_state_dict_type\(\) are being deprecated"


def check_config(cfg) -> Optional[str]:
    """Why ``--ddp-backend fully_sharded`` cannot run with ``cfg`` (one line), or ``None``."""
    dt, common = cfg.distributed_training, cfg.common
    if dt.ddp_backend != BACKEND:
        return None
    on_cpu = common.cpu or not torch.cuda.is_available()
    refused = [
        (common.bf16 or common.memory_efficient_bf16, "--bf16 / --memory-efficient-bf16"),
        (dt.use_sharded_state, "--use-sharded-state (checkpoints are written whole, by rank 0)"),
        (dt.zero_sharding != "none", "--zero-sharding (the optimizer state is already sharded)"),
        (cfg.ema.store_ema, "--store-ema"),
        (on_cpu and (common.fp16 or common.memory_efficient_fp16), "--fp16 on CPU"),
        (on_cpu and dt.cpu_offload, "--cpu-offload on CPU (the weights are there already)"),
        (cfg.optimization.use_bmuf, "--use-bmuf"),
        (dt.pipeline_model_parallel, "--pipeline-model-parallel"),
    ]
    for bad, what in refused:
        if bad:
            return f"--ddp-backend {BACKEND} does not support {what}"
    return None


def prepare(cfg, world_size: int) -> None:
    """Check the options (``ConfigError``) and, for one process, fall back to unsharded training."""
    problem = check_config(cfg)
    if problem:
        raise ConfigError(problem)
    dt = cfg.distributed_training
    if dt.ddp_backend == BACKEND and world_size <= 1:
        logger.info(f"--ddp-backend {BACKEND} with one process: nothing to shard, training unsharded")
        dt.ddp_backend = "c10d"
    elif dt.ddp_backend == BACKEND:
        # every rank reads the checkpoint it resumes from: fairseq's alternative, rank 0 pickling the whole
        # state to the others, is refused by their weights-only unpickler (the state holds an OmegaConf config)
        cfg.checkpoint.load_checkpoint_on_all_dp_ranks = True


def install() -> None:
    """Route fairseq's FSDP wrapping and trainer through torch FSDP (idempotent)."""
    import fairseq_cli.train as fairseq_train

    if getattr(fairseq_train, "_ofa_sharded", False):
        return
    warnings.filterwarnings("ignore", message=_QUIET, category=FutureWarning)
    fairseq_train.fsdp_enable_wrap = fsdp_enable_wrap
    fairseq_train.fsdp_wrap = fsdp_wrap
    fairseq_train.Trainer = _trainer_factory(fairseq_train.Trainer)
    fairseq_train._ofa_sharded = True


# ------------------------------------------------------------------------------------------ wrapping
_WRAP_CONFIG: List[Any] = []


@contextlib.contextmanager
def fsdp_enable_wrap(dt_cfg):
    """fairseq's ``fsdp_enable_wrap``: ``fsdp_wrap`` inside it wraps with these settings."""
    _WRAP_CONFIG.append(dt_cfg)
    try:
        yield
    finally:
        _WRAP_CONFIG.pop()


def fsdp_wrap(module: nn.Module, min_num_params: Optional[int] = None, **kwargs) -> nn.Module:
    """fairseq's ``fsdp_wrap``: the model as one ``ShardedModel`` unit (outside ``fsdp_enable_wrap``, or for a
    module under ``min_num_params``, the module itself)."""
    if not _WRAP_CONFIG:
        return module
    if min_num_params is not None and sum(p.numel() for p in module.parameters()) < min_num_params:
        return module
    return wrap(module, _WRAP_CONFIG[-1])


def wrap(module: nn.Module, dt) -> nn.Module:  # a ShardedModel (sharded_model_class)
    import torch.distributed as dist
    from fairseq.distributed import utils as dist_utils
    from torch.distributed.fsdp import CPUOffload, MixedPrecision, ShardingStrategy

    if not dist.is_initialized():
        raise ConfigError(f"--ddp-backend {BACKEND} needs several processes: start ofa-train with torchrun")
    group = dist_utils.get_data_parallel_group()
    on_gpu = torch.cuda.is_available() and dist.get_backend(group) != "gloo"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    mixed = None
    if dt.fp16:
        reduce = torch.float32 if dt.fp32_reduce_scatter else torch.float16
        mixed = MixedPrecision(param_dtype=torch.float16, reduce_dtype=reduce, buffer_dtype=torch.float16)
    if not on_gpu:  # FSDP's sync_module_states is for GPUs only: rank 0's initial weights, sent here
        source = dist.get_global_rank(group, 0) if group is not None else 0
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=source, group=group)
    strategy = ShardingStrategy.SHARD_GRAD_OP if dt.no_reshard_after_forward else ShardingStrategy.FULL_SHARD
    tied = tied_keys(module)
    model = sharded_model_class()(
        module, process_group=group, device_id=device, use_orig_params=True, sharding_strategy=strategy,
        mixed_precision=mixed, cpu_offload=CPUOffload(offload_params=True) if dt.cpu_offload else None,
        sync_module_states=on_gpu,  # rank 0's initial weights everywhere, whatever each rank's seed did
    )
    model._ofa_tied = tied
    logger.info(f"fully sharded over {dist.get_world_size(group)} processes (torch FSDP, {strategy.name}, "
                f"{'fp16 compute' if mixed else 'float32'}{', CPU offload' if dt.cpu_offload else ''} on {device})")
    return model


def tied_keys(module: nn.Module) -> List[List[str]]:
    """The state-dict keys that name one tensor (tied embeddings), in groups of two or more."""
    groups: Dict[Any, List[str]] = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            groups.setdefault((tensor.data_ptr(), tensor.dtype, tuple(tensor.shape)), []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _fsdp_class():
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel


def sharded_model_class() -> type:
    """``ShardedModel`` (built at first use: ``torch.distributed.fsdp`` is imported only when sharding)."""
    if _CLASSES:
        return _CLASSES[0]
    FSDP = _fsdp_class()
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType

    class ShardedModel(FSDP):
        """torch FSDP with the methods fairseq's trainer calls on its FSDP wrapper (``fairseq.distributed.
        FullyShardedDataParallel``): full state dicts on rank 0, optimizer-state gathering and sharding."""

        use_sharded_state = False

        @property
        def unwrapped_module(self) -> nn.Module:
            return self.module

        def _full(self, rank0_only: bool):
            # offload_to_cpu only from GPUs: on CPU tensors torch's optimizer-state gathering then reuses one
            # buffer for every state entry (Adam's exp_avg came out equal to exp_avg_sq)
            offload = self.compute_device.type != "cpu"
            return FSDP.state_dict_type(
                self, StateDictType.FULL_STATE_DICT,
                FullStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
                FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only))

        def state_dict(self, *args, **kwargs):
            """The whole model's weights on rank 0 (every rank must call it), ``{}`` elsewhere."""
            with self._full(rank0_only=True):
                state = super().state_dict(*args, **kwargs)
            for keys in getattr(self, "_ofa_tied", []):  # gathered as copies: tied again, saved once
                if all(k in state for k in keys):
                    for k in keys[1:]:
                        state[k] = state[keys[0]]
            return state

        def load_state_dict(self, state_dict, strict: bool = True, model_cfg=None, args=None):
            """A full state dict (on every rank), upgraded and pruned like ``BaseFairseqModel.load_state_dict``."""
            module = self.module
            if hasattr(module, "upgrade_state_dict"):
                module.upgrade_state_dict(state_dict)
            if model_cfg is not None:
                from fairseq.checkpoint_utils import prune_state_dict

                state_dict = prune_state_dict(state_dict, model_cfg)
            with self._full(rank0_only=False):
                return nn.Module.load_state_dict(self, state_dict, strict)

        def local_metadata_dict(self) -> Dict[str, Any]:
            return {}

        # -------------------------------------------------------------------- optimizer state
        def bind_optimizer(self, optimizer) -> None:
            """The torch optimizer stepping this model's parameters (fairseq passes none to the calls below)."""
            self._ofa_optimizer = optimizer

        def _param_names(self) -> List[str]:
            """The unwrapped name of each parameter of the bound optimizer, in its order."""
            names = {}
            for name, p in self.named_parameters():
                names.setdefault(p, name.replace(_PREFIX, ""))
            return [names[p] for group in self._ofa_optimizer.param_groups for p in group["params"]]

        def gather_full_optim_state_dict(self, optimizer) -> Optional[Dict[str, Any]]:
            """The whole optimizer state on rank 0 in torch's usual layout (parameters numbered in order), so that
            a sharded and an unsharded run resume from each other's checkpoints; ``None`` on other ranks."""
            torch_optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            with self._full(rank0_only=True):
                osd = FSDP.optim_state_dict(self, torch_optimizer)
            if not osd:
                return None
            order = [n for g in osd["param_groups"] for n in g["params"]]
            index = {n: i for i, n in enumerate(order)}
            groups = []
            for g in osd["param_groups"]:
                groups.append({**g, "params": [index[n] for n in g["params"]]})
            return {"state": {index[n]: s for n, s in osd["state"].items()}, "param_groups": groups}

        def get_shard_from_optim_state_dict(self, full: Dict[str, Any]) -> Dict[str, Any]:
            """This rank's part of a whole optimizer state (torch's layout, on every rank)."""
            names = self._param_names()
            state = {names[int(i)]: s for i, s in full["state"].items()}
            groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in full["param_groups"]]
            with self._full(rank0_only=False):
                return FSDP.optim_state_dict_to_load(self, self._ofa_optimizer,
                                                     {"state": state, "param_groups": groups})

    _CLASSES.append(ShardedModel)
    return ShardedModel


_CLASSES: List[type] = []


def is_sharded(model) -> bool:
    """Whether ``model`` is wrapped by ``fsdp_wrap``."""
    return bool(_CLASSES) and isinstance(model, _CLASSES[0])


# ------------------------------------------------------------------------------------------ trainer
def _trainer_factory(base):
    """``fairseq_cli.train.Trainer``: fairseq's trainer, or its sharded variant for a ``ShardedModel``."""
    if getattr(base, "_ofa_sharded_factory", False):
        return base

    class ShardedTrainer(base):
        """fairseq's trainer on its ``is_fsdp`` paths (checkpoints on every rank's call, optimizer state gathered
        and sharded, gradient norm summed over shards), without fairscale."""

        def __init__(self, cfg, task, model, criterion, quantizer=None):
            from fairseq import utils

            if utils.has_parameters(criterion):
                raise ConfigError(f"--ddp-backend {BACKEND} does not support a criterion with parameters")
            # fairseq's constructor imports fairscale on its FSDP path, and off it would cast the model to
            # fp16 or refuse --cpu-offload: it runs off that path, on a copy of the config without those flags
            quiet = copy.deepcopy(cfg)
            quiet.common.fp16 = quiet.common.memory_efficient_fp16 = False
            quiet.distributed_training.cpu_offload = False
            quiet.distributed_training.ddp_backend = "c10d"
            self._ofa_valid_module = None
            super().__init__(quiet, task, model, criterion, quantizer)
            self.cfg = cfg

        @property
        def model(self):
            return self._ofa_valid_module if self._ofa_valid_module is not None else self._model

        def _build_optimizer(self):
            super()._build_optimizer()
            self._model.bind_optimizer(self._optimizer.optimizer)

        def clip_grad_norm(self, clip_norm):
            from fairseq.distributed import utils as distributed_utils

            def total(local_norm):  # the shards' norms, summed in squares (on the norm's own device)
                squared = local_norm.float() ** 2
                squared = distributed_utils.all_reduce(squared, group=self.data_parallel_process_group)
                return squared ** 0.5

            return self.optimizer.clip_grad_norm(clip_norm, aggregate_norm_fn=total)

        def valid_step(self, sample, raise_oom=False):
            """The step on the unwrapped model with every weight gathered: validation generates with the encoder
            and decoder directly, which the wrapper's forward would not see."""
            FSDP = _fsdp_class()
            with FSDP.summon_full_params(self._model, writeback=False):
                self._ofa_valid_module = self._model.module
                try:
                    return super().valid_step(sample, raise_oom)
                finally:
                    self._ofa_valid_module = None

    def make(cfg, task, model, criterion, quantizer=None):
        cls = ShardedTrainer if is_sharded(model) else base
        return cls(cfg, task, model, criterion, quantizer)

    make._ofa_sharded_factory = True
    make.sharded_class = ShardedTrainer
    return make
