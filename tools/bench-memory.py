"""Peak memory of `gemma-batch run` on a small and a large corpus (bounded-memory check).

    python3 tools/bench-memory.py [--small 1000] [--large 20000] [--binary PATH]

Writes two JSON-lines corpora of text rows, runs the same one-task spec over each with the
tiny model, and prints each run's peak resident memory (ru_maxrss of the child) and the ratio.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def corpus(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"r{i:06d}", "text": f"Row {i}: invoice total {i * 7 % 1000}.{i % 100:02d} EUR"}) + "\n")


def spec(dir: Path, data: Path) -> Path:
    p = dir / "spec.toml"
    p.write_text(f"""name = "bench"
[source]
kind = "jsonl"
path = "{data}"
id_column = "id"
text_column = "text"
[model]
dir = "{REPO / 'models/tiny-gemma4'}"
device = "cpu"
batch_size = 16
[[task]]
name = "total"
kind = "vqa"
questions = ["What is the total?"]
max_new_tokens = 1
[sink]
dir = "{dir / 'out'}"
commit_every = 512
""")
    return p


def peak_rss_mib(binary: str, n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "rows.jsonl"
        corpus(data, n)
        s = spec(tmp, data)
        t0 = time.time()
        # A child of its own so ru_maxrss is this run's peak.
        code = f"import resource,subprocess,sys; r=subprocess.run(sys.argv[1:]); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
        out = subprocess.run([sys.executable, "-c", code, binary, "run", str(s), "--quiet"], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"run over {n} rows failed: {out.stderr}")
        kib = int(out.stdout.strip().splitlines()[-1])
        return kib / 1024, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=20000)
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/gemma-batch/target"))
    ap.add_argument("--binary", default=str(Path(target) / "debug/gemma-batch"))
    a = ap.parse_args()
    small, ts = peak_rss_mib(a.binary, a.small)
    large, tl = peak_rss_mib(a.binary, a.large)
    print(f"{a.small:>7} rows: peak RSS {small:8.1f} MiB ({ts:.1f} s, {a.small / ts:.0f} rows/s)")
    print(f"{a.large:>7} rows: peak RSS {large:8.1f} MiB ({tl:.1f} s, {a.large / tl:.0f} rows/s)")
    print(f"ratio: {large / small:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
