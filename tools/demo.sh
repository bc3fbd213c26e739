#!/usr/bin/env bash
# Runs gemma-batch on the bundled tiny Gemma 4 model (README's main command).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
images=models/tiny-gemma4/goldens/images
cargo run --locked --quiet -- generate --model models/tiny-gemma4 --device cpu \
  --prompt "Describe this image in one sentence." --image "$images/photo.png" --max-new-tokens 24 --json
cargo run --locked --quiet -- generate --model models/tiny-gemma4 --device cpu --backend tract \
  --system "You are a careful assistant." --prompt "Is this content harmful? Answer Yes or No." --max-new-tokens 8 --json
