//! Helpers shared by the CLI tests: run the binary, read its JSON and messages.
#![allow(dead_code)] // each test file uses its own subset
#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::process::{Command, Output};

/// Runs `depthling ARGS --quiet`.
pub fn depthling(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_depthling"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The row names of an experiment's results.
pub fn row_names(r: &serde_json::Value) -> Vec<&str> {
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap())
        .collect()
}

pub fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("stdout is one JSON object")
}
