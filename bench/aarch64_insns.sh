#!/usr/bin/env bash
# Instructions per inference of depthling's int8 engine on aarch64 cores, emulated: the
# cross-compiled `depthling-runner` under `qemu-aarch64 -cpu CPU` with the instruction-counting
# plugin `tests/qemu/insn.c` (Debian's QEMU ships none), for the demo student, `micro` and
# `mbv2-mff` at 128×96 (the Cortex-M7 firmware's assets: `write_board_assets DIR 128x96 ARCH`) on
# cortex-a72 (NEON: `aarch64-neon`), cortex-a76 (`sdot`: `aarch64-neon-dotprod`) and max
# (`smmla`: `aarch64-neon-i8mm`). Each count is one frame run 3 times minus the same run once,
# halved, so loading the model and decoding the PNG cancel. Emulated timings are not real
# performance; instruction counts are what this measures. JSON on stdout.
#
#   bench/aarch64_insns.sh [WORKDIR]
#
# Needs qemu-aarch64 (qemu-user), gcc-aarch64-linux-gnu, the rust target
# aarch64-unknown-linux-gnu, a C compiler for the plugin and a release build of the host
# (cargo build --release -p depthling-host -p depthling-tests --examples).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
bin=$PWD/target/release/depthling
assets=$PWD/target/release/examples/write_board_assets
for b in "$bin" "$assets"; do
  [ -x "$b" ] || { echo "aarch64_insns: $b not found; run cargo build --release -p depthling-host -p depthling-tests --examples" >&2; exit 2; }
done
mkdir -p "$work"
"${CC:-cc}" -shared -fPIC -O2 -o "$work/libinsn.so" tests/qemu/insn.c
CARGO_TARGET_DIR=target/aarch64 cargo build -q --release -p depthling-runner --target aarch64-unknown-linux-gnu
runner=$PWD/target/aarch64/aarch64-unknown-linux-gnu/release/depthling-runner
"$bin" -q simulate --domain indoor --count 1 --size 128x96 --seed 3 --out "$work/frame" >&2
frame=$(ls "$work"/frame/rgb/*.png | head -1)
count() { # CPU MODEL REPEAT
  qemu-aarch64 -cpu "$1" -L /usr/aarch64-linux-gnu -plugin "$work/libinsn.so" \
    "$runner" --model "$2" --input "$frame" --repeat "$3" 2>&1 >/dev/null |
    sed -n 's/^qemu-insn: instructions=//p'
}
echo "{"
first=1
for arch in demo-student micro mbv2-mff; do
  "$assets" "$work/$arch" 128x96 "$arch" >&2
  model="$work/$arch/model.dlm"
  macs=$("$bin" -q profile --model "$model" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["macs"])')
  [ $first = 1 ] || echo ","
  first=0
  printf '  "%s": {"macs": %s' "$arch" "$macs"
  for cpu in cortex-a72 cortex-a76 max; do
    one=$(count "$cpu" "$model" 1)
    three=$(count "$cpu" "$model" 3)
    per=$(( (three - one) / 2 ))
    printf ', "%s": {"instructions": %s, "per_mac": %s}' "$cpu" "$per" \
      "$(python3 -c "print(round($per / $macs, 3))")"
  done
  printf '}'
done
echo
echo "}"
