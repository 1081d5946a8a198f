//! The register-tiled many-input kernels (the decode step's rows as a GEMM):
//! - `ops::gemm_repacked_prepared` (repacked Q4_0 / Q5_0 / Q8_0, AVX512-VNNI);
//! - `ops::gemm_q_prepared` (ggml-layout Q4_0 / Q5_0 / Q4_K / Q5_K / Q6_K, AVX512-VNNI);
//!
//! each against the scalar reference (`quant::matvec_ref`, within what quantizing the input to
//! 8 bits can change plus f32 rounding) and bit for bit against the single-input kernel on each
//! input alone, over awkward shapes: 1, 2, 7, 8, 9, 31 and 33 inputs, weight rows that are no
//! multiple of the register block or of the row tile, rows with a partial last group. The
//! dispatching entry points (`ops::matvec_repacked_prepared`, `par::matvec_repacked_rows`,
//! `par::matvec_q_rows`, on 1 and 2 threads, under every ISA this CPU has, with and without
//! VNNI) give each ISA's single-input bits whichever kernel they pick.
//!
//! Weights, prepared inputs and outputs end exactly at the end of their allocations.

mod common;

use common::{random_weights, random_x, Rng};
use qwenrt_kernels::ops::{self, QuantX};
use qwenrt_kernels::quant::{self, q8_len, QMatrix, QuantType, RepackedMatrix};
use qwenrt_kernels::{par, Cpu, Isa, ThreadPool};

/// Input counts of the awkward shapes.
const INPUTS: [usize; 7] = [1, 2, 7, 8, 9, 31, 33];

