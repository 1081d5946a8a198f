//! Setup shared by the quantized kernels' benches: deterministic random bytes, valid random
//! weight blocks, and the criterion settings (short runs; `--measurement-time` lengthens
//! them).

use std::time::Duration;

use criterion::Criterion;
use qwenrt_kernels::quant::QuantType;

/// xorshift32 bytes.
pub fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 11) as u8
        })
        .collect()
}

/// Valid random blocks: random quants, every f16 scale set to a small finite value.
pub fn weights(qt: QuantType, rows: usize, cols: usize) -> Vec<u8> {
    let mut w = bytes(rows * qt.row_bytes(cols).unwrap(), 7);
    let d = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for b in w.chunks_exact_mut(qt.block_bytes()) {
        b[..2].copy_from_slice(&d);
    }
    w
}

/// Short runs: 10 samples of about a second each.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
}
