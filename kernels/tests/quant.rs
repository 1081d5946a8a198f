//! The quantized matvecs (`ops::matvec_q`, `ops::matvec_q_rows`) on every ISA this CPU runs
//! (and with and without VNNI: AVX512-VNNI on AVX-512, AVX-VNNI on AVX2; on aarch64 with
//! widening multiplies, `sdot` and `smmla`), for every ggml block format, against:
//! - the scalar reference (`quant::matvec_ref`: ggml's dequantization, f32 dot with the
//!   unquantized input), within what quantizing the input to 8 bits can change plus f32
//!   rounding;
//! - an exact model of what the SIMD kernels compute (per scale unit, `scale * d_x * idot +
//!   bias * s_x` in f64 over the integer dot), within f32 rounding only, so a wrong scale, bias
//!   or unpacking cannot hide under the (much looser) quantization bound;
//! - themselves: output `t` of a many-input call is bit for bit the single-input result, and
//!   every integer-dot instruction of one ISA gives the same bits.
//!
//! Weight buffers are sliced to end exactly at the end of their allocation, so an over-read
//! past the last block would touch memory outside it (and fail under a sanitizer / guard).

mod common;

use common::{random_weights, random_x, Rng};
use qwenrt_kernels::ops::{self, QuantX};
use qwenrt_kernels::quant::{self, q8_len, Q8Row, QMatrix, QuantType};
use qwenrt_kernels::{Cpu, Isa};

/// One weight row as scale units: per unit of `len` columns, the raw quants `q` (as the SIMD
/// kernels multiply them: unsigned, or signed for Q8_0), the weight scale and the bias, with
/// `w = scale * q + bias` for every weight of the unit. Decoded here from the block layouts
/// independently of the kernels; checked against `quant::dequantize_row`.
struct Unit {
    len: usize,
    q: Vec<i32>,
    scale: f64,
    bias: f64,
}

fn f16_at(b: &[u8], i: usize) -> f64 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f64()
}

fn units_of(qt: QuantType, row: &[u8]) -> Vec<Unit> {
    let mut out = Vec::new();
    for b in row.chunks_exact(qt.block_bytes()) {
        match qt {
            QuantType::Q4_0 | QuantType::Q5_0 => {
                let d = f16_at(b, 0);
                let q5 = qt == QuantType::Q5_0;
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = if q5 { &b[6..22] } else { &b[2..18] };
                let q = (0..32)
                    .map(|j| {
                        let nib = if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 } as i32;
                        nib | if q5 { ((qh >> j) & 1) as i32 * 16 } else { 0 }
                    })
                    .collect();
                let off = if q5 { -16.0 } else { -8.0 };
                out.push(Unit {
                    len: 32,
                    q,
                    scale: d,
                    bias: off * d,
                });
            }
            QuantType::Q8_0 => {
                let q = b[2..34].iter().map(|&v| v as i8 as i32).collect();
                out.push(Unit {
                    len: 32,
                    q,
                    scale: f16_at(b, 0),
                    bias: 0.0,
                });
            }
            QuantType::Q4K | QuantType::Q5K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let q5 = qt == QuantType::Q5K;
                let qs = if q5 { &b[48..176] } else { &b[16..144] };
                for s in 0..8 {
                    let (sc, m) = quant::scale_min_k4(s, &b[4..16]);
                    let q = (0..32)
                        .map(|l| {
                            let byte = qs[32 * (s / 2) + l];
                            let nib = if s % 2 == 0 { byte & 15 } else { byte >> 4 } as i32;
                            nib | if q5 {
                                ((b[16 + l] >> s) & 1) as i32 * 16
                            } else {
                                0
                            }
                        })
                        .collect();
                    let (scale, bias) = (d * sc as f64, -(dmin * m as f64));
                    out.push(Unit {
                        len: 32,
                        q,
                        scale,
                        bias,
                    });
                }
            }
            QuantType::Q6K => {
                let d = f16_at(b, 208);
                for u in 0..16 {
                    let q = (0..16)
                        .map(|i| {
                            let e = 16 * u + i; // element of the superblock
                            let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
                            let ql = b[64 * h + l + 32 * (k % 2)];
                            let lo = if k < 2 { ql & 15 } else { ql >> 4 } as i32;
                            let hi = ((b[128 + 32 * h + l] >> (2 * k)) & 3) as i32;
                            lo | hi << 4
                        })
                        .collect();
                    let scale = d * b[192 + u] as i8 as f64;
                    out.push(Unit {
                        len: 16,
                        q,
                        scale,
                        bias: -32.0 * scale,
                    });
                }
            }
        }
    }
    out
}

