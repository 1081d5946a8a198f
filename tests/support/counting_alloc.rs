//! The allocation proofs' global allocator: the system allocator, counting while `ARMED`.
//! Included by the tests that prove a path allocates nothing (or measure what it allocates);
//! it installs itself as the test binary's `#[global_allocator]`.
#![allow(dead_code)] // each test binary reads part of it

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Counts while true ([`arm`] / [`disarm`]).
static ARMED: AtomicBool = AtomicBool::new(false);
/// Whether the process's main thread is left uncounted: it is when the proof runs on another
/// thread (libtest's own), because libtest's main thread allocates when it reports a test
/// "running for over 60 seconds" (a slow, loaded machine), which is no allocation of the path
/// under proof. Every other thread (the proof's and the engine's pool) is counted.
static SKIP_MAIN: AtomicBool = AtomicBool::new(false);

/// Whether the calling thread is the process's main thread (its thread id is the process id).
fn on_main_thread() -> bool {
    // SAFETY: gettid and getpid take no arguments, touch no memory and cannot fail.
    unsafe { libc::gettid() == libc::getpid() }
}

/// Starts counting, on every thread but libtest's main one when the caller is not on it.
pub fn arm() {
    SKIP_MAIN.store(!on_main_thread(), Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
}

/// Stops counting.
pub fn disarm() {
    ARMED.store(false, Ordering::SeqCst);
}
/// `alloc` calls.
pub static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// `alloc_zeroed` calls.
pub static ZEROED: AtomicUsize = AtomicUsize::new(0);
/// `realloc` calls.
pub static REALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Bytes asked for by all three.
pub static BYTES: AtomicUsize = AtomicUsize::new(0);

/// `alloc`, `alloc_zeroed` and `realloc` calls together.
pub fn calls() -> usize {
    ALLOCS.load(Ordering::SeqCst) + ZEROED.load(Ordering::SeqCst) + REALLOCS.load(Ordering::SeqCst)
}

pub struct Counting;

fn count(calls: &AtomicUsize, bytes: usize) {
    if ARMED.load(Ordering::Relaxed) && !(SKIP_MAIN.load(Ordering::Relaxed) && on_main_thread()) {
        calls.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the counters are plain atomics and do not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(&ALLOCS, layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(&ZEROED, layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(&REALLOCS, new_size);
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
