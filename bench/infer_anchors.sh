#!/usr/bin/env bash
# depthling's int8 engine against the runtimes a user would otherwise pick, on the same network
# and frame, one pinned core, in one interleaved run:
#
#   depthling int8 (the .dlm)          depthling-runner --backend int8
#   tract f32 (the ONNX export)        depthling-runner --backend tract
#   onnxruntime int8 (QDQ)             quantize_static on the same calibration images
#   LiteRT int8 with XNNPACK           the .tflite export (`depthling export --format tflite`)
#
# for the demo student, `micro` and `mbv2-mff` at 128×96 (weights from one epoch of training on
# simulated indoor images: the timing does not depend on them). Each round runs every runtime
# once for --repeat frames, in turn; the medians over rounds and the ratios go to stdout as JSON.
#
#   bench/infer_anchors.sh [ROUNDS] [WORKDIR]          e.g. bench/infer_anchors.sh 7
#
# Needs a release build (cargo build --release -p depthling-host -p depthling-runner) and
# python3; the Python packages go into the bench venv target/bench-venv (from PyPI). Run it on an
# otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
work=${2:-$(mktemp -d)}
bin=$PWD/target/release/depthling
runner=$PWD/target/release/depthling-runner
for b in "$bin" "$runner"; do
  [ -x "$b" ] || { echo "infer_anchors: $b not found; run cargo build --release -p depthling-host -p depthling-runner" >&2; exit 2; }
done
venv=target/bench-venv
py="$venv/bin/python"
if [ ! -x "$py" ] || ! "$py" -c "import onnxruntime, onnx, numpy, PIL, ai_edge_litert.interpreter" >/dev/null 2>&1; then
  echo "== onnxruntime, onnx, numpy, pillow, ai-edge-litert into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$py" -m pip install -q --disable-pip-version-check onnxruntime onnx numpy pillow ai-edge-litert >&2
fi
mkdir -p "$work"
"$bin" -q simulate --domain indoor --count 16 --size 128x96 --seed 1 --out "$work/train" >&2
"$bin" -q simulate --domain ood --count 16 --size 128x96 --seed 2 --out "$work/calib" >&2
"$bin" -q simulate --domain indoor --count 1 --size 128x96 --seed 3 --out "$work/frame" >&2
for arch in demo-student micro mbv2-mff; do
  d="$work/$arch"
  mkdir -p "$d"
  "$bin" -q train-teacher --arch "$arch" --data "$work/train" --epochs 1 --out "$d/model.safetensors" >&2
  "$bin" -q quantize --model "$d/model.safetensors" --calib "$work/calib" --out "$d/model.dlm" >&2
  "$bin" -q export --model "$d/model.safetensors" --format onnx --size 128x96 --out "$d/model.onnx" >&2
  "$bin" -q export --model "$d/model.dlm" --format tflite --out "$d/model.tflite" >&2
done
exec taskset -c 0 "$py" - "$work" "$rounds" "$runner" <<'EOF'
import glob, json, re, statistics, subprocess, sys, time
import numpy as np
from PIL import Image
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from ai_edge_litert.interpreter import Interpreter

work, rounds, runner = sys.argv[1], int(sys.argv[2]), sys.argv[3]
repeat = 20
rgb = np.asarray(Image.open(glob.glob(f"{work}/frame/rgb/*.png")[0]).convert("RGB"))
calib = [np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255
         for p in sorted(glob.glob(f"{work}/calib/rgb/*.png"))]

class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(calib)
    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {"image": x}

def runner_ms(model, backend):
    out = subprocess.run([runner, "--model", model, "--backend", backend, "--input",
                          f"{work}/frame/rgb", "--repeat", str(repeat)],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"mean_ms=([0-9.]+)", out).group(1))

def timed(f):
    f()
    t = time.perf_counter()
    for _ in range(repeat):
        f()
    return 1e3 * (time.perf_counter() - t) / repeat

report = {"rounds": rounds, "frames_per_round": repeat, "size": "128x96", "threads": 1, "networks": {}}
for arch in ["demo-student", "micro", "mbv2-mff"]:
    d = f"{work}/{arch}"
    quantize_static(f"{d}/model.onnx", f"{d}/model.qdq.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(f"{d}/model.qdq.onnx", so, providers=["CPUExecutionProvider"])
    x = rgb.astype(np.float32).transpose(2, 0, 1)[None] / 255
    lite = Interpreter(model_path=f"{d}/model.tflite", num_threads=1)
    lite.allocate_tensors()
    q = (rgb ^ 0x80).view(np.int8)[None]
    def litert():
        lite.set_tensor(lite.get_input_details()[0]["index"], q)
        lite.invoke()
    runs = {k: [] for k in ["depthling_int8", "tract_f32", "onnxruntime_int8", "litert_xnnpack_int8"]}
    for _ in range(rounds):
        runs["depthling_int8"].append(runner_ms(f"{d}/model.dlm", "int8"))
        runs["tract_f32"].append(runner_ms(f"{d}/model.onnx", "tract"))
        runs["onnxruntime_int8"].append(timed(lambda: sess.run(None, {"image": x})))
        runs["litert_xnnpack_int8"].append(timed(litert))
    med = {k: statistics.median(v) for k, v in runs.items()}
    ours = med["depthling_int8"]
    report["networks"][arch] = {
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "min_ms": {k: round(min(v), 3) for k, v in runs.items()},
        "speedup_of_depthling_int8_over": {k: round(v / ours, 3) for k, v in med.items() if k != "depthling_int8"},
    }
print(json.dumps(report, indent=1))
EOF
