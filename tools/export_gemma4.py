"""Export a Gemma 4 checkpoint to the ONNX community layout that gemma-batch (and
transformers.js) run:

    OUT/config.json generation_config.json tokenizer.json tokenizer_config.json
        chat_template.jinja preprocessor_config.json processor_config.json
    OUT/onnx/embed_tokens.onnx           input_ids -> inputs_embeds, per_layer_inputs
    OUT/onnx/vision_encoder.onnx         pixel_values, pixel_position_ids -> image_features
    OUT/onnx/audio_encoder.onnx          input_features, input_features_mask -> audio_features
                                         (a stand-in: no rows; the Rust runtime ignores it)
    OUT/onnx/decoder_model_merged.onnx   inputs_embeds, per_layer_inputs, attention_mask,
                                         position_ids, past_key_values.{i}.key/value,
                                         [num_logits_to_keep] -> logits, present.{i}.key/value

Each graph also comes as NAME_quantized.onnx (--quantize int8), NAME_q4.onnx (--quantize q4)
and NAME_fp16.onnx (--fp16) when asked for.

Usage:
    python tools/export_gemma4.py --checkpoint path/to/gemma-4-E2B-it --out models/gemma-4-e2b-onnx
    python tools/export_gemma4.py --checkpoint models/tiny-gemma4/hf --out models/tiny-gemma4 --quantize int8
    python tools/export_gemma4.py --tiny --out models/tiny-gemma4   # make the tiny checkpoint in OUT/hf, then export

The decoder keeps the full history in every cache layer (sliding-window layers included) and
applies the window in its attention mask, so all cache inputs share one past length. Masks are
computed from positions, so a left-padded row attends exactly as it would alone. Weights over
2 GB go to external data files next to each graph.

`num_logits_to_keep` (int64 scalar, shape []) works like transformers' `logits_to_keep`: k > 0
gives logits for the last k positions only (`logits` is [batch, min(k, seq), vocab]); 0 (and
k < 0) gives all positions. The decoder keeps the last k hidden states before the final norm,
the vocabulary projection and the soft-capping, so a long prefill does not compute
[batch, seq, vocab]. It is optional: a graph input with an initializer of the same name (value
0), which ONNX Runtime lists among a session's overridable initializers rather than its inputs;
a runner that does not feed it gets all positions. (onnxruntime-node neither lists it nor
passes it on when fed, so transformers.js always gets all positions.)
In the int8 (_quantized) variant the vocabulary projection quantizes its activations with one
scale over the rows it gets, so kept rows differ slightly from the same rows of a full run.

transformers.js loads `audio_encoder` for every Gemma 4 model. Audio is not exported (out of
scope; the tiny checkpoint has no audio tower): the exporter writes a stand-in with the inputs
transformers.js feeds (`input_features` float32 [batch, frames, feature_size],
`input_features_mask` bool [batch, frames]) and an `audio_features` output [0, hidden] of the
variant's float type (float16 in _fp16), so prompts without audio run and no audio is merged.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from torch import nn

LOGITS_TO_KEEP = "num_logits_to_keep"
# Graphs the quantize / float16 passes leave alone (written per variant instead).
STAND_INS = ("audio_encoder",)

COPIED_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "chat_template.jinja", "preprocessor_config.json", "processor_config.json",
    "special_tokens_map.json",
]


class EmbedTokens(nn.Module):
    """input_ids -> (inputs_embeds, per_layer_inputs), multimodal ids replaced by pad first."""

    def __init__(self, model):
        super().__init__()
        cfg = model.config
        self.lm = model.model.language_model
        self.pad_id = cfg.text_config.pad_token_id
        self.mm_ids = [i for i in (cfg.image_token_id, cfg.video_token_id, getattr(cfg, "audio_token_id", None))
                       if i is not None]
        self.num_layers = cfg.text_config.num_hidden_layers
        self.ple_dim = cfg.text_config.hidden_size_per_layer_input

    def forward(self, input_ids):
        is_mm = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self.mm_ids:
            is_mm = is_mm | (input_ids == token_id)
        ids = torch.where(is_mm, torch.full_like(input_ids, self.pad_id), input_ids)
        inputs_embeds = self.lm.embed_tokens(ids)
        per_layer = self.lm.embed_tokens_per_layer(ids)
        per_layer = per_layer.reshape(ids.shape[0], ids.shape[1], self.num_layers, self.ple_dim)
        return inputs_embeds, per_layer


class VisionEncoder(nn.Module):
    """(pixel_values, pixel_position_ids) -> image_features [num_soft_tokens, text_hidden]."""

    def __init__(self, model):
        super().__init__()
        self.tower = model.model.vision_tower
        self.embed_vision = model.model.embed_vision

    def forward(self, pixel_values, pixel_position_ids):
        # The tower strips padding soft tokens, so rows of all images come out concatenated.
        hidden = self.tower(pixel_values=pixel_values, pixel_position_ids=pixel_position_ids).last_hidden_state
        return self.embed_vision(inputs_embeds=hidden)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x, cos, sin):
    # x: [b, s, heads, dim]; cos/sin: [b, s, dim]
    return x * cos.unsqueeze(2) + rotate_half(x) * sin.unsqueeze(2)


class DecoderStep(nn.Module):
    """One forward of the language model over new tokens with an explicit KV cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.lm = model.model.language_model
        self.cfg = model.config.text_config
        self.first_shared = self.cfg.num_hidden_layers - self.cfg.num_kv_shared_layers
        self.modes = self.cfg.kv_sharing_modes

    def forward(self, inputs_embeds, per_layer_inputs, attention_mask, position_ids, *past_and_keep):
        # The last argument is num_logits_to_keep (an int64 scalar); the others are the cache.
        *past, num_logits_to_keep = past_and_keep
        cfg = self.cfg
        lm = self.lm
        batch, seq = inputs_embeds.shape[0], inputs_embeds.shape[1]
        dtype = inputs_embeds.dtype
        per_layer = lm.project_per_layer_inputs(inputs_embeds, per_layer_inputs)

        # Positions of every cached/new key: the count of real tokens before it.
        kv_pos = torch.cumsum(attention_mask, dim=-1) - 1                     # [b, total]
        q_pos = position_ids                                                  # [b, s]
        valid = (attention_mask > 0)[:, None, :]                              # [b, 1, total]
        dist = q_pos[:, :, None] - kv_pos[:, None, :]                         # [b, s, total]
        full_ok = valid & (dist >= 0)
        sliding_ok = full_ok & (dist < cfg.sliding_window)
        neg = torch.finfo(dtype).min
        zero = torch.zeros((), dtype=dtype)
        masks = {
            "full_attention": torch.where(full_ok, zero, neg)[:, None, :, :],
            "sliding_attention": torch.where(sliding_ok, zero, neg)[:, None, :, :],
        }
        rope = {t: lm.rotary_emb(inputs_embeds, position_ids, t) for t in set(cfg.layer_types)}

        hidden = inputs_embeds
        shared = {}
        presents = []
        for i, layer in enumerate(lm.layers):
            layer_type = cfg.layer_types[i]
            attn = layer.self_attn
            cos, sin = rope[layer_type]
            residual = hidden
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, seq, -1, attn.head_dim)
            q = apply_rope(attn.q_norm(q), cos, sin).transpose(1, 2)
            if attn.is_kv_shared_layer:
                k, v = shared[layer_type]
            else:
                k_raw = attn.k_proj(x).view(batch, seq, -1, attn.head_dim)
                v_raw = attn.v_proj(x).view(batch, seq, -1, attn.head_dim) if attn.v_proj is not None else k_raw
                k = apply_rope(attn.k_norm(k_raw), cos, sin).transpose(1, 2)
                v = attn.v_norm(v_raw).transpose(1, 2)
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                presents += [k, v]
            if attn.store_full_length_kv:
                shared[layer_type] = (k, v)
            groups = q.shape[1] // k.shape[1]
            kk = k.repeat_interleave(groups, dim=1) if groups > 1 else k
            vv = v.repeat_interleave(groups, dim=1) if groups > 1 else v
            scores = torch.matmul(q, kk.transpose(2, 3)) * attn.scaling + masks[layer_type]
            probs = torch.softmax(scores.float(), dim=-1).to(dtype)
            out = torch.matmul(probs, vv).transpose(1, 2).reshape(batch, seq, -1)
            hidden = residual + layer.post_attention_layernorm(attn.o_proj(out))

            residual = hidden
            hidden = layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))
            hidden = residual + hidden
            if layer.hidden_size_per_layer_input:
                residual = hidden
                g = layer.act_fn(layer.per_layer_input_gate(hidden)) * per_layer[:, :, i, :]
                hidden = residual + layer.post_per_layer_input_norm(layer.per_layer_projection(g))
            hidden = hidden * layer.layer_scalar

        # Keep the last k positions (all when k == 0) before the vocabulary projection.
        seq_len = torch.as_tensor(hidden.shape[1])  # traced as Shape -> Gather (the tracer's warning is wrong)
        keep = torch.where(num_logits_to_keep > 0, torch.minimum(num_logits_to_keep, seq_len), seq_len)
        hidden = torch.index_select(hidden, 1, torch.arange(keep) + (seq_len - keep))
        hidden = lm.norm(hidden)
        logits = self.model.lm_head(hidden)
        cap = cfg.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return (logits.float(), *presents)


