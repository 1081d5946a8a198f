//! The SIMD kernels on buffers that END where their allocation ends, with lengths that leave a
//! masked tail (and, for the kernels that process fixed groups of vectors, whole vectors past
//! the end with all-zero masks). Every input and output is a boxed slice of exactly its length,
//! or the tail sub-slice of one (weights at offset 1, unaligned), so an address formed past the
//! end with `add` (undefined behaviour), or an access past it, has nothing behind it. Results
//! are compared with the scalar reference at the tolerances of `tests/ops.rs`.

mod common;

use common::{encode, Rng};
use qwenrt_kernels::ops::{self, AttnHead, Matrix};
use qwenrt_kernels::{scalar, Bf16, Cpu, Dtype, Isa, KvType, WeightType, F16, F32};

/// Lengths around the 8-, 16-, 32- and 64-float vector groups of the AVX2 and AVX-512 bodies.
const LENS: [usize; 14] = [1, 3, 7, 8, 9, 15, 17, 31, 33, 47, 63, 65, 80, 100];

/// The SIMD ISAs this CPU runs; prints a line for each one it lacks.
fn simd_isas() -> Vec<Isa> {
    let mut v = Vec::new();
    for isa in [Isa::Avx2, Isa::Avx512] {
        if isa.is_supported() {
            v.push(isa);
        } else {
            println!("skipped: CPU lacks {isa}");
        }
    }
    if Isa::Avx512.is_supported() && !Cpu::from(Isa::Avx512).bf16() {
        println!("skipped: CPU lacks AVX512-BF16 (the avx512 bf16 kernels widen instead)");
    }
    v
}

/// `v` in an allocation of exactly its length.
fn exact(v: &[f32]) -> Box<[f32]> {
    v.to_vec().into_boxed_slice()
}

/// `n` floats of `fill` in an allocation of exactly that length.
fn filled(n: usize, fill: f32) -> Box<[f32]> {
    vec![fill; n].into_boxed_slice()
}

/// `v` as `dtype` bytes after `offset` filler bytes, in an allocation that ends with the last
/// weight byte: `&result[offset..]` is the weights.
fn weights(v: &[f32], dtype: Dtype, offset: usize) -> Box<[u8]> {
    encode(v, dtype, offset).into_boxed_slice()
}

fn close(a: f32, b: f32, mag: f32, what: &str) {
    assert!(
        (a - b).abs() <= 1e-5 * mag + 1e-6,
        "{what}: {a} vs {b} (magnitude {mag})"
    );
}

fn ulps(a: f32, b: f32) -> u32 {
    if a == b || (a.is_nan() && b.is_nan()) {
        return 0;
    }
    if a.is_sign_negative() != b.is_sign_negative() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn elementwise_at_end_of_allocation() {
    let isas = simd_isas();
    let mut rng = Rng(101);
    for &n in &LENS {
        let a = rng.vec(n);
        let b = rng.vec(n);
        let (ea, eb) = (exact(&a), exact(&b));
        for &isa in &isas {
            let mut y = exact(&a);
            let mut ry = a.clone();
            scalar::add(&mut ry, &b);
            ops::add(isa, &mut y, &eb);
            assert_eq!(&y[..], &ry[..], "add {isa} n={n}");

            let g0: Vec<f32> = a.iter().map(|v| v * 20.0).collect();
            let mut rg = g0.clone();
            scalar::silu_mul(&mut rg, &b);
            let mut g = exact(&g0);
            ops::silu_mul(isa, &mut g, &eb);
            for i in 0..n {
                assert!(
                    ulps(g[i], rg[i]) <= 4 || (g[i] - rg[i]).abs() < 1e-30,
                    "silu {isa} n={n} i={i}: {} vs {}",
                    g[i],
                    rg[i]
                );
            }

            for dt in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                for off in [0, 1] {
                    let wb = weights(&b, dt, off);
                    let w = &wb[off..];
                    let mut rr = vec![0.0; n];
                    scalar::rmsnorm(&a, w, dt, 1e-6, &mut rr);
                    let mut o = filled(n, f32::NAN);
                    ops::rmsnorm(isa, &ea, w, dt, 1e-6, &mut o);
                    for i in 0..n {
                        let what = format!("rmsnorm {isa} {dt} off={off} n={n} i={i}");
                        close(o[i], rr[i], rr[i].abs(), &what);
                    }
                    let mut rb = a.clone();
                    scalar::add_bias(&mut rb, w, dt);
                    let mut yb = exact(&a);
                    ops::add_bias(isa, &mut yb, w, dt);
                    assert_eq!(&yb[..], &rb[..], "add_bias {isa} {dt} off={off} n={n}");
                }
            }
        }
    }
}

