"""fairseq criteria of OFA, one per file (installed as ``ofa.criterions``)."""
from ofa.criterions import label_smoothed_cross_entropy  # noqa: F401  (adjust_label_smoothed_cross_entropy)
from ofa.criterions import scst_reward_criterion  # noqa: F401  (scst_reward_criterion)
