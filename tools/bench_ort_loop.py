"""The plain Python ONNX Runtime generation loop over the same graphs, as a baseline for
`gemma-batch bench generate`.

    python tools/bench_ort_loop.py BENCH.json [--batch 1,8] [--threads N] [--logits-to-keep | --both]
                                   [--prompts N] [--model DIR] [--dtype fp32] [--device cpu]
                                   [--strict] [--out RESULTS.json]

BENCH.json is what `gemma-batch bench generate --json BENCH.json` writes:

    {"model": DIR, "new_tokens": 32, "ignore_eos": false, "threads": 2,
     "prompts": [[2, 105, ...], ...],                 # chat-templated prompt token ids
     "runs": [{"runner": "gemma-batch", "batch": 8, "seconds": ..., "tokens": ...,
               "tokens_per_s": ..., "items_per_s": ..., "outputs": [[ids...], ...]}]}

For each batch size the prompts run in their given order in static batches: left-padded
(attention_mask 0 and position id 1 on padding, positions 0.. on real tokens), an empty KV
cache [batch, heads, 0, head_dim] built from the decoder's input metadata, each step's
present.* fed back as past_key_values.*, greedy argmax of the last position. A row that has
produced an end-of-generation id (generation_config.json) is fed padding until its batch ends.
By default num_logits_to_keep is not fed (full logits in prefill, as a plain loop gets);
--logits-to-keep feeds 1 when the graph has that input, --both runs both ways.

tokens/s counts generated tokens (an end-of-generation id included) over the wall time of the
whole generation (embedding and prefill included, session creation not); items/s counts
prompts. The generated ids are checked against the gemma-batch run's outputs for the same
prompts (a mismatch is reported; --strict makes it fatal). The table ends with the ratio
gemma-batch / python for each batch size and gemma-batch's largest batch / its batch 1.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bfloat16)": None}
LOGITS_TO_KEEP = "num_logits_to_keep"
SUFFIXES = {"fp32": "", "fp16": "_fp16", "q4": "_q4", "q4f16": "_q4f16", "quantized": "_quantized"}


def parse_batches(text: str) -> list:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are integers separated by commas, not {text!r}")
    if not out or any(b < 1 for b in out):
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1: {text!r}")
    return out


def load_ids(model_dir: Path) -> tuple:
    """(end-of-generation ids, pad id) from generation_config.json, then config.json."""
    cfg = json.loads((model_dir / "config.json").read_text())
    text = cfg.get("text_config") or {}
    gen_path = model_dir / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    eos = None
    for source in (gen, cfg, text):
        if source.get("eos_token_id") is not None:
            eos = source["eos_token_id"]
            break
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    pad = next((s["pad_token_id"] for s in (gen, text, cfg) if s.get("pad_token_id") is not None), 0)
    return set(eos), int(pad)


class Model:
    def __init__(self, model_dir: Path, threads: int, dtype: str = "fp32", device: str = "cpu"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only
        onnx_dir = model_dir / "onnx"
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        suffix = SUFFIXES[dtype]
        self.embed = ort.InferenceSession(str(onnx_dir / f"embed_tokens{suffix}.onnx"), so, providers=providers)
        self.decoder = ort.InferenceSession(str(onnx_dir / f"decoder_model_merged{suffix}.onnx"), so,
                                            providers=providers)
        self.eos, self.pad = load_ids(model_dir)
        self.cache = []  # (input name, output name, heads, head_dim, dtype)
        for inp in self.decoder.get_inputs():
            if not inp.name.startswith("past_key_values."):
                continue
            dtype = ORT_DTYPES.get(inp.type)
            if dtype is None:
                sys.exit(f"error: {inp.name} has type {inp.type}, which this loop does not feed")
            heads, head_dim = inp.shape[1], inp.shape[3]
            if not (isinstance(heads, int) and isinstance(head_dim, int)):
                sys.exit(f"error: {inp.name} has shape {inp.shape}; heads and head size must be fixed numbers")
            out = "present." + inp.name[len("past_key_values."):]
            self.cache.append((inp.name, out, heads, head_dim, dtype))
        names = {i.name for i in self.decoder.get_inputs()}
        names |= {i.name for i in self.decoder.get_overridable_initializers()}
        self.has_logits_to_keep = LOGITS_TO_KEEP in names
        self.has_ple = "per_layer_inputs" in names
        self.outputs = ["logits"] + [c[1] for c in self.cache]

    def generate(self, prompts: list, new_tokens: int, keep: bool) -> list:
        """Greedy generation for one static batch; the generated ids of each row (EOS included)."""
        b = len(prompts)
        width = max(len(p) for p in prompts)
        ids = np.full((b, width), self.pad, dtype=np.int64)
        mask = np.zeros((b, width), dtype=np.int64)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = p
            mask[r, width - len(p):] = 1
        positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
        past = {name: np.zeros((b, heads, 0, hd), dtype=dt) for name, _, heads, hd, dt in self.cache}
        keep_feed = {LOGITS_TO_KEEP: np.array(1, dtype=np.int64)} if keep and self.has_logits_to_keep else {}
        out = [[] for _ in range(b)]
        done = np.zeros(b, dtype=bool)
        step_ids = ids
        step_pos = positions
        for step in range(new_tokens):
            embeds = self.embed.run(None, {"input_ids": step_ids})
            feeds = {"inputs_embeds": embeds[0], "attention_mask": mask, "position_ids": step_pos,
                     **past, **keep_feed}
            if self.has_ple:
                feeds["per_layer_inputs"] = embeds[1]
            results = self.decoder.run(self.outputs, feeds)
            next_ids = results[0][:, -1, :].argmax(axis=-1)
            for r in range(b):
                if not done[r]:
                    token = int(next_ids[r])
                    out[r].append(token)
                    if token in self.eos:
                        done[r] = True
            if done.all() or step + 1 == new_tokens:
                break
            for (name, _, _, _, _), value in zip(self.cache, results[1:]):
                past[name] = value
            fed = np.where(done, self.pad, next_ids).astype(np.int64)
            step_ids = fed[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((b, 1), dtype=np.int64)], axis=1)
        return out


def run(model: Model, prompts: list, batch: int, new_tokens: int, keep: bool) -> dict:
    outputs = []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch):
        outputs += model.generate(prompts[start:start + batch], new_tokens, keep)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o) for o in outputs)
    return {"runner": "python-ort" + (" keep=1" if keep else ""), "batch": batch, "logits_to_keep": keep,
            "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "items_per_s": len(prompts) / seconds, "outputs": outputs}


def compare(mine: list, theirs: list) -> tuple:
    """(matching prompts, first differing prompt index or None)."""
    same = [a == b for a, b in zip(mine, theirs)]
    first = next((i for i, s in enumerate(same) if not s), None)
    return sum(same), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_json", type=Path, help="JSON written by gemma-batch bench generate --json")
    ap.add_argument("--model", type=Path, help="model directory (default: the JSON's model)")
    ap.add_argument("--batch", type=parse_batches, help="batch sizes, e.g. 1,8 (default: those of the gemma-batch runs)")
    ap.add_argument("--dtype", choices=sorted(SUFFIXES), default="fp32",
                    help="exported variant to load, as gemma-batch's --dtype (default fp32)")
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    help="execution provider (default: the JSON's device, else cpu)")
    ap.add_argument("--threads", type=int, help="intra-op threads, 0 for ONNX Runtime's choice (default: the JSON's threads)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--logits-to-keep", action="store_true",
                      help="feed num_logits_to_keep = 1 when the decoder has that input")
    mode.add_argument("--both", action="store_true", help="run without and with num_logits_to_keep")
    ap.add_argument("--prompts", type=int, help="use only the first N prompts")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up batch")
    ap.add_argument("--strict", action="store_true", help="exit 1 when generated ids differ from gemma-batch's")
    ap.add_argument("--out", type=Path, help="write this script's results as JSON (the bench JSON's format)")
    args = ap.parse_args()

    bench = json.loads(args.bench_json.read_text())
    model_dir = args.model or Path(bench["model"])
    prompts = [list(map(int, p)) for p in bench["prompts"]]
    if args.prompts is not None:
        prompts = prompts[:args.prompts]
    if not prompts:
        sys.exit("error: no prompts")
    new_tokens = int(bench["new_tokens"])
    rust_runs = bench.get("runs") or []
    batches = args.batch or sorted({int(r["batch"]) for r in rust_runs}) or [1, 8]
    threads = args.threads if args.threads is not None else int(bench.get("threads") or 0)

    import onnxruntime as ort

    device = args.device or ("cuda" if str(bench.get("device", "cpu")).lower().startswith("cuda") else "cpu")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        print("warning: this onnxruntime has no CUDA provider (install onnxruntime-gpu); the Python loop runs "
              "on the CPU, so the ratios compare unlike devices", file=sys.stderr)
        device = "cpu"
    model = Model(model_dir, threads, args.dtype, device)
    if bench.get("ignore_eos"):
        # The Rust run generated exactly new_tokens per prompt (--ignore-eos): so does this one.
        model.eos = set()
    modes = [False, True] if args.both else [args.logits_to_keep]
    if any(modes) and not model.has_logits_to_keep:
        print(f"note: the decoder has no {LOGITS_TO_KEEP} input; the keep=1 run computes all logits", file=sys.stderr)
        modes = [False]
    print(f"model {model_dir}: {len(prompts)} prompts, {new_tokens} new tokens, {threads or 'default'} threads, "
          f"{args.dtype} on {device}, onnxruntime {ort.__version__}", flush=True)
    if not args.no_warmup:
        model.generate(prompts[:1], min(2, new_tokens), False)

    results = []
    mismatched = False
    for keep in modes:
        for batch in batches:
            res = run(model, prompts, batch, new_tokens, keep)
            results.append(res)
            line = (f"{res['runner']:18s} batch {batch:3d}: {res['tokens_per_s']:9.2f} tokens/s "
                    f"{res['items_per_s']:8.3f} items/s ({res['tokens']} tokens in {res['seconds']:.2f} s)")
            ref = next((r for r in rust_runs if int(r["batch"]) == batch and r.get("outputs")), None)
            ref = ref or next((r for r in rust_runs if r.get("outputs")), None)
            if ref is not None:
                theirs = ref["outputs"][:len(prompts)]
                n, first = compare(res["outputs"], theirs)
                res["matching_prompts"] = n
                line += f"; {n}/{len(prompts)} prompts match {ref['runner']} batch {ref['batch']}"
                if first is not None:
                    mismatched = True
                    line += (f" (first difference: prompt {first}: python {res['outputs'][first][:8]}... "
                             f"vs {theirs[first][:8]}...)")
            print(line, flush=True)

    print()
    print(f"{'runner':20s} {'batch':>5s} {'tokens/s':>10s} {'items/s':>9s}")
    rows = [r for r in rust_runs if r.get("tokens_per_s")] + results
    for r in rows:
        print(f"{r['runner']:20s} {int(r['batch']):5d} {float(r['tokens_per_s']):10.2f} {float(r['items_per_s']):9.3f}")
    rust_by_batch = {int(r["batch"]): r for r in rust_runs if r.get("tokens_per_s")}
    if rust_by_batch:
        print()
        for res in results:
            rust = rust_by_batch.get(res["batch"])
            if rust:
                print(f"{rust['runner']} / {res['runner']} at batch {res['batch']}: "
                      f"{float(rust['tokens_per_s']) / res['tokens_per_s']:.2f}x tokens/s")
        if 1 in rust_by_batch and len(rust_by_batch) > 1:
            top = max(rust_by_batch)
            name = rust_by_batch[top]["runner"]
            print(f"{name} batch {top} / {name} batch 1: "
                  f"{float(rust_by_batch[top]['tokens_per_s']) / float(rust_by_batch[1]['tokens_per_s']):.2f}x tokens/s")
    if args.out:
        args.out.write_text(json.dumps({"model": str(model_dir), "new_tokens": new_tokens, "threads": threads,
                                        "prompts": prompts, "runs": results}) + "\n")
    if mismatched and args.strict:
        sys.exit("error: generated ids differ from gemma-batch's (--strict)")


if __name__ == "__main__":
    main()
