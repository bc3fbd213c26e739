"""Generate gemma-batch's sample corpora, deterministically (fixed seeds, pinned Pillow).

    python datasets/generate.py            # writes datasets/docs, datasets/photos, *.jsonl

docs/   rendered document pages (invoices, forms, receipts) with known field values, as PNG
        pages and as PDFs with a real text layer (docs/pdf/*.pdf, one or two pages each);
photos/ synthetic photos: shapes and colours on a background, some with a text overlay.

Labels (one JSON object per line):
  docs.jsonl        id, image, pdf, page, kind, fields{...}
  docs_qa.jsonl     id, doc_id, image, question, answers[...]     (VQA over pages)
  photos.jsonl      id, image, captions[...], shapes[...]
  photos_qa.jsonl   id, photo_id, image, question, answers[...]
"""

import json
import random
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent
SEED = 4242
N_INVOICES, N_FORMS, N_RECEIPTS, N_PHOTOS = 16, 12, 12, 48

VENDORS = ["Acme Supplies", "Northwind Traders", "Blue Harbor Ltd", "Kestrel & Sons", "Orchid Labs",
           "Granite Works", "Pinewood Co", "Lumen Optics", "Riverbend Foods", "Atlas Freight"]
ITEMS = ["Paper A4", "Toner", "Desk lamp", "USB cable", "Stapler", "Notebook", "Chair mat", "Monitor arm",
         "Coffee beans", "Label tape", "Ink pens", "Headset"]
FIRST = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi", "Lars"]
LAST = ["Silva", "Okafor", "Novak", "Tanaka", "Moreau", "Haddad", "Kowalski", "Lindqvist", "Reyes", "Brennan"]
CITIES = ["Lisbon", "Lagos", "Prague", "Osaka", "Lyon", "Beirut", "Krakow", "Uppsala", "Quito", "Galway"]
COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 40),
           "purple": (140, 60, 170), "orange": (240, 130, 30), "black": (20, 20, 20), "white": (245, 245, 245)}
SHAPES = ["circle", "square", "triangle"]
# The name pools the generators draw from; other generators (the training corpus of the small
# model) pass larger ones.
POOLS = {"vendors": VENDORS, "items": ITEMS, "first": FIRST, "last": LAST, "cities": CITIES}


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


# ---- documents -------------------------------------------------------------------------

def money(rng: random.Random) -> float:
    return round(rng.uniform(2, 400), 2)


def make_invoice(rng: random.Random, i: int, pools: dict = POOLS) -> dict:
    items = [(rng.choice(pools["items"]), rng.randint(1, 5), money(rng)) for _ in range(rng.randint(2, 5))]
    subtotal = round(sum(q * p for _, q, p in items), 2)
    tax = round(subtotal * 0.2, 2)
    fields = {
        "invoice_number": f"INV-{2026}{i:04d}",
        "date": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "vendor": rng.choice(pools["vendors"]),
        "total": f"{subtotal + tax:.2f}",
    }
    lines = [("title", "INVOICE"), ("text", fields["vendor"]), ("text", f"Invoice number: {fields['invoice_number']}"),
             ("text", f"Date: {fields['date']}"), ("rule", "")]
    lines += [("text", f"{name}  x{q}  {p:.2f}") for name, q, p in items]
    lines += [("rule", ""), ("text", f"Subtotal: {subtotal:.2f}"), ("text", f"Tax (20%): {tax:.2f}"),
              ("bold", f"Total: {fields['total']} EUR")]
    qa = [("What is the invoice number?", [fields["invoice_number"]]),
          ("What is the total amount?", [fields["total"], f"{fields['total']} EUR"]),
          ("Who is the vendor?", [fields["vendor"]]),
          ("What is the invoice date?", [fields["date"]])]
    return {"kind": "invoice", "fields": fields, "lines": lines, "qa": qa}


