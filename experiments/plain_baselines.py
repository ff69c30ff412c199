"""Plain PyTorch baselines on the main job's rows: is a miss OFA's, or any model's at this budget?

Prints numbers; it is not a test. From the repository root:

    .venv/bin/python -m experiments.plain_baselines --data runs/main_job/data --rows colour,biggest,referring
    .venv/bin/python -m experiments.plain_baselines --data runs/main_job/data --rows vqa,snli_ve

Each model gets the main job's budget for the task (grounding 530 updates, VQA 450, entailment 400; batch
32, Adam 1e-3 with 25 warm-up updates then linear decay, clipping 1.0, label smoothing 0.1, weight decay
0.01), the same ResNet-10t trunk cut at stride 16 (64 px -> 4 x 4 image tokens,
``ofa.model.resnet.TimmBackbone``), the same rows, word-level text (one id per lower-cased word of the
training texts), and a target of the same form:

- box rows (``referring``: the benchmark's expressions, or a control of ``experiments/grounding_control.py``):
  four 32-way bin classifications ``x0 y0 x1 y1`` (``data_utils.boxes.quantize``, pixels of the 64 px
  image), scored by the official Acc@0.5;
- answer rows (``vqa``: the question, the most confident answer as the label, scored by the official
  confidence weighting; ``snli_ve``: the hypothesis, entailment / contradiction / neutral, accuracy):
  one classification over the training answers.

Models (128 wide; 2 + 2 pre-LN layers of 4 heads where they have layers):

- ``film``: the trunk's feature map, each channel scaled and shifted by the summed word embeddings
  (FiLM), a 1 x 1 convolution, and an MLP over the flattened grid: the text gates the features
  multiplicatively and the read-out knows each cell's place;
- ``encoder_mlp``: a Transformer encoder over [image tokens; word tokens], read out by an MLP over the
  flattened image tokens: attention fuses text and image, the read-out still knows each cell's place;
- ``query``: the same encoder, read out as OFA reads out: decoder layers whose queries (one per output)
  cross-attend to the encoder output; the place of what they attend to must travel in the attended
  tokens' values (their added position embeddings, std ``--query-pos-std``).

Writes ``--json`` (e.g. experiments/results/plain_baselines.json) with every run's test score and curve; answer
rows are also scored per question / hypothesis kind (``by_kind``, the kinds the generator recorded in
``scenes_test.jsonl``, as the main job's breakdown), printed under each run.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ofa.data_utils.boxes import grounding_hits, quantize
from ofa.data_utils.formats import parse_answers
from ofa.data_utils.images import decode_b64
from ofa.data_utils.transforms import square_resize
from ofa.model.resnet import TimmBackbone
from ofa_synth.breakdown import per_kind, row_kinds, tsv_rows
from ofa_synth.recipe import RECIPE

NUM_BINS, IMAGE, WIDTH = 32, 64, 128
BUDGET = dict(batch=32, lr=1e-3, warmup=25, weight_decay=0.01, clip=1.0, smoothing=0.1)
# the main job's updates per task (grounding 530, VQA 450, entailment 400 as committed)
UPDATES = {"box": RECIPE["refcoco"]["updates"], "vqa": RECIPE["vqa_gen"]["updates"],
           "snli_ve": RECIPE["snli_ve"]["updates"]}
ANSWER_ROWS = ("vqa", "snli_ve")


@dataclass
class Split:
    """``images [N,3,S,S]``, ``words [N,L]`` (0 = pad), ``targets [N,K]`` class ids (K = 4 bins or 1
    answer), ``gold``: ``[N,4]`` pixel boxes, or one ``{answer: confidence}`` per row, and ``ids``: the
    rows' ids (first TSV column, for the per-kind scores)."""
    images: torch.Tensor
    words: torch.Tensor
    targets: torch.Tensor
    gold: Union[torch.Tensor, List[Dict[str, float]]]
    ids: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


# ----------------------------------------------------------------------------------------------- data
def control_rows(data: Path, name: str, work: Path) -> Path:
    """The folder whose ``refcoco_{split}.tsv`` hold control ``name``'s rows (``data`` for referring)."""
    if name == "referring":
        return data
    from experiments.grounding_control import write_control_split

    out = work / f"{name}_data"
    if not (out / "refcoco_test.tsv").exists():
        write_control_split(data, out, name)
    return out


