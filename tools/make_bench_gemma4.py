"""Build the random-weight Gemma 4 benchmark model and export it to ONNX (fp32).

    python tools/make_bench_gemma4.py [--out models/bench-gemma4] [--force] [--keep-checkpoint]

A real `Gemma4ForConditionalGeneration` (fixed seed, text only) with E2B's layer pattern at
reduced width, about 200M parameters: large enough that a decode step is bound by memory
bandwidth on a CPU, small enough to build in minutes. What it keeps from google/gemma-4-E2B:

- the real vocabulary size, 262,144, in config.json and in tokenizer.json (Gemma's
  byte-fallback BPE: normaliser Replace " " -> "\u2581", pre-tokenizer Split " " with
  MergedWithPrevious, decoder Replace/ByteFallback/Fuse), with Gemma 4's special tokens at
  Gemma 4's ids (pad 0, eos 1, bos 2, <|turn> 105, <turn|> 106, <|image|> 258880, ...), BPE
  merges learned from a small built-in English text, and filler entries for the rest;
- the layer pattern: blocks of four sliding-window layers and one full-attention layer, the
  last layer full; 8 query heads and 1 KV head; full-attention layers with twice the head size
  of sliding ones and proportional RoPE on a quarter of it (theta 1e6; sliding layers default
  RoPE, theta 1e4); the layers after the first block share the KV cache of the last sliding and
  last full layer before them (num_kv_shared_layers) and have the double-wide MLP; per-layer
  inputs (PLE); tied embeddings; final logit soft-capping at 30; E2B's context length;
- the chat template and tokenizer_config.json of the tiny test model (tools/make_tiny_gemma4.py).

Weights are random (the tiny model's perturbed init) with the query and key norm weights scaled
down so that attention is not a hair-trigger: greedy ids then do not depend on batch shape or
summation order, and a runner's ids can be checked against another's. The <eos> row of the
tied embedding is scaled up (EOS_SCALE) so that answers end at varied lengths, as a real
model's do; `gemma-batch bench generate --ignore-eos` measures fixed-length rows instead.

The export goes to OUT (git-ignored by default) through tools/export_gemma4.py. A stamp file
names the version of the scripts that made it; a later run with the same scripts does nothing.
"""

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))
from make_tiny_gemma4 import (  # noqa: E402
    BYTE_TOKENS,
    gemma4_config,
    SPECIAL_TOKENS,
    TRAINING_TEXT,
    randomize_weights,
    save_tokenizer,
    set_generation_config,
    write_processor_configs,
)

# Bump when the model this script makes changes in a way its source hash would not show.
VERSION = 2
SEED = 20260402
STAMP = ".bench-model-stamp.json"
IN_PROGRESS = ".bench-model-in-progress"
DEFAULT_OUT = REPO / "models" / "bench-gemma4"

VOCAB_SIZE = 262_144
# Gemma 4's ids for its special tokens (the tiny model numbers them 0..16 instead).
SPECIAL_IDS = {
    "<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4,
    "<|think|>": 98, "<|channel>": 100, "<channel|>": 101,
    "<|turn>": 105, "<turn|>": 106,
    "<|image>": 255_999, "<|audio>": 256_000,
    "<|image|>": 258_880, "<|audio|>": 258_881, "<image|>": 258_882, "<audio|>": 258_883,
    "<|video|>": 258_884,
}
assert sorted(SPECIAL_IDS) == sorted(SPECIAL_TOKENS)
FIRST_BYTE_ID = 238  # <0x00>, as in Gemma's tokenizer
LEARNED_VOCAB = 8000  # upper bound on BPE tokens learned from CORPUS

# Text the BPE merges are learned from, so English prompts come out as word-sized pieces.
CORPUS = TRAINING_TEXT + """
Please summarise the following document in three sentences and list the people it names.
The annual report covers revenue, operating costs, staff numbers and the outlook for next year.
Translate the paragraph into plain English, keeping every number and date as it is written.
What is the main topic of this page? Answer with a short phrase, then explain your answer.
Read the contract and tell me when it ends, who signed it and what happens if a payment is late.
The meeting is scheduled for Monday morning at nine o'clock in the second floor conference room.
Customers asked about delivery times, refunds, opening hours and the warranty on new products.
A photograph of a city street at night: cars, traffic lights, shop windows and people walking.
Write a friendly email to the team thanking them for their work on the project this quarter.
The table shows the number of visitors per month; July and August were the busiest months.
Classify the review as positive, negative or neutral, and quote the sentence that decides it.
The patient was advised to rest, drink water and return if the symptoms did not improve.
Our new policy explains how we collect, store and delete personal information about users.
The train from London arrives at half past four; the next one leaves twenty minutes later.
Explain the difference between weather and climate to a child who is ten years old.
He opened the window, looked at the garden and decided that the flowers needed more water.
The software update fixes several bugs, improves performance and adds support for new devices.
List the ingredients you need for the recipe: flour, sugar, eggs, butter, milk and salt.
The invoice number, the date of issue, the total amount and the name of the vendor are required.
She said that the results of the experiment were surprising and would need to be checked again.
In the first chapter the author describes the history of the town and the families who built it.
Questions about this form should be sent to the office by post or by email before the deadline.
Each student must write an essay of about five hundred words on a subject of their own choice.
The river flows through the valley, past the old mill and into the lake beyond the hills.
How many items are on the receipt, and which one was the most expensive? Give the price too.
Temperatures will rise during the week, with rain expected on Thursday and sunshine at the weekend.
This chart compares the sales of four products over the last twelve months in every region.
The committee agreed to review the budget again after the summer and to publish its findings.
Describe the image: a small boat on a calm sea under a clear blue sky, with birds overhead.
Is the following statement true or false? Water boils at one hundred degrees at sea level.
""" * 2


