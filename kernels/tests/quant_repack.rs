//! The repacked Q4_0 / Q5_0 / Q8_0 layout (`quant::repack`) and its AVX-512 matvec
//! (`ops::matvec_repacked_prepared`, `par::matvec_repacked_rows`), against:
//! - ggml's dequantization: a repacked row dequantizes to the same bits;
//! - the scalar reference (`quant::matvec_ref`), within what quantizing the input to 8 bits
//!   can change plus f32 rounding;
//! - an exact model (per unit, `d_w * d_x * sum(q_w * q_x)` in f64 over the integer dot),
//!   within f32 rounding only;
//! - the existing ggml-layout kernel (`ops::matvec_q_rows`) on the same inputs;
//! - themselves: alone vs grouped inputs, VNNI vs not, 1 vs 2 threads, bit for bit.
//!
//! Weights, prepared inputs and outputs end exactly at the end of their allocations.

mod common;

use common::{random_weights, random_x, Rng};
use qwenrt_kernels::ops::{self, QuantX};
use qwenrt_kernels::quant::{self, q8_len, Q8Row, QMatrix, QuantType, RepackedMatrix};
use qwenrt_kernels::{par, Cpu, Isa, ThreadPool};

const FORMATS: [QuantType; 3] = [QuantType::Q4_0, QuantType::Q5_0, QuantType::Q8_0];

/// `v` copied into a vector whose allocation ends exactly where `v` does.
fn exact<T: Clone>(v: &[T]) -> Vec<T> {
    let mut o = Vec::with_capacity(v.len());
    o.extend_from_slice(v);
    o.shrink_to_fit();
    o
}

