"""``unify``: OFA pretraining on the multi-task mixture (official ``unify_task``; docs/tasks.md 3).

``data`` is the vision-language ``pretrain_vl`` TSV (comma list: training epoch ``e`` reads file
``(e - 1) % (n - 1)``, the last file is "valid"; one file serves both). ``--text-data``,
``--image-data`` and ``--detection-data`` add the uni-modal sources (``pretrain_text``,
``pretrain_image``, ``pretrain_detection``), mixed in one block per ``--extras-every`` (8) V-L rows:
``--text-per-block`` (2) text-infilling, ``--image-per-block`` (1) image-infilling and
``--detection-per-block`` (1) detection examples, each with loss weight ``conf = 2.0``. A batch with
extras is the pair ``[v1, v2]``; use ``--criterion adjust_label_smoothed_cross_entropy`` with
``--sample-patch-num 196`` (applied to v1 only). See ``data_utils/unify_dataset.py`` for every
example's prompt and target.

Validation: the official recipe trains with ``--disable-validation``. ``load_dataset("valid")`` works
(main V-L examples only, no ITM / extras) and ``valid_step`` reports the loss only (no generation).
"""
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import FairseqTask, register_task

from ofa.data_utils.readers import open_reader
from ofa.data_utils.unify_dataset import NegativePools, UnifyDataConfig, UnifyDataset
from ofa.tasks.ofa_task import OFATask, OFATaskConfig, data_parallel_rank_and_size

logger = logging.getLogger(__name__)


@dataclass
class UnifyConfig(OFATaskConfig):
    patch_image_size: int = field(default=384, metadata={"help": "side of the V-L images (official 384)"})
    text_data: Optional[str] = field(default=None, metadata={"help": "pretrain_text TSV (uniq_id, text)"})
    image_data: Optional[str] = field(default=None, metadata={"help": "pretrain_image TSV (uniq_id, image, code)"})
    detection_data: Optional[str] = field(
        default=None, metadata={"help": "pretrain_detection TSV (uniq_id, image, boxes)"})
    text_selected_cols: Optional[str] = field(
        default=None, metadata={"help": "legacy: column indices of uniq_id,text in --text-data"})
    image_selected_cols: Optional[str] = field(
        default=None, metadata={"help": "legacy: column indices of uniq_id,image,code in --image-data"})
    detection_selected_cols: Optional[str] = field(
        default=None, metadata={"help": "legacy: column indices of uniq_id,image,boxes in --detection-data"})
    neg_sample_dir: Optional[str] = field(
        default=None, metadata={"help": "folder with type2ans.json, object.txt, all_captions.txt "
                                         "(default: pools collected from the V-L file)"})
    code_image_size: int = field(default=128, metadata={"help": "side c of the infilled centre; extras are 2c x 2c"})
    vqgan_factor: int = field(default=8, metadata={"help": "VQGAN downsampling: (c / f)^2 codes per centre"})
    mask_ratio: float = field(default=0.3, metadata={"help": "text infilling: fraction of words masked"})
    poisson_lambda: float = field(default=3.0, metadata={"help": "text infilling: mean span length (words)"})
    replace_length: int = field(default=1, metadata={"help": "1: one <mask> per span; 0: delete; -1: per token"})
    text_max_tokens: int = field(default=256, metadata={"help": "text infilling: keep the last N tokens"})
    pretrain_seed: int = field(default=7, metadata={"help": "seed of the per-sample randomness"})
    extras_every: int = field(default=8, metadata={"help": "one block of uni-modal extras per this many V-L rows"})
    text_per_block: int = field(default=2, metadata={"help": "text-infilling examples per block"})
    image_per_block: int = field(default=1, metadata={"help": "image-infilling examples per block"})
    detection_per_block: int = field(default=1, metadata={"help": "detection examples per block"})
    vl_max_scale: float = field(
        default=1.25, metadata={"help": "V-L RandomResize: largest short side / patch size (official 480/384)"})
    no_vl_rand_augment: bool = field(
        default=False, metadata={"help": "skip the official RandAugment(2, 7) of caption / qa images (with "
                                         "--vl-max-scale 1: for data whose labels are colours and positions)"})


@register_task("unify", dataclass=UnifyConfig)
class UnifyTask(OFATask):
    dataset_cls = UnifyDataset
    schema = "pretrain_vl"
    metric_name = "loss"

    def __init__(self, cfg, tokenizer):
        if cfg.replace_length not in (-1, 0, 1):
            raise ValueError(f"--replace-length must be -1, 0 or 1, got {cfg.replace_length}")
        if cfg.code_image_size % cfg.vqgan_factor:
            raise ValueError("--code-image-size must be a multiple of --vqgan-factor")
        super().__init__(cfg, tokenizer)

    def data_config(self) -> UnifyDataConfig:
        c = self.cfg
        base = dataclasses.asdict(super().data_config())
        return UnifyDataConfig(
            **base, seed=c.seed, mask_ratio=c.mask_ratio, poisson_lambda=c.poisson_lambda,
            replace_length=c.replace_length, text_max_tokens=c.text_max_tokens, pretrain_seed=c.pretrain_seed,
            code_image_size=c.code_image_size, vqgan_factor=c.vqgan_factor, extras_every=c.extras_every,
            text_per_block=c.text_per_block, image_per_block=c.image_per_block,
            detection_per_block=c.detection_per_block, vl_max_scale=c.vl_max_scale,
            vl_rand_augment=not c.no_vl_rand_augment)

    def _extra_reader(self, path, schema, selected, names, epoch):
        if not path:
            return None
        rank, world = data_parallel_rank_and_size()
        kwargs = dict(rank=rank, world_size=world, shuffle=self.cfg.shuffle, seed=self.cfg.seed)
        if selected:
            cols = [int(x) for x in selected.split(",")]
            if len(cols) != len(names):
                raise ValueError(f"selected cols for {path} need {len(names)} indices for {list(names)}")
            reader = open_reader(path, columns=cols, names=names, **kwargs)
        else:
            reader = open_reader(path, schema=schema, columns=list(names), **kwargs)
        reader.set_epoch(epoch)
        return reader

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch, combine, **kwargs)
        ds = self.datasets[split]
        if split != "train":
            return
        c = self.cfg
        text = self._extra_reader(c.text_data, "pretrain_text", c.text_selected_cols, ("uniq_id", "text"), epoch)
        image = self._extra_reader(c.image_data, "pretrain_image", c.image_selected_cols,
                                   ("uniq_id", "image", "code"), epoch)
        det = self._extra_reader(c.detection_data, "pretrain_detection", c.detection_selected_cols,
                                 ("uniq_id", "image", "boxes"), epoch)
        negatives = NegativePools.from_dir(c.neg_sample_dir) if c.neg_sample_dir else None
        ds.attach_extras(text, image, det, negatives)
        logger.info(f"unify extras: text={c.text_data}, image={c.image_data}, detection={c.detection_data}, "
                    f"one block per {c.extras_every} V-L rows")

    def valid_step(self, sample, model, criterion):
        # pretraining validation is the loss only (the official recipe disables validation)
        return FairseqTask.valid_step(self, sample, model, criterion)

    def inference(self, model, sample):
        return [self.decode(h[0]["tokens"]) for h in
                self.generator.generate([model], self.net_input_for_generation(sample))]

    def score(self, predictions, sample):
        return [0.0 for _ in predictions]
