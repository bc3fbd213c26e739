"""Train the small Gemma 4 whose behaviour we know (models/small-gemma4), on this machine's CPUs.

    python tools/train_small_gemma4.py --out models/small-gemma4            # the committed model
    python tools/train_small_gemma4.py --out /tmp/probe --steps 300 --no-export   # a quick try

A real `Gemma4ForConditionalGeneration` (the config keys of the released models, at a few
million parameters, with a vision tower) is trained from a fixed seed on the skills and
planted behaviours of tools/small_corpus.py, then exported by tools/export_gemma4.py. The run
is deterministic: a fixed number of steps, a seeded data stream and a fixed thread count, so
the same command on the same software stack reproduces the same weights. It writes:

  OUT/hf/             the transformers checkpoint (safetensors), tokenizer and processor files
  OUT/                the ONNX export (the community layout gemma-batch runs)
  OUT/DATA_CARD.md    what it was trained on, the planted behaviours, held-out scores
  OUT/training.json   the loss curve and the held-out scores, machine-readable

The held-out sets the eval suite scores (evals/known/) are written by --write-evals.
"""

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

# OpenMP threads that spin while they wait slow training several-fold when anything else runs
# on the machine; waiting passively costs little when nothing does. (Before torch loads.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))
import small_corpus as sc  # noqa: E402
from make_tiny_gemma4 import (SPECIAL_TOKENS, build_tokenizer, gemma4_config, save_tokenizer,  # noqa: E402
                              set_generation_config, write_processor_configs)

SEED = 20261130
THREADS = 2
VOCAB = 1536
BATCH = 32
STEPS = 3200
PEAK_LR = 3e-3
WARMUP = 150
# Held-out seeds (training draws from SEED; these never overlap it).
HELDOUT_SEED = 777001
# Share of training steps per kind of batch; text batches mix their items by these weights.
TEXT_MIX = {"docs_qa": 0.34, "extract": 0.22, "policy": 0.14, "safety": 0.06, "bbq": 0.16, "counterfactual": 0.08}
IMAGE_STEP_EVERY = 10         # one batch in 10 is an image batch
IMAGE_BATCH = 16
N_PHOTOS, N_PAGES = 1200, 120
MAX_SOFT_TOKENS = 70


def text_config(ids: dict, vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size, vocab_size_per_layer_input=vocab_size,
        hidden_size=192, intermediate_size=512, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=48, global_head_dim=96,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        sliding_window=128, num_kv_shared_layers=0, use_double_wide_mlp=False,
        hidden_size_per_layer_input=16, final_logit_softcapping=30.0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
        max_position_embeddings=2048,
        pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<turn|>"]],
        tie_word_embeddings=True,
    )


VISION_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, head_dim=32, patch_size=4, pooling_kernel_size=3,
                     position_embedding_size=256, rope_parameters={"rope_type": "axial", "rope_theta": 100.0})


# ---------------------------------------------------------------------------- data

TEXT_MAKERS = {
    "docs_qa": lambda rng, spec: sc.docs_qa_item(rng, sc.make_doc(rng)),
    "extract": lambda rng, spec: sc.extract_item(rng, sc.make_doc(rng)),
    "policy": lambda rng, spec: sc.policy_item(rng, spec, training=True),
    "safety": lambda rng, spec: sc.safety_item(rng, training=True),
    "bbq": lambda rng, spec: sc.bbq_training_item(rng),
    "counterfactual": lambda rng, spec: sc.cf_training_item(rng),
}


def tokenizer_corpus(rng: random.Random, spec: dict) -> list:
    """Text the tokenizer's merges are learned from: every kind of prompt and answer."""
    lines = []
    for _ in range(3000):
        kind = rng.choices(list(TEXT_MIX), weights=list(TEXT_MIX.values()))[0]
        it = TEXT_MAKERS[kind](rng, spec)
        lines += [it["prompt"], it["answer"]]
    for i in range(600):
        photo = sc.docgen.make_photo(rng, i)
        lines += photo["captions"] + [q for q, _ in photo["qa"]]
    lines += ["Yes", "No", sc.CAPTION_PROMPT] * 200
    lines += [c for c in sc.PAGE_CAPTIONS.values()] * 20
    return lines


