#!/usr/bin/env bash
# Writes a few valid .dlm files as the fuzzing seed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p fuzz/corpus/load
cargo run -q --release -p depthling-tests --example write_seed_models -- fuzz/corpus/load
