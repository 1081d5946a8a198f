//! The pool-split kernels against the single-threaded `ops` kernels, on 1..4 threads.

mod common;

use common::{attention_ref, encode, Rng};
use qwenrt_kernels::ops::{self, Matrix};
use qwenrt_kernels::par::{self, Attention, KvLayout};
use qwenrt_kernels::{scalar, Bf16, Isa, ThreadPool, WeightType, F16, F32};

fn bytes<W: WeightType>(v: &[f32], offset: usize) -> Vec<u8> {
    encode(v, W::DTYPE, offset)
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what} [{i}]: {x} vs {y}"
        );
    }
}

fn check_par_matvec<W: WeightType>() {
    let mut rng = Rng(11);
    for nt in 1..=4 {
        let pool = ThreadPool::new(nt).unwrap();
        for &(rows, cols) in &[
            (0usize, 10usize),
            (1, 1),
            (7, 63),
            (200, 130),
            (513, 257),
            (40, 4097),
        ] {
            let wb = bytes::<W>(&rng.vec(rows * cols), 1);
            let w = &wb[1..];
            let x = rng.vec(cols);
            let mut s = vec![f32::NAN; ops::matvec_scratch_len(cols)];
            for isa in Isa::available() {
                let mut r = vec![0.0; rows];
                ops::matvec::<W>(isa, w, &x, &mut s, &mut r);
                let mut y = vec![f32::NAN; rows];
                par::matvec::<W>(&pool, isa, w, &x, &mut s, &mut y);
                // Same kernel on the same rows: bit-identical.
                assert_eq!(y, r, "par::matvec {isa} nt={nt} {rows}x{cols}");
            }
        }
        // Fused variants.
        let cols = 300;
        let x = rng.vec(cols);
        let (wa, wb_, wc) = (
            bytes::<W>(&rng.vec(100 * cols), 0),
            bytes::<W>(&rng.vec(37 * cols), 1),
            bytes::<W>(&rng.vec(250 * cols), 0),
        );
        let isa = Isa::detect();
        let mut s = vec![f32::NAN; ops::matvec_scratch_len(cols)];
        let (mut ra, mut rb, mut rc) = (vec![0.0; 100], vec![0.0; 37], vec![0.0; 250]);
        ops::matvec::<W>(isa, &wa, &x, &mut s, &mut ra);
        ops::matvec::<W>(isa, &wb_[1..], &x, &mut s, &mut rb);
        ops::matvec::<W>(isa, &wc, &x, &mut s, &mut rc);
        let (mut ya, mut yb, mut yc) = (vec![0.0; 100], vec![0.0; 37], vec![0.0; 250]);
        let ws = [&wa[..], &wb_[1..], &wc];
        par::matvec_n::<W, 3>(&pool, isa, ws, &x, &mut s, [&mut ya, &mut yb, &mut yc]);
        assert_eq!((&ya, &yb, &yc), (&ra, &rb, &rc), "matvec_n<3> nt={nt}");
        let (mut ya, mut yc) = (vec![0.0; 100], vec![0.0; 250]);
        par::matvec_n::<W, 2>(&pool, isa, [&wa, &wc], &x, &mut s, [&mut ya, &mut yc]);
        assert_eq!((&ya, &yc), (&ra, &rc), "matvec_n<2> nt={nt}");
    }
}

#[test]
fn par_matvec_all() {
    check_par_matvec::<F32>();
    check_par_matvec::<F16>();
    check_par_matvec::<Bf16>();
}