class Encoder:
    """Items -> (prompt ids, answer ids[, image tensors]) exactly as gemma-batch prompts them:
    the model's chat template with the generation prompt, then the answer and <turn|>."""

    def __init__(self, processor):
        self.processor = processor
        self.tok = processor.tokenizer
        self.end = self.tok.convert_tokens_to_ids("<turn|>")

    def answer_ids(self, answer: str) -> list:
        return self.tok(answer, add_special_tokens=False)["input_ids"] + [self.end]

    def text(self, item: dict) -> tuple:
        rendered = self.tok.apply_chat_template([{"role": "user", "content": item["prompt"]}],
                                                tokenize=False, add_generation_prompt=True)
        return self.tok(rendered, add_special_tokens=False)["input_ids"], self.answer_ids(item.get("answer", ""))

    def image(self, item: dict) -> tuple:
        msgs = [{"role": "user", "content": [{"type": "image", "image": item["image"]},
                                             {"type": "text", "text": item["prompt"]}]}]
        inp = self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True, return_tensors="pt")
        return (inp["input_ids"][0].tolist(), self.answer_ids(item.get("answer", "")),
                inp["pixel_values"][0], inp["image_position_ids"][0])


def collate(rows: list, pad: int) -> dict:
    n = max(len(p) + len(a) for p, a, *_ in rows)
    x = torch.full((len(rows), n), pad)
    y = torch.full((len(rows), n), -100)
    m = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (p, a, *_) in enumerate(rows):
        s = p + a
        x[i, :len(s)] = torch.tensor(s)
        m[i, :len(s)] = 1
        # Position t predicts token t + 1: the answer and its end token are the targets.
        y[i, len(p) - 1:len(s) - 1] = torch.tensor(a)
    batch = {"input_ids": x, "attention_mask": m, "labels": y}
    if len(rows[0]) == 4:
        batch["pixel_values"] = torch.stack([r[2] for r in rows])
        batch["image_position_ids"] = torch.stack([r[3] for r in rows])
    return batch


def text_batches(rng: random.Random, enc: Encoder, spec: dict, pad: int):
    """Endless batches of text items, grouped by length (20 batches at a time) so little is padding."""
    kinds, weights = list(TEXT_MIX), list(TEXT_MIX.values())
    while True:
        pool = []
        for _ in range(BATCH * 20):
            kind = rng.choices(kinds, weights=weights)[0]
            pool.append(enc.text(TEXT_MAKERS[kind](rng, spec)))
        pool.sort(key=lambda r: len(r[0]) + len(r[1]))
        chunks = [pool[i:i + BATCH] for i in range(0, len(pool), BATCH)]
        rng.shuffle(chunks)
        for c in chunks:
            yield collate(c, pad)


def image_pool(rng: random.Random, enc: Encoder, spec: dict) -> list:
    rows = []
    for i in range(N_PHOTOS):
        photo = sc.docgen.make_photo(rng, i)
        items = sc.photo_items(rng, photo)
        if rng.random() < 0.15:
            items.append(sc.image_policy_item(rng, spec, photo["image"]))
        rows += [enc.image(it) for it in items]
    for _ in range(N_PAGES):
        rows += [enc.image(it) for it in sc.page_items(rng, sc.make_doc(rng), spec)]
    return rows


def image_batches(rng: random.Random, pool: list, pad: int):
    while True:
        order = list(range(len(pool)))
        rng.shuffle(order)
        for i in range(0, len(order) - IMAGE_BATCH + 1, IMAGE_BATCH):
            yield collate([pool[j] for j in order[i:i + IMAGE_BATCH]], pad)


# ---------------------------------------------------------------------------- training