def cache_layers(cfg):
    """(layer index, kv heads, head dim) of every layer that owns a cache entry."""
    out = []
    first_shared = cfg.num_hidden_layers - cfg.num_kv_shared_layers
    for i in range(first_shared):
        lc = cfg.per_layer_config[i]
        out.append((i, lc.num_key_value_heads, lc.head_dim))
    return out


def export(model, out_dir: Path, opset: int) -> None:
    cfg = model.config
    tcfg = cfg.text_config
    onnx_dir = out_dir / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    kw = dict(dynamo=False, opset_version=opset, do_constant_folding=True)

    # embed_tokens
    ids = torch.tensor([[tcfg.bos_token_id, 5, 6, cfg.image_token_id]], dtype=torch.long)
    torch.onnx.export(
        EmbedTokens(model), (ids,), str(onnx_dir / "embed_tokens.onnx"),
        input_names=["input_ids"], output_names=["inputs_embeds", "per_layer_inputs"],
        dynamic_axes={"input_ids": {0: "batch_size", 1: "sequence_length"},
                      "inputs_embeds": {0: "batch_size", 1: "sequence_length"},
                      "per_layer_inputs": {0: "batch_size", 1: "sequence_length"}}, **kw)

    # vision_encoder: patches are always padded to the processor's maximum.
    if cfg.vision_config is not None:
        pre = json.loads((out_dir / "preprocessor_config.json").read_text())
        vc = cfg.vision_config
        max_patches = pre["max_soft_tokens"] * vc.pooling_kernel_size ** 2
        side = vc.pooling_kernel_size * 2
        n_real = side * side
        pv = torch.rand(2, max_patches, 3 * vc.patch_size ** 2)
        pos = torch.full((2, max_patches, 2), -1, dtype=torch.long)
        grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="xy"), -1).reshape(-1, 2)
        pos[:, :n_real] = grid
        torch.onnx.export(
            VisionEncoder(model), (pv, pos), str(onnx_dir / "vision_encoder.onnx"),
            input_names=["pixel_values", "pixel_position_ids"], output_names=["image_features"],
            dynamic_axes={"pixel_values": {0: "num_images"}, "pixel_position_ids": {0: "num_images"},
                          "image_features": {0: "num_image_tokens"}}, **kw)

    # decoder_model_merged
    batch, seq, past_len = 2, 3, 4
    embeds = torch.randn(batch, seq, tcfg.hidden_size)
    ple = torch.randn(batch, seq, tcfg.num_hidden_layers, tcfg.hidden_size_per_layer_input)
    mask = torch.ones(batch, past_len + seq, dtype=torch.long)
    position_ids = torch.arange(past_len, past_len + seq).unsqueeze(0).expand(batch, -1).contiguous()
    past, in_names, out_names = [], [], ["logits"]
    dyn = {"inputs_embeds": {0: "batch_size", 1: "sequence_length"},
           "per_layer_inputs": {0: "batch_size", 1: "sequence_length"},
           "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
           "position_ids": {0: "batch_size", 1: "sequence_length"},
           "logits": {0: "batch_size", 1: "num_logits"}}
    for i, heads, head_dim in cache_layers(tcfg):
        for kind in ("key", "value"):
            past.append(torch.randn(batch, heads, past_len, head_dim))
            in_names.append(f"past_key_values.{i}.{kind}")
            out_names.append(f"present.{i}.{kind}")
            dyn[in_names[-1]] = {0: "batch_size", 2: "past_sequence_length"}
            dyn[out_names[-1]] = {0: "batch_size", 2: "total_sequence_length"}
    decoder_path = onnx_dir / "decoder_model_merged.onnx"
    keep = torch.tensor(1, dtype=torch.long)
    torch.onnx.export(
        DecoderStep(model), (embeds, ple, mask, position_ids, *past, keep), str(decoder_path),
        input_names=["inputs_embeds", "per_layer_inputs", "attention_mask", "position_ids", *in_names,
                     LOGITS_TO_KEEP],
        output_names=out_names, dynamic_axes=dyn, **kw)
    add_input_default(decoder_path, LOGITS_TO_KEEP, 0)


