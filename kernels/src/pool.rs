//! A thread pool for the decode loop whose dispatch allocates nothing.
//!
//! PLACEHOLDER: runs every task on the calling thread, in order. To be replaced by persistent
//! workers meeting at a spin barrier.

use std::io;

/// A fixed set of threads that run one task at a time, each thread with its index.
pub struct ThreadPool {
    n_threads: usize,
}

impl ThreadPool {
    /// A pool of `n_threads` threads (the caller counts as thread 0). `n_threads` is at least 1.
    pub fn new(n_threads: usize) -> io::Result<ThreadPool> {
        Ok(ThreadPool { n_threads: n_threads.max(1) })
    }

    /// How many threads take part in each [`ThreadPool::run`].
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(tid)` for every `tid in 0..n_threads`, in parallel, and returns when all are done.
    /// Allocates nothing.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        for tid in 0..self.n_threads {
            f(tid);
        }
    }
}
