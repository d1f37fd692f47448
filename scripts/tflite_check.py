#!/usr/bin/env python3
"""Compares depthling's int8 engine with TFLite on an exported `.tflite`.

    tflite_check.py MODEL.tflite DUMP_DIR

DUMP_DIR is what `depthling run --model M.dlm --dump DIR` wrote for one image (input.npy and
one NNN_kind.npy/.json pair per op). The script runs MODEL.tflite on the same int8 input

- in LiteRT with the reference kernels (OpResolverType.BUILTIN_REF) keeping every tensor, and
  compares each dumped int8 tensor with the LiteRT tensor of the same name, bit for bit;
- in TFLite Micro (the `tflite-micro` package), and compares the depth output.

- in LiteRT's default path (XNNPACK), which must accept the model; its depth difference is
  reported (XNNPACK rounds its own way, so it is not expected to match).

It prints one JSON object (per-tensor mismatch counts, depth differences)
and exits 1 when an int8 tensor differs, the depth of LiteRT's reference kernels or TFLite Micro
is further from ours than the int16 output step allows, or XNNPACK refuses the model.
(TFLite Micro's arena beside ours: `depthling profile --model M.dlm --compare-tflm`.)
"""
import glob
import json
import os
import sys

import numpy as np


def litert_tensors(model_path, x):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_path=model_path,
        experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True,
        num_threads=1,
    )
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    out = {}
    for d in it.get_tensor_details():
        try:
            out[d["name"]] = (it.get_tensor(d["index"]), d)
        except ValueError:
            pass  # constant or unallocated
    return out


def xnnpack_depth(model_path, x):
    """LiteRT's default CPU path (the XNNPACK delegate); None when it refuses the model."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=model_path, num_threads=1)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])
    except RuntimeError:
        return None


def tflm_interpreter(model_bytes, arena):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model_bytes, arena_size=arena)


def tflm_run(model_bytes, x, arena):
    it = tflm_interpreter(model_bytes, arena)
    it.set_input(x, 0)
    it.invoke()
    return it.get_output(0)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    model_path, dump = sys.argv[1], sys.argv[2]
    x = np.load(os.path.join(dump, "input.npy"))
    ours = []
    for side in sorted(glob.glob(os.path.join(dump, "*.json"))):
        meta = json.load(open(side))
        meta["data"] = np.load(side[:-5] + ".npy")
        ours.append(meta)

    report = {"model": model_path, "tensors": [], "mismatched_tensors": 0}
    lite = litert_tensors(model_path, x)
    depth = None
    for t in ours:
        if t["dtype"] != "int8":
            depth = t
            continue
        name = t["tflite_name"]
        if name not in lite:
            report["tensors"].append({"op": t["op"], "name": name, "error": "not in the .tflite"})
            report["mismatched_tensors"] += 1
            continue
        theirs, d = lite[name]
        q = d["quantization_parameters"]
        same_q = (
            len(q["scales"]) == 1
            and np.float32(q["scales"][0]) == np.float32(t["scale"])
            and int(q["zero_points"][0]) == t["zero_point"]
        )
        if theirs.shape != t["data"].shape:
            diff = -1
        else:
            diff = int(np.count_nonzero(theirs.astype(np.int32) != t["data"].astype(np.int32)))
        entry = {"op": t["op"], "kind": t["kind"], "name": name, "differing": diff,
                 "elements": int(t["data"].size), "same_quantization": bool(same_q)}
        if diff != 0:
            entry["max_abs_diff"] = (
                int(np.abs(theirs.astype(np.int32) - t["data"].astype(np.int32)).max())
                if diff > 0 else None
            )
            report["mismatched_tensors"] += 1
        elif not same_q:
            report["mismatched_tensors"] += 1
        report["tensors"].append(entry)

    model_bytes = open(model_path, "rb").read()
    # the int16 depth step: what the .tflite's output form can resolve
    _, dq = lite["t%d_i16" % depth["tensor"]]
    step = float(dq["quantization_parameters"]["scales"][0])
    ours_depth = depth["data"].reshape(-1).astype(np.float64)
    lite_depth = lite["depth"][0].reshape(-1).astype(np.float64)
    arena = 8 << 20
    tflm_depth = np.asarray(tflm_run(model_bytes, x, arena)).reshape(-1).astype(np.float64)
    report["depth"] = {
        "int16_step_m": step,
        "litert_max_abs_diff_m": float(np.abs(lite_depth - ours_depth).max()),
        "tflm_max_abs_diff_m": float(np.abs(tflm_depth - ours_depth).max()),
        "tflm_equals_litert": bool(np.array_equal(tflm_depth, lite_depth)),
    }
    xnn = xnnpack_depth(model_path, x)
    # XNNPACK requantizes in f32 with its own rounding: reported, not required to match
    report["depth"]["xnnpack_runs"] = xnn is not None
    if xnn is not None:
        d = np.abs(xnn.reshape(-1).astype(np.float64) - ours_depth)
        report["depth"]["xnnpack_max_abs_diff_m"] = float(d.max())
        report["depth"]["xnnpack_mean_abs_diff_m"] = float(d.mean())
    # half a step of int16 rounding, and the 16-bit multiplier TFLite uses for int64
    # accumulators (about 2^-15 relative)
    tol = step * 0.5 + np.abs(ours_depth).max() * 2.0 ** -14
    report["depth"]["tolerance_m"] = float(tol)
    bad = (
        report["mismatched_tensors"] > 0
        or report["depth"]["litert_max_abs_diff_m"] > tol
        or report["depth"]["tflm_max_abs_diff_m"] > tol
        or not report["depth"]["xnnpack_runs"]
    )
    report["ok"] = not bad
    print(json.dumps(report))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