def make_form(rng: random.Random, i: int, pools: dict = POOLS) -> dict:
    fields = {
        "name": f"{rng.choice(pools['first'])} {rng.choice(pools['last'])}",
        "city": rng.choice(pools["cities"]),
        "date_of_visit": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "reference": f"F{rng.randint(100000, 999999)}",
    }
    lines = [("title", "VISITOR REGISTRATION FORM"), ("rule", ""), ("text", f"Full name: {fields['name']}"),
             ("text", f"City: {fields['city']}"), ("text", f"Date of visit: {fields['date_of_visit']}"),
             ("text", f"Reference: {fields['reference']}"), ("rule", ""), ("text", "Signature: ____________")]
    qa = [("What is the name on the form?", [fields["name"]]), ("Which city is given?", [fields["city"]]),
          ("What is the reference number?", [fields["reference"]])]
    return {"kind": "form", "fields": fields, "lines": lines, "qa": qa}


def make_receipt(rng: random.Random, i: int, pools: dict = POOLS) -> dict:
    items = [(rng.choice(pools["items"]), money(rng) / 10) for _ in range(rng.randint(2, 4))]
    total = round(sum(p for _, p in items), 2)
    fields = {"store": rng.choice(pools["vendors"]), "total": f"{total:.2f}", "items": str(len(items)),
              "date": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
    lines = [("title", fields["store"].upper()), ("text", f"Date: {fields['date']}"), ("rule", "")]
    lines += [("text", f"{name}  {p:.2f}") for name, p in items]
    lines += [("rule", ""), ("bold", f"TOTAL {fields['total']}"), ("text", "Thank you!")]
    qa = [("What is the total on the receipt?", [fields["total"]]), ("How many items were bought?", [fields["items"]]),
          ("Which store issued the receipt?", [fields["store"]])]
    return {"kind": "receipt", "fields": fields, "lines": lines, "qa": qa}


PAGE_W, PAGE_H, MARGIN = 612, 792, 48
SIZES = {"title": 26, "bold": 18, "text": 15}


def layout(lines):
    """(kind, text, x, y, size) in page points, top-left origin."""
    y, out = MARGIN, []
    for kind, text in lines:
        if kind == "rule":
            out.append((kind, text, MARGIN, y + 6, 0))
            y += 18
        else:
            size = SIZES[kind]
            out.append((kind, text, MARGIN, y, size))
            y += int(size * 1.6)
    return out


def render_page(doc: dict) -> Image.Image:
    img = Image.new("RGB", (PAGE_W, PAGE_H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for kind, text, x, y, size in layout(doc["lines"]):
        if kind == "rule":
            d.line([(x, y), (PAGE_W - MARGIN, y)], fill=(90, 90, 90), width=1)
        else:
            d.text((x, y), text, fill=(0, 0, 0), font=font(size))
    return img


def render_png(doc: dict, path: Path) -> None:
    render_page(doc).save(path, optimize=True)


def pdf_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(pages: list, path: Path) -> None:
    """A small PDF with one text-layer page per document (Helvetica, standard 14 font)."""
    objs = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            4: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold >>"}
    kids = []
    n = 5
    for doc in pages:
        ops = []
        for kind, text, x, y, size in layout(doc["lines"]):
            if kind == "rule":
                ops.append(f"0.35 g {x} {PAGE_H - y} {PAGE_W - 2 * MARGIN} 0.8 re f 0 g")
            else:
                f = "/F2" if kind in ("title", "bold") else "/F1"
                ops.append(f"BT {f} {size} Tf {x} {PAGE_H - y - size} Td ({pdf_escape(text)}) Tj ET")
        stream = zlib.compress("\n".join(ops).encode("latin-1"))
        objs[n] = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream"
        objs[n + 1] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> >>" % (PAGE_W, PAGE_H, n))
        kids.append(n + 1)
        n += 2
    objs[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (" ".join(f"{k} 0 R" for k in kids).encode(), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for i in sorted(objs):
        offsets[i] = len(out)
        out += b"%d 0 obj\n" % i + objs[i] + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for i in sorted(objs):
        out += b"%010d 00000 n \n" % offsets[i]
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    path.write_bytes(bytes(out))


# ---- photos ----------------------------------------------------------------------------

def make_photo(rng: random.Random, i: int) -> dict:
    """A photo's labels, with the picture itself under "image" (a PIL image)."""
    w, h = rng.choice([(320, 240), (256, 256), (240, 320), (400, 225)])
    bg_name = rng.choice(["white", "yellow", "blue", "green"])
    img = Image.new("RGB", (w, h), COLOURS[bg_name])
    d = ImageDraw.Draw(img)
    shapes = []
    for _ in range(rng.randint(1, 3)):
        shape = rng.choice(SHAPES)
        colour = rng.choice([c for c in COLOURS if c != bg_name])
        s = rng.randint(min(w, h) // 6, min(w, h) // 3)
        x, y = rng.randint(0, w - s), rng.randint(0, h - s)
        if shape == "circle":
            d.ellipse([x, y, x + s, y + s], fill=COLOURS[colour])
        elif shape == "square":
            d.rectangle([x, y, x + s, y + s], fill=COLOURS[colour])
        else:
            d.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=COLOURS[colour])
        shapes.append({"shape": shape, "colour": colour})
    text = None
    if rng.random() < 0.4:
        text = rng.choice(["SALE", "OPEN", "EXIT", "HELLO", "STOP", "CAFE"])
        d.text((8, h - 34), text, fill=(0, 0, 0) if bg_name != "blue" else (255, 255, 255), font=font(24))
    first = shapes[0]
    names = [f"a {s['colour']} {s['shape']}" for s in shapes]
    caption = (" and ".join(names) + f" on a {bg_name} background").capitalize()
    captions = [caption, f"{len(shapes)} shape{'s' if len(shapes) > 1 else ''} on {bg_name}"]
    if text:
        captions.append(caption + f" with the word {text}")
    qa = [("What colour is the background?", [bg_name]),
          ("How many shapes are there?", [str(len(shapes))]),
          (f"What colour is the {first['shape']}?", [first["colour"]])]
    if text:
        qa.append(("What word is written in the image?", [text, text.lower()]))
    return {"image": img, "size": [w, h], "background": bg_name, "shapes": shapes, "text": text, "captions": captions, "qa": qa}


def write_jsonl(path: Path, rows) -> None:
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    (ROOT / "docs" / "pdf").mkdir(parents=True, exist_ok=True)
    (ROOT / "photos").mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(N_INVOICES):
        docs.append(("invoice", i, make_invoice(rng, i)))
    for i in range(N_FORMS):
        docs.append(("form", i, make_form(rng, i)))
    for i in range(N_RECEIPTS):
        docs.append(("receipt", i, make_receipt(rng, i)))
    doc_rows, doc_qa = [], []
    # PDFs hold two documents of a kind each (page 1 and 2), so a folder of PDFs yields one row a page.
    by_pdf = {}
    for kind, i, doc in docs:
        doc_id = f"{kind}_{i:03d}"
        png = f"docs/{doc_id}.png"
        render_png(doc, ROOT / png)
        pdf_name = f"docs/pdf/{kind}_{i // 2:03d}.pdf"
        by_pdf.setdefault(pdf_name, []).append(doc)
        page = len(by_pdf[pdf_name])
        doc_rows.append({"id": doc_id, "image": png, "pdf": pdf_name, "page": page, "kind": kind, "fields": doc["fields"]})
        for q, (question, answers) in enumerate(doc["qa"]):
            doc_qa.append({"id": f"{doc_id}_q{q}", "doc_id": doc_id, "image": png, "question": question, "answers": answers})
    for pdf_name, pages in by_pdf.items():
        write_pdf(pages, ROOT / pdf_name)
    photo_rows, photo_qa = [], []
    for i in range(N_PHOTOS):
        pid = f"photo_{i:03d}"
        path = f"photos/{pid}.png"
        p = make_photo(rng, i)
        p["image"].save(ROOT / path, optimize=True)
        photo_rows.append({"id": pid, "image": path, "captions": p["captions"], "shapes": p["shapes"],
                           "background": p["background"], "text": p["text"]})
        for q, (question, answers) in enumerate(p["qa"]):
            photo_qa.append({"id": f"{pid}_q{q}", "photo_id": pid, "image": path, "question": question, "answers": answers})
    write_jsonl(ROOT / "docs.jsonl", doc_rows)
    write_jsonl(ROOT / "docs_qa.jsonl", doc_qa)
    write_jsonl(ROOT / "photos.jsonl", photo_rows)
    write_jsonl(ROOT / "photos_qa.jsonl", photo_qa)
    print(f"{len(doc_rows)} pages ({len(by_pdf)} PDFs), {len(doc_qa)} page questions, "
          f"{len(photo_rows)} photos, {len(photo_qa)} photo questions")


if __name__ == "__main__":
    main()
