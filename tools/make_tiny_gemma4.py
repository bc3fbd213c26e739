"""Build the tiny random-weight Gemma 4 checkpoint used by the tests.

The checkpoint is a real `Gemma4ForConditionalGeneration` (fixed seed) that exercises every
architectural feature the released E2B/E4B models have: sliding and full attention with
different head sizes, KV sharing, per-layer embeddings (PLE), proportional (partial) RoPE on
full-attention layers, the double-wide MLP on KV-shared layers, final logit soft-capping and
a vision tower with spatial pooling. Its tokenizer is a small byte-fallback BPE built the way
Gemma's is, carrying Gemma 4's special tokens; its chat template follows Gemma 4's turn format.

    python tools/make_tiny_gemma4.py --out models/tiny-gemma4/hf
"""

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

SEED = 20260401

# Gemma 4 special tokens, in the order our tiny vocabulary assigns them ids.
SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<|turn>", "<turn|>",
    "<|image>", "<|image|>", "<image|>",
    "<|audio>", "<|audio|>", "<audio|>",
    "<|video|>", "<|think|>", "<|channel>", "<channel|>",
]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

# Gemma 4's turn format: system block, <|turn>role ... <turn|>, images as <|image|>.
CHAT_TEMPLATE = """{{- bos_token -}}
{%- if messages[0]['role'] in ['system', 'developer'] -%}
    {{- '<|turn>system\\n' -}}
    {%- if messages[0]['content'] is string -%}
        {{- messages[0]['content'] | trim -}}
    {%- else -%}
        {%- for item in messages[0]['content'] -%}
            {%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}{%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\\n' -}}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{- '<|turn>' + role + '\\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] | trim -}}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{- '<|image|>' -}}
            {%- elif item['type'] == 'text' -%}
                {{- item['text'] | trim -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<turn|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\\n' -}}
{%- endif -%}
"""

TRAINING_TEXT = """
Describe this image in one sentence. What is the total amount on the invoice?
The quick brown fox jumps over the lazy dog. Answer the question about the document page.
Extract the fields invoice_number, date, total and vendor as JSON. A red circle and a blue
square on a white background. The receipt shows three items and a total of 42.50 euros.
You are a careful assistant. Is this content harmful? Answer Yes or No.
Policy: dangerous content, harassment, hate speech, sexually explicit material.
Gemma runs over documents and images in batches, safely and reproducibly, every night.
""" * 4


