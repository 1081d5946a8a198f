//! Kernel benchmarks at Qwen2.5-0.5B shapes (hidden 896, ffn 4864, vocab 151936, head_dim 64),
//! for every ISA this CPU runs, plus the pool-split versions on 1 and 2 threads.
//!
//! Throughput: bytes streamed (weights + activations) for matvec and the elementwise kernels;
//! for matmul and attention, `Elements` counts FLOPs (2 per multiply-add), so criterion's
//! "elem/s" reads as FLOP/s.

mod common;

use std::hint::black_box;

use common::{config_ms, data};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwenrt_kernels::ops::{self, Matrix};
use qwenrt_kernels::par::{self, Attention, KvLayout};
use qwenrt_kernels::{Bf16, Cpu, Dtype, Isa, ThreadPool, WeightType, F16, F32};

fn weights(n: usize, dt: Dtype) -> Vec<u8> {
    let v = data(n, 7);
    let mut out = Vec::with_capacity(n * dt.size());
    for x in v {
        match dt {
            Dtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes()),
        }
    }
    out
}

fn bench_matvec_dtype<W: WeightType>(c: &mut Criterion, shapes: &[(usize, usize)]) {
    let mut g = c.benchmark_group(format!("matvec_{}", W::DTYPE));
    for &(rows, cols) in shapes {
        let w = weights(rows * cols, W::DTYPE);
        let x = data(cols, 1);
        let mut y = vec![0.0; rows];
        let mut s = vec![0.0; ops::matvec_scratch_len(cols)];
        g.throughput(Throughput::Bytes(
            (rows * cols * W::SIZE + 4 * (cols + rows)) as u64,
        ));
        for isa in Isa::available() {
            g.bench_with_input(
                BenchmarkId::new(isa.to_string(), format!("{rows}x{cols}")),
                &(),
                |b, _| {
                    b.iter(|| ops::matvec::<W>(isa, black_box(&w), black_box(&x), &mut s, &mut y))
                },
            );
            if W::DTYPE == Dtype::BF16 && isa != Isa::Scalar {
                // Above: the fastest preparation of x (hi/lo split on AVX512-BF16, else even/odd
                // columns on AVX-512). Here the exact one where that differs, and the widening
                // kernel.
                if Cpu::from(isa).bf16() {
                    let mut s2 = vec![0.0; ops::matvec_scratch_len(cols)];
                    let exact = ops::MatvecX::new::<W>(Cpu::from(isa).without_bf16(), &x, &mut s2);
                    g.bench_with_input(
                        BenchmarkId::new(format!("{isa}_exact"), format!("{rows}x{cols}")),
                        &(),
                        |b, _| b.iter(|| ops::matvec_x::<W>(isa, black_box(&w), &exact, &mut y)),
                    );
                }
                let plain = ops::MatvecX::plain(&x);
                g.bench_with_input(
                    BenchmarkId::new(format!("{isa}_widen"), format!("{rows}x{cols}")),
                    &(),
                    |b, _| b.iter(|| ops::matvec_x::<W>(isa, black_box(&w), &plain, &mut y)),
                );
            }
        }
    }
    g.finish();
}

fn bench_matvec(c: &mut Criterion) {
    bench_matvec_dtype::<Bf16>(c, &[(896, 896), (4864, 896), (896, 4864), (151936, 896)]);
    bench_matvec_dtype::<F16>(c, &[(4864, 896)]);
    bench_matvec_dtype::<F32>(c, &[(4864, 896)]);
}