/// Block `blk`'s signed weight quants (w = d * q) and scale, decoded from ggml's bytes.
fn block_q(qt: QuantType, b: &[u8]) -> ([i32; 32], f64) {
    let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64();
    let mut q = [0i32; 32];
    match qt {
        QuantType::Q8_0 => (0..32).for_each(|j| q[j] = b[2 + j] as i8 as i32),
        QuantType::Q4_0 => (0..16).for_each(|j| {
            q[j] = (b[2 + j] & 15) as i32 - 8;
            q[j + 16] = (b[2 + j] >> 4) as i32 - 8;
        }),
        _ => {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                q[j] = ((b[6 + j] & 15) as i32 | (((qh >> j) & 1) << 4) as i32) - 16;
                q[j + 16] = ((b[6 + j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32) - 16;
            }
        }
    }
    (q, d)
}

/// The exact model of one row: `sum_u d_w * d_x * idot_u` in f64, the sum of the terms'
/// magnitudes, and that of the terms the ggml-layout kernel adds (unsigned quants times `d_w *
/// d_x`, and the bias times the input's sum), on which its rounding error scales.
fn model_row(qt: QuantType, row: &[u8], x: &Q8Row<'_>) -> (f64, f64, f64) {
    let bias = match qt {
        QuantType::Q4_0 => 8.0,
        QuantType::Q5_0 => 16.0,
        _ => 0.0,
    };
    let (mut sum, mut mag, mut wide) = (0.0, 0.0, 0.0);
    for (b, blk) in row.chunks_exact(qt.block_bytes()).enumerate() {
        let (q, d) = block_q(qt, blk);
        let xq = x.q(b);
        let idot: i64 = (0..32).map(|j| q[j] as i64 * xq[j] as i64).sum();
        let t = d * x.d[b] as f64 * idot as f64;
        sum += t;
        mag += t.abs();
        let s: f64 = (0..32)
            .map(|j| (q[j].abs() as f64 + bias) * (xq[j] as f64).abs())
            .sum();
        wide += d.abs() * x.d[b] as f64 * s;
    }
    (sum, mag, wide)
}

fn has_avx512() -> bool {
    Isa::available().contains(&Isa::Avx512)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn repacked(qt: QuantType, w: &[u8], cols: usize) -> Vec<u8> {
    let mut dst = vec![0u8; w.len()];
    quant::repack(qt, w, cols, &mut dst);
    exact(&dst)
}

#[test]
fn repack_round_trip() {
    let mut rng = Rng(3);
    for qt in FORMATS {
        for cols in [32, 64, 96, 480, 512, 896, 4864] {
            let rows = 3;
            let w = random_weights(qt, rows, cols, &mut rng);
            let rb = quant::repacked_row_bytes(qt, cols).unwrap();
            assert_eq!(Some(rb), qt.row_bytes(cols));
            let r = repacked(qt, &w, cols);
            for (src, rep) in w.chunks_exact(rb).zip(r.chunks_exact(rb)) {
                let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
                quant::dequantize_row(qt, src, &mut a);
                quant::dequantize_repacked_row(qt, rep, cols, &mut b);
                assert_eq!(bits(&a), bits(&b), "{qt} cols={cols}");
            }
        }
    }
    assert!(quant::repacked_row_bytes(QuantType::Q4K, 256).is_none());
    assert!(quant::repacked_row_bytes(QuantType::Q8_0, 48).is_none());
    assert!(!quant::repackable(QuantType::Q6K));
}

/// One format at every shape: the reference, the model, the ggml-layout kernel, and every
/// bit-identity (grouping, VNNI, threads).
fn check_format(qt: QuantType) {
    if !has_avx512() {
        eprintln!("{qt}: no AVX-512 on this CPU");
        return;
    }
    let isa = Isa::Avx512;
    let mut rng = Rng(0x5eed ^ qt.block_bytes() as u64);
    let pools = [ThreadPool::new(1).unwrap(), ThreadPool::new(2).unwrap()];
    for cols in [32, 64, 96, 480, 512, 896, 4864] {
        for rows in [1, 3, 16, 17, 33] {
            let w = random_weights(qt, rows, cols, &mut rng);
            let rb = qt.row_bytes(cols).unwrap();
            let wr = repacked(qt, &w, cols);
            let wr = RepackedMatrix::new(qt, &wr, rows, cols);
            let n_in = 9;
            let xs: Vec<Vec<f32>> = (0..n_in).map(|_| random_x(cols, &mut rng)).collect();
            let per = ops::repacked_x_len(cols);
            // each input alone
            let mut alone = vec![0f32; n_in * rows];
            for (x, y) in xs.iter().zip(alone.chunks_exact_mut(rows)) {
                let mut s = exact(&vec![0f32; per]);
                let mut yy = exact(&vec![f32::NAN; rows]);
                let px = ops::prepare_repacked_x(isa, cols, x, &mut s);
                ops::matvec_repacked_prepared(isa, &wr, &px, &mut yy);
                y.copy_from_slice(&yy);
            }
            // the reference, the model and the ggml-layout kernel
            let mut deq = vec![0f32; cols];
            for (t, x) in xs.iter().enumerate() {
                let mut r = vec![0f32; rows];
                quant::matvec_ref(qt, &w, x, &mut r);
                let mut b = vec![0f32; q8_len(cols)];
                let qx = QuantX::new(isa, x, &mut b);
                let mut old = vec![0f32; rows];
                ops::matvec_q_rows(isa, &QMatrix::new(qt, &w, rows, cols), &[qx], &mut old);
                let q8 = Q8Row::new(&b, cols);
                for i in 0..rows {
                    let row = &w[i * rb..(i + 1) * rb];
                    quant::dequantize_row(qt, row, &mut deq);
                    let got = alone[t * rows + i];
                    let abs: f32 = deq.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
                    let slack = abs * 1e-5 + 1e-30;
                    let bound = quant::q8_error_bound(&deq, x) * (1.0 + 1e-3) + slack;
                    let ctx = format!("{qt} {rows}x{cols} input {t} row {i}");
                    assert!(
                        (got - r[i]).abs() <= bound,
                        "{ctx}: {got} vs ref {} (bound {bound})",
                        r[i]
                    );
                    let (m, mag, wide) = model_row(qt, row, &q8);
                    let tol = mag * 2e-6 + 1e-30;
                    assert!(
                        ((got as f64) - m).abs() <= tol,
                        "{ctx}: {got} vs model {m} (tol {tol})"
                    );
                    let near = (wide * 2e-6) as f32 + 1e-30;
                    assert!(
                        (got - old[i]).abs() <= near,
                        "{ctx}: {got} vs ggml-layout kernel {}",
                        old[i]
                    );
                }
            }
            // grouped inputs, VNNI or not, 1 or 2 threads: the same bits
            for n in [1, 2, 3, 5, 9] {
                let x: Vec<f32> = xs[..n].concat();
                let mut s = exact(&vec![0f32; n * per]);
                let mut y = exact(&vec![f32::NAN; n * rows]);
                let px = ops::prepare_repacked_x(isa, cols, &x, &mut s);
                ops::matvec_repacked_prepared(isa, &wr, &px, &mut y);
                assert_eq!(
                    bits(&y),
                    bits(&alone[..n * rows]),
                    "{qt} {rows}x{cols} n={n}"
                );
                y.fill(f32::NAN);
                let no_vnni = Cpu::from(isa).without_vnni();
                ops::matvec_repacked_prepared(no_vnni, &wr, &px, &mut y);
                assert_eq!(
                    bits(&y),
                    bits(&alone[..n * rows]),
                    "{qt} {rows}x{cols} n={n} no VNNI"
                );
                for pool in &pools {
                    let mut s = exact(&vec![0f32; par::repacked_scratch_len(n, cols)]);
                    y.fill(f32::NAN);
                    par::matvec_repacked_rows(pool, isa, &wr, &x, &mut s, &mut y);
                    let nt = pool.n_threads();
                    assert_eq!(
                        bits(&y),
                        bits(&alone[..n * rows]),
                        "{qt} {rows}x{cols} n={n} threads={nt}"
                    );
                }
            }
        }
    }
}

#[test]
fn q4_0() {
    check_format(QuantType::Q4_0);
}

#[test]
fn q5_0() {
    check_format(QuantType::Q5_0);
}

#[test]
fn q8_0() {
    check_format(QuantType::Q8_0);
}

/// Q8_0 quants of -128 (never written by ggml's quantizer, but valid bytes) and Q5_0 / Q4_0
/// extremes: all-max weights against all-max inputs, where the plain path's `vpmaddubsw` would
/// saturate if the operands were not kept small.
#[test]
fn extreme_quants() {
    if !has_avx512() {
        return;
    }
    let cols = 512 + 96;
    for qt in FORMATS {
        for fill in [0x00u8, 0x80, 0xff, 0x7f] {
            let rows = 3;
            let mut w = random_weights(qt, rows, cols, &mut Rng(5));
            for blk in w.chunks_exact_mut(qt.block_bytes()) {
                blk[2..].fill(fill);
            }
            let wr = repacked(qt, &w, cols);
            let wr = RepackedMatrix::new(qt, &wr, rows, cols);
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; cols];
                let mut s = vec![0f32; ops::repacked_x_len(cols)];
                let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
                let px = ops::prepare_repacked_x(Isa::Avx512, cols, &x, &mut s);
                ops::matvec_repacked_prepared(Isa::Avx512, &wr, &px, &mut a);
                let no_vnni = Cpu::from(Isa::Avx512).without_vnni();
                ops::matvec_repacked_prepared(no_vnni, &wr, &px, &mut b);
                let mut r = vec![0f32; rows];
                quant::matvec_ref(qt, &w, &x, &mut r);
                assert_eq!(bits(&a), bits(&b), "{qt} fill {fill:#x}");
                for i in 0..rows {
                    assert!(
                        (a[i] - r[i]).abs() <= r[i].abs() * 1e-5 + 1e-6,
                        "{qt} {fill:#x}: {} vs {}",
                        a[i],
                        r[i]
                    );
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "AVX-512 only")]
fn refuses_other_isas() {
    let cols = 32;
    let w = vec![0u8; 34];
    let mut s = vec![0f32; ops::repacked_x_len(cols)];
    let mut y = vec![0f32; 1];
    let w = RepackedMatrix::new(QuantType::Q8_0, &w, 1, cols);
    let px = ops::prepare_repacked_x(Isa::Scalar, cols, &[0.0; 32], &mut s);
    ops::matvec_repacked_prepared(Isa::Scalar, &w, &px, &mut y);
}
