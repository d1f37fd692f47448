//! Puts `memory.x` on the linker path and embeds the model and the test frame:
//! `DEPTHLING_MODEL` (a `.dlm`) and `DEPTHLING_FRAME` (raw RGB bytes of the model's input size),
//! defaulting to `assets/`.
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let here = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    std::fs::copy(here.join("memory.x"), out.join("memory.x")).expect("memory.x is readable");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    for (var, default, name) in [
        ("DEPTHLING_MODEL", "assets/model.dlm", "model.dlm"),
        ("DEPTHLING_FRAME", "assets/frame.rgb", "frame.rgb"),
    ] {
        println!("cargo:rerun-if-env-changed={var}");
        let src = std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| here.join(default));
        println!("cargo:rerun-if-changed={}", src.display());
        std::fs::copy(&src, out.join(name)).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    }
}
