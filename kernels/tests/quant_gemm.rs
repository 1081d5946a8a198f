//! The quantized prefill matmul (`ops::matmul_q`, `par::matmul_q`) on every format, every ISA
//! this CPU runs (and each SIMD ISA without VNNI; AMX against the VNNI tiles where present),
//! 1 and 2 threads, against the scalar reference
//! `quant::matvec_ref` and against an f64 model of the integer arithmetic the SIMD kernels do.
//! Every buffer ends exactly at its allocation.

mod common;

use common::Rng;
use qwenrt_kernels::quant::{self, Q8Row, QMatrix, QuantType};
use qwenrt_kernels::{ops, par, Cpu, Isa, ThreadPool};

/// A random valid row of `k` weights of `qt`: random quant bytes, small finite f16 scales.
fn random_row(rng: &mut Rng, qt: QuantType, k: usize) -> Vec<u8> {
    let mut row: Vec<u8> = (0..qt.row_bytes(k).unwrap())
        .map(|_| rng.next() as u8)
        .collect();
    let f16 = |v: f32| half::f16::from_f32(v).to_bits().to_le_bytes();
    for blk in row.chunks_exact_mut(qt.block_bytes()) {
        let at = if qt == QuantType::Q6K { 208 } else { 0 };
        blk[at..at + 2].copy_from_slice(&f16(0.05 * rng.f()));
        if matches!(qt, QuantType::Q4K | QuantType::Q5K) {
            blk[2..4].copy_from_slice(&f16(0.05 * rng.f()));
        }
    }
    row
}

/// One row as the kernels' integer form, written here independently of the crate: unsigned
/// quants `q` per weight and, per sub-block of `s` weights, `scale` and `bias` with
/// `w = scale * q + bias` (Q8_0 as `q + 128`, bias `-128 d`).
struct IntRow {
    s: usize,
    q: Vec<u32>,
    scale: Vec<f64>,
    bias: Vec<f64>,
}

