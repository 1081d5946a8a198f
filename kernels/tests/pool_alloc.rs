//! Dispatching on the pool, and the `par` kernels, allocate nothing once warmed up: counted by a
//! global allocator wrapper. Its own test binary, so no other test's allocations interfere (the
//! tests run one after the other inside one `#[test]`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use qwenrt_kernels::ops::{self, Matrix};
use qwenrt_kernels::par::{self, Attention, KvLayout};
use qwenrt_kernels::{Bf16, Isa, ThreadPool, F16, F32};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.load(Ordering::SeqCst)
}

#[test]
fn dispatch_and_par_kernels_allocate_nothing() {
    for nt in [2usize, 4] {
        let pool = ThreadPool::new(nt).unwrap();
        let hits = AtomicUsize::new(0);
        let f = |_tid: usize| {
            hits.fetch_add(1, Ordering::Relaxed);
        };
        for _ in 0..10 {
            pool.run(&f);
        }
        let before = allocs();
        for i in 0..1000 {
            pool.run(&f);
            if i == 500 {
                // Let the workers fall asleep once, so the park/unpark path is counted too.
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
        }
        assert_eq!(
            allocs() - before,
            0,
            "ThreadPool::run allocated ({nt} threads)"
        );
        assert_eq!(hits.load(Ordering::Relaxed), 1010 * nt);

        let (rows, cols, n) = (256usize, 320usize, 8usize);
        let w = vec![0x3fu8; rows * cols * 2 + 1];
        let x = vec![0.5f32; n * cols];
        let mut y = vec![0.0f32; n * rows];
        let layout = KvLayout {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 32,
            cap: 64,
        };
        let kv = vec![0.25f32; 2 * 64 * 32];
        // the same cache as bf16 / f16 bits (0.25 is 0x3e80 in bf16, 0x3400 in f16)
        let kv_bf16 = vec![0x3e80u16; kv.len()];
        let kv_f16 = vec![0x3400u16; kv.len()];
        let q = vec![0.5f32; 3 * 4 * 32];
        let mut out = vec![0.0f32; 3 * 4 * 32];
        let mut scores = vec![0.0f32; par::scores_len(nt, 4, 64)];
        let (mut y1, mut y2) = (vec![0.0f32; rows], vec![0.0f32; rows]);
        let mut s = vec![0.0f32; ops::matvec_scratch_len(cols)];
        let mut pack = vec![0.0f32; par::matmul_scratch_len(nt)];
        for isa in Isa::available() {
            // Warm-up, then count.
            for round in 0..2 {
                let before = allocs();
                for _ in 0..20 {
                    par::matvec::<Bf16>(&pool, isa, &w[1..], &x[..cols], &mut s, &mut y[..rows]);
                    let ws = [&w[1..], &w[1..]];
                    par::matvec_n::<Bf16, 2>(
                        &pool,
                        isa,
                        ws,
                        &x[..cols],
                        &mut s,
                        [&mut y1, &mut y2],
                    );
                    let wm = Matrix::new(&w[1..], cols);
                    par::matmul::<Bf16>(&pool, isa, wm, &x, &mut pack, &mut y);
                    let attn = Attention::<F32> {
                        layout,
                        pos0: 5,
                        q: &q,
                        k: &kv,
                        v: &kv,
                    };
                    attn.run(&pool, isa, &mut scores, &mut out);
                    // Both attention paths explicitly (`run` picks one by shape).
                    attn.run_tiled(&pool, isa, &mut scores, &mut out);
                    attn.run_rows(&pool, isa, &mut scores, &mut out);
                    // Decode (one token) on the tiled path.
                    let decode = Attention {
                        pos0: 40,
                        q: &q[..4 * 32],
                        ..attn
                    };
                    decode.run_tiled(&pool, isa, &mut scores, &mut out[..4 * 32]);
                    // The 16-bit caches, both paths.
                    let bf16 = Attention::<Bf16> {
                        layout,
                        pos0: 5,
                        q: &q,
                        k: &kv_bf16,
                        v: &kv_bf16,
                    };
                    let f16 = Attention::<F16> {
                        layout,
                        pos0: 5,
                        q: &q,
                        k: &kv_f16,
                        v: &kv_f16,
                    };
                    bf16.run_tiled(&pool, isa, &mut scores, &mut out);
                    f16.run_tiled(&pool, isa, &mut scores, &mut out);
                    bf16.run_rows(&pool, isa, &mut scores, &mut out);
                    f16.run_rows(&pool, isa, &mut scores, &mut out);
                }
                if round == 1 {
                    assert_eq!(
                        allocs() - before,
                        0,
                        "par kernels allocated ({isa}, {nt} threads)"
                    );
                }
            }
        }
    }
}
