#!/usr/bin/env bash
# depthling's test command: installs what the tests need, then runs every test.
#
# Where something cannot be installed, the affected checks are skipped with a message — unless
# CI=true (or DEPTHLING_REQUIRE_ALL=1), where a skip is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

strict=0
if [ "${CI:-}" = "true" ] || [ "${DEPTHLING_REQUIRE_ALL:-}" = "1" ]; then strict=1; fi

skip() {
  if [ "$strict" = 1 ]; then
    echo "error: $1 (required under CI)" >&2
    exit 1
  fi
  echo "SKIP: $1" >&2
}

# no_std crates must build for a Cortex-M7.
target=thumbv7em-none-eabihf
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" || true
fi
if rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "== no_std build for $target"
  cargo build --release -p depthling-model -p depthling-metrics -p depthling-device --target "$target"
else
  skip "rust target $target could not be installed; the no_std build check did not run"
fi

# Hardware-in-the-loop: QEMU runs the Cortex-M7 firmware (tests/tests/hil_cortex_m7.rs) and the
# aarch64 board runner (tests/tests/hil_aarch64.rs).
rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || true
missing=""
for tool in qemu-system-arm qemu-aarch64 aarch64-linux-gnu-gcc; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing qemu-system-arm qemu-user gcc-aarch64-linux-gnu"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-arm qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null) || true
fi
missing=""
for tool in qemu-system-arm qemu-aarch64 aarch64-linux-gnu-gcc; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -z "$missing" ] && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  export DEPTHLING_REQUIRE_HIL=1
else
  skip "hardware-in-the-loop tools missing (${missing:- rust target aarch64-unknown-linux-gnu}); needs root and apt-get: the HIL tests will skip"
fi

# onnxruntime (PyPI) checks the ONNX export (tests/tests/onnxruntime.rs) and the ONNX teacher
# importer; LiteRT (ai-edge-litert) and TFLite Micro (tflite-micro) check the .tflite export
# against the int8 engine (tests/tests/tflite.rs). One virtual environment kept in target/
# (rebuilt when a package is missing).
venv=target/ort-venv
imports="import onnxruntime, numpy, ai_edge_litert.interpreter, tflite_micro"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "$imports" >/dev/null 2>&1; then
  if ! python3 -m venv --help >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing python3-venv"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip >/dev/null) || true
  fi
  echo "== onnxruntime, numpy, ai-edge-litert and tflite-micro into $venv"
  rm -rf "$venv"
  (python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q --disable-pip-version-check onnxruntime numpy ai-edge-litert tflite-micro) || true
fi
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$imports" >/dev/null 2>&1; then
  export DEPTHLING_ORT_PYTHON="$PWD/$venv/bin/python"
else
  skip "onnxruntime, ai-edge-litert or tflite-micro could not be installed from PyPI; the onnxruntime and TFLite checks will skip"
fi

echo "== cargo test (release profile: the demo test trains real networks)"
cargo test --release --workspace

echo "== firmware lints (boards/cortex-m7 is its own workspace)"
(cd boards/cortex-m7 && cargo fmt -- --check && cargo clippy --release -- -D warnings && cargo clippy --release --features op-profile -- -D warnings)

# The engine's kernel tests on aarch64 under QEMU user mode: every NEON kernel against the
# reference, on a core with the dot-product extension (`max`: SDOT) and one without
# (`cortex-a72`: SMULL), as the HIL test runs the whole runner on both.
if [ "${DEPTHLING_REQUIRE_HIL:-}" = 1 ]; then
  for cpu in max cortex-a72; do
    echo "== device kernel tests on aarch64 (qemu-aarch64 -cpu $cpu)"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
      cargo test --release -p depthling-device --lib --target aarch64-unknown-linux-gnu
  done
else
  skip "qemu-aarch64 or the aarch64 toolchain missing: the NEON kernel tests did not run"
fi
