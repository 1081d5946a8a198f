//! Quick matvec bandwidth probe: `cargo run --release -p qwenrt-kernels --example matvec_bw [rows cols threads]`.
//! Prints the median GB/s of 15 runs for each ISA (bf16 weights).
use qwenrt_kernels::{par, Bf16, Isa, ThreadPool};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (rows, cols, threads) = (
        a.first().copied().unwrap_or(151_936),
        a.get(1).copied().unwrap_or(896),
        a.get(2).copied().unwrap_or(1),
    );
    let w: Vec<u8> = (0..rows * cols * 2)
        .map(|i| (i * 7 % 251) as u8 & 0x3f)
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| i as f32 * 0.001).collect();
    let mut y = vec![0.0f32; rows];
    let mut s = vec![0.0f32; qwenrt_kernels::ops::matvec_scratch_len(cols)];
    let pool = ThreadPool::new(threads).unwrap();
    for isa in Isa::available() {
        let mut t = Vec::new();
        for _ in 0..15 {
            let t0 = Instant::now();
            par::matvec::<Bf16>(&pool, isa, &w, &x, &mut s, &mut y);
            t.push(t0.elapsed().as_secs_f64());
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{isa:>7} rows {rows} cols {cols} threads {threads}: {:.2} GB/s (median {:.3} ms)",
            w.len() as f64 / t[7] / 1e9,
            t[7] * 1e3
        );
    }
}
