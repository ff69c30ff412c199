"""fairseq criteria of OFA, one per file (installed as ``ofa.criterions``)."""
