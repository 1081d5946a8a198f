//! The fetch lock: one fetch at a time across processes and threads.

use super::*;

/// An exclusive lock: [`File::lock`] (`flock` on Unix) on a lock file, held while the value
/// lives. The lock belongs to the open file, so it excludes other processes and other threads
/// of this one (each opens its own handle), and the OS releases it when the file is closed:
/// on drop, or when a holder is killed, so an abandoned lock never blocks later runs. The
/// lock file itself stays (removing it could let two holders lock different files).
pub(super) struct Lock {
    file: File,
}

impl Lock {
    pub(super) fn acquire(path: &Path, p: &mut dyn Progress) -> Result<Lock, FetchError> {
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
    fn lock_is_exclusive_and_released() {
        let dir = std::env::temp_dir().join(format!("qwenrt-lock-test-{}", unique_token()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let mut p = Silent;
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
            let l = Lock::acquire(&path2, &mut Silent).unwrap();
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