def build_tokenizer() -> Tokenizer:
    """A 262,144-entry byte-fallback BPE built like Gemma's, special tokens at Gemma 4's ids."""
    normalizer = normalizers.Replace(" ", "\u2581")
    # Learn merges within words (each word starting with its "▁"), as SentencePiece does.
    trainer_tok = Tokenizer(BPE(byte_fallback=True))
    trainer_tok.normalizer = normalizer
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    alphabet = [chr(c) for c in range(0x21, 0x7F)] + ["\u2581"]
    trainer = BpeTrainer(vocab_size=LEARNED_VOCAB, show_progress=False, special_tokens=[],
                         initial_alphabet=alphabet)
    trainer_tok.train_from_iterator([CORPUS], trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]

    vocab = dict(SPECIAL_IDS)
    for i, tok in enumerate(BYTE_TOKENS):
        vocab[tok] = FIRST_BYTE_ID + i
    taken = set(vocab.values())
    free = (i for i in range(VOCAB_SIZE) if i not in taken)
    for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab:
            vocab[tok] = next(free)
    n_learned = len(vocab) - len(SPECIAL_IDS) - len(BYTE_TOKENS)
    # Filler entries: in the vocabulary (so ids and sizes are those of the real model) but no
    # merge produces them, so text never encodes to them.
    for i in free:
        vocab[f"<filler{i}>"] = i
    assert len(vocab) == VOCAB_SIZE and sorted(vocab.values()) == list(range(VOCAB_SIZE))

    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    for t, i in SPECIAL_IDS.items():
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t), i)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    print(f"tokenizer: {VOCAB_SIZE} entries ({n_learned} learned BPE pieces, {len(merges)} merges)")
    return tok


def text_config() -> dict:
    blocks = 3  # E2B: 7 blocks of (4 sliding + 1 full) = 35 layers
    layer_types = (["sliding_attention"] * 4 + ["full_attention"]) * blocks
    return dict(
        vocab_size=VOCAB_SIZE,
        vocab_size_per_layer_input=VOCAB_SIZE,
        hidden_size=512,                 # E2B 1536
        intermediate_size=1024,          # E2B 6144; doubled on KV-shared layers as in E2B
        num_hidden_layers=len(layer_types),
        num_attention_heads=8,           # as E2B
        num_key_value_heads=1,           # as E2B
        head_dim=64,                     # sliding layers (E2B 256)
        global_head_dim=128,             # full layers: twice the sliding size, as E2B (512)
        layer_types=layer_types,
        sliding_window=128,              # E2B 512
        num_kv_shared_layers=10,         # E2B 20 of 35: every layer after the first block(s)
        use_double_wide_mlp=True,
        hidden_size_per_layer_input=4,   # E2B 256; small so the PLE table does not dominate
        final_logit_softcapping=30.0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                               "rope_theta": 1000000.0},
        },
        max_position_embeddings=131072,
        pad_token_id=SPECIAL_IDS["<pad>"],
        bos_token_id=SPECIAL_IDS["<bos>"],
        eos_token_id=[SPECIAL_IDS["<eos>"], SPECIAL_IDS["<turn|>"]],
        tie_word_embeddings=True,
    )