/// `v` copied into a vector whose allocation ends exactly where `v` does.
fn exact<T: Clone>(v: &[T]) -> Vec<T> {
    let mut o = Vec::with_capacity(v.len());
    o.extend_from_slice(v);
    o.shrink_to_fit();
    o
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The AVX512-VNNI CPU, if this one is.
fn vnni512() -> Option<Cpu> {
    if !Isa::available().contains(&Isa::Avx512) {
        return None;
    }
    let cpu = Cpu::from(Isa::Avx512);
    cpu.vnni().then_some(cpu)
}

/// Asserts `got` (rows of `rows` outputs, one per input) is within the 8-bit input bound of
/// the scalar reference.
fn near_reference(qt: QuantType, w: &[u8], cols: usize, xs: &[Vec<f32>], got: &[f32], ctx: &str) {
    let rows = got.len() / xs.len();
    let rb = qt.row_bytes(cols).unwrap();
    let mut deq = vec![0f32; cols];
    for (t, x) in xs.iter().enumerate() {
        let mut r = vec![0f32; rows];
        quant::matvec_ref(qt, w, x, &mut r);
        for i in 0..rows {
            quant::dequantize_row(qt, &w[i * rb..(i + 1) * rb], &mut deq);
            let abs: f32 = deq.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
            let bound = quant::q8_error_bound(&deq, x) * (1.0 + 1e-3) + abs * 1e-5 + 1e-30;
            let g = got[t * rows + i];
            assert!(
                (g - r[i]).abs() <= bound,
                "{ctx}: input {t} row {i}: {g} vs reference {} (bound {bound})",
                r[i]
            );
        }
    }
}

fn check_repacked(qt: QuantType) {
    let Some(cpu) = vnni512() else {
        eprintln!("{qt}: no AVX512-VNNI on this CPU, the tiled kernel does not run");
        return;
    };
    let mut rng = Rng(0x711e ^ qt.block_bytes() as u64);
    let pools = [ThreadPool::new(1).unwrap(), ThreadPool::new(2).unwrap()];
    // 544 and 896 columns end in a partial group (17 and 28 units)
    for cols in [32, 512, 544, 896] {
        for rows in [1, 3, 17, 50] {
            let w = random_weights(qt, rows, cols, &mut rng);
            let mut wr = vec![0u8; w.len()];
            quant::repack(qt, &w, cols, &mut wr);
            let wr = exact(&wr);
            let wr = RepackedMatrix::new(qt, &wr, rows, cols);
            let per = ops::repacked_x_len(cols);
            let n_max = *INPUTS.iter().max().unwrap();
            let xs: Vec<Vec<f32>> = (0..n_max).map(|_| random_x(cols, &mut rng)).collect();
            // each input alone through the single-input kernel
            let mut alone = vec![0f32; n_max * rows];
            for (x, y) in xs.iter().zip(alone.chunks_exact_mut(rows)) {
                let mut s = exact(&vec![0f32; per]);
                let mut yy = exact(&vec![f32::NAN; rows]);
                let px = ops::prepare_repacked_x(cpu, cols, x, &mut s);
                ops::matvec_repacked_prepared(cpu, &wr, &px, &mut yy);
                y.copy_from_slice(&yy);
            }
            for n in INPUTS {
                let ctx = format!("{qt} {rows}x{cols} n={n}");
                let x: Vec<f32> = xs[..n].concat();
                let mut s = exact(&vec![0f32; n * per]);
                let px = ops::prepare_repacked_x(cpu, cols, &x, &mut s);
                let want = bits(&alone[..n * rows]);
                let mut y = exact(&vec![f32::NAN; n * rows]);
                ops::gemm_repacked_prepared(cpu, &wr, &px, &mut y);
                assert_eq!(bits(&y), want, "{ctx}: tiled kernel vs each input alone");
                near_reference(qt, &w, cols, &xs[..n], &y, &ctx);
                // the dispatch, with and without VNNI, on 1 and 2 threads
                for c in [cpu, cpu.without_vnni()] {
                    y.fill(f32::NAN);
                    ops::matvec_repacked_prepared(c, &wr, &px, &mut y);
                    assert_eq!(bits(&y), want, "{ctx} {c}: dispatch");
                    for pool in &pools {
                        let mut s = exact(&vec![0f32; par::repacked_scratch_len(n, cols)]);
                        y.fill(f32::NAN);
                        par::matvec_repacked_rows(pool, c, &wr, &x, &mut s, &mut y);
                        let nt = pool.n_threads();
                        assert_eq!(bits(&y), want, "{ctx} {c} threads={nt}");
                    }
                }
            }
        }
    }
}

#[test]
fn repacked_q4_0() {
    check_repacked(QuantType::Q4_0);
}

#[test]
fn repacked_q5_0() {
    check_repacked(QuantType::Q5_0);
}

#[test]
fn repacked_q8_0() {
    check_repacked(QuantType::Q8_0);
}

/// All-max and all-min quants against all-max inputs of both signs: the unsigned operands
/// (Q8_0's `q + 128` up to 255) and the bias terms at their extremes.
#[test]
fn repacked_extreme_quants() {
    let Some(cpu) = vnni512() else { return };
    let cols = 512 + 96;
    let n = 9;
    for qt in [QuantType::Q4_0, QuantType::Q5_0, QuantType::Q8_0] {
        for fill in [0x00u8, 0x80, 0xff, 0x7f] {
            let rows = 5;
            let mut w = random_weights(qt, rows, cols, &mut Rng(5));
            for blk in w.chunks_exact_mut(qt.block_bytes()) {
                blk[2..].fill(fill);
            }
            let mut wr = vec![0u8; w.len()];
            quant::repack(qt, &w, cols, &mut wr);
            let wr = RepackedMatrix::new(qt, &wr, rows, cols);
            for sign in [1.0f32, -1.0] {
                let xs: Vec<Vec<f32>> = (0..n).map(|_| vec![sign; cols]).collect();
                let x = xs.concat();
                let mut s = vec![0f32; n * ops::repacked_x_len(cols)];
                let px = ops::prepare_repacked_x(cpu, cols, &x, &mut s);
                let mut y = vec![0f32; n * rows];
                ops::gemm_repacked_prepared(cpu, &wr, &px, &mut y);
                let mut one = vec![0f32; rows];
                ops::matvec_repacked_prepared(cpu, &wr, &px.inputs(0, 1), &mut one);
                for t in 0..n {
                    assert_eq!(
                        bits(&y[t * rows..(t + 1) * rows]),
                        bits(&one),
                        "{qt} {fill:#x}"
                    );
                }
                near_reference(qt, &w, cols, &xs, &y, &format!("{qt} fill {fill:#x}"));
            }
        }
    }
}

#[test]
#[should_panic(expected = "needs AVX512-VNNI")]
fn repacked_tile_refuses_without_vnni() {
    let cols = 32;
    let w = vec![0u8; 34];
    let mut s = vec![0f32; ops::repacked_x_len(cols)];
    let mut y = vec![0f32; 1];
    let cpu = Cpu::from(Isa::Scalar);
    let w = RepackedMatrix::new(QuantType::Q8_0, &w, 1, cols);
    let px = ops::prepare_repacked_x(cpu, cols, &[0.0; 32], &mut s);
    ops::gemm_repacked_prepared(cpu, &w, &px, &mut y);
}

/// The CPUs to check the dispatch under: every ISA this machine has, each with and without
/// VNNI.
fn all_cpus() -> Vec<Cpu> {
    let mut v = Vec::new();
    for c in Cpu::available() {
        v.push(c);
        if c.vnni() {
            v.push(c.without_vnni());
        }
    }
    v
}

/// `n` outputs of `rows` from `ops::matvec_q` on each input alone, under `cpu`.
fn q_alone(cpu: Cpu, w: &QMatrix<'_>, xs: &[Vec<f32>]) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    let mut out = vec![0f32; xs.len() * rows];
    for (x, y) in xs.iter().zip(out.chunks_exact_mut(rows)) {
        let mut b = exact(&vec![0f32; q8_len(cols)]);
        let qx = QuantX::new(cpu, x, &mut b);
        let mut yy = exact(&vec![f32::NAN; rows]);
        ops::matvec_q(cpu, w, &qx, &mut yy);
        y.copy_from_slice(&yy);
    }
    out
}

fn check_q(qt: QuantType, widths: &[usize]) {
    let mut rng = Rng(0x9e3 ^ qt.block_bytes() as u64);
    let pools = [ThreadPool::new(1).unwrap(), ThreadPool::new(2).unwrap()];
    let cpus = all_cpus();
    let n_max = *INPUTS.iter().max().unwrap();
    for &cols in widths {
        for rows in [1, 3, 17, 50] {
            let w = exact(&random_weights(qt, rows, cols, &mut rng));
            let wm = QMatrix::new(qt, &w, rows, cols);
            let xs: Vec<Vec<f32>> = (0..n_max).map(|_| random_x(cols, &mut rng)).collect();
            let alone: Vec<Vec<f32>> = cpus.iter().map(|&c| q_alone(c, &wm, &xs)).collect();
            for n in INPUTS {
                let ctx = format!("{qt} {rows}x{cols} n={n}");
                let x: Vec<f32> = xs[..n].concat();
                // the tiled kernel itself, whatever n
                if let Some(cpu) = vnni512().filter(|&c| ops::q_tile_runs(c, qt, cols)) {
                    let mut bufs: Vec<Vec<f32>> =
                        (0..n).map(|_| vec![0f32; q8_len(cols)]).collect();
                    let qx: Vec<QuantX<'_>> = xs[..n]
                        .iter()
                        .zip(bufs.iter_mut())
                        .map(|(x, b)| QuantX::new(cpu, x, b))
                        .collect();
                    let mut px = exact(&vec![0f32; n * ops::q_tile_x_len(cols)]);
                    let px = ops::prepare_q_tile(cpu, &wm, &qx, &mut px);
                    let mut y = exact(&vec![f32::NAN; n * rows]);
                    ops::gemm_q_prepared(cpu, &wm, &px, &mut y);
                    let i = cpus.iter().position(|&c| c == cpu).unwrap();
                    assert_eq!(
                        bits(&y),
                        bits(&alone[i][..n * rows]),
                        "{ctx}: tiled kernel vs each input alone"
                    );
                    near_reference(qt, &w, cols, &xs[..n], &y, &ctx);
                }
                // the dispatch under every ISA, on 1 and 2 threads
                for (&c, want) in cpus.iter().zip(&alone) {
                    for pool in &pools {
                        let mut s = exact(&vec![0f32; par::quant_scratch_len(n, cols)]);
                        let mut y = exact(&vec![f32::NAN; n * rows]);
                        par::matvec_q_rows(pool, c, &wm, &x, &mut s, &mut y);
                        let nt = pool.n_threads();
                        assert_eq!(bits(&y), bits(&want[..n * rows]), "{ctx} {c} threads={nt}");
                    }
                }
            }
        }
    }
}

#[test]
fn ggml_q4_0() {
    check_q(QuantType::Q4_0, &[32, 544, 896]);
}

#[test]
fn ggml_q5_0() {
    check_q(QuantType::Q5_0, &[32, 544, 896]);
}

/// 768 columns: a last group of one superblock (8 units).
#[test]
fn ggml_q4_k() {
    check_q(QuantType::Q4K, &[256, 768, 1024]);
}

#[test]
fn ggml_q5_k() {
    check_q(QuantType::Q5K, &[256, 768]);
}

#[test]
fn ggml_q6_k() {
    check_q(QuantType::Q6K, &[256, 768, 1024]);
}

/// Q8_0 keeps the matvec (its quants are signed); the tiled kernel's inputs cannot be
/// prepared for it (so `ops::gemm_q_prepared` cannot be called on it).
#[test]
#[should_panic(expected = "no tiled kernel for Q8_0")]
fn ggml_tile_refuses_q8_0() {
    let cpu = Cpu::from(Isa::detect());
    let w = vec![0u8; 34];
    let w = QMatrix::new(QuantType::Q8_0, &w, 1, 32);
    ops::prepare_q_tile(cpu, &w, &[], &mut [0.0; 160]);
}
