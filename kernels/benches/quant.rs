//! Quantized matvecs (`ops::matvec_q_rows`) at Qwen2.5-0.5B's MLP shapes (4864x896 and
//! 896x4864; 4864x1024 for the K-quants, whose rows are whole superblocks of 256), one and
//! four inputs, for every ggml format on the best ISA this CPU runs (and on AVX-512 also
//! without VNNI). Throughput is bytes of weights streamed per call, so
//! criterion's rate reads as GB/s of weights (with 4 inputs: weights read once for all four).

mod common;

use std::hint::black_box;

use common::{bytes, config, weights};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwenrt_kernels::ops::{self, QuantX};
use qwenrt_kernels::quant::{q8_len, QMatrix, QuantType};
use qwenrt_kernels::Cpu;

fn bench_matvec_q(c: &mut Criterion) {
    // QWENRT_ISA=avx2 benches the AVX2 kernels on an AVX-512 machine
    let cpu = Cpu::from_env().unwrap_or_else(|e| panic!("{e}"));
    let isa = cpu.isa();
    let mut variants = vec![(isa.to_string(), cpu)];
    if cpu.vnni() {
        variants.push((format!("{isa}_novnni"), cpu.without_vnni()));
    }
    for qt in QuantType::ALL {
        let mut g = c.benchmark_group(format!("matvec_q_{qt}"));
        // (K-quants need whole superblocks of 256 columns: 4864x1024 stands in for 4864x896)
        let wide = if qt.block_elems() == 256 { 1024 } else { 896 };
        for (rows, cols) in [(4864, wide), (896, 4864)] {
            let w = weights(qt, rows, cols);
            g.throughput(Throughput::Bytes(w.len() as u64));
            let xs: Vec<Vec<f32>> = (0..4)
                .map(|t| {
                    bytes(cols, 3 + t)
                        .iter()
                        .map(|&b| b as f32 / 128.0 - 1.0)
                        .collect()
                })
                .collect();
            let mut bufs: Vec<Vec<f32>> = (0..4).map(|_| vec![0.0; q8_len(cols)]).collect();
            let qx: Vec<QuantX<'_>> = xs
                .iter()
                .zip(bufs.iter_mut())
                .map(|(x, b)| QuantX::new(isa, x, b))
                .collect();
            for (name, cpu) in &variants {
                for n in [1, 4] {
                    let mut y = vec![0.0; n * rows];
                    g.bench_with_input(
                        BenchmarkId::new(format!("{name}_x{n}"), format!("{rows}x{cols}")),
                        &(),
                        |b, _| {
                            b.iter(|| {
                                let w = QMatrix::new(qt, black_box(&w), rows, cols);
                                ops::matvec_q_rows(*cpu, &w, &qx[..n], &mut y)
                            })
                        },
                    );
                }
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_matvec_q
}
criterion_main!(benches);
