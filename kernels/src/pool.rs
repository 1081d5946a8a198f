//! A thread pool for the decode loop whose dispatch allocates nothing.
//!
//! `n_threads - 1` persistent workers wait on an epoch counter; the caller of
//! [`ThreadPool::run`] is thread 0. A dispatch publishes the task (a lifetime-erased
//! `&dyn Fn(usize)`), bumps the epoch, unparks the workers that went to sleep, runs `f(0)` and
//! then waits for a done counter to reach `n_threads - 1`. Idle workers spin a while, then yield,
//! then park, so back-to-back dispatches (the decode loop) cost well under a microsecond to wake
//! and an idle pool burns no CPU.
//!
//! Panics: a panic in a task is caught on its worker and re-raised on the caller after every
//! thread has finished the task (the caller never returns, or unwinds, while a worker can still
//! touch the borrowed closure). Concurrent `run`s from different threads are serialized by a
//! mutex; a nested `run` on the same pool from inside one of its own tasks panics (it would
//! deadlock otherwise).

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::{self, JoinHandle};

/// Spin iterations (with `spin_loop` hints) before a waiting thread starts yielding, when every
/// thread of the pool can have its own core (a few tens of microseconds).
const SPIN: u32 = 4_000;
/// The same when the pool has more threads than the machine has cores: spinning would only keep
/// the thread we wait for off the CPU, so yield almost at once.
const SPIN_OVERSUBSCRIBED: u32 = 16;
/// `yield_now` calls before an idle worker parks.
const YIELDS: u32 = 200;

