//! Progress on stderr: an indicatif bar when stderr is a terminal, one line per stage when it is
//! not (logs, CI, pipes), nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// One line on stderr unless quiet (for steps without a count; counted stages use
/// [`Progress`]).
pub fn line(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("{msg}");
    }
}

enum Mode {
    Quiet,
    /// Not a terminal: one line when the stage ends.
    Lines,
    Bar(ProgressBar),
}

/// One stage of work with a known number of units (images, steps, frames).
pub struct Progress {
    mode: Mode,
    label: String,
    done: u64,
    start: Instant,
}

impl Progress {
    /// A stage of `total` units named `label` (e.g. `"simulate indoor"`, unit `"img"`).
    pub fn new(quiet: bool, label: &str, total: usize, unit: &str) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            let template = format!(
                "{{prefix:.bold}} [{{bar:30.cyan/blue}}] {{pos}}/{{len}} {unit} {{msg}} ({{per_sec}}, eta {{eta}})"
            );
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        Progress {
            mode,
            label: label.to_string(),
            done: 0,
            start: Instant::now(),
        }
    }

    /// `n` more units done, with a short status (e.g. the loss).
    pub fn advance(&mut self, n: usize, msg: Option<String>) {
        self.done += n as u64;
        if let Mode::Bar(bar) = &self.mode {
            bar.inc(n as u64);
            if let Some(m) = msg {
                bar.set_message(m);
            }
        }
    }

    /// Ends the stage with a summary (the one line printed when stderr is not a terminal).
    pub fn finish(self, summary: &str) {
        let secs = self.start.elapsed().as_secs_f64();
        let line = format!("{}: {summary} in {secs:.1}s", self.label);
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{line}"),
            Mode::Bar(bar) => {
                bar.finish_and_clear();
                eprintln!("{line}");
            }
        }
    }

    pub fn done(&self) -> u64 {
        self.done
    }

    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}