def add_input_default(path: Path, name: str, value: int) -> None:
    """Give the int64 scalar graph input `name` a default: an initializer of the same name
    (an overridable initializer, ONNX IR >= 4), so runners that do not know it need not feed it."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
    (inp,) = [i for i in m.graph.input if i.name == name]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64 and not inp.type.tensor_type.shape.dim
    assert m.ir_version >= 4 and not any(t.name == name for t in m.graph.initializer)
    m.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    onnx.save_model(m, str(path))


def write_audio_stand_in(path: Path, feature_size: int, hidden: int, fp16: bool, opset: int) -> None:
    """An audio_encoder without an audio tower: the inputs transformers.js feeds, no rows out."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_features", TensorProto.FLOAT,
                                      ["batch_size", "num_frames", feature_size]),
        helper.make_tensor_value_info("input_features_mask", TensorProto.BOOL, ["batch_size", "num_frames"]),
    ]
    output = helper.make_tensor_value_info("audio_features", out_type, ["num_audio_tokens", hidden])
    node = helper.make_node(
        "ConstantOfShape", ["audio_features_shape"], ["audio_features"],
        value=helper.make_tensor("zero", out_type, [1], [0]))
    shape = numpy_helper.from_array(np.array([0, hidden], dtype=np.int64), "audio_features_shape")
    graph = helper.make_graph([node], "audio_encoder_stand_in", inputs, [output], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="gemma-batch export_gemma4.py")
    model.ir_version = 8
    model.doc_string = "Stand-in: the checkpoint has no audio tower; audio_features has no rows."
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def write_audio_stand_ins(model, out_dir: Path, suffixes: list, opset: int) -> None:
    """`audio_encoder{suffix}.onnx` for each variant suffix (transformers.js picks it by dtype)."""
    cfg = model.config
    if getattr(cfg, "audio_config", None) is not None:
        print("note: the audio tower is not exported; onnx/audio_encoder*.onnx are stand-ins without rows")
    feature_size = 128  # Gemma4AudioFeatureExtractor's default
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = out_dir / name
        if path.exists():
            fe = json.loads(path.read_text()).get("feature_extractor") or {}
            feature_size = fe.get("feature_size", feature_size)
    for suffix in suffixes:
        write_audio_stand_in(out_dir / "onnx" / f"audio_encoder{suffix}.onnx", feature_size,
                             cfg.text_config.hidden_size, suffix == "_fp16", opset)


