#!/usr/bin/env bash
# The demo's teacher recipe at 128×96 against the demo's own wall time on the same machine: the
# target is δ1 ≥ 0.80 on held-out indoor images in no more time than `depthling demo` takes.
# Renders 8192 training and 100 test images at 128×96, trains `demo-teacher` with the demo's
# teacher settings (4096 steps of batch 8, the first half at half the size, Adam at 1e-3, flips
# only), evaluates it (NYU protocol), then times `depthling demo` and prints one JSON line.
#
#   bench/teacher_128x96.sh [SEED] [WORKDIR]        e.g. bench/teacher_128x96.sh 2
#
# Needs a release build (cargo build --release --bin depthling) and python3. About 15 minutes on
# two AVX-512 cores; run it on an otherwise idle machine, since both halves are timed.
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1}
work=${2:-$(mktemp -d)}
bin=$PWD/target/release/depthling
[ -x "$bin" ] || { echo "teacher_128x96: $bin not found; run cargo build --release --bin depthling" >&2; exit 2; }
mkdir -p "$work"
"$bin" simulate --domain indoor --count 8192 --size 128x96 --seed 1 --out "$work/train" -q >&2
"$bin" simulate --domain indoor --count 100 --size 128x96 --seed 32343 --out "$work/test" -q >&2

start=$(date +%s.%N)
"$bin" train-teacher --data "$work/train" --test-fraction 0 --no-augment --epochs 4 --coarse 0.5 \
    --lr 1e-3 --seed "$seed" --out "$work/teacher.safetensors" -q >&2
teacher_s=$(python3 -c "print(round($(date +%s.%N) - $start))")
metrics=$("$bin" eval --model "$work/teacher.safetensors" --data "$work/test" --protocol nyu --json)

start=$(date +%s.%N)
"$bin" demo --out "$work/demo" -q > /dev/null
demo_s=$(python3 -c "print(round($(date +%s.%N) - $start))")

python3 - "$seed" "$teacher_s" "$demo_s" "$metrics" <<'EOF'
import json, sys
seed, teacher_s, demo_s, metrics = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
print(json.dumps({
    "seed": seed,
    "delta1": round(metrics["delta1"], 4),
    "rmse": round(metrics["rmse"], 4),
    "abs_rel": round(metrics["abs_rel"], 4),
    "teacher_s": teacher_s,
    "demo_s": demo_s,
    "delta1_at_least_0_80": metrics["delta1"] >= 0.80,
    "within_demo_time": teacher_s <= demo_s,
}))
EOF
