//! The repacked-layout matvec (`ops::matvec_repacked_prepared`) against the ggml-layout one
//! (`ops::matvec_q_rows`) at Qwen2.5-0.5B's decode shapes: Q5_0 and Q8_0 at 4864x896 and
//! 896x4864, and the Q8_0 output head 151936x896; one and four inputs, one thread, AVX-512
//! (with and without VNNI). Inputs are quantized / prepared outside the timed loop on both
//! sides. Throughput is bytes of weights per call, so criterion's rate reads as GB/s.

mod common;

use std::hint::black_box;

use common::{bytes, config, weights};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwenrt_kernels::ops::{self, QuantX, RepackedX};
use qwenrt_kernels::quant::{self, q8_len, QMatrix, QuantType, RepackedMatrix};
use qwenrt_kernels::{Cpu, Isa};

fn bench(c: &mut Criterion) {
    if Isa::detect() != Isa::Avx512 {
        eprintln!("no AVX-512: nothing to bench");
        return;
    }
    let isa = Isa::Avx512;
    let cpu = Cpu::from(isa);
    let mut variants = vec![("vnni", cpu)];
    if !cpu.vnni() {
        variants[0].0 = "plain";
    } else if std::env::var_os("REPACK_BENCH_PLAIN").is_some() {
        variants.push(("plain", cpu.without_vnni()));
    }
    let shapes = [
        (QuantType::Q4_0, 4864, 896),
        (QuantType::Q5_0, 4864, 896),
        (QuantType::Q5_0, 896, 4864),
        (QuantType::Q8_0, 4864, 896),
        (QuantType::Q8_0, 896, 4864),
        (QuantType::Q8_0, 151936, 896),
    ];
    for (qt, rows, cols) in shapes {
        let mut g = c.benchmark_group(format!("repack_{qt}_{rows}x{cols}"));
        let w = weights(qt, rows, cols);
        let mut wr = w.clone();
        quant::repack(qt, &w, cols, &mut wr);
        g.throughput(Throughput::Bytes(w.len() as u64));
        let x: Vec<f32> = bytes(4 * cols, 3)
            .iter()
            .map(|&b| b as f32 / 128.0 - 1.0)
            .collect();
        let mut bufs: Vec<Vec<f32>> = (0..4).map(|_| vec![0.0; q8_len(cols)]).collect();
        let qx: Vec<QuantX<'_>> = x
            .chunks_exact(cols)
            .zip(bufs.iter_mut())
            .map(|(x, b)| QuantX::new(isa, x, b))
            .collect();
        let mut px = vec![0.0; 4 * ops::repacked_x_len(cols)];
        // the per-call input preparation (quantize + transpose), against the same weight bytes
        g.bench_with_input(BenchmarkId::new("prepare_x", 1), &(), |b, _| {
            b.iter(|| ops::prepare_repacked_x(isa, cols, black_box(&x[..cols]), &mut px).n())
        });
        let px = ops::prepare_repacked_x(isa, cols, &x, &mut px);
        for &(name, cpu) in &variants {
            for n in [1, 4] {
                let mut y = vec![0.0; n * rows];
                g.bench_with_input(BenchmarkId::new(format!("ggml_{name}"), n), &(), |b, _| {
                    b.iter(|| {
                        let w = QMatrix::new(qt, black_box(&w), rows, cols);
                        ops::matvec_q_rows(cpu, &w, &qx[..n], &mut y)
                    })
                });
                g.bench_with_input(
                    BenchmarkId::new(format!("repacked_{name}"), n),
                    &(),
                    |b, _| {
                        b.iter(|| {
                            let wr = RepackedMatrix::new(qt, black_box(&wr), rows, cols);
                            ops::matvec_repacked_prepared(cpu, &wr, &px.inputs(0, n), &mut y)
                        })
                    },
                );
            }
        }
        g.finish();
        if w.len() < COLD_BYTES / 4 {
            cold(c, qt, rows, cols, &w, &wr, &qx, &px);
        }
    }
}

/// Bytes of weight copies the cold benches cycle through: far more than the L3, so every call
/// streams its matrix from DRAM, as decode does.
const COLD_BYTES: usize = 128 << 20;

/// The same matvecs on the next of many copies of the matrix each call (VNNI only).
#[allow(clippy::too_many_arguments)]
fn cold(
    c: &mut Criterion,
    qt: QuantType,
    rows: usize,
    cols: usize,
    w: &[u8],
    wr: &[u8],
    qx: &[QuantX<'_>],
    px: &RepackedX<'_>,
) {
    let cpu = Cpu::from(Isa::Avx512);
    let copies = COLD_BYTES / w.len();
    let ws: Vec<u8> = w.repeat(copies);
    let wrs: Vec<u8> = wr.repeat(copies);
    let mut g = c.benchmark_group(format!("repack_cold_{qt}_{rows}x{cols}"));
    g.throughput(Throughput::Bytes(w.len() as u64));
    for n in [1, 4] {
        let mut y = vec![0.0; n * rows];
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("ggml", n), &(), |b, _| {
            b.iter(|| {
                i = (i + 1) % copies;
                let wi = &ws[i * w.len()..(i + 1) * w.len()];
                ops::matvec_q_rows(
                    cpu,
                    &QMatrix::new(qt, black_box(wi), rows, cols),
                    &qx[..n],
                    &mut y,
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("repacked", n), &(), |b, _| {
            b.iter(|| {
                i = (i + 1) % copies;
                let wi = &wrs[i * w.len()..(i + 1) * w.len()];
                let wi = RepackedMatrix::new(qt, black_box(wi), rows, cols);
                ops::matvec_repacked_prepared(cpu, &wi, &px.inputs(0, n), &mut y)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
