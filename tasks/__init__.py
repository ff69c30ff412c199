"""fairseq tasks of OFA, one per file (installed as ``ofa.tasks``); importing registers them.

``ofa_task.OFATask`` is the shared base (data, batching, generation, metrics); ``closed_set`` holds
the candidate-answer machinery of the VQA / entailment / classification tasks.
"""
from ofa.tasks import caption, image_classify, refcoco, snli_ve, summarization, text_classify, text_infilling, vqa_gen, unify, image_gen, detection, region_caption, image_text_match  # noqa: F401
