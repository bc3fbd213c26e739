"""Golden scores of the policy filter from Hugging Face transformers (the oracle).

For each item (text or image) and each category of a filter set's [policy], renders the same
prompt as gemma-batch (the set's templates, jinja), applies the chat template, and records
the prompt ids and the log-probabilities of the "Yes" and "No" answers (summed over their
tokens), and P(Yes) normalised over the two. The Rust test compares the runtime with these.

    python tools/reference_policy.py --checkpoint models/tiny-gemma4/hf \
        --set filters/default.toml --out models/tiny-gemma4/goldens/policy.json
"""

import argparse
import json
import math
import sys
import tomllib
from pathlib import Path

import jinja2
import torch

TEXT_ITEMS = [
    "What is the total amount on this invoice?",
    "How do I build a bomb at home?",
    "You are worthless and everyone at work hates you.",
    "Describe the weather in Lyon in spring — 20 °C, sunny.",
]
IMAGE_ITEMS = ["photo.png", "gray.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--set", required=True, type=Path)
    parser.add_argument("--images", type=Path, help="directory of the image items (default: OUT's images/)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from gemma4_processor import load_processor
    from transformers import Gemma4ForConditionalGeneration

    policy = tomllib.loads(args.set.read_text())["policy"]
    env = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    text_t = env.from_string(policy["text_template"])
    image_t = env.from_string(policy["image_template"])
    yes, no = policy.get("yes", "Yes"), policy.get("no", "No")
    image_dir = args.images or args.out.parent / "images"

    model = Gemma4ForConditionalGeneration.from_pretrained(
        args.checkpoint, dtype=torch.float32, attn_implementation="eager").eval()
    processor = load_processor(args.checkpoint)
    tok = processor.tokenizer
    cand = {a: tok.encode(a, add_special_tokens=False) for a in (yes, no)}

    def logprob(inputs, ids):
        """log P(ids | prompt), one forward pass over prompt + ids[:-1]."""
        prompt = inputs["input_ids"]
        full = torch.cat([prompt, torch.tensor([ids[:-1]], dtype=prompt.dtype)], dim=1) if len(ids) > 1 else prompt
        feed = dict(inputs)
        feed["input_ids"] = full
        feed["attention_mask"] = torch.ones_like(full)
        if "mm_token_type_ids" in feed:
            pad = torch.zeros((1, full.shape[1] - prompt.shape[1]), dtype=feed["mm_token_type_ids"].dtype)
            feed["mm_token_type_ids"] = torch.cat([feed["mm_token_type_ids"], pad], dim=1)
        if "token_type_ids" in feed:
            pad = torch.zeros((1, full.shape[1] - prompt.shape[1]), dtype=feed["token_type_ids"].dtype)
            feed["token_type_ids"] = torch.cat([feed["token_type_ids"], pad], dim=1)
        with torch.no_grad():
            logits = model(**feed).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        start = prompt.shape[1] - 1
        return float(sum(lp[start + j, t] for j, t in enumerate(ids)))

    records = []
    items = [("text", t) for t in TEXT_ITEMS] + [("image", i) for i in IMAGE_ITEMS]
    for kind, item in items:
        for cat in policy["category"]:
            if kind == "text":
                text = text_t.render(item=item, principle=cat["principle"], category=cat["name"])
                content = [{"type": "text", "text": text}]
            else:
                text = image_t.render(principle=cat["principle"], category=cat["name"])
                content = [{"type": "image", "path": str(image_dir / item)}, {"type": "text", "text": text}]
            msgs = []
            if policy.get("system"):
                msgs.append({"role": "system", "content": [{"type": "text", "text": policy["system"]}]})
            msgs.append({"role": "user", "content": content})
            inputs = processor.apply_chat_template(
                msgs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
            ly, ln = logprob(inputs, cand[yes]), logprob(inputs, cand[no])
            records.append({
                "kind": kind, "item": item, "category": cat["name"],
                "input_ids": inputs["input_ids"][0].tolist(),
                "logprob_yes": ly, "logprob_no": ln, "p_yes": 1.0 / (1.0 + math.exp(ln - ly)),
            })
    args.out.write_text(json.dumps({"set": args.set.name, "yes": yes, "no": no, "cases": records}, indent=1) + "\n")
    print(f"wrote {args.out}: {len(records)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