#[test]
fn rope_at_end_of_allocation() {
    let isas = simd_isas();
    let mut rng = Rng(102);
    for &hd in &[2usize, 6, 14, 18, 34, 66, 80, 130] {
        for heads in [1, 3] {
            let x0 = rng.vec(hd * heads);
            let (cos, sin) = (rng.vec(hd / 2), rng.vec(hd / 2));
            let (ec, es) = (exact(&cos), exact(&sin));
            let mut r = x0.clone();
            scalar::rope(&mut r, hd, &cos, &sin);
            for &isa in &isas {
                let mut x = exact(&x0);
                ops::rope(isa, &mut x, hd, &ec, &es);
                assert_eq!(&x[..], &r[..], "rope {isa} hd={hd} heads={heads}");
            }
        }
    }
}

/// `weighted_sum` works on groups of four vectors (64 floats on AVX-512, 32 on AVX2): head dims
/// that are not multiples of those leave whole vectors past the end of `values` and `out`.
#[test]
fn attention_at_end_of_allocation() {
    check_attention_at_end::<F32>();
    // 16-bit caches: AVX-512 tails are masked 16-bit loads, AVX2 ones copy just the tail
    check_attention_at_end::<Bf16>();
    check_attention_at_end::<F16>();
}

fn check_attention_at_end<T: KvType>() {
    let isas = simd_isas();
    let mut rng = Rng(103);
    for &hd in &[1usize, 7, 8, 16, 17, 24, 33, 40, 49, 64, 65, 80, 100] {
        for &len in &[1usize, 2, 5, 17] {
            let q: Vec<f32> = rng.vec(hd).iter().map(|v| v * 3.0).collect();
            let round = |x: Vec<f32>| {
                let mut e = vec![T::Elem::default(); x.len()];
                T::store_row(&x, &mut e);
                e.into_boxed_slice()
            };
            let keys = round(rng.vec(len * hd));
            let values = round(rng.vec(len * hd));
            let scale = 1.0 / (hd as f32).sqrt();
            let mut sr = vec![0.0; len];
            let mut r = vec![0.0; hd];
            let head = AttnHead::<T> {
                q: &q,
                keys: &keys,
                values: &values,
                scale,
            };
            scalar::attention(head, &mut sr, &mut r);
            let eq = exact(&q);
            for &isa in &isas {
                let mut s = filled(len, 0.0);
                let mut o = filled(hd, f32::NAN);
                ops::attention(isa, AttnHead { q: &eq, ..head }, &mut s, &mut o);
                for i in 0..hd {
                    let what = format!("attention<{:?}> {isa} hd={hd} len={len} i={i}", T::DTYPE);
                    close(o[i], r[i], 1.0, &what);
                }
            }
        }
    }
}

