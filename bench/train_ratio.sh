#!/usr/bin/env bash
# depthling's training step against PyTorch's, interleaved: this machine's speed drifts by ±15 %
# from minute to minute, so a ratio is only fair between runs taken back to back. Runs PAIRS pairs
# of `depthling bench train --arch ARCH` and `bench/pytorch_reference.py --arch ARCH` (128×96,
# batch 8, THREADS threads) and prints each pair and the median ratio.
#
#   bench/train_ratio.sh [ARCH] [PAIRS]        e.g. bench/train_ratio.sh mbv2-mff 5
#
# Needs a release build (cargo build --release --bin depthling) and a Python with torch
# (PYTHON=/path/to/python to choose one). THREADS defaults to 2.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-mbv2-mff}
pairs=${2:-5}
threads=${THREADS:-2}
python=${PYTHON:-python3}
bin=target/release/depthling
[ -x "$bin" ] || { echo "train_ratio: $bin not found; run cargo build --release --bin depthling" >&2; exit 2; }
"$python" -c "import torch" 2>/dev/null || { echo "train_ratio: $python has no torch (set PYTHON)" >&2; exit 2; }
ratios=()
for i in $(seq "$pairs"); do
    ours=$(RAYON_NUM_THREADS=$threads "$bin" bench train --arch "$arch" --json -q |
        "$python" -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["step_ms"])')
    theirs=$("$python" bench/pytorch_reference.py --arch "$arch" --threads "$threads" --depthling "$bin" |
        "$python" -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])')
    ratio=$("$python" -c "print(f'{$ours / $theirs:.2f}')")
    ratios+=("$ratio")
    printf 'pair %d: depthling %.0f ms, pytorch %.0f ms, ratio %s\n' "$i" "$ours" "$theirs" "$ratio"
done
"$python" -c "import statistics,sys; print(f'{sys.argv[1]}: median ratio {statistics.median(map(float, sys.argv[2:])):.2f} over {len(sys.argv)-2} pairs')" "$arch" "${ratios[@]}"
