//! Attention over a 16-bit KV cache (bf16, f16) against the scalar reference, on every ISA.
//!
//! The scalar reference defines the semantics: every cached element widened to f32 exactly,
//! then the f32 path's math. So besides the tolerance against the scalar reference (the SIMD
//! bodies sum in another order), each SIMD body on a 16-bit cache must give bit for bit what
//! the same body gives on the f32 cache holding the widened values: the widening happens in
//! registers as the elements are loaded and nothing else changes.

mod common;

use common::{attention_ref, Rng};
use qwenrt_kernels::ops::{self, AttnHead};
use qwenrt_kernels::par::{self, Attention, KvLayout};
use qwenrt_kernels::{scalar, Bf16, Isa, KvType, ThreadPool, F16, F32};

/// `x` rounded to `T`, and the rounded values widened back to f32.
fn rounded<T: KvType>(x: &[f32]) -> (Vec<T::Elem>, Vec<f32>) {
    let mut e = vec![T::Elem::default(); x.len()];
    T::store_row(x, &mut e);
    let wide = e.iter().map(|&v| T::to_f32(v)).collect();
    (e, wide)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The single-head kernel on a `T` cache: against the scalar reference on `T` within the f32
/// path's tolerance, and bit-identical to the same ISA's body on the widened f32 cache.
fn check_ops_attention<T: KvType>() {
    let mut rng = Rng(21);
    for &hd in &[1usize, 7, 16, 40, 64, 65, 80, 128] {
        for &len in &[0usize, 1, 7, 63, 65, 300] {
            let q: Vec<f32> = rng.vec(hd).iter().map(|v| v * 3.0).collect();
            let (keys, keys_wide) = rounded::<T>(&rng.vec(len * hd));
            let (values, values_wide) = rounded::<T>(&rng.vec(len * hd));
            let scale = 1.0 / (hd as f32).sqrt();
            let mut sr = vec![0.0; len + 3];
            let mut r = vec![0.0; hd];
            let head = AttnHead::<T> {
                q: &q,
                keys: &keys,
                values: &values,
                scale,
            };
            let head_wide = AttnHead::<F32> {
                q: &q,
                keys: &keys_wide,
                values: &values_wide,
                scale,
            };
            scalar::attention(head, &mut sr, &mut r);
            let mut r_wide = vec![0.0; hd];
            scalar::attention(head_wide, &mut sr, &mut r_wide);
            assert_eq!(
                bits(&r),
                bits(&r_wide),
                "scalar {:?} hd={hd} len={len}: not the f32 math on the widened cache",
                T::DTYPE
            );
            for isa in Isa::available() {
                let what = format!("attention<{:?}> {isa} hd={hd} len={len}", T::DTYPE);
                let mut s = vec![0.0; len + 3];
                let mut o = vec![f32::NAN; hd];
                ops::attention(isa, head, &mut s, &mut o);
                for (i, (&a, &b)) in o.iter().zip(&r).enumerate() {
                    // as the f32 kernels are held to the scalar reference (tests/ops.rs)
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{what} [{i}]: {a} vs {b}"
                    );
                }
                let mut o_wide = vec![f32::NAN; hd];
                ops::attention(isa, head_wide, &mut s, &mut o_wide);
                assert_eq!(
                    bits(&o),
                    bits(&o_wide),
                    "{what}: not the f32 body's numbers"
                );
            }
        }
    }
}

#[test]
fn ops_attention_bf16_vs_scalar() {
    check_ops_attention::<Bf16>();
}

#[test]
fn ops_attention_f16_vs_scalar() {
    check_ops_attention::<F16>();
}

type AttnFn<'a, T> = fn(&Attention<'a, T>, &ThreadPool, Isa, &mut [f32], &mut [f32]);
/// A `par` attention path on a `T` cache, named, with the same path on an f32 cache.
type AttnPair<'a, T> = (&'static str, AttnFn<'a, T>, AttnFn<'a, F32>);

/// The pool-split attention (dispatching, tiled, per-row) on a `T` cache against the scalar
/// reference on awkward shapes: head dims that are not a multiple of a vector or the register
/// blocks, GQA ratios 7, 1, 8 and 3, 1..65 new positions after 0, 5 or 60 cached ones (tiles
/// that straddle tokens and kv heads, partial key blocks), 1..3 threads. The tolerance is the
/// f32 path's (tests/par.rs: online softmax reorders the sums); against the same function on
/// the widened f32 cache, bit equality.
fn check_par_attention<T: KvType>() {
    let mut rng = Rng(22);
    let pools: Vec<ThreadPool> = (1..=3).map(|nt| ThreadPool::new(nt).unwrap()).collect();
    for &hd in &[64usize, 40, 17] {
        for &(n_heads, n_kv_heads) in &[(14usize, 2usize), (4, 4), (8, 1), (6, 2)] {
            for &pos0 in &[0usize, 5, 60] {
                for &n in &[1usize, 7, 63, 65] {
                    let cap = pos0 + n + 3;
                    let layout = KvLayout {
                        n_heads,
                        n_kv_heads,
                        head_dim: hd,
                        cap,
                    };
                    let kvlen = n_kv_heads * cap * hd;
                    let (k, k_wide) = rounded::<T>(&rng.vec(kvlen));
                    let (v, v_wide) = rounded::<T>(&rng.vec(kvlen));
                    let q: Vec<f32> = rng.vec(n * n_heads * hd).iter().map(|x| 3.0 * x).collect();
                    let r = attention_ref::<T>(layout, pos0, &q, &k, &v);
                    for isa in Isa::available() {
                        for pool in &pools {
                            let nt = pool.n_threads();
                            let mut scores = vec![0.0; par::scores_len(nt, n_heads, cap)];
                            let fns: [AttnPair<'_, T>; 3] = [
                                ("attention", Attention::run, Attention::run),
                                ("tiled", Attention::run_tiled, Attention::run_tiled),
                                ("rows", Attention::run_rows, Attention::run_rows),
                            ];
                            let attn = Attention::<T> {
                                layout,
                                pos0,
                                q: &q,
                                k: &k,
                                v: &v,
                            };
                            let attn_wide = Attention::<F32> {
                                layout,
                                pos0,
                                q: &q,
                                k: &k_wide,
                                v: &v_wide,
                            };
                            for (name, f, f_wide) in fns {
                                let what = format!(
                                    "{name}<{:?}> {isa} nt={nt} hd={hd} heads={n_heads}/{n_kv_heads} \
                                     pos0={pos0} n={n}",
                                    T::DTYPE
                                );
                                let mut out = vec![f32::NAN; r.len()];
                                f(&attn, pool, isa, &mut scores, &mut out);
                                for (i, (&a, &b)) in out.iter().zip(&r).enumerate() {
                                    assert!(
                                        (a - b).abs() <= 1e-5 * b.abs().max(1.0) + 1e-6,
                                        "{what} [{i}]: {a} vs {b}"
                                    );
                                }
                                // one thread: the work split is the same, so the same numbers
                                if nt == 1 {
                                    let mut wide = vec![f32::NAN; r.len()];
                                    f_wide(&attn_wide, pool, isa, &mut scores, &mut wide);
                                    assert_eq!(
                                        bits(&out),
                                        bits(&wide),
                                        "{what}: not the f32 numbers"
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

#[test]
fn par_attention_bf16_vs_scalar() {
    check_par_attention::<Bf16>();
}

#[test]
fn par_attention_f16_vs_scalar() {
    check_par_attention::<F16>();
}