def soften_attention(model) -> None:
    """Gemma 4 attends with scale 1 after RMS-normalising queries and keys, so with random
    norm weights near 1 the scores have a spread of about sqrt(head_dim) and softmax picks one
    key: a chaotic model in which rounding differences between batch shapes flip greedy tokens.
    Trained models learn smaller q/k norm weights; scaling ours by head_dim^-1/4 each gives
    scores of unit spread, so runners that compute in different orders agree on the ids."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("self_attn.q_norm.weight", "self_attn.k_norm.weight")):
                p.mul_(p.shape[-1] ** -0.25)


# How much larger the <eos> row of the tied embedding is than the others. Its logit then has
# about three times the spread of any other token's, so it is the greedy choice in some contexts
# and not in others: rows end at varied lengths, as a real model's answers do, instead of all
# running to the token limit (which would hide what batching does when rows finish early).
EOS_SCALE = 3.0


def plant_end_of_answer(model, eos_id: int) -> None:
    """Scales the <eos> row of the tied embedding / lm_head by EOS_SCALE. <eos> never appears in
    a prompt, so only the output side changes."""
    with torch.no_grad():
        model.get_input_embeddings().weight[eos_id].mul_(EOS_SCALE)


def parameter_counts(model) -> dict:
    """Parameters by component of the language model (tied lm_head counted once)."""
    order = ["embed_tokens (= tied lm_head)", "embed_tokens_per_layer (PLE table)", "per-layer input projection",
             "attention projections", "MLP", "per-layer input gates", "norms and other"]
    groups = dict.fromkeys(order, 0)
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if "embed_tokens_per_layer" in name:
            key = "embed_tokens_per_layer (PLE table)"
        elif "embed_tokens" in name:
            key = "embed_tokens (= tied lm_head)"
        elif "per_layer_model_projection" in name or "per_layer_projection_norm" in name:
            key = "per-layer input projection"
        elif ".self_attn." in name and "norm" not in name:
            key = "attention projections"
        elif ".mlp." in name:
            key = "MLP"
        elif "per_layer_input_gate" in name or ".per_layer_projection." in name:
            key = "per-layer input gates"
        else:
            key = "norms and other"
        groups[key] += p.numel()
    groups["total"] = sum(groups.values())
    return groups


def build_checkpoint(out: Path) -> dict:
    from transformers import Gemma4ForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    ids = SPECIAL_IDS
    config = gemma4_config(text_config(), None, ids, eoa_token_index=ids["<audio|>"])

    torch.manual_seed(SEED)
    model = Gemma4ForConditionalGeneration(config).eval()
    randomize_weights(model, SEED)
    soften_attention(model)
    plant_end_of_answer(model, ids["<eos>"])
    set_generation_config(model, ids)
    counts = parameter_counts(model)
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    # gemma-batch reads the image processor's config even for a model without a vision tower.
    write_processor_configs(out, patch_size=16, max_soft_tokens=280, pooling_kernel_size=3)
    return counts


def print_summary(counts: dict, cfg: dict) -> None:
    total = counts["total"]
    print("parameters by component:")
    for key, n in counts.items():
        print(f"  {key:38s} {n / 1e6:8.2f}M  {100 * n / total:5.1f}%")
    lt = cfg["layer_types"]
    first_shared = cfg["num_hidden_layers"] - cfg["num_kv_shared_layers"]
    pattern = " ".join(("F" if t == "full_attention" else "s") + ("*" if i >= first_shared else "")
                       for i, t in enumerate(lt))
    print(f"layers (s sliding, F full, * KV-shared): {pattern}")


def source_version() -> str:
    """Hash of everything that decides the model's files: this script, the tiny model's helpers
    it imports, the exporter, and the versions of the packages that write them."""
    import tokenizers
    import transformers

    h = hashlib.sha256(f"v{VERSION} torch {torch.__version__} transformers {transformers.__version__} "
                       f"tokenizers {tokenizers.__version__}\n".encode())
    for name in ("make_bench_gemma4.py", "make_tiny_gemma4.py", "export_gemma4.py"):
        h.update(name.encode() + b"\0" + (TOOLS / name).read_bytes() + b"\0")
    return h.hexdigest()


def up_to_date(out: Path, version: str) -> bool:
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("version") == version and not (out / IN_PROGRESS).exists()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model directory to write (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT is up to date")
    parser.add_argument("--keep-checkpoint", action="store_true",
                        help="keep the Hugging Face checkpoint in OUT/hf (about 0.8 GB)")
    args = parser.parse_args()
    out = args.out
    version = source_version()
    if not args.force and up_to_date(out, version):
        print(f"{out} is up to date (made by this version of the scripts); --force rebuilds it")
        return
    if out.exists() and any(out.iterdir()):
        ours = (out / STAMP).exists() or (out / IN_PROGRESS).exists()
        if not ours:
            sys.exit(f"error: {out} exists and was not made by this script; choose another --out or remove it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / IN_PROGRESS).write_text("")

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gemma4-hf-") as tmp:
        hf = out / "hf" if args.keep_checkpoint else Path(tmp) / "hf"
        counts = build_checkpoint(hf)
        t_build = time.monotonic() - t0
        print_summary(counts, text_config())
        print(f"checkpoint built in {t_build:.1f} s; exporting to ONNX (fp32)", flush=True)
        subprocess.run([sys.executable, str(TOOLS / "export_gemma4.py"), "--checkpoint", str(hf), "--out", str(out)],
                       check=True)
    t_total = time.monotonic() - t0
    size = sum(f.stat().st_size for f in (out / "onnx").iterdir())
    (out / STAMP).write_text(json.dumps({
        "version": version, "seed": SEED, "parameters": counts,
        "build_seconds": round(t_build, 1), "total_seconds": round(t_total, 1),
    }, indent=2) + "\n")
    (out / IN_PROGRESS).unlink()
    print(f"wrote {out}: {counts['total'] / 1e6:.1f}M parameters, ONNX {size / 2**20:.0f} MiB; "
          f"build {t_build:.1f} s, export {t_total - t_build:.1f} s, total {t_total:.1f} s")


if __name__ == "__main__":
    main()