/// The exact model of the SIMD kernels for one row: per unit, `scale * d_x * idot + bias *
/// s_x` in f64 (`s_x` the input's scaled sum over the unit, as the kernels form it in f32);
/// also returns the sum of the terms' magnitudes (for the rounding tolerance).
fn model_row(units: &[Unit], x: &Q8Row<'_>) -> (f64, f64) {
    let (mut sum, mut mag) = (0.0, 0.0);
    let mut col = 0;
    for u in units {
        let blk = col / 32;
        let xq = x.q(blk);
        let off = col % 32;
        let idot: i64 = (0..u.len).map(|i| u.q[i] as i64 * xq[off + i] as i64).sum();
        let dx = x.d[blk] as f64;
        let sx = if u.len == 32 {
            (x.half_sums[2 * blk] + x.half_sums[2 * blk + 1]) as f64
        } else {
            x.half_sums[2 * blk + off / 16] as f64
        };
        let (a, b) = (u.scale * dx * idot as f64, u.bias * sx);
        sum += a + b;
        mag += a.abs() + b.abs();
        col += u.len;
    }
    (sum, mag)
}

/// The weights in `buf[offset..]`, a copy of `w` that ends exactly where its allocation does.
fn at_end(w: &[u8], offset: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w.len() + offset);
    v.resize(offset, 0xAB);
    v.extend_from_slice(w);
    v.shrink_to_fit();
    v
}

/// The CPUs to test: every SIMD ISA with its VNNI (where the CPU has it: AVX512-VNNI,
/// AVX-VNNI) and without; on aarch64 every NEON level ([`Cpu::available`] lists them: widening
/// multiplies, `sdot`, `smmla`).
fn paths() -> Vec<Cpu> {
    let mut v = Vec::new();
    for cpu in Cpu::available() {
        if cpu.isa() != Isa::Scalar {
            v.push(cpu);
            if cpu.vnni() {
                v.push(cpu.without_vnni());
            }
        }
    }
    v
}

fn shapes(qt: QuantType) -> Vec<(usize, usize)> {
    let cols: &[usize] = if qt.block_elems() == 256 {
        &[256, 512, 4864]
    } else {
        &[32, 64, 96, 256, 512, 896, 4864]
    };
    let mut v = Vec::new();
    for &c in cols {
        for r in [1, 3, 16, 17, 33] {
            v.push((r, c));
        }
    }
    v
}