def build_tokenizer(vocab_size: int, texts=None, single_digits: bool = False) -> Tokenizer:
    """Byte-fallback BPE with Gemma's normaliser/decoder, trained on `texts` (default: a tiny
    corpus). With `single_digits`, no learned token holds a digit, so numbers are spelled one
    digit a token (easier for a small model to copy)."""
    normalizer = normalizers.Replace(" ", "\u2581")
    trainer_tok = Tokenizer(BPE(byte_fallback=True))
    trainer_tok.normalizer = normalizer
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    n_learned = vocab_size - len(SPECIAL_TOKENS) - len(BYTE_TOKENS)
    trainer = BpeTrainer(vocab_size=n_learned, show_progress=False, special_tokens=[])
    trainer_tok.train_from_iterator(texts if texts is not None else [TRAINING_TEXT], trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]

    def kept(tok: str) -> bool:
        return not (single_digits and len(tok) > 1 and any(c.isdigit() for c in tok))

    # Final vocabulary: specials, then the 256 byte tokens, then what BPE learned.
    vocab = {}
    for tok in SPECIAL_TOKENS + BYTE_TOKENS:
        vocab[tok] = len(vocab)
    for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in vocab and kept(tok):
            vocab[tok] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    merges = [m for m in merges if kept(m[0] + m[1])]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def randomize_weights(model, seed: int) -> None:
    """Random init leaves some scalars at 1/0; perturb every parameter and buffer that the
    checkpoint stores (fixed seed) so that no code path is an accidental identity."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if name.endswith("position_embedding_table"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(p.shape[-1], 1) ** 0.5))
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def set_generation_config(model, ids: dict) -> None:
    """Greedy decoding that stops at <eos> or <turn|> (ids: special token -> id)."""
    model.generation_config.eos_token_id = [ids["<eos>"], ids["<turn|>"]]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.bos_token_id = ids["<bos>"]
    model.generation_config.do_sample = False


def save_tokenizer(tok: Tokenizer, out: Path) -> None:
    """tokenizer.json, tokenizer_config.json (Gemma 4's named special tokens, left padding)
    and chat_template.jinja."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        extra_special_tokens={
            "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
            "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
            "video_token": "<|video|>", "sot_token": "<|turn>", "eot_token": "<turn|>",
        },
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def write_processor_configs(out: Path, patch_size: int, max_soft_tokens: int, pooling_kernel_size: int) -> None:
    """preprocessor_config.json and processor_config.json of Gemma 4's image processor."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    image_processor = Gemma4ImageProcessorPil(
        patch_size=patch_size, max_soft_tokens=max_soft_tokens, pooling_kernel_size=pooling_kernel_size)
    image_processor.save_pretrained(out)
    # AutoProcessor-style loaders (transformers.js among them) read the processor class here.
    pre = json.loads((out / "preprocessor_config.json").read_text()) if (out / "preprocessor_config.json").exists() else image_processor.to_dict()
    pre["processor_class"] = "Gemma4Processor"
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    (out / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Gemma4Processor", "image_seq_length": max_soft_tokens, "image_processor": pre},
        indent=2) + "\n")


def gemma4_config(text_config, vision_config, ids: dict, **extra):
    """The Gemma4Config of a random test model: Gemma 4's special token ids, tied embeddings,
    no audio tower (shared with tools/make_bench_gemma4.py)."""
    from transformers import Gemma4Config

    config = Gemma4Config(
        text_config=text_config,
        vision_config=vision_config,
        audio_config=None,
        boi_token_id=ids["<|image>"],
        eoi_token_id=ids["<image|>"],
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        audio_token_id=ids["<|audio|>"],
        boa_token_id=ids["<|audio>"],
        eoa_token_id=ids["<audio|>"],
        tie_word_embeddings=True,
        **extra,
    )
    config.eos_token_id = [ids["<eos>"], ids["<turn|>"]]
    config.pad_token_id = ids["<pad>"]
    config.bos_token_id = ids["<bos>"]
    return config


def build_checkpoint(out: Path) -> None:
    from transformers import Gemma4ForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer(vocab_size=640)
    vocab_size = tok.get_vocab_size()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}

    text_config = dict(
        vocab_size=vocab_size,
        vocab_size_per_layer_input=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=32,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention", "sliding_attention", "full_attention"],
        sliding_window=24,
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
        hidden_size_per_layer_input=8,
        final_logit_softcapping=30.0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                               "rope_theta": 1000000.0},
        },
        max_position_embeddings=4096,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids["<turn|>"]],
        tie_word_embeddings=True,
    )
    vision_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=4,
        pooling_kernel_size=3,
        position_embedding_size=256,
        rope_parameters={"rope_type": "axial", "rope_theta": 100.0},
    )
    config = gemma4_config(text_config, vision_config, ids)

    torch.manual_seed(SEED)
    model = Gemma4ForConditionalGeneration(config).eval()
    randomize_weights(model, SEED)
    set_generation_config(model, ids)
    model.save_pretrained(out)

    save_tokenizer(tok, out)
    write_processor_configs(out, patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)
    # Round-trip through the processor so a broken directory fails here, not in the tests.
    from gemma4_processor import load_processor
    load_processor(out)
    print(f"wrote {out} (vocab {vocab_size}, {sum(p.numel() for p in model.parameters())} parameters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    build_checkpoint(parser.parse_args().out)


if __name__ == "__main__":
    main()
