//! The host crate's modules depend downwards only (the order in `src/lib.rs`): this test reads
//! every source file, drops its `#[cfg(test)]` module, and fails on a `crate::X` path that
//! names a module of a higher layer than the file's own.

use std::path::{Path, PathBuf};

/// Layers from the ground floor up; a module may use its own layer and those before it.
const LAYERS: &[&[&str]] = &[
    &["error", "rng", "io", "progress"],
    &["data"],
    &["sim"],
    &["nets", "losses", "optim"],
    &["train"],
    &["teacher"],
    &["distill"],
    &[
        "quant", "onnx", "tflite", "eval", "plot", "report", "boards",
    ],
    &["app"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        let Some(own) = layer(&top) else {
            continue; // lib.rs, main.rs
        };
        let text = std::fs::read_to_string(f).expect("read");
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                checked += 1;
                if let Some(l) = layer(&name) {
                    if l > own {
                        wrong.push(format!("{}:{}: {top} uses {name}", rel.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate paths seen: is the source tree there?"
    );
    assert!(
        wrong.is_empty(),
        "imports of a higher layer:\n{}",
        wrong.join("\n")
    );
}