def _word_ids(text: str, vocab: Dict[str, int], grow: bool) -> List[int]:
    ids = []
    for word in text.lower().split():
        if word not in vocab and grow:
            vocab[word] = len(vocab)
        ids.append(vocab.get(word, 1))
    return ids


def _pad(texts: List[List[int]]) -> torch.Tensor:
    words = torch.zeros(len(texts), max(map(len, texts)), dtype=torch.long)
    for i, ids in enumerate(texts):
        words[i, :len(ids)] = torch.tensor(ids)
    return words


def load_boxes(folder: Path, split: str, vocab: Dict[str, int], grow: bool) -> Split:
    """Rows of ``refcoco_{split}.tsv`` (id, image id, text, ``x0,y0,x1,y1`` pixels, base64 image)."""
    path = folder / f"refcoco_{split}.tsv"
    images, texts, boxes = [], [], []
    for row, fields in enumerate(tsv_rows(path), 1):
        if len(fields) != 5:
            raise ValueError(f"{path}: row {row}: expected 5 columns, got {len(fields)}")
        images.append(square_resize(decode_b64(fields[4]), IMAGE))
        texts.append(_word_ids(fields[2], vocab, grow))
        boxes.append([float(v) for v in fields[3].split(",")])
    gold = torch.tensor(boxes, dtype=torch.float64)
    return Split(torch.stack(images), _pad(texts), quantize(gold, IMAGE, NUM_BINS), gold)


def load_answers(data: Path, task: str, split: str, vocab: Dict[str, int], labels: Dict[str, int],
                 grow: bool) -> Split:
    """``vqa_{split}.tsv`` (id, image id, question, ``conf|!+answer&&...``, labels, image) or
    ``snli_ve_{split}.tsv`` (id, image id, image, hypothesis, caption, label); unseen answers get id 0
    (the row can still score where its gold answers include the predicted one)."""
    path = data / f"{task}_{split}.tsv"
    images, texts, golds, ids = [], [], [], []
    for row, fields in enumerate(tsv_rows(path), 1):
        if len(fields) != 6:
            raise ValueError(f"{path}: row {row}: expected 6 columns, got {len(fields)}")
        if task == "vqa":
            image, text, gold = fields[5], fields[2], parse_answers(fields[3])
        else:
            image, text, gold = fields[2], fields[3], {fields[5]: 1.0}
        best = max(gold, key=gold.get)
        if best not in labels and grow:
            labels[best] = len(labels)
        images.append(square_resize(decode_b64(image), IMAGE))
        texts.append(_word_ids(text, vocab, grow))
        golds.append(gold)
        ids.append(fields[0])
    targets = torch.tensor([[labels.get(max(g, key=g.get), 0)] for g in golds])
    return Split(torch.stack(images), _pad(texts), targets, golds, ids)