fn check_format(qt: QuantType) {
    let mut rng = Rng(0x9e37_79b9 ^ qt.block_bytes() as u64);
    let paths = paths();
    if paths.is_empty() {
        eprintln!("{qt}: no SIMD ISA on this CPU");
        return;
    }
    for (rows, cols) in shapes(qt) {
        let w = random_weights(qt, rows, cols, &mut rng);
        let rb = qt.row_bytes(cols).unwrap();
        let n_in = 9;
        let xs: Vec<Vec<f32>> = (0..n_in).map(|_| random_x(cols, &mut rng)).collect();
        let mut bufs: Vec<Vec<f32>> = xs.iter().map(|_| vec![0.0; q8_len(cols)]).collect();
        let mut refs = vec![0f32; n_in * rows];
        for (x, r) in xs.iter().zip(refs.chunks_exact_mut(rows)) {
            quant::matvec_ref(qt, &w, x, r);
        }
        let units: Vec<Vec<Unit>> = w.chunks_exact(rb).map(|row| units_of(qt, row)).collect();
        let mut deq = vec![0f32; cols];
        let deqs: Vec<Vec<f32>> = w
            .chunks_exact(rb)
            .map(|row| {
                quant::dequantize_row(qt, row, &mut deq);
                deq.clone()
            })
            .collect();
        // the model's decoding is ggml's
        for (us, dq) in units.iter().zip(&deqs) {
            let flat = us
                .iter()
                .flat_map(|u| u.q.iter().map(|&q| u.scale * q as f64 + u.bias));
            for (c, (m, &d)) in flat.zip(dq).enumerate() {
                let tol = 1e-6 * d.abs() as f64 + 1e-12;
                assert!(
                    (m - d as f64).abs() <= tol,
                    "{qt} decode col {c}: {m} vs {d}"
                );
            }
        }
        for &cpu in &paths {
            let (isa, vnni) = (cpu.isa(), cpu.vnni());
            let what = |extra: &str| format!("{qt} {isa} vnni={vnni} {rows}x{cols} {extra}");
            let qx: Vec<QuantX<'_>> = xs
                .iter()
                .zip(bufs.iter_mut())
                .map(|(x, b)| QuantX::new(isa, x, b))
                .collect();
            for offset in [0, 1] {
                let wb = at_end(&w, offset);
                let w = &wb[offset..];
                let wm = QMatrix::new(qt, w, rows, cols);
                // each input alone
                let mut single = vec![f32::NAN; n_in * rows];
                for (x, y) in qx.iter().zip(single.chunks_exact_mut(rows)) {
                    ops::matvec_q_rows(cpu, &wm, std::slice::from_ref(x), y);
                }
                for t in 0..n_in {
                    let q8 = qx[t].q8().unwrap();
                    for r in 0..rows {
                        let got = single[t * rows + r];
                        let i = format!("input {t} row {r} off {offset}");
                        // exact model: the kernels' f32 rounding only. Per lane, about
                        // cols / 512 accumulations of 3 rounded operations each, then a
                        // 16-lane tree: (cols / 32 + 16) * 4 ulps of the terms' magnitude
                        // is a generous bound, yet far below a wrong scale or bias.
                        let (m, mag) = model_row(&units[r], &q8);
                        let tol = (cols / 32 + 16) as f64 * 4.0 * f32::EPSILON as f64 * mag;
                        assert!(
                            (got as f64 - m).abs() <= tol + 1e-30,
                            "{}: {got} vs model {m} (tol {tol})",
                            what(&i)
                        );
                        // reference: quantizing x moves each element by at most half its
                        // block's step; the quantizer's step is amax / 127 rounded to f32 and
                        // q = round(x * (1 / d)) in f32, which can exceed half a step by a
                        // few ulps of x (relative 127 * 3 eps ~ 2.3e-5 of the step): a margin
                        // of 1e-3 covers that. Then f32 rounding of both sums: at most
                        // cols * eps * sum |w| |x|.
                        let bound = quant::q8_error_bound(&deqs[r], &xs[t]) as f64;
                        let abs: f64 = deqs[r]
                            .iter()
                            .zip(&xs[t])
                            .map(|(a, b)| (a * b).abs() as f64)
                            .sum();
                        let allow = abs * cols as f64 * f32::EPSILON as f64;
                        let want = refs[t * rows + r] as f64;
                        assert!(
                            (got as f64 - want).abs() <= bound * (1.0 + 1e-3) + allow,
                            "{}: {got} vs ref {want} (bound {bound}, allowance {allow})",
                            what(&i)
                        );
                    }
                }
                // many inputs at once: bit for bit the single results, for awkward counts
                for n in [1, 2, 3, 5, 9] {
                    let mut y = vec![f32::NAN; n * rows];
                    ops::matvec_q_rows(cpu, &wm, &qx[..n], &mut y);
                    for (i, (a, b)) in y.iter().zip(&single).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{}: {a} vs {b}",
                            what(&format!("{n} inputs, output {i} off {offset}"))
                        );
                    }
                }
            }
        }
        // Every integer dot of one ISA gives the same bits: VNNI and plain on x86, and on
        // NEON the widening multiplies, `sdot` and `smmla` (which pairs rows and inputs: 3
        // inputs make a pair and one left over, and odd row counts leave a row over).
        let n = 3;
        let mut bufs3: Vec<Vec<f32>> = (0..n).map(|_| vec![0.0; q8_len(cols)]).collect();
        for &cpu in &paths {
            let Some(&first) = paths.iter().find(|c| c.isa() == cpu.isa()) else {
                continue;
            };
            if first == cpu {
                continue;
            }
            let isa = cpu.isa();
            let qx: Vec<QuantX<'_>> = xs
                .iter()
                .zip(bufs3.iter_mut())
                .map(|(x, b)| QuantX::new(isa, x, b))
                .collect();
            let (mut a, mut c) = (vec![0.0; n * rows], vec![0.0; n * rows]);
            let wm = QMatrix::new(qt, &w, rows, cols);
            ops::matvec_q_rows(cpu, &wm, &qx, &mut a);
            ops::matvec_q_rows(first, &wm, &qx, &mut c);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&c), "{qt} {rows}x{cols}: {cpu} vs {first}");
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

#[test]
fn q4_k() {
    check_format(QuantType::Q4K);
}

#[test]
fn q5_k() {
    check_format(QuantType::Q5K);
}

#[test]
fn q6_k() {
    check_format(QuantType::Q6K);
}