def externalize_large(onnx_dir: Path, threshold: int = 1 << 31) -> None:
    """Move weights of graphs over 2 GB to `NAME.onnx_data` (the protobuf limit)."""
    import onnx

    for path in sorted(onnx_dir.glob("*.onnx")):
        if path.stat().st_size < threshold and not any(onnx_dir.glob(path.name + "_data*")):
            continue
        m = onnx.load(str(path), load_external_data=True)
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + "_data", size_threshold=1024)


def quantize(onnx_dir: Path, kind: str) -> None:
    """Write `_quantized` (dynamic int8) or `_q4` (4-bit MatMulNBits) variants of each graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for path in sorted(onnx_dir.glob("*.onnx")):
        if path.stem.endswith(("_quantized", "_q4", "_fp16", "_q4f16")) or path.stem.startswith(STAND_INS):
            continue
        if kind == "int8":
            quantize_dynamic(str(path), str(path.with_name(path.stem + "_quantized.onnx")),
                             weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        else:
            import onnx
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            q = MatMulNBitsQuantizer(onnx.load(str(path)), block_size=32, is_symmetric=True)
            q.process()
            q.model.save_model_to_file(str(path.with_name(path.stem + "_q4.onnx")), use_external_data_format=False)


def to_fp16(onnx_dir: Path) -> None:
    """Write `_fp16` variants: float16 weights and float16 float inputs/outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for path in sorted(onnx_dir.glob("*.onnx")):
        if path.stem.endswith(("_quantized", "_q4", "_fp16", "_q4f16")) or path.stem.startswith(STAND_INS):
            continue
        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=False,
                                         op_block_list=["CumSum", "Softmax", "Pow", "ReduceMean"])
        onnx.save_model(model, str(path.with_name(path.stem + "_fp16.onnx")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="Hugging Face Gemma 4 checkpoint directory")
    source.add_argument("--tiny", action="store_true",
                        help="build the tiny random-weight test checkpoint in OUT/hf (tools/make_tiny_gemma4.py) and export it")
    parser.add_argument("--out", required=True, type=Path, help="model directory to write")
    parser.add_argument("--quantize", choices=["int8", "q4"], action="append", default=[],
                        help="also write _quantized (int8) or _q4 graphs (repeatable)")
    parser.add_argument("--fp16", action="store_true", help="also write _fp16 graphs")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()

    from transformers import Gemma4ForConditionalGeneration

    if args.tiny:
        import sys
        sys.path.insert(0, str(Path(__file__).parent))
        from make_tiny_gemma4 import build_checkpoint

        args.checkpoint = args.out / "hf"
        build_checkpoint(args.checkpoint)
    model = Gemma4ForConditionalGeneration.from_pretrained(
        args.checkpoint, dtype=torch.float32, attn_implementation="eager").eval()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in COPIED_FILES:
        src = args.checkpoint / name
        if src.exists() and src.resolve() != (args.out / name).resolve():
            shutil.copyfile(src, args.out / name)
    with torch.no_grad():
        export(model, args.out, args.opset)
    externalize_large(args.out / "onnx")
    suffixes = [""]
    for kind in args.quantize:
        quantize(args.out / "onnx", kind)
        suffixes.append({"int8": "_quantized", "q4": "_q4"}[kind])
    if args.fp16:
        to_fp16(args.out / "onnx")
        suffixes.append("_fp16")
    write_audio_stand_ins(model, args.out, suffixes, args.opset)
    print(f"exported {args.checkpoint} -> {args.out}")


if __name__ == "__main__":
    main()
