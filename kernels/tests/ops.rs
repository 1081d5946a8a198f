//! Every `ops` kernel on every ISA this CPU runs, against the scalar reference (or f64 where the
//! reference itself is the less accurate side), on awkward sizes and unaligned weight buffers.

mod common;

use common::{encode, Rng};
use qwenrt_kernels::ops::{self, AttnHead, Matrix};
use qwenrt_kernels::{scalar, Bf16, Cpu, Dtype, Isa, WeightType, F16, F32};

const SIZES: [usize; 6] = [0, 1, 7, 63, 64, 4097];

fn simd_isas() -> Vec<Isa> {
    Isa::available()
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

fn check_matvec<W: WeightType>() {
    let mut rng = Rng(2);
    let shapes = [
        (0, 5),
        (5, 0),
        (1, 1),
        (7, 7),
        (63, 63),
        (4, 64),
        (13, 4097),
        (64, 896),
        (33, 100),
    ];
    for &(rows, cols) in &shapes {
        let wf = rng.vec(rows * cols);
        let x = rng.vec(cols);
        for offset in [0, 1] {
            let wb = encode(&wf, W::DTYPE, offset);
            let w = &wb[offset..];
            let mut r = vec![0.0; rows];
            scalar::matvec::<W>(w, &x, &mut r);
            let mut scratch = vec![f32::NAN; ops::matvec_scratch_len(cols)];
            for isa in simd_isas() {
                // Every way to prepare the input: the fastest (bf16 hi/lo split on AVX512-BF16),
                // the exact one (even/odd columns for bf16 on AVX-512), and none.
                for prepared in ["fastest", "exact", "plain"] {
                    let mut y = vec![f32::NAN; rows];
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
                            .map(|c| (W::get(w, i * cols + c) * x[c]).abs())
                            .sum();
                        let what = format!(
                            "matvec<{}> {isa} prepared={prepared} {rows}x{cols} off={offset} row {i}",
                            W::DTYPE
                        );
                        close(y[i], r[i], mag, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn matvec_f32() {
    check_matvec::<F32>();
}
#[test]
fn matvec_f16() {
    check_matvec::<F16>();
}
#[test]
fn matvec_bf16() {
    check_matvec::<Bf16>();
}

fn check_matmul<W: WeightType>() {
    let mut rng = Rng(3);
    // (rows, k, n)
    let shapes = [
        (0, 4, 3),
        (3, 0, 2),
        (5, 3, 0),
        (1, 1, 1),
        (7, 7, 7),
        (63, 63, 7),
        (33, 130, 13),
        (17, 300, 6),
        (64, 64, 2),
        (40, 257, 5),
    ];
    for &(rows, k, n) in &shapes {
        let wf = rng.vec(rows * k);
        let x = rng.vec(n * k);
        for offset in [0, 1] {
            let wb = encode(&wf, W::DTYPE, offset);
            let w = &wb[offset..];
            let mut r = vec![0.0; n * rows];
            scalar::matmul::<W>(w, k, &x, &mut r);
            for isa in simd_isas() {
                let mut y = vec![f32::NAN; n * rows];
                if k == 0 && n * rows == 0 {
                    continue;
                }
                let mut pack = vec![f32::NAN; ops::matmul_scratch_len()];
                ops::matmul::<W>(isa, Matrix { bytes: w, cols: k }, &x, &mut pack, &mut y);
                for t in 0..n {
                    for j in 0..rows {
                        let mag: f32 = (0..k)
                            .map(|c| (W::get(w, j * k + c) * x[t * k + c]).abs())
                            .sum();
                        let what = format!(
                            "matmul<{}> {isa} rows={rows} k={k} n={n} off={offset} [{t},{j}]",
                            W::DTYPE
                        );
                        close(y[t * rows + j], r[t * rows + j], mag, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_f32() {
    check_matmul::<F32>();
}
#[test]
fn matmul_f16() {
    check_matmul::<F16>();
}
#[test]
fn matmul_bf16() {
    check_matmul::<Bf16>();
}

#[test]
fn rmsnorm_all() {
    let mut rng = Rng(4);
    for &n in &SIZES {
        let x = rng.vec(n);
        let wf = rng.vec(n);
        for dt in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let wb = encode(&wf, dt, 1);
            let w = &wb[1..];
            let mut r = vec![0.0; n];
            scalar::rmsnorm(&x, w, dt, 1e-6, &mut r);
            for isa in simd_isas() {
                let mut o = vec![f32::NAN; n];
                ops::rmsnorm(isa, &x, w, dt, 1e-6, &mut o);
                for i in 0..n {
                    close(
                        o[i],
                        r[i],
                        r[i].abs(),
                        &format!("rmsnorm {isa} {dt} n={n} i={i}"),
                    );
                }
            }
        }
    }
}

#[test]
fn add_bias_add() {
    let mut rng = Rng(5);
    for &n in &SIZES {
        let y0 = rng.vec(n);
        let bf = rng.vec(n);
        for dt in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let bb = encode(&bf, dt, 1);
            let mut r = y0.clone();
            scalar::add_bias(&mut r, &bb[1..], dt);
            for isa in simd_isas() {
                let mut y = y0.clone();
                ops::add_bias(isa, &mut y, &bb[1..], dt);
                assert_eq!(y, r, "add_bias {isa} {dt} n={n}");
            }
        }
        let mut r = y0.clone();
        scalar::add(&mut r, &bf);
        for isa in simd_isas() {
            let mut y = y0.clone();
            ops::add(isa, &mut y, &bf);
            assert_eq!(y, r, "add {isa} n={n}");
        }
    }
}

#[test]
fn silu_mul_all() {
    let mut rng = Rng(6);
    for &n in &SIZES {
        let g0: Vec<f32> = rng.vec(n).iter().map(|v| v * 20.0).collect();
        let u = rng.vec(n);
        let mut r = g0.clone();
        scalar::silu_mul(&mut r, &u);
        for isa in simd_isas() {
            let mut g = g0.clone();
            ops::silu_mul(isa, &mut g, &u);
            for i in 0..n {
                assert!(
                    ulps(g[i], r[i]) <= 4 || (g[i] - r[i]).abs() < 1e-30,
                    "silu {isa} {} {}",
                    g[i],
                    r[i]
                );
            }
        }
    }
}

#[test]
fn rope_all() {
    let mut rng = Rng(8);
    for &hd in &[2usize, 14, 64, 128, 7] {
        for heads in [0, 1, 3] {
            let x0 = rng.vec(hd * heads + 1);
            let cos = rng.vec(hd / 2);
            let sin = rng.vec(hd / 2);
            let mut r = x0.clone();
            scalar::rope(&mut r, hd, &cos, &sin);
            for isa in simd_isas() {
                let mut x = x0.clone();
                ops::rope(isa, &mut x, hd, &cos, &sin);
                assert_eq!(x, r, "rope {isa} hd={hd} heads={heads}");
            }
        }
    }
}

#[test]
fn attention_all() {
    let mut rng = Rng(9);
    for &hd in &[1usize, 7, 64, 80, 128] {
        for &len in &[0usize, 1, 7, 63, 300] {
            let q: Vec<f32> = rng.vec(hd).iter().map(|v| v * 3.0).collect();
            let keys = rng.vec(len * hd);
            let values = rng.vec(len * hd);
            let scale = 1.0 / (hd as f32).sqrt();
            let mut sr = vec![0.0; len + 3];
            let mut r = vec![0.0; hd];
            let head = AttnHead::<F32> {
                q: &q,
                keys: &keys,
                values: &values,
                scale,
            };
            scalar::attention(head, &mut sr, &mut r);
            for isa in simd_isas() {
                let mut s = vec![0.0; len + 3];
                let mut o = vec![f32::NAN; hd];
                ops::attention(isa, head, &mut s, &mut o);
                for i in 0..hd {
                    close(
                        o[i],
                        r[i],
                        1.0,
                        &format!("attention {isa} hd={hd} len={len} i={i}"),
                    );
                }
            }
        }
    }
}

#[test]
fn isa_listing() {
    let v = Isa::available();
    assert_eq!(v[0], Isa::Scalar);
    assert!(v.iter().all(|i| i.is_supported()));
    eprintln!("available ISAs: {v:?}");
}

#[test]
fn matmul_bf16dot_rounds_activations_only() {
    let mut rng = Rng(14);
    for &(rows, k, n) in &[
        (0usize, 4usize, 3usize),
        (1, 1, 1),
        (7, 7, 7),
        (33, 257, 13),
        (40, 513, 6),
        (65, 96, 3),
        (5, 31, 2),
        // several depth blocks and panels, a partial last panel, a partial last token tile
        (130, 1101, 9),
    ] {
        let wf = rng.vec(rows * k);
        let x = rng.vec(n * k);
        let wb = encode(&wf, Dtype::BF16, 1);
        let w = &wb[1..];
        let mut r = vec![0.0; n * rows];
        scalar::matmul::<Bf16>(w, k, &x, &mut r);
        // Exact reference for the documented numerics: activations rounded to bf16.
        let xr: Vec<f32> = x
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        let mut rr = vec![0.0; n * rows];
        scalar::matmul::<Bf16>(w, k, &xr, &mut rr);
        let mut s = vec![f32::NAN; ops::matmul_bf16dot_scratch_len(n, k)];
        for isa in simd_isas() {
            let mut y = vec![f32::NAN; n * rows];
            ops::matmul_bf16dot(isa, Matrix { bytes: w, cols: k }, &x, &mut s, &mut y);
            for t in 0..n {
                for j in 0..rows {
                    let mag: f32 = (0..k)
                        .map(|c| (Bf16::get(w, j * k + c) * x[t * k + c]).abs())
                        .sum();
                    let i = t * rows + j;
                    let what = format!("matmul_bf16dot {isa} {rows} {k} {n} [{t},{j}]");
                    if Cpu::from(isa).bf16() && n >= 3 {
                        // Against bf16-rounded activations: only summation-order differences.
                        close(y[i], rr[i], mag, &what);
                    } else {
                        // Elsewhere it is exactly the f32 path.
                        close(y[i], r[i], mag, &what);
                    }
                    // Against the f32 reference: within the bf16 rounding of x (2^-9 relative).
                    assert!(
                        (y[i] - r[i]).abs() <= 2f32.powi(-8) * mag + 1e-6,
                        "{what}: {} vs {}",
                        y[i],
                        r[i]
                    );
                }
            }
        }
    }
}
