"""Write golden outputs from Hugging Face transformers (the oracle) for a Gemma 4 checkpoint.

For each case (prompt, optional system prompt, images) it records the prompt token ids, the
processor's pixel_values / position ids / soft-token counts, the first-step logits and the
greedy continuation. The Rust tests compare the runtime against these files.

    python tools/reference.py --checkpoint models/tiny-gemma4/hf --onnx models/tiny-gemma4 \
        --out models/tiny-gemma4/goldens

With --onnx it also runs the exported graphs through ONNX Runtime (Python) and checks their
first-step logits against transformers, so an exporter bug fails here, at its source.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

MAX_NEW_TOKENS = 20


def shapes_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A synthetic photo: background gradient, circles, rectangles, a line of text."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([
        (x * 255 // max(width - 1, 1)),
        (y * 255 // max(height - 1, 1)),
        ((x + y) * 127 // max(width + height - 2, 1)),
    ], axis=-1).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(1, max(2, width // 3))), int(rng.integers(1, max(2, height // 3)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=color)
        else:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)
    if width >= 40 and height >= 12:
        draw.text((2, 2), "gemma-batch", fill=(255, 255, 255))
    if mode == "L":
        return img.convert("L")
    if mode == "RGBA":
        rgba = img.convert("RGBA")
        alpha = Image.fromarray(((x * 7 + y * 3) % 256).astype(np.uint8), "L")
        rgba.putalpha(alpha)
        return rgba
    return img


def write_images(image_dir: Path) -> dict:
    image_dir.mkdir(parents=True, exist_ok=True)
    specs = {
        "photo.png": (320, 240, 1, "RGB"),
        "second.png": (200, 300, 2, "RGB"),
        "wide.png": (1000, 40, 3, "RGB"),
        "tall.png": (40, 1000, 4, "RGB"),
        "tiny.png": (8, 8, 5, "RGB"),
        "large.jpg": (3000, 2000, 6, "RGB"),
        "gray.png": (150, 100, 7, "L"),
        "rgba.png": (128, 96, 8, "RGBA"),
        "exif_rotated.jpg": (160, 90, 9, "RGB"),
    }
    for name, (w, h, seed, mode) in specs.items():
        img = shapes_image(w, h, seed, mode)
        path = image_dir / name
        if name == "exif_rotated.jpg":
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90 CW to display
            img.save(path, quality=92, exif=exif)
        elif name.endswith(".jpg"):
            img.save(path, quality=85)
        else:
            img.save(path)
    return specs


LONG_TEXT = (
    "Read the following page carefully. The invoice lists a vendor, a date, several items "
    "with prices, the tax and the total amount. Extract the fields invoice number, date, "
    "total and vendor, and answer as JSON without any other words. "
) * 2

CASES = [
    {"name": "text_short", "prompt": "Describe the weather today."},
    {"name": "text_system", "system": "You are a careful assistant.", "prompt": "Is this content harmful? Answer Yes or No."},
    {"name": "text_long", "prompt": LONG_TEXT},
    {"name": "text_unicode", "prompt": "Résumé: naïve café, 東京 and emoji 🦀 — what language?"},
    {"name": "image_one", "prompt": "Describe this image in one sentence.", "images": ["photo.png"]},
    {"name": "image_two", "prompt": "What differs between these two images?", "images": ["photo.png", "second.png"]},
    {"name": "image_wide", "prompt": "What is in this banner?", "images": ["wide.png"]},
    {"name": "image_tall", "prompt": "What is in this strip?", "images": ["tall.png"]},
    {"name": "image_tiny", "prompt": "What colour is this?", "images": ["tiny.png"]},
    {"name": "image_large", "prompt": "Describe the shapes.", "images": ["large.jpg"]},
    {"name": "image_gray", "prompt": "Describe this image.", "images": ["gray.png"]},
    {"name": "image_rgba", "prompt": "Describe this image.", "images": ["rgba.png"]},
    {"name": "image_exif", "prompt": "Which way is up?", "images": ["exif_rotated.jpg"]},
    {"name": "image_system_long", "system": "You read documents.", "prompt": LONG_TEXT, "images": ["second.png"]},
]


def messages_for(case: dict, image_dir: Path) -> list:
    msgs = []
    if case.get("system"):
        msgs.append({"role": "system", "content": [{"type": "text", "text": case["system"]}]})
    content = [{"type": "image", "path": str(image_dir / name)} for name in case.get("images", [])]
    content.append({"type": "text", "text": case["prompt"]})
    msgs.append({"role": "user", "content": content})
    return msgs


def onnx_first_step(onnx_dir: Path, inputs: dict, cfg) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    embed = ort.InferenceSession(str(onnx_dir / "onnx/embed_tokens.onnx"), so)
    dec = ort.InferenceSession(str(onnx_dir / "onnx/decoder_model_merged.onnx"), so)
    ids = inputs["input_ids"].numpy()
    emb, ple = embed.run(None, {"input_ids": ids})
    if "pixel_values" in inputs:
        vis = ort.InferenceSession(str(onnx_dir / "onnx/vision_encoder.onnx"), so)
        (feats,) = vis.run(None, {"pixel_values": inputs["pixel_values"].numpy().astype(np.float32),
                                  "pixel_position_ids": inputs["image_position_ids"].numpy()})
        mask = ids[0] == cfg.image_token_id
        emb[0, mask] = feats
    feeds = {"inputs_embeds": emb, "per_layer_inputs": ple,
             "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for inp in dec.get_inputs():
        if inp.name.startswith("past_key_values"):
            feeds[inp.name] = np.zeros((1, inp.shape[1], 0, inp.shape[3]), np.float32)
    logits = dec.run(["logits"], feeds)[0]
    # num_logits_to_keep (an input with a default of 0, so not in get_inputs()) = 1 must give
    # the last position alone, equal to the full run's.
    names = [i.name for i in dec.get_inputs()] + [i.name for i in dec.get_overridable_initializers()]
    if "num_logits_to_keep" in names:
        last = dec.run(["logits"], {**feeds, "num_logits_to_keep": np.array(1, dtype=np.int64)})[0]
        if last.shape != (1, 1, logits.shape[2]) or np.abs(last[0, -1] - logits[0, -1]).max() > 1e-4:
            raise SystemExit(f"num_logits_to_keep=1 gives logits {last.shape} unlike the last of {logits.shape}")
    return logits[0, -1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--onnx", type=Path, help="exported model directory to cross-check")
    args = parser.parse_args()

    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from gemma4_processor import load_processor
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(0)
    model = Gemma4ForConditionalGeneration.from_pretrained(
        args.checkpoint, dtype=torch.float32, attn_implementation="eager").eval()
    processor = load_processor(args.checkpoint)
    image_dir = args.out / "images"
    write_images(image_dir)
    (args.out / "pixels").mkdir(parents=True, exist_ok=True)

    records = []
    worst = 0.0
    for case in CASES:
        msgs = messages_for(case, image_dir)
        inputs = processor.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1].float()
            gen = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new_ids = gen[0, inputs["input_ids"].shape[1]:].tolist()
        rec = {
            "name": case["name"],
            "system": case.get("system"),
            "prompt": case["prompt"],
            "images": case.get("images", []),
            "input_ids": inputs["input_ids"][0].tolist(),
            "first_step_logits": [round(float(v), 6) for v in logits],
            "greedy_ids": new_ids,
            "greedy_text": processor.tokenizer.decode(new_ids, skip_special_tokens=True),
            "max_new_tokens": MAX_NEW_TOKENS,
        }
        if "pixel_values" in inputs:
            pv = inputs["pixel_values"].float().numpy()
            pv.astype("<f4").tofile(args.out / "pixels" / f"{case['name']}.f32")
            rec["pixel_values_shape"] = list(pv.shape)
            rec["pixel_position_ids"] = inputs["image_position_ids"].tolist()
            rec["num_soft_tokens"] = [int(n) for n in inputs["num_soft_tokens_per_image"]] \
                if "num_soft_tokens_per_image" in inputs else \
                [int(n) for n in (inputs["image_position_ids"][..., 0] >= 0).sum(-1) // 9]
        if args.onnx:
            ort_logits = onnx_first_step(args.onnx, inputs, model.config)
            diff = float(np.abs(ort_logits - logits.numpy()).max())
            worst = max(worst, diff)
            rec["onnxruntime_python_max_abs_diff"] = diff
        records.append(rec)
        print(f"{case['name']:>18}: {len(rec['input_ids'])} prompt tokens, {len(new_ids)} generated"
              + (f", ORT diff {rec['onnxruntime_python_max_abs_diff']:.2e}" if args.onnx else ""))

    import transformers
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "image_processor": type(processor.image_processor).__name__, "cases": records}
    (args.out / "cases.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    if args.onnx and worst > 1e-3:
        raise SystemExit(f"ONNX export disagrees with transformers: max abs logit diff {worst:.3e}")


if __name__ == "__main__":
    main()
