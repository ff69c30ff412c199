"""Caption metrics through pycocoevalcap's scorers, called directly (offline; no SPICE, no PTB tokenizer)."""
import logging
from typing import Dict, List

logger = logging.getLogger(__name__)


def caption_scores(predictions: List[str], refs: List[List[str]]) -> Dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr, and METEOR when Java is available, over a whole split."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [p if p else "empty"] for i, p in enumerate(predictions)}
    out: Dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        out["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    except Exception as e:  # Java missing or the jar failed: the other metrics still stand
        logger.warning(f"METEOR skipped: {e}")
    return out