fn bench_matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul_BF16");
    for &(rows, k) in &[(896usize, 896usize), (4864, 896)] {
        let w = weights(rows * k, Dtype::BF16);
        for &n in &[64usize, 512] {
            let x = data(n * k, 2);
            let mut y = vec![0.0; n * rows];
            let mut s = vec![0.0; ops::matmul_bf16dot_scratch_len(n, k)];
            let mut pack = vec![0.0; ops::matmul_scratch_len()];
            g.throughput(Throughput::Elements((2 * n * rows * k) as u64));
            for isa in Isa::available() {
                if isa == Isa::Scalar && (n > 64 || rows > 896) {
                    continue; // seconds per iteration
                }
                g.bench_with_input(
                    BenchmarkId::new(isa.to_string(), format!("n{n}_{rows}x{k}")),
                    &(),
                    |b, _| {
                        b.iter(|| {
                            ops::matmul::<Bf16>(
                                isa,
                                Matrix::new(black_box(&w), k),
                                black_box(&x),
                                &mut pack,
                                &mut y,
                            )
                        })
                    },
                );
                if Cpu::from(isa).bf16() {
                    let id = BenchmarkId::new("avx512_bf16dot", format!("n{n}_{rows}x{k}"));
                    g.bench_with_input(id, &(), |b, _| {
                        b.iter(|| {
                            ops::matmul_bf16dot(
                                isa,
                                Matrix::new(black_box(&w), k),
                                black_box(&x),
                                &mut s,
                                &mut y,
                            )
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

fn bench_elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("elementwise");
    let n = 4864;
    let a = data(n, 3);
    let b = data(n, 4);
    let wb = weights(n, Dtype::BF16);
    let cos = data(32, 5);
    let sin = data(32, 6);
    for isa in Isa::available() {
        let mut y = a.clone();
        let mut out = vec![0.0; n];
        g.throughput(Throughput::Bytes((8 * n) as u64));
        g.bench_function(BenchmarkId::new("add", isa), |bch| {
            bch.iter(|| ops::add(isa, &mut y, black_box(&b)))
        });
        g.throughput(Throughput::Bytes((6 * n) as u64));
        g.bench_function(BenchmarkId::new("add_bias_bf16", isa), |bch| {
            bch.iter(|| ops::add_bias(isa, &mut y, black_box(&wb), Dtype::BF16))
        });
        g.bench_function(BenchmarkId::new("rmsnorm_bf16", isa), |bch| {
            bch.iter(|| ops::rmsnorm(isa, black_box(&a), &wb, Dtype::BF16, 1e-6, &mut out))
        });
        g.throughput(Throughput::Bytes((8 * n) as u64));
        g.bench_function(BenchmarkId::new("silu_mul", isa), |bch| {
            bch.iter(|| {
                y.copy_from_slice(&a);
                ops::silu_mul(isa, &mut y, black_box(&b))
            })
        });
        g.bench_function(BenchmarkId::new("rope_hd64", isa), |bch| {
            bch.iter(|| ops::rope(isa, &mut y, 64, black_box(&cos), black_box(&sin)))
        });
    }
    g.finish();
}

fn bench_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_hd64");
    let hd = 64;
    let len = 1024;
    let q = data(hd, 1);
    let k = data(len * hd, 2);
    let v = data(len * hd, 3);
    let mut scores = vec![0.0; len];
    let mut out = vec![0.0; hd];
    g.throughput(Throughput::Elements((4 * len * hd) as u64));
    for isa in Isa::available() {
        g.bench_function(
            BenchmarkId::new(isa.to_string(), format!("len{len}")),
            |b| {
                b.iter(|| {
                    let head = ops::AttnHead::<F32> {
                        q: black_box(&q),
                        keys: &k,
                        values: &v,
                        scale: 0.125,
                    };
                    ops::attention(isa, head, &mut scores, &mut out)
                })
            },
        );
    }
    g.finish();
}

fn bench_par(c: &mut Criterion) {
    let isa = Isa::detect();
    let mut g = c.benchmark_group(format!("par_{isa}"));
    let pools: Vec<ThreadPool> = [1, 2]
        .iter()
        .map(|&n| ThreadPool::new(n).unwrap())
        .collect();
    for pool in &pools {
        let nt = pool.n_threads();
        g.throughput(Throughput::Elements(nt as u64));
        g.bench_function(BenchmarkId::new("pool_dispatch", format!("{nt}t")), |b| {
            b.iter(|| {
                pool.run(&|tid| {
                    black_box(tid);
                })
            })
        });
    }
    for &(rows, cols) in &[(4864usize, 896usize), (151936, 896)] {
        let w = weights(rows * cols, Dtype::BF16);
        let x = data(cols, 1);
        let mut y = vec![0.0; rows];
        let mut s = vec![0.0; ops::matvec_scratch_len(cols)];
        g.throughput(Throughput::Bytes((rows * cols * 2) as u64));
        for pool in &pools {
            g.bench_function(
                BenchmarkId::new(
                    format!("matvec_bf16_{rows}x{cols}"),
                    format!("{}t", pool.n_threads()),
                ),
                |b| b.iter(|| par::matvec::<Bf16>(pool, isa, black_box(&w), &x, &mut s, &mut y)),
            );
        }
    }
    {
        let (rows, k, n) = (4864usize, 896usize, 512usize);
        let w = weights(rows * k, Dtype::BF16);
        let x = data(n * k, 2);
        let mut y = vec![0.0; n * rows];
        g.throughput(Throughput::Elements((2 * n * rows * k) as u64));
        for pool in &pools {
            let nt = pool.n_threads();
            let mut pack = vec![0.0; par::matmul_scratch_len(nt)];
            let mut s = vec![0.0; par::matmul_bf16dot_scratch_len(nt, n, k)];
            g.bench_function(
                BenchmarkId::new(
                    "matmul_bf16_n512_4864x896",
                    format!("{}t", pool.n_threads()),
                ),
                |b| {
                    b.iter(|| {
                        par::matmul::<Bf16>(
                            pool,
                            isa,
                            Matrix::new(black_box(&w), k),
                            &x,
                            &mut pack,
                            &mut y,
                        )
                    })
                },
            );
            if Cpu::from(isa).bf16() {
                let id = BenchmarkId::new(
                    "matmul_bf16dot_n512_4864x896",
                    format!("{}t", pool.n_threads()),
                );
                g.bench_function(id, |b| {
                    b.iter(|| {
                        par::matmul_bf16dot(
                            pool,
                            isa,
                            Matrix::new(black_box(&w), k),
                            &x,
                            &mut s,
                            &mut y,
                        )
                    })
                });
            }
        }
    }
    {
        // Attention at Qwen2.5-0.5B heads (14 query heads, 2 kv heads, head_dim 64): prefill
        // chunks of 512 tokens from position 0 and from 2500, and one decode step at 2500.
        // `rows` is the per-(token, head) kernel, `tiled` the blocked one; `attention` picks.
        // FLOPs: QK and PV, 2 each per (query, key, dim), over the causal (query, key) pairs.
        let (hq, hkv, hd, cap) = (14usize, 2usize, 64usize, 3072usize);
        let layout = KvLayout {
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: hd,
            cap,
        };
        let k = data(hkv * cap * hd, 4);
        let v = data(hkv * cap * hd, 6);
        for &(pos0, n) in &[(0usize, 512usize), (2500, 512), (2500, 1)] {
            let q = data(n * hq * hd, 5);
            let mut out = vec![0.0; n * hq * hd];
            let pairs = n * pos0 + n * (n + 1) / 2;
            g.throughput(Throughput::Elements((4 * hd * hq * pairs) as u64));
            type AttnFn<'a> = fn(&Attention<'a, F32>, &ThreadPool, Isa, &mut [f32], &mut [f32]);
            let fns: [(&str, AttnFn<'_>); 3] = [
                ("rows", Attention::run_rows),
                ("tiled", Attention::run_tiled),
                ("attention", Attention::run),
            ];
            for pool in &pools {
                let nt = pool.n_threads();
                let mut scores = vec![0.0; par::scores_len(nt, hq, cap)];
                for (name, f) in fns {
                    let id = BenchmarkId::new(
                        format!("attention_{name}_n{n}_pos{pos0}"),
                        format!("{nt}t"),
                    );
                    g.bench_function(id, |b| {
                        b.iter(|| {
                            let attn = Attention::<F32> {
                                layout,
                                pos0,
                                q: black_box(&q),
                                k: &k,
                                v: &v,
                            };
                            f(&attn, pool, isa, &mut scores, &mut out)
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

/// Batched decode's matvec: `n` inputs through `par::matvec_rows` over one bf16 matrix at the
/// MLP's shapes (gate/up `4864x896`, down `896x4864`). Throughput is the weight bytes streamed
/// per call, so GB/s that grows with `n` is the multi-row kernels sharing each weight load.
fn bench_matvec_rows(c: &mut Criterion) {
    let isa = Isa::detect();
    let mut g = c.benchmark_group(format!("matvec_rows_{isa}"));
    let pools: Vec<ThreadPool> = [1, 2]
        .iter()
        .map(|&n| ThreadPool::new(n).unwrap())
        .collect();
    for &(rows, cols) in &[(4864usize, 896usize), (896, 4864)] {
        let w = weights(rows * cols, Dtype::BF16);
        g.throughput(Throughput::Bytes((rows * cols * 2) as u64));
        for n in [1usize, 4, 8] {
            let x = data(n * cols, 3);
            let mut y = vec![0.0; n * rows];
            let mut s = vec![0.0; par::matvec_rows_scratch_len(n, cols)];
            for pool in &pools {
                let id = BenchmarkId::new(
                    format!("bf16_{rows}x{cols}"),
                    format!("n{n}_{}t", pool.n_threads()),
                );
                g.bench_function(id, |b| {
                    b.iter(|| {
                        par::matvec_rows::<Bf16>(
                            pool,
                            isa,
                            Matrix::new(black_box(&w), cols),
                            &x,
                            &mut s,
                            &mut y,
                        )
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config_ms(400, 1500);
    targets = bench_matvec, bench_matvec_rows, bench_matmul, bench_elementwise, bench_attention, bench_par
}
criterion_main!(benches);
