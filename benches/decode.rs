//! Whole decode steps: the tiny fixture model and a synthetic model of Qwen2.5-0.5B's shape
//! (random bf16 weights, written to a temp dir and memory-mapped like a real one).
//! Throughput is reported as weight bytes streamed per step (GB/s).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qwenrt::engine::session::{Session, SessionOptions};
use qwenrt::model::synthetic::{write_synthetic_model, SyntheticShape};
use qwenrt::model::weights::Weights;
use qwenrt_kernels::Dtype;

fn bench_model(c: &mut Criterion, name: &str, weights: Arc<Weights>, threads: &[usize]) {
    let mut g = c.benchmark_group(format!("decode_step/{name}"));
    g.sample_size(10)
        .measurement_time(std::time::Duration::from_secs(4));
    g.throughput(Throughput::Bytes(weights.bytes_per_token() as u64));
    for &t in threads {
        let opts = SessionOptions {
            ctx: 256,
            max_chunk: 1,
            threads: t,
            isa: None,
            prefill_bf16: false,
            ..Default::default()
        };
        let mut s = Session::new(weights.clone(), &opts).unwrap();
        g.bench_function(format!("threads={t}"), |b| {
            b.iter(|| {
                if s.position() + 1 >= s.ctx() {
                    s.reset();
                }
                s.decode_step(7).unwrap();
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2-f32");
    bench_model(c, "tiny-f32", Arc::new(Weights::load(&tiny).unwrap()), &[1]);

    let dir = std::env::temp_dir().join("qwenrt-bench-qwen2.5-0.5b-shape");
    if !dir.join("model.safetensors").exists() {
        write_synthetic_model(&dir, SyntheticShape::QWEN2_5_0_5B, Dtype::BF16, 1).unwrap();
    }
    let w = Arc::new(Weights::load(&dir).unwrap());
    bench_model(c, "qwen2.5-0.5b-shape-bf16", w, &[1, 2]);
}

criterion_group!(benches, decode);
criterion_main!(benches);
