#!/usr/bin/env python3
"""Writes evals/fixtures/: small files in the published layouts of the benchmarks that
`src/evals/layouts.rs` reads, written field by field from each layout's published schema
(every question, answer and image is invented here; nothing is copied from the datasets).
Deterministic (fixed content, pinned Pillow and pyarrow). Each layout also gets a malformed
variant that the loader must reject, naming the field.

    python tools/make_eval_layouts.py

docvqa/   DocVQA (single page): val_v1.0.json {"dataset_name", "dataset_split",
          "dataset_version", "data": [{"questionId", "question", "question_types", "image",
          "docId", "ucsf_document_id", "ucsf_document_page_no", "answers", "data_split"}]},
          images under documents/ (paths relative to the JSON).
vqav2/    VQAv2: v2_OpenEnded_mscoco_val2014_questions.json {"info", "task_type", "data_type",
          "data_subtype", "questions": [{"image_id", "question", "question_id"}], "license"}
          and v2_mscoco_val2014_annotations.json {"info", "license", "data_subtype",
          "annotations": [{"question_type", "multiple_choice_answer", "answers": [{"answer",
          "answer_confidence", "answer_id"}] (ten), "image_id", "answer_type", "question_id"}],
          "data_type"}; images val2014/COCO_val2014_{image_id:012}.jpg.
textvqa/  TextVQA 0.5.1: TextVQA_0.5.1_val.json {"dataset_type", "dataset_name",
          "dataset_version", "data": [{"question", "image_id", "image_classes",
          "flickr_original_url", "flickr_300k_url", "image_width", "image_height", "answers"
          (ten), "question_tokens", "question_id", "set_name"}]}; images
          train_images/{image_id}.jpg (validation images ship in the train folder).
coco/     COCO captions: annotations/captions_val2014.json {"info", "images": [{"license",
          "file_name", "coco_url", "height", "width", "date_captured", "flickr_url", "id"}],
          "licenses", "annotations": [{"image_id", "id", "caption"}]}; images val2014/.
chartqa/  ChartQA as the Hugging Face Parquet export (HuggingFaceM4/ChartQA):
          data/test-00000-of-00001.parquet, columns image struct<bytes, path> (PNG bytes),
          query string, label list<string>, human_or_machine int64 (class label 0 human,
          1 machine), with the datasets library's "huggingface" schema metadata.
"""
import io
import json
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as e:  # pinned in tools/requirements.txt
    raise SystemExit(f"pyarrow is needed for the ChartQA Parquet fixture ({e}); see tools/requirements.txt")

OUT = Path(__file__).resolve().parent.parent / "evals" / "fixtures"

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (235, 200, 40), (140, 60, 170)]


