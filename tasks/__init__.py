"""fairseq tasks of OFA, one per file (installed as ``ofa.tasks``).

Finetuning and pretraining tasks land here (caption, refcoco, vqa_gen, snli_ve, image_classify, unify, ...);
``ofa/__init__.py`` imports this package so that importing ``ofa`` registers them.
"""