fn int_row(qt: QuantType, row: &[u8]) -> IntRow {
    let h =
        |b: &[u8], i: usize| half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f64();
    let s = if qt == QuantType::Q6K { 16 } else { 32 };
    let (mut q, mut scale, mut bias) = (vec![], vec![], vec![]);
    for b in row.chunks_exact(qt.block_bytes()) {
        match qt {
            QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => {
                let d = h(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for e in 0..32 {
                    q.push(match qt {
                        QuantType::Q4_0 => ((b[2 + e % 16] >> (4 * (e / 16))) & 15) as u32,
                        QuantType::Q5_0 => {
                            ((b[6 + e % 16] >> (4 * (e / 16))) & 15) as u32 | ((qh >> e) & 1) << 4
                        }
                        _ => (b[2 + e] as i8 as i32 + 128) as u32,
                    });
                }
                let off = [8.0, 16.0, 128.0][[QuantType::Q4_0, QuantType::Q5_0, QuantType::Q8_0]
                    .iter()
                    .position(|&t| t == qt)
                    .unwrap()];
                scale.push(d);
                bias.push(-off * d);
            }
            QuantType::Q4K | QuantType::Q5K => {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let five = qt == QuantType::Q5K;
                let qs = if five { &b[48..176] } else { &b[16..144] };
                for sb in 0..8 {
                    let (sc, m) = quant::scale_min_k4(sb, &b[4..16]);
                    scale.push(d * sc as f64);
                    bias.push(-dmin * m as f64);
                    for l in 0..32 {
                        let v = (qs[32 * (sb / 2) + l] >> (4 * (sb % 2))) & 15;
                        let hi = if five { (b[16 + l] >> sb) & 1 } else { 0 };
                        q.push((v | hi << 4) as u32);
                    }
                }
            }
            QuantType::Q6K => {
                let d = h(b, 208);
                for e in 0..256 {
                    let (half, quad, l) = (e / 128, (e % 128) / 32, e % 32);
                    let lo = (b[64 * half + 32 * (quad % 2) + l] >> (4 * (quad / 2))) & 15;
                    let hi = (b[128 + 32 * half + l] >> (2 * quad)) & 3;
                    q.push((lo | hi << 4) as u32);
                }
                for i in 0..16 {
                    scale.push(d * b[192 + i] as i8 as f64);
                    bias.push(-32.0 * d * b[192 + i] as i8 as f64);
                }
            }
        }
    }
    IntRow { s, q, scale, bias }
}

/// The f64 model of what the SIMD kernels compute for one (input row, weight row), and the
/// magnitude of its terms (for the f32 rounding allowance).
fn model(wr: &IntRow, xq: &Q8Row<'_>) -> (f64, f64) {
    let (mut y, mut mag) = (0f64, 0f64);
    for (i, (&sc, &bi)) in wr.scale.iter().zip(&wr.bias).enumerate() {
        let k0 = i * wr.s;
        let b = k0 / 32;
        let xb = xq.q(b);
        let dx = xq.d[b] as f64;
        let hs = &xq.half_sums[2 * b..2 * b + 2];
        let (idot, iabs, xabs) = (0..wr.s).fold((0i64, 0i64, 0i64), |(a, m, s), e| {
            let (qv, xv) = (wr.q[k0 + e] as i64, xb[(k0 + e) % 32] as i64);
            (a + qv * xv, m + qv * xv.abs(), s + xv.abs())
        });
        let sum_x = if wr.s == 32 {
            hs[0] as f64 + hs[1] as f64
        } else {
            hs[i % 2] as f64
        };
        y += sc * dx * idot as f64 + bi * sum_x;
        mag += sc.abs() * dx * iabs as f64 + bi.abs() * (dx * xabs as f64 + sum_x.abs());
    }
    (y, mag)
}

fn ks(qt: QuantType) -> Vec<usize> {
    if qt.block_elems() == 256 {
        vec![256, 512, 4864]
    } else {
        vec![32, 256, 512, 896, 4864]
    }
}

/// Every CPU level this machine runs, with its extensions; or (`no_vnni_only`) the SIMD ones
/// with VNNI (and so AMX) left unused.
fn paths(no_vnni_only: bool) -> Vec<Cpu> {
    if no_vnni_only {
        return Cpu::available()
            .into_iter()
            .filter(|c| c.isa() != Isa::Scalar)
            .map(Cpu::without_vnni)
            .collect();
    }
    Cpu::available()
}

fn check_format(qt: QuantType, no_vnni_only: bool) {
    let paths = paths(no_vnni_only);
    if paths.is_empty() {
        eprintln!("{qt}: no SIMD ISA on this CPU, nothing to force");
        return;
    }
    let pools = [ThreadPool::new(1).unwrap(), ThreadPool::new(2).unwrap()];
    let mut rng = Rng(0x5eed ^ qt.block_bytes() as u64);
    let eps = f32::EPSILON as f64;
    for k in ks(qt) {
        let per = quant::q8_len(k);
        for rows in [1, 15, 16, 17, 64, 100] {
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(&mut rng, qt, k))
                .collect();
            let rb = qt.row_bytes(k).unwrap();
            let wm = QMatrix::new(qt, &w, rows, k);
            let mut deq = vec![0f32; rows * k];
            quant::dequantize_row(qt, &w, &mut deq);
            let ints: Vec<IntRow> = w.chunks_exact(rb).map(|r| int_row(qt, r)).collect();
            for n in [1, 2, 7, 33] {
                let x = rng.vec(n * k);
                let mut y_ref = vec![0f32; n * rows];
                let mut xq = vec![0f32; n * per];
                for t in 0..n {
                    let xt = &x[t * k..(t + 1) * k];
                    quant::matvec_ref(qt, &w, xt, &mut y_ref[t * rows..(t + 1) * rows]);
                    quant::quantize_row_q8(xt, &mut xq[t * per..(t + 1) * per]);
                }
                for &cpu in &paths {
                    for (pi, pool) in pools.iter().enumerate() {
                        let mut scratch = vec![f32::NAN; par::matmul_q_scratch_len(pi + 1, n, k)];
                        let mut y = vec![f32::NAN; n * rows];
                        par::matmul_q(pool, cpu, &wm, &x, &mut scratch, &mut y);
                        if pi == 0 {
                            // the single-threaded entry gives the same numbers
                            let mut s1 = vec![f32::NAN; ops::matmul_q_scratch_len(n, k)];
                            let mut y1 = vec![f32::NAN; n * rows];
                            ops::matmul_q(cpu, &wm, &x, &mut s1, &mut y1);
                            assert!(y1.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
                        }
                        let what = format!("{qt} {cpu} threads={} k={k} rows={rows} n={n}", pi + 1);
                        check(&what, cpu.isa(), &y, &y_ref, &deq, &x, &xq, &ints, k, eps);
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    what: &str,
    isa: Isa,
    y: &[f32],
    y_ref: &[f32],
    deq: &[f32],
    x: &[f32],
    xq: &[f32],
    ints: &[IntRow],
    k: usize,
    eps: f64,
) {
    let rows = ints.len();
    let per = quant::q8_len(k);
    for (i, (&v, &r)) in y.iter().zip(y_ref).enumerate() {
        let (t, j) = (i / rows, i % rows);
        if isa == Isa::Scalar {
            // the same dequantization and summation order as the reference
            assert_eq!(v.to_bits(), r.to_bits(), "{what} y[{t},{j}]: {v} vs {r}");
            continue;
        }
        let (xt, wj) = (&x[t * k..(t + 1) * k], &deq[j * k..(j + 1) * k]);
        let q8 = Q8Row::new(&xq[t * per..(t + 1) * per], k);
        let (ym, mag) = model(&ints[j], &q8);
        let nsb = ints[j].scale.len() as f64;
        // The kernel sums nsb sub-block terms, each from a few f32 roundings (the scale
        // times d_x, the conversion-free i32 dot, two fused multiply-adds, the half-sum add):
        // within 2 * (nsb + 4) units of f32 epsilon of the magnitude of those terms.
        let tight = 2.0 * (nsb + 4.0) * eps * mag + 1e-30;
        assert!(
            (v as f64 - ym).abs() <= tight,
            "{what} y[{t},{j}]: {v} vs integer model {ym} (allowed {tight:e})"
        );
        // Against the reference: the input quantization moves the dot by at most
        // q8_error_bound; the margin 1e-3 covers that bound's own rounding (x / d is rounded
        // to f32 before it is rounded to an integer, and d itself is an f32), and the rest is
        // the f32 rounding of the reference's k-term sum, of its dequantization and of the
        // kernel's sub-block sum.
        let wx: f64 = wj.iter().zip(xt).map(|(a, b)| (a * b).abs() as f64).sum();
        let bound = quant::q8_error_bound(wj, xt) as f64 * (1.0 + 1e-3)
            + eps * ((k as f64 + 8.0) * wx + 2.0 * (nsb + 8.0) * mag);
        assert!(
            (v as f64 - r as f64).abs() <= bound,
            "{what} y[{t},{j}]: {v} vs reference {r} (allowed {bound:e})"
        );
    }
}

#[test]
fn q4_0() {
    check_format(QuantType::Q4_0, false);
}

#[test]
fn q5_0() {
    check_format(QuantType::Q5_0, false);
}

#[test]
fn q8_0() {
    check_format(QuantType::Q8_0, false);
}

#[test]
fn q4_k() {
    check_format(QuantType::Q4K, false);
}

#[test]
fn q5_k() {
    check_format(QuantType::Q5K, false);
}

#[test]
fn q6_k() {
    check_format(QuantType::Q6K, false);
}

/// The `vpmaddubsw` fallbacks of the AVX-512 and AVX2 paths, forced on a CPU with VNNI.
#[test]
fn without_vnni() {
    for qt in QuantType::ALL {
        check_format(qt, true);
    }
}

/// The AMX tiles against the AVX512-VNNI tiles (a `Cpu` without AMX): the
/// same integer dots and the same f32 epilogue, so the same bits, for input counts around
/// the 16-row tile and the 8-row VNNI tile, partial 16-row panels, every format. (The default
/// path that `check_format` tests against the reference is AMX where it is available.)
#[test]
fn amx_matches_vnni() {
    let cpu = Cpu::detect();
    if !ops::prefill_amx(cpu) {
        println!(
            "skipped: no AMX here (the CPU lacks amx_tile/amx_int8, Linux refused the tile \
             data, or QWENRT_AMX=0)"
        );
        return;
    }
    let mut rng = Rng(0xa3c5);
    for qt in QuantType::ALL {
        let k = if qt.block_elems() == 256 { 512 } else { 96 };
        for rows in [16, 17, 40] {
            let w: Vec<u8> = (0..rows)
                .flat_map(|_| random_row(&mut rng, qt, k))
                .collect();
            let wm = QMatrix::new(qt, &w, rows, k);
            for n in [1, 7, 8, 15, 16, 17, 40] {
                let x = rng.vec(n * k);
                let mut s = vec![f32::NAN; ops::matmul_q_scratch_len(n, k)];
                let mut amx = vec![f32::NAN; n * rows];
                ops::matmul_q(cpu, &wm, &x, &mut s, &mut amx);
                let mut vnni = vec![f32::NAN; n * rows];
                ops::matmul_q(cpu.without_amx(), &wm, &x, &mut s, &mut vnni);
                for (i, (a, b)) in amx.iter().zip(&vnni).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{qt} k={k} rows={rows} n={n} output {i}: AMX {a} vs VNNI {b}"
                    );
                }
            }
        }
    }
}