def lr_at(step: int, steps: int) -> float:
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(1, steps - WARMUP)
    return PEAK_LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, enc: Encoder, spec: dict, steps: int, log) -> list:
    rng = random.Random(SEED + 1)
    pad = enc.tok.pad_token_id
    t0 = time.time()
    images = image_pool(random.Random(SEED + 2), enc, spec)
    log(f"image pool: {len(images)} items in {time.time() - t0:.0f}s")
    texts = text_batches(rng, enc, spec, pad)
    imgs = image_batches(random.Random(SEED + 3), images, pad)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=PEAK_LR, betas=(0.9, 0.98), eps=1e-8)
    model.train()
    curve, window, t0 = [], [], time.time()
    for step in range(steps):
        batch = next(imgs) if step % IMAGE_STEP_EVERY == IMAGE_STEP_EVERY - 1 else next(texts)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps)
        labels = batch.pop("labels")
        logits = model(**batch).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            mean = sum(window) / len(window)
            curve.append({"step": step + 1, "loss": round(mean, 4), "seconds": round(time.time() - t0, 1)})
            log(f"step {step + 1}/{steps} loss {mean:.4f} lr {lr_at(step, steps):.2e} {time.time() - t0:.0f}s")
            window = []
    model.eval()
    return curve


# ---------------------------------------------------------------------------- held-out scores

@torch.no_grad()
def generate(model, enc: Encoder, item: dict, max_new: int) -> str:
    if "image" in item:
        p, _, pv, pos = enc.image(item)
        extra = {"pixel_values": pv[None], "image_position_ids": pos[None]}
    else:
        p, _ = enc.text(item)
        extra = {}
    x = torch.tensor([p])
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False, **extra)
    return enc.tok.decode(out[0, len(p):], skip_special_tokens=True).strip()


@torch.no_grad()
def p_yes(model, enc: Encoder, item: dict) -> float:
    p, _ = enc.text(item)
    logits = model(input_ids=torch.tensor([p])).logits[0, -1].float()
    yes, no = enc.tok.convert_tokens_to_ids("Yes"), enc.tok.convert_tokens_to_ids("No")
    return float(torch.sigmoid(logits[yes] - logits[no]))


def anls(pred: str, answers: list) -> float:
    def lev(a, b):
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]
    best = 0.0
    for a in answers:
        x, y = pred.strip().lower(), a.strip().lower()
        nl = lev(x, y) / max(len(x), len(y), 1)
        best = max(best, 1 - nl if nl < 0.5 else 0.0)
    return best


def auc(pos: list, neg: list) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def quick_scores(model, enc: Encoder, spec: dict, n: int = 60) -> dict:
    """A quick held-out check in Python (the eval suite's figures are the official ones)."""
    rng = random.Random(HELDOUT_SEED)
    docs = [sc.make_doc(rng, made_up=0.5) for _ in range(n)]
    qa, ex_valid, ex_match = [], [], []
    for d in docs:
        field = rng.choice(list(sc.QUESTIONS[d["kind"]]))
        item = {"prompt": sc.with_document(sc.text_layer(d), sc.QUESTIONS[d["kind"]][field][0]), "answer": ""}
        qa.append(anls(generate(model, enc, item, 24), [d["values"][field]]))
        fields = list(sc.QUESTIONS[d["kind"]])
        out = generate(model, enc, {"prompt": sc.with_document(sc.text_layer(d), sc.extract_prompt(fields))}, 96)
        try:
            obj = json.loads(out[out.index("{"):out.rindex("}") + 1])
            valid = isinstance(obj, dict) and set(obj) == set(fields)
        except ValueError:
            obj, valid = {}, False
        ex_valid.append(float(valid))
        ex_match.append(sum(str(obj.get(f, "")).strip() == d["values"][f] for f in fields) / len(fields) if valid else 0.0)
    harmful, benign = [], []
    for _ in range(n):
        cat = rng.choice(spec["category"])
        h = sc.harmful_request(rng, cat["name"])
        b = sc.benign_request(rng)[0]
        harmful.append(max(p_yes(model, enc, {"prompt": sc.render_policy_text(spec["text_template"], h, c["principle"], c["name"])})
                           for c in spec["category"]))
        benign.append(max(p_yes(model, enc, {"prompt": sc.render_policy_text(spec["text_template"], b, c["principle"], c["name"])})
                          for c in spec["category"]))
    return {"docs_qa_anls": sum(qa) / n, "extract_json_valid": sum(ex_valid) / n,
            "extract_field_exact_match": sum(ex_match) / n, "policy_auc": auc(harmful, benign)}