# --------------------------------------------------------------------------------------------- models
class FiLMReadout(nn.Module):
    """``[B,3,S,S], [B,L] -> [B,K,C]``: FiLM-gated trunk features, MLP over the grid."""

    def __init__(self, vocab_size: int, grid: int, outputs: Tuple[int, int]):
        super().__init__()
        self.outputs = outputs
        self.trunk = TimmBackbone("resnet10t")
        c = self.trunk.out_channels
        self.words = nn.EmbeddingBag(vocab_size, WIDTH, mode="sum", padding_idx=0)
        self.film = nn.Linear(WIDTH, 2 * c)
        self.mix = nn.Conv2d(c, WIDTH, 1)
        self.head = nn.Sequential(nn.Linear(WIDTH * grid * grid, 256), nn.ReLU(),
                                  nn.Linear(256, outputs[0] * outputs[1]))

    def forward(self, images, words):
        f = self.trunk(images)
        scale, shift = self.film(self.words(words)).chunk(2, -1)
        f = F.relu(f * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        return self.head(F.relu(self.mix(f)).flatten(1)).view(-1, *self.outputs)


class TransformerReadout(nn.Module):
    """``[B,3,S,S], [B,L] -> [B,K,C]``: an encoder over [image tokens; words], read out by an MLP over its
    image tokens (``readout="mlp"``) or by K queries in decoder layers (``readout="query"``)."""

    def __init__(self, vocab_size: int, grid: int, outputs: Tuple[int, int], readout: str, pos_std: float = 0.02,
                 max_words: int = 32):
        super().__init__()
        self.outputs, self.readout = outputs, readout
        self.trunk = TimmBackbone("resnet10t")
        self.proj = nn.Linear(self.trunk.out_channels, WIDTH)
        self.image_pos = nn.Parameter(torch.randn(grid * grid, WIDTH) * pos_std)
        self.words = nn.Embedding(vocab_size, WIDTH, padding_idx=0)
        self.word_pos = nn.Parameter(torch.randn(max_words, WIDTH) * 0.02)
        self.types = nn.Parameter(torch.randn(2, WIDTH) * 0.02)
        layer = dict(d_model=WIDTH, nhead=4, dim_feedforward=2 * WIDTH, dropout=0.0, batch_first=True,
                     norm_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), 2, enable_nested_tensor=False)
        if readout == "mlp":
            self.head = nn.Sequential(nn.LayerNorm(WIDTH), nn.Flatten(), nn.Linear(WIDTH * grid * grid, 256),
                                      nn.ReLU(), nn.Linear(256, outputs[0] * outputs[1]))
        elif readout == "query":
            self.queries = nn.Parameter(torch.randn(outputs[0], WIDTH) * 0.02)
            self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), 2)
            self.head = nn.Sequential(nn.LayerNorm(WIDTH), nn.Linear(WIDTH, outputs[1]))
        else:
            raise ValueError(f"readout must be 'mlp' or 'query', got {readout!r}")

    def forward(self, images, words):
        words = words[:, : self.word_pos.size(0)]
        img = self.proj(self.trunk(images).flatten(2).transpose(1, 2)) + self.image_pos + self.types[0]
        txt = self.words(words) + self.word_pos[: words.size(1)] + self.types[1]
        pad = torch.cat([torch.zeros(img.shape[:2], dtype=torch.bool), words.eq(0)], 1)
        memory = self.encoder(torch.cat([img, txt], 1), src_key_padding_mask=pad)
        if self.readout == "mlp":
            return self.head(memory[:, : img.size(1)]).view(-1, *self.outputs)
        queries = self.queries[None].expand(images.size(0), -1, -1)
        return self.head(self.decoder(queries, memory, memory_key_padding_mask=pad))


MODELS = ("film", "encoder_mlp", "query")


def build(name: str, vocab_size: int, outputs: Tuple[int, int] = (4, NUM_BINS), query_pos_std: float = 0.02) -> nn.Module:
    """Model ``name`` with ``outputs = (K, C)``: K classifications over C classes (a box: 4 x NUM_BINS)."""
    grid = IMAGE // 16
    if name == "film":
        return FiLMReadout(vocab_size, grid, outputs)
    if name == "encoder_mlp":
        return TransformerReadout(vocab_size, grid, outputs, "mlp")
    if name == "query":
        return TransformerReadout(vocab_size, grid, outputs, "query", pos_std=query_pos_std)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


# ------------------------------------------------------------------------------------ train / evaluate
def row_scores(logits: torch.Tensor, gold, answers: Optional[List[str]]) -> torch.Tensor:
    """Per-row score of ``[B,K,C]`` logits: Acc@0.5 of the argmax bins mapped back to pixels
    (``bins / (NUM_BINS - 1) * IMAGE``) against ``[B,4]`` boxes, or the gold confidence of the argmax
    answer (``answers``: class id -> answer) against ``{answer: confidence}`` rows."""
    pred = logits.argmax(-1)
    if answers is None:
        return grounding_hits(pred.double() / (NUM_BINS - 1) * IMAGE, gold).float()
    return torch.tensor([g.get(answers[int(p)], 0.0) for p, g in zip(pred[:, 0], gold)])


def score(model: nn.Module, split: Split, answers: Optional[List[str]], batch: int = 128) -> float:
    """Mean test score (Acc@0.5, VQA score or accuracy) over ``split``."""
    return split_scores(model, split, answers, batch).mean().item()


def split_scores(model: nn.Module, split: Split, answers: Optional[List[str]], batch: int = 128) -> torch.Tensor:
    """``[N]`` per-row scores of ``model`` on ``split`` (``row_scores``)."""
    model.eval()
    scores = []
    with torch.no_grad():
        for i in range(0, len(split), batch):
            logits = model(split.images[i:i + batch], split.words[i:i + batch])
            scores.append(row_scores(logits, split.gold[i:i + batch], answers))
    model.train()
    return torch.cat(scores)