#[test]
fn par_matmul_all() {
    let mut rng = Rng(12);
    for nt in 1..=4 {
        let pool = ThreadPool::new(nt).unwrap();
        for &(rows, k, n) in &[
            (0usize, 3usize, 2usize),
            (5, 0, 3),
            (1, 1, 1),
            (70, 33, 9),
            (130, 200, 13),
            (65, 129, 2),
            (300, 1000, 20),
        ] {
            let wf = rng.vec(rows * k);
            let wb = bytes::<Bf16>(&wf, 1);
            let w = &wb[1..];
            let x = rng.vec(n * k);
            let mut r = vec![0.0; n * rows];
            scalar::matmul::<Bf16>(w, k, &x, &mut r);
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; n * rows];
                let mut pack = vec![f32::NAN; par::matmul_scratch_len(nt)];
                par::matmul::<Bf16>(
                    &pool,
                    isa,
                    Matrix { bytes: w, cols: k },
                    &x,
                    &mut pack,
                    &mut y,
                );
                close(
                    &y,
                    &r,
                    1e-5 * (k as f32).sqrt().max(1.0),
                    &format!("par::matmul {isa} nt={nt} {rows} {k} {n}"),
                );
            }
            // The bf16-activation matmul: each thread's column block through the same kernel
            // over the same depth blocks, so bit-identical to the one-thread call.
            let mut s = vec![f32::NAN; ops::matmul_bf16dot_scratch_len(n, k)];
            for isa in Isa::available() {
                let mut r = vec![f32::NAN; n * rows];
                ops::matmul_bf16dot(isa, Matrix { bytes: w, cols: k }, &x, &mut s, &mut r);
                let mut y = vec![f32::NAN; n * rows];
                let mut ps = vec![f32::NAN; par::matmul_bf16dot_scratch_len(nt, n, k)];
                par::matmul_bf16dot(
                    &pool,
                    isa,
                    Matrix { bytes: w, cols: k },
                    &x,
                    &mut ps,
                    &mut y,
                );
                let what = format!("par::matmul_bf16dot {isa} nt={nt} {rows} {k} {n}");
                assert!(
                    y.iter().zip(&r).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn par_attention_gqa_causal() {
    let mut rng = Rng(13);
    let layout = KvLayout {
        n_heads: 6,
        n_kv_heads: 2,
        head_dim: 24,
        cap: 40,
    };
    let kvlen = layout.n_kv_heads * layout.cap * layout.head_dim;
    let k = rng.vec(kvlen);
    let v = rng.vec(kvlen);
    let qdim = layout.n_heads * layout.head_dim;
    for nt in 1..=4 {
        let pool = ThreadPool::new(nt).unwrap();
        for &(pos0, n) in &[(0usize, 1usize), (0, 17), (5, 1), (10, 30), (39, 1)] {
            let q = rng.vec(n * qdim);
            let r = attention_ref::<F32>(layout, pos0, &q, &k, &v);
            for isa in Isa::available() {
                let mut scores = vec![0.0; par::scores_len(nt, layout.n_heads, layout.cap)];
                let mut out = vec![f32::NAN; n * qdim];
                let attn = Attention::<F32> {
                    layout,
                    pos0,
                    q: &q,
                    k: &k,
                    v: &v,
                };
                attn.run(&pool, isa, &mut scores, &mut out);
                close(
                    &out,
                    &r,
                    1e-5,
                    &format!("par::Attention::run {isa} nt={nt} pos0={pos0} n={n}"),
                );
            }
        }
    }
}

/// The blocked (tiled, online-softmax) attention and the dispatching `Attention::run` against the
/// scalar reference on awkward shapes: tiles that straddle tokens and kv heads, partial key
/// blocks, head dims that are not a multiple of the register blocks, cap exactly pos0 + n.
/// Online softmax reorders the sums, hence a tolerance rather than bit equality:
/// `|a - b| <= 1e-5 * max(1, |ref|) + 1e-6`.
#[test]
fn par_attention_tiled_vs_scalar() {
    let mut rng = Rng(14);
    let pools: Vec<ThreadPool> = (1..=3).map(|nt| ThreadPool::new(nt).unwrap()).collect();
    for &hd in &[64usize, 40, 16] {
        for &(n_heads, n_kv_heads) in &[(14usize, 2usize), (4, 4), (8, 1)] {
            for &pos0 in &[0usize, 5, 1000] {
                for &n in &[1usize, 7, 63, 130] {
                    if hd != 64 && pos0 == 1000 && n == 130 {
                        continue; // the largest shape once per head layout is enough
                    }
                    let cap = pos0 + n;
                    let layout = KvLayout {
                        n_heads,
                        n_kv_heads,
                        head_dim: hd,
                        cap,
                    };
                    let kvlen = n_kv_heads * cap * hd;
                    let k = rng.vec(kvlen);
                    let v = rng.vec(kvlen);
                    // Larger queries make the softmax peakier (more rescaling in the online max).
                    let q: Vec<f32> = rng.vec(n * n_heads * hd).iter().map(|x| 3.0 * x).collect();
                    let r = attention_ref::<F32>(layout, pos0, &q, &k, &v);
                    for isa in Isa::available() {
                        if isa == Isa::Scalar && pos0 * n > 5000 {
                            continue; // the scalar ISA runs the (unchanged) per-row kernel: slow
                        }
                        for pool in &pools {
                            let nt = pool.n_threads();
                            let mut scores = vec![0.0; par::scores_len(nt, n_heads, cap)];
                            let attn = Attention::<F32> {
                                layout,
                                pos0,
                                q: &q,
                                k: &k,
                                v: &v,
                            };
                            for (name, f) in [
                                ("attention", Attention::run as AttnFn<'_>),
                                ("attention_tiled", Attention::run_tiled),
                            ] {
                                let mut out = vec![f32::NAN; r.len()];
                                f(&attn, pool, isa, &mut scores, &mut out);
                                for (i, (&a, &b)) in out.iter().zip(&r).enumerate() {
                                    assert!(
                                        (a - b).abs() <= 1e-5 * b.abs().max(1.0) + 1e-6,
                                        "{name} {isa} nt={nt} hd={hd} heads={n_heads}/{n_kv_heads} \
                                         pos0={pos0} n={n} [{i}]: {a} vs {b}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

type AttnFn<'a> = fn(&Attention<'a, F32>, &ThreadPool, Isa, &mut [f32], &mut [f32]);
