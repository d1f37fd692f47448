//! `--config FILE.toml`: any flag of a subcommand from a TOML file.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Expands `--config FILE.toml`: each `key = value` becomes `--key value` (`true` becomes a bare
/// `--key`, `false` is dropped) right after the subcommand, unless the command line already gives
/// that flag, so flags typed by hand win over the file.
pub fn expand(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    let mut args = args;
    let Some(pos) = args
        .iter()
        .position(|a| a == "--config" || a.to_string_lossy().starts_with("--config="))
    else {
        return Ok(args);
    };
    let flag = args.remove(pos).to_string_lossy().into_owned();
    let path = match flag.strip_prefix("--config=") {
        Some(p) => PathBuf::from(p),
        None if pos < args.len() => PathBuf::from(args.remove(pos)),
        None => return Err(Error::Usage("--config needs a file".into())),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::bad_input(&path, "config file not found"),
        _ => Error::io(&path, e),
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| Error::bad_input(&path, format!("not valid TOML: {e}")))?;
    let given: Vec<String> = args
        .iter()
        .map(|a| {
            a.to_string_lossy()
                .split('=')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in &table {
        let flag = format!("--{}", key.replace('_', "-"));
        if given.contains(&flag) {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => extra.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => extra.extend([flag.into(), s.into()]),
            toml::Value::Integer(i) => extra.extend([flag.into(), i.to_string().into()]),
            toml::Value::Float(f) => extra.extend([flag.into(), f.to_string().into()]),
            // a flag given several times (`labeled = ["data/indoor", "data/indoor-alt"]`)
            toml::Value::Array(items) => {
                for item in items {
                    match item {
                        toml::Value::String(s) => extra.extend([flag.clone().into(), s.into()]),
                        _ => {
                            return Err(Error::bad_input(
                                &path,
                                format!("{key}: lists may hold only strings"),
                            ))
                        }
                    }
                }
            }
            _ => {
                return Err(Error::bad_input(
                    &path,
                    format!(
                        "{key}: only strings, numbers, booleans and lists of strings are supported"
                    ),
                ))
            }
        }
    }
    // after the subcommand: the first argument that is not a flag
    let at = args
        .iter()
        .skip(1)
        .position(|a| !a.to_string_lossy().starts_with('-'))
        .map_or(args.len(), |i| i + 2);
    args.splice(at..at, extra);
    Ok(args)
}