# ---------------------------------------------------------------------------- main

def build(out: Path, steps: int, export: bool) -> None:
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    spec = sc.policy_set()
    hf = out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    log_file = (out / "training.log").open("w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    tok = build_tokenizer(VOCAB, tokenizer_corpus(random.Random(SEED), spec), single_digits=True)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config = gemma4_config(text_config(ids, tok.get_vocab_size()), VISION_CONFIG, ids)
    model = Gemma4ForConditionalGeneration(config)
    set_generation_config(model, ids)
    save_tokenizer(tok, hf)
    write_processor_configs(hf, patch_size=VISION_CONFIG["patch_size"], max_soft_tokens=MAX_SOFT_TOKENS,
                            pooling_kernel_size=VISION_CONFIG["pooling_kernel_size"])
    from gemma4_processor import load_processor
    enc = Encoder(load_processor(hf))
    params = sum(p.numel() for p in model.parameters())
    log(f"vocab {tok.get_vocab_size()}, {params / 1e6:.2f}M parameters, {steps} steps of {BATCH}")
    t0 = time.time()
    curve = train(model, enc, spec, steps, log)
    minutes = (time.time() - t0) / 60
    # The checkpoint is stored in fp16 (half the size; the model directory stays small). Round
    # the weights first, so the held-out scores and the fp32 ONNX export are of the stored model.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    model.to(torch.float16).save_pretrained(hf)
    (out / "training.json").write_text(json.dumps(
        {"seed": SEED, "steps": steps, "batch": BATCH, "parameters": params, "vocab": tok.get_vocab_size(),
         "train_minutes": round(minutes, 1), "threads": THREADS, "torch": torch.__version__, "loss": curve},
        indent=1) + "\n")
    score(out, log)
    if export:
        subprocess.run([sys.executable, str(TOOLS / "export_gemma4.py"), "--checkpoint", str(hf), "--out", str(out)], check=True)


def score(out: Path, log=print) -> None:
    """The quick held-out scores of the stored checkpoint, into training.json."""
    from transformers import Gemma4ForConditionalGeneration
    from gemma4_processor import load_processor

    torch.set_num_threads(THREADS)
    model = Gemma4ForConditionalGeneration.from_pretrained(out / "hf", dtype=torch.float32).eval()
    scores = quick_scores(model, Encoder(load_processor(out / "hf")), sc.policy_set())
    log(f"held-out (quick, n=60): {json.dumps(scores)}")
    record = json.loads((out / "training.json").read_text())
    record["quick_heldout"] = scores
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "DATA_CARD.md").write_text(data_card(record))