def picture(i: int, size=(40, 30)) -> Image.Image:
    """A tiny picture: a background and a shape, different for each i."""
    img = Image.new("RGB", size, COLOURS[i % len(COLOURS)])
    d = ImageDraw.Draw(img)
    w, h = size
    fg = COLOURS[(i + 2) % len(COLOURS)]
    if i % 2:
        d.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=fg)
    else:
        d.rectangle((w // 5, h // 5, 4 * w // 5, 4 * h // 5), fill=fg)
    return img


def save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=70)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# ---- DocVQA -----------------------------------------------------------------------------

def docvqa() -> None:
    root = OUT / "docvqa"
    pages = [("abcd0001_1", 101), ("abcd0002_3", 102)]
    for i, (name, _) in enumerate(pages):
        path = root / "documents" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(i, (32, 44)).save(path, optimize=True)
    items = [
        (57001, "What is the invoice number?", ["handwritten", "form"], 0, ["INV-0042", "inv-0042"]),
        (57002, "What is the total?", ["table/list"], 0, ["12.50"]),
        (57003, "Who signed the letter?", ["layout"], 1, ["Ana Silva"]),
    ]
    data = []
    for qid, question, types, page, answers in items:
        name, doc_id = pages[page]
        data.append({
            "questionId": qid,
            "question": question,
            "question_types": types,
            "image": f"documents/{name}.png",
            "docId": doc_id,
            "ucsf_document_id": name.split("_")[0],
            "ucsf_document_page_no": name.split("_")[1],
            "answers": answers,
            "data_split": "val",
        })
    doc = {"dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0", "data": data}
    write_json(root / "val_v1.0.json", doc)
    # Malformed: data[1] has no questionId.
    bad = json.loads(json.dumps(doc))
    del bad["data"][1]["questionId"]
    write_json(root / "malformed.json", bad)


# ---- VQAv2 ------------------------------------------------------------------------------

VQA_INFO = {"description": "Invented questions in the VQA v2 layout (gemma-batch test fixture).",
            "url": "", "version": "2.0", "year": 2026, "contributor": "gemma-batch",
            "date_created": "2026-01-01 00:00:00"}
VQA_LICENSE = {"url": "", "name": "Fixture: invented content"}


def ten_answers(answers):
    """Ten answers as VQAv2 gives them: answer, answer_confidence (yes/maybe/no), answer_id 1-10."""
    confidence = ["yes", "yes", "maybe", "yes", "no", "yes", "yes", "maybe", "yes", "yes"]
    assert len(answers) == 10
    return [{"answer": a, "answer_confidence": c, "answer_id": i + 1} for i, (a, c) in enumerate(zip(answers, confidence))]


def vqav2() -> None:
    root = OUT / "vqav2"
    images = {42: 0, 73: 1}
    for image_id, pic in images.items():
        save_jpeg(picture(pic), root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    qa = [
        (42000, 42, "What colour is the square?", "what color is the", "other",
         ["green"] * 7 + ["dark green", "green", "teal"]),
        (42001, 42, "Is there a circle?", "is there a", "yes/no", ["no"] * 9 + ["yes"]),
        (73000, 73, "How many circles are there?", "how many", "number", ["1"] * 8 + ["one", "2"]),
    ]
    questions = {
        "info": VQA_INFO, "task_type": "Open-Ended", "data_type": "mscoco",
        "license": VQA_LICENSE, "data_subtype": "val2014",
        "questions": [{"image_id": img, "question": q, "question_id": qid} for qid, img, q, *_ in qa],
    }
    annotations = {
        "info": VQA_INFO, "license": VQA_LICENSE, "data_subtype": "val2014",
        "annotations": [
            {"question_type": qtype, "multiple_choice_answer": max(set(ans), key=ans.count),
             "answers": ten_answers(ans), "image_id": img, "answer_type": atype, "question_id": qid}
            for qid, img, _, qtype, atype, ans in qa
        ],
        "data_type": "mscoco",
    }
    write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", questions)
    write_json(root / "v2_mscoco_val2014_annotations.json", annotations)
    # Malformed: questions[1] has no question_id; annotations[2].answers is a string.
    bad = json.loads(json.dumps(questions))
    del bad["questions"][1]["question_id"]
    write_json(root / "malformed" / "questions.json", bad)
    bad = json.loads(json.dumps(annotations))
    bad["annotations"][2]["answers"] = "1"
    write_json(root / "malformed" / "annotations.json", bad)


# ---- TextVQA ----------------------------------------------------------------------------

def textvqa() -> None:
    root = OUT / "textvqa"
    items = [
        (91001, "0a1b2c3d4e5f6071", "what is written on the sign?", ["Street sign", "Signage"], 0,
         ["stop"] * 8 + ["stop sign", "STOP"]),
        (91002, "0a1b2c3d4e5f6071", "what colour is the text?", ["Street sign", "Signage"], 0,
         ["white"] * 10),
        (91003, "1f2e3d4c5b6a7980", "what number is on the jersey?", ["Person", "Jersey"], 1,
         ["23"] * 6 + ["twenty three", "23", "28", "unanswerable"]),
    ]
    data = []
    for qid, image_id, question, classes, pic, answers in items:
        path = root / "train_images" / f"{image_id}.jpg"
        if not path.exists():
            save_jpeg(picture(pic + 2, (36, 28)), path)
        data.append({
            "question": question,
            "image_id": image_id,
            "image_classes": classes,
            "flickr_original_url": f"https://example.invalid/{image_id}_o.jpg",
            "flickr_300k_url": f"https://example.invalid/{image_id}_z.jpg",
            "image_width": 36,
            "image_height": 28,
            "answers": answers,
            "question_tokens": question.rstrip("?").split(),
            "question_id": qid,
            "set_name": "val",
        })
    doc = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}
    write_json(root / "TextVQA_0.5.1_val.json", doc)
    # Malformed: data[2].answers holds a number among the strings.
    bad = json.loads(json.dumps(doc))
    bad["data"][2]["answers"][3] = 23
    write_json(root / "malformed.json", bad)


# ---- COCO captions ----------------------------------------------------------------------

def coco() -> None:
    root = OUT / "coco"
    images = [(139, 0), (285, 1), (632, 3)]
    entries = []
    for image_id, pic in images:
        name = f"COCO_val2014_{image_id:012d}.jpg"
        save_jpeg(picture(pic, (40, 30)), root / "val2014" / name)
        entries.append({
            "license": 1, "file_name": name, "coco_url": f"https://example.invalid/val2014/{name}",
            "height": 30, "width": 40, "date_captured": "2026-01-01 00:00:00",
            "flickr_url": f"https://example.invalid/{image_id}.jpg", "id": image_id,
        })
    captions = [
        (139, "A green square on a red background."), (285, "A yellow circle on green."),
        (139, "A red picture with a green box in the middle."), (632, "A small purple circle."),
        (285, "Green background, yellow round shape."), (139, "A square shape, red around it."),
        (632, "A violet picture with a round blue spot."), (285, "A circle in the centre."),
        (139, "Red and green colours."), (632, "A round shape on purple."),
    ]
    annotations = [{"image_id": img, "id": 700 + i, "caption": c} for i, (img, c) in enumerate(captions)]
    doc = {
        "info": {"description": "Invented captions in the COCO captions layout (gemma-batch test fixture).",
                 "url": "", "version": "1.0", "year": 2026, "contributor": "gemma-batch",
                 "date_created": "2026-01-01 00:00:00"},
        "images": entries,
        "licenses": [{"url": "", "id": 1, "name": "Fixture: invented content"}],
        "annotations": annotations,
    }
    write_json(root / "annotations" / "captions_val2014.json", doc)
    # Malformed: annotations[4].caption is missing.
    bad = json.loads(json.dumps(doc))
    del bad["annotations"][4]["caption"]
    write_json(root / "malformed.json", bad)


# ---- ChartQA (Hugging Face Parquet) -----------------------------------------------------

# The datasets library's features of HuggingFaceM4/ChartQA, as its Parquet files carry them.
CHARTQA_FEATURES = {
    "image": {"decode": True, "id": None, "_type": "Image"},
    "query": {"dtype": "string", "id": None, "_type": "Value"},
    "label": [{"dtype": "string", "id": None, "_type": "Value"}],
    "human_or_machine": {"names": ["human", "machine"], "id": None, "_type": "ClassLabel"},
}


def chartqa_table(rows, label_type):
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([
        ("image", image_type), ("query", pa.string()), ("label", label_type), ("human_or_machine", pa.int64()),
    ]).with_metadata({"huggingface": json.dumps({"info": {"features": CHARTQA_FEATURES}})})
    columns = {
        "image": [{"bytes": png_bytes(picture(i, (48, 36))), "path": f"{1000 + i}.png"} for i, _ in enumerate(rows)],
        "query": [q for q, _, _ in rows],
        "label": [a for _, a, _ in rows],
        "human_or_machine": [h for _, _, h in rows],
    }
    return pa.Table.from_pydict(columns, schema=schema)


def chartqa() -> None:
    root = OUT / "chartqa"
    rows = [
        ("What is the value of the tallest bar?", ["42"], 0),
        ("Which year had the lowest share?", ["2019"], 1),
        ("What is the difference between the two largest values?", ["7.5"], 1),
        ("How many colours are used in the chart?", ["3"], 0),
    ]
    path = root / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(chartqa_table(rows, pa.list_(pa.string())), path)
    # Malformed: label is one string, not a list of strings.
    bad = chartqa_table([(q, a[0], h) for q, a, h in rows], pa.string())
    pq.write_table(bad, root / "malformed.parquet")


def main() -> None:
    for d in ["docvqa", "vqav2", "textvqa", "coco", "chartqa"]:
        shutil.rmtree(OUT / d, ignore_errors=True)
    docvqa()
    vqav2()
    textvqa()
    coco()
    chartqa()
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