/// `ops::matvec_q` (one input) is the many-input entry point's single-input case.
#[test]
fn matvec_q_is_rows_of_one() {
    let mut rng = Rng(7);
    let (rows, cols) = (5, 512);
    for qt in QuantType::ALL {
        let w = random_weights(qt, rows, cols, &mut rng);
        let x = random_x(cols, &mut rng);
        for isa in Isa::available() {
            let mut b = vec![0.0; q8_len(cols)];
            let qx = QuantX::new(isa, &x, &mut b);
            let (mut a, mut c) = (vec![0.0; rows], vec![0.0; rows]);
            let wm = QMatrix::new(qt, &w, rows, cols);
            ops::matvec_q(isa, &wm, &qx, &mut a);
            ops::matvec_q_rows(isa, &wm, &[qx], &mut c);
            assert_eq!(a, c, "{qt} {isa}");
        }
    }
}

/// `par::matvec_q_rows` on 1 and 2 threads: every output row bit for bit `ops::matvec_q` on
/// its input alone (the row blocks take all inputs in one kernel call), also past 64 inputs.
#[test]
fn par_matvec_q_rows_matches_single() {
    use qwenrt_kernels::{par, ThreadPool};
    let mut rng = Rng(11);
    for qt in QuantType::ALL {
        let (rows, cols) = (70, 512);
        let w = random_weights(qt, rows, cols, &mut rng);
        let w = QMatrix::new(qt, &w, rows, cols);
        for n in [1, 5, 67] {
            let x: Vec<f32> = (0..n).flat_map(|_| random_x(cols, &mut rng)).collect();
            for isa in Isa::available() {
                let mut want = vec![0.0; n * rows];
                let mut b = vec![0.0; q8_len(cols)];
                for (xr, yr) in x.chunks_exact(cols).zip(want.chunks_exact_mut(rows)) {
                    ops::matvec_q(isa, &w, &QuantX::new(isa, xr, &mut b), yr);
                }
                for nt in [1, 2] {
                    let pool = ThreadPool::new(nt).unwrap();
                    let mut s = vec![0.0; par::quant_scratch_len(n, cols)];
                    let mut y = vec![f32::NAN; n * rows];
                    par::matvec_q_rows(&pool, isa, &w, &x, &mut s, &mut y);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&y), bits(&want), "{qt} {isa} n={n} threads={nt}");
                }
            }
        }
    }
}

/// `par::matvec_q_many` on 1 and 2 threads: jobs of every block format, of different widths
/// and row counts (1, odd, past a block), more jobs than one dispatch takes: every output bit
/// for bit `ops::matvec_q` on its input alone, written where its job's rows fall.
#[test]
fn par_matvec_q_many_matches_single() {
    use qwenrt_kernels::{par, ThreadPool};
    let mut rng = Rng(12);
    // (format, rows, cols) of each job
    let shapes: Vec<(QuantType, usize, usize)> = (0..par::MANY_MAX + 5)
        .map(|j| {
            let qt = QuantType::ALL[j % QuantType::ALL.len()];
            let rows = [1, 37, 70, 3][j % 4];
            let cols = [256, 512][j % 2];
            (qt, rows, cols)
        })
        .collect();
    let ws: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(qt, rows, cols)| random_weights(qt, rows, cols, &mut rng))
        .collect();
    let xs: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(_, _, cols)| random_x(cols, &mut rng))
        .collect();
    for isa in Isa::available() {
        let mut want = Vec::new();
        for ((&(qt, rows, cols), w), x) in shapes.iter().zip(&ws).zip(&xs) {
            let mut b = vec![0.0; q8_len(cols)];
            let mut y = vec![0.0; rows];
            let w = QMatrix::new(qt, w, rows, cols);
            ops::matvec_q(isa, &w, &QuantX::new(isa, x, &mut b), &mut y);
            want.extend(y);
        }
        let mut scratch: Vec<Vec<f32>> = xs.iter().map(|x| vec![0.0; q8_len(x.len())]).collect();
        let jobs: Vec<par::QJob<'_>> = shapes
            .iter()
            .zip(&ws)
            .zip(xs.iter().zip(scratch.iter_mut()))
            .map(|((&(qt, rows, cols), w), (x, s))| par::QJob {
                w: QMatrix::new(qt, w, rows, cols),
                x: QuantX::new(isa, x, s),
            })
            .collect();
        for nt in [1, 2] {
            let pool = ThreadPool::new(nt).unwrap();
            let mut y = vec![f32::NAN; want.len()];
            par::matvec_q_many(&pool, isa, &jobs, &mut y);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want), "{isa} threads={nt}");
        }
    }
}
