"""Per-task training and evaluation throughput, including trie beam search vs all-candidate VQA.

Prints numbers; it is not a test. From the repository root:

    .venv/bin/python bench/bench_tasks.py [--arch ofa_test] [--image-size 64] [--batch-size 8]

On a fresh embedded benchmark (or ``--data DIR``) and an untrained model of ``--arch``, for every
task: training samples/s (forward + backward + Adam step through the task's criterion), and
evaluation samples/s of the task's own inference (beam search for caption and grounding; for the
closed-set tasks both ``allcand`` scoring of every candidate and trie-constrained ``beamsearch``, with
each task's official decoder prompt: ``prev_output`` for VQA and entailment, none for classification;
``--no-prefill`` steps beam search through the forced prompt one token at a time, as before the prompt
prefill).
"""
import argparse
import os
import sys
import tempfile
import time

import torch

from ofa.cli.common import setup
from ofa.model import OFAModel, config_for_arch
from ofa.task_config import build_task_config

TASKS = {"caption": "caption", "refcoco": "refcoco", "vqa_gen": "vqa", "snli_ve": "snli_ve",
         "image_classify": "image_classify"}
OFFICIAL_PROMPT = {"vqa_gen": "prev_output", "snli_ve": "prev_output", "image_classify": "none"}


def build_task(name, data, args, **extra):
    from fairseq.tasks import TASK_REGISTRY

    file = TASKS[name]
    cli = {"data": f"{data}/{file}_train.tsv,{data}/{file}_valid.tsv", "bpe_dir": f"{data}/tok",
           "patch_image_size": args.image_size, "max_image_size": args.image_size, "eval_max_len_b": 8, **extra}
    if name in OFFICIAL_PROMPT:
        cli["prompt_type"] = OFFICIAL_PROMPT[name]
    if name == "vqa_gen":
        cli["ans2label_file"] = f"{data}/vqa_ans2label.json"
    if name == "image_classify":
        cli["ans2label_file"] = f"{data}/class_names.txt"
    task = TASK_REGISTRY[name].setup_task(build_task_config(name, {}, cli))
    task.load_dataset("train")
    task.load_dataset("valid")
    return task


def batches(task, split, bsz, n):
    itr = task.get_batch_iterator(task.dataset(split), max_sentences=bsz).next_epoch_itr(shuffle=False)
    out = []
    for b in itr:
        out.append(b)
        if len(out) == n:
            break
    return out


def train_rate(task, model, bsz, steps):
    from fairseq.criterions import CRITERION_REGISTRY

    crit = CRITERION_REGISTRY["adjust_label_smoothed_cross_entropy"](task, sentence_avg=False, label_smoothing=0.1)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    data = batches(task, "train", bsz, steps + 1)
    model.train()

    def step(sample):
        if hasattr(task, "add_constraints"):
            sample = task.add_constraints(sample)
        loss, size, _ = crit(model, sample)
        opt.zero_grad()
        (loss / size).backward()
        opt.step()

    step(data[0])
    start = time.perf_counter()
    for s in data[1:]:
        step(s)
    return sum(s["nsentences"] for s in data[1:]) / (time.perf_counter() - start)


def eval_rate(task, model, bsz, n, prefill=True):
    model.eval()
    data = batches(task, "valid", bsz, n)
    task.generator = task.build_generator([model], prefill_prompt=prefill)
    with torch.no_grad():
        task.inference(model, data[0])
        start = time.perf_counter()
        for s in data:
            task.inference(model, s)
    return sum(s["nsentences"] for s in data) / (time.perf_counter() - start)


def main(argv=None):
    setup()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data")
    p.add_argument("--arch", default="ofa_test")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tasks", default=",".join(TASKS), help="comma list (default all)")
    p.add_argument("--no-prefill", action="store_true", help="beam search steps through forced prompts")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    data = args.data
    if data is None:
        from ofa.tokenizer import train_sentencepiece
        from ofa_synth.writer import main as synth_main

        data = os.path.join(tempfile.mkdtemp(prefix="ofa-bench-"), "synth")
        synth_main([data, "--num-images", "120", "--image-size", str(args.image_size), "--seed", "0"])
        train_sentencepiece(os.path.join(data, "text_corpus.txt"), os.path.join(data, "tok"), vocab_size=400)
    print(f"arch {args.arch}, image {args.image_size}px, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'task':<16} {'train samples/s':>16} {'eval samples/s':>15}  eval mode")
    for name in [t for t in TASKS if t in args.tasks.split(",")]:
        modes = ["allcand", "beamsearch"] if name in ("vqa_gen", "snli_ve", "image_classify") else [None]
        for mode in modes:
            task = build_task(name, data, args, **({"val_inference_type": mode} if mode else {}))
            model = OFAModel.from_config(config_for_arch(args.arch), task.source_dictionary)
            train = train_rate(task, model, args.batch_size, args.steps) if mode in (None, "allcand") else float("nan")
            ev = eval_rate(task, model, args.batch_size, args.steps, prefill=not args.no_prefill)
            prompt = f", prompt {OFFICIAL_PROMPT[name]}" if name in OFFICIAL_PROMPT else ""
            print(f"{name:<16} {train:>16.1f} {ev:>15.1f}  {mode or 'beam search'}{prompt}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
