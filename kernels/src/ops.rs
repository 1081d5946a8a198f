//! Safe entry points. Each checks its buffer lengths, then dispatches on the [`Isa`] to the
//! scalar reference or a SIMD body (`avx2`, `avx512`), which have the same names and contracts.
//!
//! Weights are little-endian bytes of dtype `W` (or a run-time [`Dtype`] for the small vectors:
//! norm weights and biases), never assumed aligned.

use crate::dtype::{Dtype, WeightType};
use crate::isa::Isa;
use crate::scalar;

/// `sum(a[i] * b[i])`.
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    let _ = isa;
    scalar::dot(a, b)
}

/// `y[r] = sum_c w[r, c] * x[c]`: `w` is row-major `[y.len(), x.len()]` of dtype `W`.
pub fn matvec<W: WeightType>(isa: Isa, w: &[u8], x: &[f32], y: &mut [f32]) {
    assert!(w.len() >= y.len() * x.len() * W::SIZE, "matvec: weight buffer too short");
    let _ = isa;
    scalar::matvec::<W>(w, x, y)
}

/// `y = x · wᵀ`: `x` is `[n, k]`, `w` is `[rows, k]`, `y` is `[n, rows]`, row-major.
pub fn matmul<W: WeightType>(isa: Isa, w: &[u8], k: usize, x: &[f32], y: &mut [f32]) {
    let _ = isa;
    scalar::matmul::<W>(w, k, x, y)
}

/// `out = x / sqrt(mean(x²) + eps) * weight`.
pub fn rmsnorm(isa: Isa, x: &[f32], weight: &[u8], wdtype: Dtype, eps: f32, out: &mut [f32]) {
    assert!(weight.len() >= x.len() * wdtype.size(), "rmsnorm: weight too short");
    let _ = isa;
    scalar::rmsnorm(x, weight, wdtype, eps, out)
}

/// `y += b`.
pub fn add_bias(isa: Isa, y: &mut [f32], b: &[u8], bdtype: Dtype) {
    assert!(b.len() >= y.len() * bdtype.size(), "add_bias: bias too short");
    let _ = isa;
    scalar::add_bias(y, b, bdtype)
}

/// `y += x`.
pub fn add(isa: Isa, y: &mut [f32], x: &[f32]) {
    let _ = isa;
    scalar::add(y, x)
}

/// `gate = silu(gate) * up`.
pub fn silu_mul(isa: Isa, gate: &mut [f32], up: &[f32]) {
    let _ = isa;
    scalar::silu_mul(gate, up)
}

/// In-place softmax; returns the log-normalizer (logsumexp of the input).
pub fn softmax(isa: Isa, x: &mut [f32]) -> f32 {
    let _ = isa;
    scalar::softmax(x)
}

/// NeoX rotate-half RoPE on each `head_dim` chunk of `x`.
pub fn rope(isa: Isa, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let _ = isa;
    scalar::rope(x, head_dim, cos, sin)
}

/// One query head over `keys`/`values` (`[len, head_dim]`); `scores` needs `len` floats.
pub fn attention(
    isa: Isa,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let _ = isa;
    scalar::attention(q, keys, values, scale, scores, out)
}

/// Index of the largest element.
pub fn argmax(isa: Isa, x: &[f32]) -> usize {
    let _ = isa;
    scalar::argmax(x)
}