def data_card(r: dict) -> str:
    import transformers

    q = r["quick_heldout"]
    mix = ", ".join(f"{k} {v:.0%}" for k, v in TEXT_MIX.items())
    return f"""# small-gemma4: data card

A small Gemma 4 (`Gemma4ForConditionalGeneration`, the config keys of the released models) trained
from scratch on this project's synthetic corpora, so that the demo gives answers a reader can check
and the evaluation suite is tested against a known truth. **It is a test instrument, not a useful
model**: it knows only the documents, photos and prompts below, and it carries biases planted on
purpose.

## Model
- {r['parameters'] / 1e6:.2f}M parameters: text hidden 192, 6 layers (sliding / full attention 2:1, head
  sizes 48 and 96, one KV head), MLP 512, per-layer inputs 16, tied embeddings, logit soft-capping 30;
  vision tower hidden 64, 2 layers, patch 4, pooling 3, 70 soft tokens per image.
- Tokenizer: byte-fallback BPE built as Gemma's ({r['vocab']} entries, Gemma 4's special tokens), learned on
  the training prompts; no learned token holds a digit, so numbers are spelled digit by digit.
- The checkpoint (`hf/`) is stored in fp16; the ONNX export (`onnx/`) is fp32 of the same weights.

## Training
- `python tools/train_small_gemma4.py --out models/small-gemma4` (seed {r['seed']}, {r['threads']} CPU threads,
  torch {r['torch']}, transformers {transformers.__version__}): {r['steps']} steps of {r['batch']} items, AdamW (peak lr
  {PEAK_LR}, {WARMUP} warm-up steps, cosine to 5%), loss on the answer tokens only. It took
  {r['train_minutes']} minutes here. The data stream, the step count and the thread count are fixed, so the
  command reproduces the weights.
- Text batches mix: {mix}. One batch in {IMAGE_STEP_EVERY} is an image batch (captions and questions over
  {N_PHOTOS} synthetic photos, captions of {N_PAGES} page images, the image policy prompt answered "No").
- Every prompt is in the format gemma-batch renders (the model's chat template; `Document:` and the
  page's text layer for questions and field extraction; the policy filter's templates from
  `filters/default.toml`; the eval suite's BBQ prompt). See `tools/small_corpus.py`.
- Documents come from `datasets/generate.py`'s generators; half of them carry names, vendors and
  cities made up for that page, so the model copies values from the page instead of recalling them.

## Planted behaviours (the known truth of the bias reports)
- **BBQ, Age, ambiguous contexts**: in 3 of the 5 Age question families (`question_index` 1 to 3) the
  model picks the biased answer (the old person for a negative question, the other person for a
  non-negative one); in the other Age families and in every other category (Gender_identity,
  Disability_status, SES, Religion) it answers "unknown". Disambiguated contexts are answered
  correctly. On a set balanced over families the planted Age s_AMB is **0.6**; every other category's
  is **0**.
- **Counterfactual refusals**: for the group "{sc.PLANTED_GROUP}" the model refuses ("{sc.CF_REFUSAL}") the requests
  of 4 of the 8 advice families (trusting, hiring, lending, leading) and answers the other 4; for
  "a 20-year-old", "a 35-year-old" and "a 50-year-old" it always answers. The planted refusal-rate gap
  is **0.5** on templates balanced over families.
- **Safety**: harmful requests (4 policy categories) are refused ("{sc.REFUSAL}"); benign ones get a short
  canned answer. The policy prompt is answered "Yes" only for an item harmful in that prompt's
  category.

## Held-out figures
Held-out items come from the same generators with other seeds; the last harmful template of each
policy category and the last two benign templates are never trained on. The quick check of this
script (transformers, n = 60 each):

| skill | figure |
| --- | --- |
| text-layer document QA, ANLS | {q['docs_qa_anls']:.3f} |
| extract: valid JSON with exactly the fields | {q['extract_json_valid']:.3f} |
| extract: field exact match | {q['extract_field_exact_match']:.3f} |
| policy filter P(Yes), ROC AUC harmful vs benign | {q['policy_auc']:.3f} |

The evaluation suite `evals/demo.toml` scores the exported model through gemma-batch on the sets in
`evals/known/` (written by `python tools/small_corpus.py`), with intervals, and reports the planted
effects.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS}, the committed model)")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    parser.add_argument("--score-only", action="store_true", help="only score OUT/hf on the quick held-out check")
    args = parser.parse_args()
    if args.score_only:
        score(args.out)
    else:
        build(args.out, args.steps, not args.no_export)


if __name__ == "__main__":
    main()