/// Every way to prepare a matvec's input (the bf16 hi/lo split reads `x` in pairs of vectors,
/// the second one past the end when `cols % 32 <= 16`).
fn check_matvec<W: WeightType>(isas: &[Isa]) {
    let mut rng = Rng(104);
    for &cols in &[1usize, 7, 15, 16, 17, 31, 33, 48, 50, 100, 129] {
        for rows in [1usize, 3] {
            let wf = rng.vec(rows * cols);
            let x0 = rng.vec(cols);
            let x = exact(&x0);
            for off in [0, 1] {
                let wb = weights(&wf, W::DTYPE, off);
                let w = &wb[off..];
                let mut r = vec![0.0; rows];
                scalar::matvec::<W>(w, &x0, &mut r);
                for &isa in isas {
                    for prepared in ["fastest", "exact", "plain"] {
                        let mut scratch = filled(ops::matvec_scratch_len(cols), f32::NAN);
                        let mut y = filled(rows, f32::NAN);
                        match prepared {
                            "fastest" => ops::matvec::<W>(isa, w, &x, &mut scratch, &mut y),
                            "exact" => {
                                let xp = ops::MatvecX::new::<W>(
                                    Cpu::from(isa).without_bf16(),
                                    &x,
                                    &mut scratch,
                                );
                                ops::matvec_x::<W>(isa, w, &xp, &mut y)
                            }
                            _ => ops::matvec_x::<W>(isa, w, &ops::MatvecX::plain(&x), &mut y),
                        }
                        for i in 0..rows {
                            let mag: f32 = (0..cols)
                                .map(|c| (W::get(w, i * cols + c) * x0[c]).abs())
                                .sum();
                            let what = format!(
                                "matvec<{}> {isa} {prepared} {rows}x{cols} off={off} row {i}",
                                W::DTYPE
                            );
                            close(y[i], r[i], mag, &what);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matvec_at_end_of_allocation() {
    let isas = simd_isas();
    check_matvec::<F32>(&isas);
    check_matvec::<F16>(&isas);
    check_matvec::<Bf16>(&isas);
}

/// The packed matmul (at least 3 tokens) stores tiles of 16 (AVX2) or 32 (AVX-512) columns:
/// outputs narrower than a tile leave its second vector past the end of `y`'s last row.
fn check_matmul<W: WeightType>(isas: &[Isa]) {
    let mut rng = Rng(105);
    for &rows in &[1usize, 5, 8, 9, 16, 17, 33] {
        for &k in &[1usize, 7, 17, 40] {
            for &n in &[3usize, 7] {
                let wf = rng.vec(rows * k);
                let x0 = rng.vec(n * k);
                let x = exact(&x0);
                for off in [0, 1] {
                    let wb = weights(&wf, W::DTYPE, off);
                    let w = &wb[off..];
                    let mut r = vec![0.0; n * rows];
                    scalar::matmul::<W>(w, k, &x0, &mut r);
                    for &isa in isas {
                        let mut y = filled(n * rows, f32::NAN);
                        let mut pack = filled(ops::matmul_scratch_len(), f32::NAN);
                        ops::matmul::<W>(isa, Matrix { bytes: w, cols: k }, &x, &mut pack, &mut y);
                        for t in 0..n {
                            for j in 0..rows {
                                let mag: f32 = (0..k)
                                    .map(|c| (W::get(w, j * k + c) * x0[t * k + c]).abs())
                                    .sum();
                                let what = format!(
                                    "matmul<{}> {isa} {rows}x{k} n={n} off={off} [{t},{j}]",
                                    W::DTYPE
                                );
                                close(y[t * rows + j], r[t * rows + j], mag, &what);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_at_end_of_allocation() {
    let isas = simd_isas();
    check_matmul::<F32>(&isas);
    check_matmul::<F16>(&isas);
    check_matmul::<Bf16>(&isas);
}

/// `matmul_bf16dot` on AVX512-BF16 rounds each token's activations 32 at a time (two vectors,
/// the second past the end of `x` when `k % 32 <= 16`) and writes narrow tiles of `y`.
#[test]
fn matmul_bf16dot_at_end_of_allocation() {
    let isas = simd_isas();
    let mut rng = Rng(106);
    for &rows in &[1usize, 5, 17] {
        for &k in &[1usize, 7, 16, 17, 33, 48, 50] {
            for &n in &[3usize, 4] {
                let wf = rng.vec(rows * k);
                let x0 = rng.vec(n * k);
                let x = exact(&x0);
                let wb = weights(&wf, Dtype::BF16, 1);
                let w = &wb[1..];
                let mut r = vec![0.0; n * rows];
                scalar::matmul::<Bf16>(w, k, &x0, &mut r);
                let xr: Vec<f32> = x0
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect();
                let mut rr = vec![0.0; n * rows];
                scalar::matmul::<Bf16>(w, k, &xr, &mut rr);
                for &isa in &isas {
                    let mut s = filled(ops::matmul_bf16dot_scratch_len(n, k), f32::NAN);
                    let mut y = filled(n * rows, f32::NAN);
                    ops::matmul_bf16dot(isa, Matrix { bytes: w, cols: k }, &x, &mut s, &mut y);
                    let reference = if Cpu::from(isa).bf16() { &rr } else { &r };
                    for t in 0..n {
                        for j in 0..rows {
                            let mag: f32 = (0..k)
                                .map(|c| (Bf16::get(w, j * k + c) * x0[t * k + c]).abs())
                                .sum();
                            let i = t * rows + j;
                            let what = format!("matmul_bf16dot {isa} {rows}x{k} n={n} [{t},{j}]");
                            close(y[i], reference[i], mag, &what);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn stream_sum_at_end_of_allocation() {
    let isas = simd_isas();
    let mut rng = Rng(7);
    // around the 128- and 256-byte steps, unaligned (offset 1), and a long stream whose
    // prefetches run far past the end
    for n in [
        0usize, 1, 7, 8, 9, 127, 128, 129, 255, 256, 257, 1000, 70_001,
    ] {
        let bytes: Vec<u8> = rng.vec(n + 1).iter().map(|v| v.to_bits() as u8).collect();
        let b = bytes.into_boxed_slice();
        let b = &b[1..];
        let want = scalar::stream_sum(b);
        // the checksum sees every word: a flipped bit anywhere changes it
        if n >= 8 {
            let mut f = b.to_vec();
            f[n / 2] ^= 1;
            assert_ne!(scalar::stream_sum(&f), want, "n={n}: flip not seen");
        }
        for &isa in &isas {
            assert_eq!(ops::stream_sum(isa, b), want, "{isa} n={n}");
        }
    }
}
