//! The register-tiled many-input kernels against the matvec they replace from
//! `ops::REPACKED_GEMM_MIN` inputs, at Qwen2.5-0.5B's decode shapes, one thread, AVX512-VNNI:
//! - `tiled`: `ops::gemm_repacked_prepared` on all `n` inputs in one call;
//! - `matvec4`: `ops::matvec_repacked_prepared` on the inputs 4 at a time (its widest call:
//!   each weight group unpacked once per 4 inputs), one call per 4 inputs;
//!
//! and for the ggml layout (Q4_K and Q6_K, the default file's `ffn_down`):
//! - `tiled`: `ops::prepare_q_tile` then `ops::gemm_q_prepared` on all `n` inputs (the
//!   preparation is per call, so it is timed);
//! - `matvec4`: `ops::matvec_q_rows` on the inputs 4 at a time.
//!
//! Inputs are prepared outside the timed loop. The `flops` groups count `2 * rows * cols * n`
//! per call, so criterion's rate reads as GFLOP/s (`Gelem/s`); the `bytes` groups count the
//! weight bytes per call, so the rate reads as GB/s of weights. The matrix is hot in cache
//! after the first call only if it fits (the 4864-row ones are 3-4 MiB, beyond the L2).

mod common;

use std::hint::black_box;

use common::{bytes, config, weights};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwenrt_kernels::ops::{self, QuantX, RepackedX};
use qwenrt_kernels::quant::{self, QMatrix, QuantType, RepackedMatrix};
use qwenrt_kernels::{Cpu, Isa};

/// The 4-at-a-time matvec over `n` prepared inputs.
fn matvec4(cpu: Cpu, wr: &RepackedMatrix<'_>, px: &RepackedX<'_>, y: &mut [f32]) {
    let rows = wr.matrix().rows();
    for t0 in (0..px.n()).step_by(4) {
        let t1 = (t0 + 4).min(px.n());
        let y = &mut y[t0 * rows..t1 * rows];
        ops::matvec_repacked_prepared(cpu, wr, &px.inputs(t0, t1), y);
    }
}

fn bench_repacked(c: &mut Criterion) {
    let cpu = Cpu::from(Isa::detect());
    if !(cpu.runs_repacked() && cpu.vnni()) {
        eprintln!("no AVX512-VNNI: nothing to bench");
        return;
    }
    let shapes = [
        (QuantType::Q5_0, 4864, 896),
        (QuantType::Q5_0, 896, 896),
        (QuantType::Q8_0, 896, 4864),
        (QuantType::Q8_0, 8192, 896),
    ];
    for (qt, rows, cols) in shapes {
        let w = weights(qt, rows, cols);
        let mut wr = w.clone();
        quant::repack(qt, &w, cols, &mut wr);
        let wr = RepackedMatrix::new(qt, &wr, rows, cols);
        let nmax = 32;
        let x: Vec<f32> = bytes(nmax * cols, 3)
            .iter()
            .map(|&b| b as f32 / 128.0 - 1.0)
            .collect();
        let mut px = vec![0.0; nmax * ops::repacked_x_len(cols)];
        let px = ops::prepare_repacked_x(cpu, cols, &x, &mut px);
        let mut y = vec![0.0; nmax * rows];
        let mut g = c.benchmark_group(format!("tile_{qt}_{rows}x{cols}_flops"));
        for n in [4, 8, 16, 32] {
            g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
            let y = &mut y[..n * rows];
            g.bench_with_input(BenchmarkId::new("tiled", n), &(), |b, _| {
                b.iter(|| ops::gemm_repacked_prepared(cpu, black_box(&wr), &px.inputs(0, n), y))
            });
            g.bench_with_input(BenchmarkId::new("matvec4", n), &(), |b, _| {
                b.iter(|| matvec4(cpu, black_box(&wr), &px.inputs(0, n), y))
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("tile_{qt}_{rows}x{cols}_bytes"));
        g.throughput(Throughput::Bytes(w.len() as u64));
        for n in [1, 32] {
            let y = &mut y[..n * rows];
            g.bench_with_input(BenchmarkId::new("tiled", n), &(), |b, _| {
                b.iter(|| ops::gemm_repacked_prepared(cpu, black_box(&wr), &px.inputs(0, n), y))
            });
        }
        g.finish();
    }
}

fn bench_ggml(c: &mut Criterion) {
    let cpu = Cpu::from(Isa::detect());
    if !ops::q_tile_runs(cpu, QuantType::Q4K, 4864) {
        eprintln!("no AVX512-VNNI: nothing to bench");
        return;
    }
    for (qt, rows, cols) in [(QuantType::Q4K, 896, 4864), (QuantType::Q6K, 896, 4864)] {
        let w = weights(qt, rows, cols);
        let wm = QMatrix::new(qt, &w, rows, cols);
        let nmax = 32;
        let x: Vec<f32> = bytes(nmax * cols, 3)
            .iter()
            .map(|&b| b as f32 / 128.0 - 1.0)
            .collect();
        let mut bufs: Vec<Vec<f32>> = (0..nmax).map(|_| vec![0f32; quant::q8_len(cols)]).collect();
        let qx: Vec<QuantX<'_>> = x
            .chunks_exact(cols)
            .zip(bufs.iter_mut())
            .map(|(x, b)| QuantX::new(cpu, x, b))
            .collect();
        let mut px = vec![0f32; nmax * ops::q_tile_x_len(cols)];
        let mut y = vec![0.0; nmax * rows];
        let mut g = c.benchmark_group(format!("tile_{qt}_{rows}x{cols}_flops"));
        for n in [4, 8, 16, 32] {
            g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
            let y = &mut y[..n * rows];
            g.bench_with_input(BenchmarkId::new("tiled", n), &(), |b, _| {
                b.iter(|| {
                    let px = ops::prepare_q_tile(cpu, &wm, &qx[..n], &mut px);
                    ops::gemm_q_prepared(cpu, black_box(&wm), &px, y)
                })
            });
            g.bench_with_input(BenchmarkId::new("matvec4", n), &(), |b, _| {
                b.iter(|| {
                    for t0 in (0..n).step_by(4) {
                        let y = &mut y[t0 * rows..(t0 + 4) * rows];
                        ops::matvec_q_rows(cpu, black_box(&wm), &qx[t0..t0 + 4], y)
                    }
                })
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("tile_{qt}_{rows}x{cols}_bytes"));
        g.throughput(Throughput::Bytes(w.len() as u64));
        let n = 32;
        g.bench_with_input(BenchmarkId::new("tiled", n), &(), |b, _| {
            b.iter(|| {
                let px = ops::prepare_q_tile(cpu, &wm, &qx[..n], &mut px);
                ops::gemm_q_prepared(cpu, black_box(&wm), &px, &mut y)
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_repacked, bench_ggml
}
criterion_main!(benches);
