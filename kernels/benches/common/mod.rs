//! Setup shared by the kernels' benches: deterministic random bytes and floats, valid random
//! weight blocks, and the criterion settings (short runs; `--measurement-time` lengthens
//! them).

// Each bench binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;
use qwenrt_kernels::quant::QuantType;

/// A xorshift32 stream from `seed`.
fn xorshift(seed: u32) -> impl FnMut() -> u32 {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    }
}

/// `n` random bytes.
pub fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut next = xorshift(seed);
    (0..n).map(|_| (next() >> 11) as u8).collect()
}

/// `n` random floats in [-0.5, 0.5).
pub fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut next = xorshift(seed);
    (0..n)
        .map(|_| (next() >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

/// Valid random blocks: random quants, every f16 scale of the format set to a small finite
/// value (Q4_K / Q5_K have two per block, Q6_K one at byte 208, the others one at byte 0).
pub fn weights(qt: QuantType, rows: usize, cols: usize) -> Vec<u8> {
    let mut w = bytes(rows * qt.row_bytes(cols).unwrap(), 7);
    let d = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let at: &[usize] = match qt {
        QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q6K => &[208],
        _ => &[0],
    };
    for b in w.chunks_exact_mut(qt.block_bytes()) {
        for &i in at {
            b[i..i + 2].copy_from_slice(&d);
        }
    }
    w
}

/// Short runs: 10 samples of about `measure_ms` each, after `warm_ms` of warm-up.
pub fn config_ms(warm_ms: u64, measure_ms: u64) -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(warm_ms))
        .measurement_time(Duration::from_millis(measure_ms))
}

/// Short runs: 10 samples of about a second each.
pub fn config() -> Criterion {
    config_ms(300, 1000)
}
