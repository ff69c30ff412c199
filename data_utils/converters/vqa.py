"""VQA v2 questions (+ annotations) + COCO images -> vqa TSV (question_id, image_id, question, answers,
predicted_objects, image), and optionally the answer-candidate file (ans2label).

answers: each distinct answer (lowercased, stripped) of the question's ``answers`` list with its VQA score
``min(1, count/3)``, written ``conf|!+answer`` joined with ``&&``, most frequent first (ties in first-seen order).
Without ``answers`` the ``multiple_choice_answer`` gets 1.0. Without an annotations file (test) every row gets
the dummy answer ``1.0|!+no``. predicted_objects is empty.

ans2label (``--ans2label-out``): {answer: id} over answers whose ``multiple_choice_answer`` count (in the
annotations, plus any ``--count-annotations`` files) is at least ``--min-answer-count`` (9 gives the official
3,129 on train+val), ids by descending count then answer text; ``--all-answers`` keeps every answer seen
(``multiple_choice_answer`` and the ``answers`` lists). Written as a pickle and as JSON.

Image files: ``COCO_<data_subtype>_<image_id:012d>.jpg`` (2014/2015 names, ``data_subtype`` from the questions
file) or ``<image_id:012d>.jpg`` (2017 names), or ``--image-pattern``.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence

from ofa.data_utils.converters._common import (
    ConvertResult,
    ImageReader,
    clean_text,
    json_list,
    load_json,
    require,
    write_mapping,
)
from ofa.data_utils.errors import DataError
from ofa.data_utils.formats import format_answers, get_schema
from ofa.data_utils.tsv_writer import write_tsv

NAME = "vqa"
HELP = "VQA v2 questions (+ annotations) JSON + COCO images -> vqa TSV (+ ans2label)"
TEST_ANSWER = "1.0|!+no"
DEFAULT_PATTERNS = ("COCO_{data_subtype}_{image_id:012d}.jpg", "{image_id:012d}.jpg")


def normalize_answer(answer) -> str:
    return clean_text(answer).lower()


def _checked(answer: str, path: str, row: int) -> str:
    if "&&" in answer or "|!+" in answer:
        raise DataError(f"answer {answer!r} contains a separator ('&&' or '|!+') of the answers column",
                        path, row, "answers")
    return answer


def answer_scores(ann: dict, path: str, row: int) -> Dict[str, float]:
    """{answer: min(1, count/3)} in the column order (count descending, ties first-seen)."""
    raw = ann.get("answers")
    if raw:
        if not isinstance(raw, list):
            raise DataError("answers is not a list", path, row, "answers")
        counts = Counter()
        for item in raw:
            text = item.get("answer") if isinstance(item, dict) else item
            if text is None:
                raise DataError(f"answer entry {item!r} lacks 'answer'", path, row, "answers")
            norm = normalize_answer(text)
            if norm:
                counts[_checked(norm, path, row)] += 1
        if counts:
            return {a: min(1.0, c / 3.0) for a, c in counts.most_common()}
    mca = normalize_answer(ann.get("multiple_choice_answer") or "")
    if not mca:
        raise DataError(f"question {ann.get('question_id')} has no answers", path, row, "answers")
    return {_checked(mca, path, row): 1.0}


def _top_answer(ann: dict) -> str:
    mca = normalize_answer(ann.get("multiple_choice_answer") or "")
    if mca:
        return mca
    texts = [normalize_answer(a.get("answer", "") if isinstance(a, dict) else a) for a in ann.get("answers") or []]
    counts = Counter(t for t in texts if t)
    return counts.most_common(1)[0][0] if counts else ""


def build_ans2label(annotation_lists: Sequence[List[dict]], min_count: int = 9,
                    all_answers: bool = False) -> Dict[str, int]:
    counts = Counter()
    seen = {}
    for anns in annotation_lists:
        for ann in anns:
            top = _top_answer(ann)
            if top:
                counts[top] += 1
                seen.setdefault(top, None)
            if all_answers:
                for a in ann.get("answers") or []:
                    norm = normalize_answer(a.get("answer", "") if isinstance(a, dict) else a)
                    if norm:
                        seen.setdefault(norm, None)
    keep = [a for a in seen if all_answers or counts[a] >= min_count]
    keep = [a for a in keep if "&&" not in a and "|!+" not in a]
    keep.sort(key=lambda a: (-counts[a], a))
    return {a: i for i, a in enumerate(keep)}


def _annotations(path: str) -> List[dict]:
    anns = json_list(load_json(path, "VQA annotations"), "annotations", path)
    for i, ann in enumerate(anns):
        require(ann, "question_id", path, i)
    return anns


def convert(out: str, questions: str, images: str, annotations: Optional[str] = None,
            ans2label_out: Optional[str] = None, min_answer_count: int = 9, all_answers: bool = False,
            count_annotations: Sequence[str] = (), image_pattern: Optional[str] = None, skip_bad: bool = False,
            verify_images: bool = True) -> ConvertResult:
    """Write the VQA TSV (and ans2label); returns the number of rows written (with skip counts attached)."""
    if min_answer_count < 1:
        raise DataError(f"--min-answer-count must be at least 1, got {min_answer_count}")
    if ans2label_out and not annotations:
        raise DataError("--ans2label-out needs --annotations (answers are counted from them)")
    qdata = load_json(questions, "VQA questions")
    qlist = json_list(qdata, "questions", questions)
    subtype = qdata.get("data_subtype")
    anns, by_qid = [], {}
    if annotations:
        anns = _annotations(annotations)
        for i, ann in enumerate(anns):
            by_qid[ann["question_id"]] = (i, ann)
    reader = ImageReader(images, skip_bad=skip_bad, verify=verify_images)
    patterns = [image_pattern] if image_pattern else [p for p in DEFAULT_PATTERNS if subtype or "{data" not in p]

    def image_names(image_id, row):
        names = []
        for p in patterns:
            try:
                names.append(p.format(image_id=image_id, data_subtype=subtype))
            except (KeyError, ValueError, IndexError, TypeError) as e:
                raise DataError(f"image pattern {p!r} does not format for image_id {image_id!r} ({e}); "
                                f"fields are {{image_id}} and {{data_subtype}}", questions, row, "image_id") from None
        return names

    def rows():
        seen = set()
        for i, q in enumerate(qlist):
            qid = require(q, "question_id", questions, i)
            image_id = require(q, "image_id", questions, i)
            text = clean_text(require(q, "question", questions, i))
            if qid in seen:
                raise DataError(f"question_id {qid} appears twice", questions, i, "question_id")
            seen.add(qid)
            if annotations:
                if qid not in by_qid:
                    raise DataError(f"question {qid} has no annotation in {annotations}", questions, i, "question_id")
                a_row, ann = by_qid[qid]
                if "image_id" in ann and ann["image_id"] != image_id:
                    raise DataError(f"annotation of question {qid} is for image {ann['image_id']}, not {image_id}",
                                    annotations, a_row, "image_id")
                answers = format_answers(answer_scores(ann, annotations, a_row))
            else:
                answers = TEST_ANSWER
            path = reader.first_existing(image_names(image_id, i), questions, i)
            b64 = reader.load(path, f"question {qid} (image {image_id})", questions, i)
            if b64 is None:
                continue
            yield {"question_id": qid, "image_id": image_id, "question": text, "answers": answers,
                   "predicted_objects": "", "image": b64}

    mapping = None
    if ans2label_out:  # built (and its inputs checked) before anything is written
        lists = [anns] + [_annotations(p) for p in count_annotations]
        mapping = build_ans2label(lists, min_count=min_answer_count, all_answers=all_answers)
    n = write_tsv(out, get_schema("vqa"), rows())
    extra = ()
    if mapping is not None:
        written = write_mapping(ans2label_out, mapping)
        extra = (written["pickle"], written["json"])
    return reader.result(n, out, extra)


def add_arguments(parser) -> None:
    parser.add_argument("--questions", required=True, metavar="QUESTIONS.json",
                        help="v2_OpenEnded_mscoco_<split>_questions.json")
    parser.add_argument("--annotations", metavar="ANNOTATIONS.json",
                        help="v2_mscoco_<split>_annotations.json (leave out for test: dummy answer 1.0|!+no)")
    parser.add_argument("--images", required=True, metavar="DIR", help="COCO image folder of the split")
    parser.add_argument("--image-pattern", metavar="PATTERN",
                        help="image file name under DIR, with {image_id} and {data_subtype} "
                             "(default: COCO_{data_subtype}_{image_id:012d}.jpg, then {image_id:012d}.jpg)")
    parser.add_argument("--ans2label-out", metavar="ANS2LABEL.pkl",
                        help="also write the answer candidates {answer: id} as .pkl and .json")
    parser.add_argument("--min-answer-count", type=int, default=9,
                        help="keep answers that are the multiple-choice answer of at least N questions (default 9)")
    parser.add_argument("--all-answers", action="store_true", help="keep every answer seen in ans2label")
    parser.add_argument("--count-annotations", action="append", default=[], metavar="ANNOTATIONS.json",
                        help="more annotation files counted for ans2label only (e.g. val when converting train)")


def run(args) -> ConvertResult:
    return convert(args.out, args.questions, args.images, annotations=args.annotations,
                   ans2label_out=args.ans2label_out, min_answer_count=args.min_answer_count,
                   all_answers=args.all_answers, count_annotations=args.count_annotations,
                   image_pattern=args.image_pattern, skip_bad=args.skip_bad, verify_images=args.verify_images)