/// The published task: a `&dyn Fn(usize) + Sync` whose lifetime was erased by `run`.
type Task = *const (dyn Fn(usize) + Sync + 'static);

thread_local! {
    /// The `Shared` of the pool whose task this thread is running right now (0 if none): lets
    /// `run` tell a nested call (which would deadlock) from a concurrent one.
    static IN_TASK_OF: Cell<usize> = const { Cell::new(0) };
}

struct Shared {
    /// Bumped once per dispatch (and once at shutdown).
    epoch: AtomicUsize,
    /// Workers that finished the current epoch's task.
    done: AtomicUsize,
    /// Written only by the dispatching thread (holding `run_lock`) before the epoch bump and read
    /// by workers after they observe the bump; cleared after every worker reported done.
    task: UnsafeCell<Option<Task>>,
    shutdown: AtomicBool,
    /// Spin iterations before yielding (`SPIN` or `SPIN_OVERSUBSCRIBED`).
    spin: u32,
    /// One flag per worker: set while it is parked (or about to park).
    sleeping: Box<[AtomicBool]>,
    /// The first panic payload of the current dispatch.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `task` is the only non-Sync field. It is written only by the thread holding
// `ThreadPool::run_lock`, strictly before the Release/SeqCst epoch bump that publishes it, and
// read by workers only after an Acquire load observed that bump and before they increment `done`;
// the writer touches it again only after observing `done == n_workers` (Acquire). So accesses
// never race. The pointee is `Sync`, so calling it from several threads is fine.
unsafe impl Sync for Shared {}
// SAFETY: the raw task pointer is only dereferenced under the protocol above; the pointee is
// `Sync` (shareable with any thread) and everything else in `Shared` is `Send`.
unsafe impl Send for Shared {}

/// A fixed set of threads that run one task at a time, each thread with its index.
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads (the caller counts as thread 0). `n_threads` is at least 1.
    pub fn new(n_threads: usize) -> io::Result<ThreadPool> {
        let n_threads = n_threads.max(1);
        let n_workers = n_threads - 1;
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let spin = if n_threads > cores {
            SPIN_OVERSUBSCRIBED
        } else {
            SPIN
        };
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            task: UnsafeCell::new(None),
            shutdown: AtomicBool::new(false),
            spin,
            sleeping: (0..n_workers).map(|_| AtomicBool::new(false)).collect(),
            panic: Mutex::new(None),
        });
        let mut pool = ThreadPool {
            n_threads,
            shared: shared.clone(),
            workers: Vec::with_capacity(n_workers),
            run_lock: Mutex::new(()),
        };
        for w in 0..n_workers {
            let s = shared.clone();
            let h = thread::Builder::new()
                .name(format!("qwenrt-worker-{}", w + 1))
                .spawn(move || worker(s, w))?;
            // On error, `pool` drops here and joins the workers spawned so far.
            pool.workers.push(h);
        }
        Ok(pool)
    }

    /// How many threads take part in each [`ThreadPool::run`].
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(tid)` for every `tid in 0..n_threads`, in parallel, and returns when all are done.
    /// Allocates nothing.
    ///
    /// Calls from several threads at once are serialized. Calling `run` from inside a task of
    /// the same pool panics. If any `f(tid)` panics, `run` panics (with that payload) after all
    /// threads finished, and the pool stays usable.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let me = Arc::as_ptr(&self.shared) as usize;
        if IN_TASK_OF.with(|c| c.get()) == me {
            panic!("ThreadPool::run called from inside one of its own tasks");
        }
        if self.n_threads == 1 {
            let _mark = TaskMark::set(me);
            f(0);
            return;
        }
        let _guard = match self.run_lock.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.run_lock.lock().unwrap_or_else(|p| p.into_inner())
            }
        };
        let s = &*self.shared;
        let n_workers = self.n_threads - 1;
        let task: *const (dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: only the lifetime changes (same fat-pointer layout). The erased reference is
        // dereferenced by workers only until they bump `done`, and this function does not return
        // (or unwind) before `done == n_workers`, so `f` outlives every use.
        let task: Task = unsafe { std::mem::transmute(task) };
        s.done.store(0, Ordering::Relaxed);
        // SAFETY: we hold `run_lock`, and every worker finished the previous epoch (we waited for
        // `done`), so nobody reads `task` now; the epoch bump below publishes the write.
        unsafe { *s.task.get() = Some(task) };
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (i, h) in self.workers.iter().enumerate() {
            // SeqCst pairs with the worker's SeqCst store of its flag, fence and re-check of the
            // epoch: either it sees the new epoch, or we see its flag and unpark it. (The bump
            // is a read-modify-write, a full barrier on every target and under qemu, so this
            // side needs no fence of its own.)
            if s.sleeping[i].load(Ordering::SeqCst) {
                h.thread().unpark();
            }
        }
        let mine = {
            let _mark = TaskMark::set(me);
            panic::catch_unwind(AssertUnwindSafe(|| f(0)))
        };
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != n_workers {
            if spins < s.spin {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        // SAFETY: every worker is done with this epoch's task (Acquire above), and we still hold
        // `run_lock`.
        unsafe { *s.task.get() = None };
        if let Err(p) = mine {
            // Drop a worker's payload, if any: one panic is re-raised.
            s.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
            panic::resume_unwind(p);
        }
        let theirs = s.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = theirs {
            panic::resume_unwind(p);
        }
    }
}

/// Marks the current thread as running a task of one pool while alive.
struct TaskMark(usize);
impl TaskMark {
    fn set(pool: usize) -> TaskMark {
        TaskMark(IN_TASK_OF.with(|c| c.replace(pool)))
    }
}
impl Drop for TaskMark {
    fn drop(&mut self) {
        IN_TASK_OF.with(|c| c.set(self.0));
    }
}

fn worker(s: Arc<Shared>, w: usize) {
    let me = Arc::as_ptr(&s) as usize;
    IN_TASK_OF.with(|c| c.set(me));
    let mut seen = 0usize;
    loop {
        seen = wait_epoch(&s, w, seen);
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: we observed the epoch bump (Acquire), which was published after `task` was
        // written; the dispatcher does not touch `task` again until we bump `done`.
        let task = unsafe { *s.task.get() };
        if let Some(task) = task {
            // SAFETY: `run` keeps the closure alive until every worker bumped `done` (below).
            let r = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*task)(w + 1) }));
            if let Err(p) = r {
                let mut slot = s.panic.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_none() {
                    *slot = Some(p);
                }
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

/// Waits until the epoch differs from `seen` (spin, then yield, then park) and returns it.
fn wait_epoch(s: &Shared, w: usize, seen: usize) -> usize {
    for _ in 0..s.spin {
        let e = s.epoch.load(Ordering::Acquire);
        if e != seen {
            return e;
        }
        std::hint::spin_loop();
    }
    for _ in 0..YIELDS {
        let e = s.epoch.load(Ordering::Acquire);
        if e != seen {
            return e;
        }
        thread::yield_now();
    }
    loop {
        s.sleeping[w].store(true, Ordering::SeqCst);
        // The flag must be visible before the epoch is read (the dispatcher bumps the epoch,
        // then reads the flag: one of the two sees the other). A SeqCst store and a SeqCst
        // load give that in the language and on hardware, but qemu-user turns aarch64's
        // `stlr` / `ldar` into barriers that let an x86 host load the epoch before the flag is
        // stored, and the worker then parked through a dispatch (a hang in the aarch64 CI).
        // A full fence (`dmb ish`, `mfence` under qemu) holds everywhere; it is paid only on
        // the way to parking.
        fence(Ordering::SeqCst);
        let e = s.epoch.load(Ordering::SeqCst);
        if e != seen {
            s.sleeping[w].store(false, Ordering::Relaxed);
            return e;
        }
        thread::park();
        s.sleeping[w].store(false, Ordering::Relaxed);
        let e = s.epoch.load(Ordering::Acquire);
        if e != seen {
            return e;
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for h in &self.workers {
            h.thread().unpark();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn send_sync() {
        assert_send_sync::<ThreadPool>();
    }

    #[test]
    fn every_tid_once_per_run() {
        for n in [1, 2, 3, 4] {
            let pool = ThreadPool::new(n).unwrap();
            assert_eq!(pool.n_threads(), n);
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for run in 1..=500 {
                pool.run(&|tid| {
                    counts[tid].fetch_add(1, Ordering::Relaxed);
                });
                for c in &counts {
                    assert_eq!(c.load(Ordering::Relaxed), run);
                }
            }
        }
    }

    #[test]
    fn results_and_sleeping_workers() {
        let pool = ThreadPool::new(3).unwrap();
        let out: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for i in 0..5 {
            if i == 2 {
                // Let the workers go through spin and yield into park.
                thread::sleep(std::time::Duration::from_millis(50));
            }
            pool.run(&|tid| out[tid].store(tid * 10 + i, Ordering::Relaxed));
            for (t, o) in out.iter().enumerate() {
                assert_eq!(o.load(Ordering::Relaxed), t * 10 + i);
            }
        }
    }

    /// Dispatches land at every moment around a worker going to sleep, many times over: a
    /// lost wakeup (the worker parks on an epoch the dispatcher published, and the dispatcher
    /// does not see it asleep) hangs this test. The time a worker takes from its last task to
    /// its `sleeping` flag is measured first; the dispatches then sweep from half of it to
    /// one and a half times it in fine steps, so the race between the worker's flag-and-epoch
    /// check and the dispatcher's epoch-and-flag check is hit again and again. A lost wakeup
    /// is caught only by chance (docs/reliability.md has how often, under qemu).
    #[test]
    fn handoffs_at_every_moment_of_going_to_sleep() {
        use std::time::Instant;
        let pool = ThreadPool::new(2).unwrap();
        let asleep = || pool.shared.sleeping[0].load(Ordering::SeqCst);
        let c = AtomicUsize::new(0);
        let count = |_: usize| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        let mut to_sleep = Vec::new();
        for _ in 0..9 {
            pool.run(&count);
            let t0 = Instant::now();
            while !asleep() {
                thread::yield_now();
            }
            to_sleep.push(t0.elapsed());
        }
        to_sleep.sort();
        let median = to_sleep[4];
        let mut runs = 9;
        let steps = 2000u32;
        for k in 0..steps {
            pool.run(&count);
            runs += 1;
            let wait = median / 2 + median * k / steps;
            let t0 = Instant::now();
            while t0.elapsed() < wait {
                std::hint::spin_loop();
            }
        }
        pool.run(&count);
        runs += 1;
        assert_eq!(c.load(Ordering::Relaxed), 2 * runs);
    }

    #[test]
    fn panic_is_reraised_and_pool_survives() {
        let pool = ThreadPool::new(3).unwrap();
        for bad in [0, 2] {
            let r = panic::catch_unwind(AssertUnwindSafe(|| {
                pool.run(&|tid| {
                    if tid == bad {
                        panic!("boom {tid}");
                    }
                })
            }));
            let msg = r.unwrap_err();
            assert_eq!(
                msg.downcast_ref::<String>().unwrap(),
                &format!("boom {bad}")
            );
            assert_runs_every_worker(&pool, 3);
        }
    }

    /// `pool` (after a panic) still runs its `n` workers, each once.
    fn assert_runs_every_worker(pool: &ThreadPool, n: usize) {
        let c = AtomicUsize::new(0);
        pool.run(&|_| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c.load(Ordering::Relaxed), n);
    }

    #[test]
    fn nested_run_panics() {
        let pool = ThreadPool::new(2).unwrap();
        let r = panic::catch_unwind(AssertUnwindSafe(|| pool.run(&|_| pool.run(&|_| {}))));
        assert!(r.is_err());
        assert_runs_every_worker(&pool, 2);
    }

    #[test]
    fn concurrent_runs_are_serialized() {
        let pool = ThreadPool::new(2).unwrap();
        let active = AtomicUsize::new(0);
        let total = AtomicUsize::new(0);
        thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        pool.run(&|_| {
                            let a = active.fetch_add(1, Ordering::SeqCst);
                            assert!(a < 2, "two dispatches overlapped");
                            total.fetch_add(1, Ordering::Relaxed);
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 200 * 2);
    }
}
