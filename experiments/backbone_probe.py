"""Linear probe of an image backbone's features on the embedded classification task.

Prints numbers; it is not a test. From the repository root:

    .venv/bin/python -m experiments.backbone_probe --data runs/main_job/data random CKPT [CKPT ...]

For each model (``random``: a freshly initialised ``--resnet-type`` backbone, else a checkpoint's
``encoder.embed_images``), the backbone's features of every training image of
``image_classify_{train,test}.tsv`` (64 px squash, as the task feeds them; BatchNorm with batch
statistics, so a fresh backbone is normalised like a trained one) are averaged over the patch grid,
standardised, and a multinomial logistic regression (Adam, 300 full-batch steps, L2 1e-3) is fitted on
train and scored on test: accuracy on the class (colour + shape of the main object), and on its shape
and its colour alone. It measures what the features still hold, not what a finetuned model reaches.
"""
import argparse
import os
import sys
from typing import List, Tuple

import torch

from ofa.cli.common import setup


def load_split(data: str, split: str, size: int) -> Tuple[torch.Tensor, List[str]]:
    """``([N, 3, size, size] images, N labels)`` of ``image_classify_{split}.tsv`` (image, id, label)."""
    from ofa.data_utils.images import decode_b64
    from ofa.data_utils.transforms import square_resize
    from ofa_synth.breakdown import tsv_rows

    images, labels = [], []
    path = os.path.join(data, f"image_classify_{split}.tsv")
    for row, fields in enumerate(tsv_rows(path), 1):
        if len(fields) < 3:
            raise ValueError(f"{path}: row {row}: expected 3 columns (image, id, label), got {len(fields)}")
        images.append(square_resize(decode_b64(fields[0]), size))
        labels.append(fields[2])
    return torch.stack(images), labels


def pooled_features(backbone: torch.nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """``[N, C]``: the backbone's ``[N, C, h, w]`` output averaged over the grid (batch statistics)."""
    backbone.train()
    with torch.no_grad():
        return torch.cat([backbone(images[i:i + batch]).mean((2, 3)) for i in range(0, len(images), batch)])


def probe(train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor, classes: int, steps: int = 300) -> torch.Tensor:
    """Test predictions of a logistic regression fitted on standardised ``train`` features."""
    mu, sd = train.mean(0), train.std(0) + 1e-5
    train, test = (train - mu) / sd, (test - mu) / sd
    w = torch.zeros(train.size(1), classes, requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(train @ w, y_train) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (test @ w).argmax(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="embedded benchmark folder (image_classify_{train,test}.tsv)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--resnet-type", default="timm:resnet10t", help="backbone of 'random' (default timm:resnet10t)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("models", nargs="+", help="'random' or checkpoint paths")
    args = p.parse_args(argv)
    setup()
    from ofa.checkpoint import load_model
    from ofa.model.resnet import build_image_backbone

    x_train, l_train = load_split(args.data, "train", args.image_size)
    x_test, l_test = load_split(args.data, "test", args.image_size)
    names = sorted(set(l_train) | set(l_test))
    index = {n: i for i, n in enumerate(names)}
    y_train = torch.tensor([index[v] for v in l_train])
    print(f"{len(l_train)} train / {len(l_test)} test images, {len(names)} classes")
    print(f"{'model':60s} {'class':>6s} {'shape':>6s} {'colour':>6s}")
    for name in args.models:
        torch.manual_seed(args.seed)
        if name == "random":
            backbone = build_image_backbone(args.resnet_type)
        else:
            backbone = load_model(name)[0].encoder.embed_images
        pred = probe(pooled_features(backbone, x_train), y_train, pooled_features(backbone, x_test), len(names))
        got = [names[k] for k in pred.tolist()]
        acc = sum(g == t for g, t in zip(got, l_test)) / len(l_test)
        shape = sum(g.split()[-1] == t.split()[-1] for g, t in zip(got, l_test)) / len(l_test)
        colour = sum(g.split()[0] == t.split()[0] for g, t in zip(got, l_test)) / len(l_test)
        print(f"{name[-60:]:60s} {acc:6.3f} {shape:6.3f} {colour:6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
