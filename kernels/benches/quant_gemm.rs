//! The quantized prefill matmul (`par::matmul_q`) at Qwen2.5-0.5B shapes, n = 512 prompt rows,
//! on 2 threads with the best ISA, beside the f32 FMA matmul (`par::matmul::<F32>`) on the same
//! shapes. `Elements` counts FLOPs (2 per multiply-add), so criterion's "elem/s" reads as
//! FLOP/s.

mod common;

use std::hint::black_box;

use common::{config_ms, data};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwenrt_kernels::ops::Matrix;
use qwenrt_kernels::quant::QMatrix;
use qwenrt_kernels::{par, Cpu, QuantType, ThreadPool, F32};

/// `rows` random rows of `qt` blocks: random quant bytes, small f16 scales.
fn qweights(qt: QuantType, rows: usize, k: usize) -> Vec<u8> {
    let len = rows * qt.row_bytes(k).unwrap();
    let mut w: Vec<u8> = data(len, 9)
        .iter()
        .map(|v| (v * 512.0) as i32 as u8)
        .collect();
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for blk in w.chunks_exact_mut(qt.block_bytes()) {
        let at = if qt == QuantType::Q6K { 208 } else { 0 };
        blk[at..at + 2].copy_from_slice(&scale);
        if matches!(qt, QuantType::Q4K | QuantType::Q5K) {
            blk[2..4].copy_from_slice(&scale);
        }
    }
    w
}

fn bench(c: &mut Criterion) {
    // QWENRT_ISA=avx2 benches the AVX2 kernels on an AVX-512 machine
    let cpu = Cpu::from_env().unwrap_or_else(|e| panic!("{e}"));
    let no_vnni = std::env::var_os("QWENRT_BENCH_NO_VNNI").is_some_and(|v| v == "1");
    let isa = if no_vnni { cpu.without_vnni() } else { cpu };
    let pool = ThreadPool::new(2).unwrap();
    let nt = pool.n_threads();
    let n = 512;
    let mut g = c.benchmark_group(format!("matmul_q_{isa}_n{n}_{nt}t"));
    for (rows, k) in [(896usize, 896usize), (4864, 896), (896, 4864)] {
        let x = data(n * k, 1);
        let mut y = vec![0.0; n * rows];
        g.throughput(Throughput::Elements((2 * n * rows * k) as u64));
        for qt in [
            QuantType::Q5_0,
            QuantType::Q8_0,
            QuantType::Q4K,
            QuantType::Q6K,
        ] {
            if qt.row_bytes(k).is_none() {
                continue;
            }
            let w = qweights(qt, rows, k);
            let mut s = vec![0.0; par::matmul_q_scratch_len(nt, n, k)];
            // QWENRT_BENCH_NO_VNNI=1: the vpmaddubsw kernels, to see what VNNI buys
            let name = if no_vnni {
                format!("{}_novnni", qt.name())
            } else {
                qt.name().to_string()
            };
            g.bench_function(BenchmarkId::new(name, format!("{rows}x{k}")), |b| {
                b.iter(|| {
                    let w = QMatrix::new(qt, black_box(&w), rows, k);
                    par::matmul_q(&pool, isa, &w, &x, &mut s, &mut y)
                })
            });
        }
        let w: Vec<u8> = data(rows * k, 7)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut pack = vec![0.0; par::matmul_scratch_len(nt)];
        g.bench_function(BenchmarkId::new("F32", format!("{rows}x{k}")), |b| {
            b.iter(|| {
                par::matmul::<F32>(
                    &pool,
                    isa,
                    Matrix::new(black_box(&w), k),
                    &x,
                    &mut pack,
                    &mut y,
                )
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = config_ms(300, 1500);
    targets = bench
}
criterion_main!(benches);
