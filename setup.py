"""Install the OFA fairseq plugin and its embedded benchmark.

The distribution is ``ofa-fairseq`` (PyPI's ``ofa`` is an unrelated project). It installs two import
packages: ``ofa``, the product, with the top-level ``tasks``, ``criterions`` and ``data_utils`` folders
mapped to ``ofa.tasks``, ``ofa.criterions`` and ``ofa.data_utils``; and ``ofa_synth``, the embedded
benchmark and its main job (``ofa-synth``), which ``ofa`` never imports. ``experiments/`` and ``bench/``
are not installed.
"""
from setuptools import setup

setup(
    name="ofa-fairseq",
    version="0.1.0",
    description="OFA (One For All) unified vision-language seq2seq model as a fairseq plugin",
    python_requires=">=3.9",
    packages=["ofa", "ofa.model", "ofa.generate", "ofa.cli", "ofa.metrics", "ofa.vqgan", "ofa.tasks", "ofa.criterions",
              "ofa.data_utils", "ofa.data_utils.converters", "ofa.export", "ofa_runtime", "ofa_synth"],
    package_dir={"ofa.tasks": "tasks", "ofa.criterions": "criterions", "ofa.data_utils": "data_utils"},
    install_requires=[
        # pip takes torch 2.14.1 / torchvision 0.29.1 from local disk here; newer pairs also work
        "torch>=2.6",
        "torchvision>=0.21",
        # plain fairseq 0.12.2 does not import on Python 3.11
        "fairseq-fixed==0.12.3.1",
        "timm>=0.9",
        "sentencepiece>=0.1.99",
        "pycocoevalcap>=1.2",
        "pycocotools>=2.0",  # detection mAP (ofa-evaluate)
        "numpy>=1.24",
        "h5py>=3.8",
        "pillow>=9.0",
        "safetensors>=0.4",
        "pyyaml>=5.4",  # VQGAN yaml configs
        "nltk>=3.8",  # Porter stemmer of the official Gigaword ROUGE
        "pooch>=1.8",  # ofa.hub: checkpoint downloads (HTTPDownloader, sha256, progress bar)
        "filelock>=3",
        "tqdm>=4.60",  # ofa-evaluate's progress bar
        "tensorboardX>=2.6",  # fairseq's --tensorboard-logdir
    ],
    extras_require={
        "synth": ["matplotlib>=3.5"],  # the main job's figures (learning curves, predictions on test images)
        # ofa-export onnx and the torch-free runtime (ofa_runtime; regex: its GPT-2 BPE)
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17", "regex"],
        "peft": ["peft>=0.11"],  # ofa-train --lora-rank
        # rouge-score: the ROUGE parity test; onnx/onnxruntime/peft: the export and LoRA tests
        "test": ["pytest>=7", "rouge-score>=0.1.2", "onnx>=1.16", "onnxruntime>=1.17", "peft>=0.11"],
    },
    entry_points={
        "console_scripts": [
            "ofa-tokenizer=ofa.tokenizer:main",
            "ofa-data=ofa.data_utils.cli:main",
            "ofa-train=ofa.cli.train:main",
            "ofa-evaluate=ofa.cli.evaluate:main",
            "ofa-checkpoints=ofa.hub:main",
            "ofa-predict=ofa.cli.predict:main",
            "ofa-export=ofa.cli.export:main",
            "ofa-vqgan=ofa.vqgan.cli:main",
            "ofa-synth=ofa_synth.cli:main",
        ]
    },
)