def kind_scores(scores: torch.Tensor, ids: Sequence[str], kinds: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    """``{kind: {"n", "score"}}`` of per-row ``scores`` (``[N]``, rows ``ids``), kinds as the generator
    recorded them (``breakdown.row_kinds``: question kind, or hypothesis kind with ``neutral``)."""
    return per_kind({i: (float(v), "") for i, v in zip(ids, scores.tolist())}, lambda i, _text: kinds.get(i, "unknown"))


def train(model: nn.Module, data: Split, valid: Split, answers: Optional[List[str]], updates: int, seed: int,
          evals: int = 4) -> List[dict]:
    """The main job's schedule; returns ``[{update, loss, valid}]`` at ``evals`` points."""
    b = BUDGET
    opt = torch.optim.AdamW(model.parameters(), lr=b["lr"], weight_decay=b["weight_decay"])
    warm = min(b["warmup"], max(updates - 1, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (updates - s) / max(updates - warm, 1)))
    g = torch.Generator().manual_seed(seed)
    order, at, curve = torch.randperm(len(data), generator=g), 0, []
    for step in range(1, updates + 1):
        if at + b["batch"] > len(data):
            order, at = torch.randperm(len(data), generator=g), 0
        idx = order[at:at + b["batch"]]
        at += b["batch"]
        logits = model(data.images[idx], data.words[idx])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), data.targets[idx].reshape(-1),
                               label_smoothing=b["smoothing"])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), b["clip"])
        opt.step()
        sched.step()
        if step % max(1, updates // evals) == 0 or step == updates:
            curve.append({"update": step, "loss": round(loss.item(), 3), "valid": round(score(model, valid, answers), 3)})
    return curve


def load_rows(data: Path, rows: str, work: Path):
    """``(train, valid, test, vocabulary size, outputs (K, C), answers or None, kind)`` of ``rows``."""
    vocab = {"<pad>": 0, "<unk>": 1}
    if rows in ANSWER_ROWS:
        labels: Dict[str, int] = {}
        train_split = load_answers(data, rows, "train", vocab, labels, grow=True)
        valid, test = (load_answers(data, rows, s, vocab, labels, grow=False) for s in ("valid", "test"))
        answers = sorted(labels, key=labels.get)
        return train_split, valid, test, len(vocab), (1, len(answers)), answers, rows
    folder = control_rows(data, rows, work)
    train_split = load_boxes(folder, "train", vocab, grow=True)
    valid, test = (load_boxes(folder, s, vocab, grow=False) for s in ("valid", "test"))
    return train_split, valid, test, len(vocab), (4, NUM_BINS), None, "box"


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the main job's benchmark folder")
    p.add_argument("--work", type=Path, default=None, help="where the control rows go (default DATA/../plain_baselines)")
    p.add_argument("--rows", default="colour,biggest,referring",
                   help="comma list: referring, grounding_control's controls, vqa, snli_ve")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--updates", type=int, default=None, help="default: the main job's for the task")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--query-pos-std", type=float, default=0.02,
                   help="init std of the query model's image position embeddings (0.02: BERT-style, as OFA)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work or args.data.parent / "plain_baselines"
    result = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "budget": BUDGET,
              "seed": args.seed, "query_pos_std": args.query_pos_std, "runs": []}
    for rows in [r for r in args.rows.split(",") if r]:
        train_split, valid, test, vocab_size, outputs, answers, kind = load_rows(args.data, rows, work)
        updates = args.updates or UPDATES[kind]
        for name in [m for m in args.models.split(",") if m]:
            torch.manual_seed(args.seed)
            model = build(name, vocab_size, outputs, args.query_pos_std)
            t0 = time.perf_counter()
            curve = train(model, train_split, valid, answers, updates, args.seed)
            test_scores = split_scores(model, test, answers)
            run = {"rows": rows, "model": name, "updates": updates, "train_rows": len(train_split),
                   "test_rows": len(test), "test_score": round(test_scores.mean().item(), 4), "curve": curve,
                   "seconds": round(time.perf_counter() - t0, 1)}
            if test.ids and (args.data / "scenes_test.jsonl").exists():
                task = "vqa_gen" if rows == "vqa" else rows
                run["by_kind"] = kind_scores(test_scores, test.ids, row_kinds(task, args.data / "scenes_test.jsonl"))
            result["runs"].append(run)
            print(f"{rows:10s} {name:12s} test {run['test_score']:.3f}  valid "
                  f"{' '.join(str(c['valid']) for c in curve)}  ({run['seconds']:.0f} s)", flush=True)
            if "by_kind" in run:
                print("    by kind: " + ", ".join(f"{k} {v['score']:.3f} (n {v['n']})" for k, v in run["by_kind"].items()),
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
