"""Pure metric functions (no model, no fairseq state): CIDEr-D for captioning rewards and validation."""
from ofa.metrics.cider import (CiderD, build_document_frequency, load_document_frequency, ngram_counts,
                               normalize_for_reward, save_document_frequency)

__all__ = ["CiderD", "build_document_frequency", "load_document_frequency", "save_document_frequency",
           "ngram_counts", "normalize_for_reward"]
