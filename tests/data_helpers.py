"""Small hand-made official-format files for data-layer tests."""
from __future__ import annotations

from PIL import Image

from ofa.data_utils.formats import get_schema
from ofa.data_utils.images import encode_image
from ofa.data_utils.tsv_writer import write_tsv


def png(w=40, h=30, color=(200, 30, 30)) -> str:
    img = Image.new("RGB", (w, h), (240, 240, 240))
    img.paste(Image.new("RGB", (w // 2, h // 2), color), (w // 4, h // 4))
    return encode_image(img)


def caption_rows(n=5):
    return [{"uniq_id": str(i), "image_id": str(100 + i), "caption": f"a red square number {i}&&a square {i}",
             "predicted_objects": "square", "image": png()} for i in range(n)]


def refcoco_rows(n=4):
    return [{"uniq_id": str(i), "image_id": str(i), "text": "the red square", "region_coord": "10,7.5,30,22.5",
             "image": png()} for i in range(n)]


def vqa_rows(n=4):
    return [{"question_id": str(i), "image_id": str(i), "question": "What color is the square",
             "answers": "1.0|!+red&&0.3|!+orange", "predicted_objects": "", "image": png()} for i in range(n)]


def snli_rows(n=3):
    labels = ["entailment", "contradiction", "neutral"]
    return [{"uniq_id": str(i), "image_id": str(i), "image": png(), "hypothesis": "there is a red square",
             "caption": "a red square on grey", "label": labels[i % 3]} for i in range(n)]


def classify_rows(n=3):
    return [{"image": png(), "label_index": str(i + 1), "label_name": ["red square", "blue circle", "green star"][i % 3]}
            for i in range(n)]


ROWS = {"caption": caption_rows, "refcoco": refcoco_rows, "vqa": vqa_rows, "snli_ve": snli_rows,
        "image_classify": classify_rows}


def write(tmp_path, task, rows=None, name=None):
    path = tmp_path / (name or f"{task}.tsv")
    write_tsv(str(path), get_schema(task), rows if rows is not None else ROWS[task]())
    return str(path)
