//! Scalar reference kernels: plain loops, f32 accumulation. Every SIMD body is tested against
//! these, and they are the portable fallback (`Isa::Scalar`).

use crate::dtype::{Dtype, KvType, WeightType};
use crate::layout::AttnHead;

/// `sum(a[i] * b[i])`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y[r] = sum_c w[r, c] * x[c]` for `r in 0..y.len()`; `w` is row-major `[y.len(), x.len()]`.
pub fn matvec<W: WeightType>(w: &[u8], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    assert!(
        w.len() >= y.len() * cols * W::SIZE,
        "matvec: weight buffer too short"
    );
    for (r, yr) in y.iter_mut().enumerate() {
        let base = r * cols;
        let mut acc = 0.0f32;
        for (c, xc) in x.iter().enumerate() {
            acc += W::get(w, base + c) * xc;
        }
        *yr = acc;
    }
}

/// `y[t, r] = sum_c w[r, c] * x[t, c]`: `x` is `[n, k]`, `w` is `[rows, k]`, `y` is `[n, rows]`,
/// all row-major, `n = x.len() / k`, `rows = y.len() / n`.
pub fn matmul<W: WeightType>(w: &[u8], k: usize, x: &[f32], y: &mut [f32]) {
    let Some((n, rows)) = matmul_dims(k, x, y) else {
        return;
    };
    for t in 0..n {
        matvec::<W>(w, &x[t * k..(t + 1) * k], &mut y[t * rows..(t + 1) * rows]);
    }
}

/// The shape every matmul entry point derives from its buffers: `Some((n, rows))` with
/// `n = x.len() / k` tokens and `rows = y.len() / n` outputs each, or `None` when there is
/// nothing to compute (no tokens; or `k == 0`, where `y` is zeroed: an empty sum).
pub fn matmul_dims(k: usize, x: &[f32], y: &mut [f32]) -> Option<(usize, usize)> {
    if k == 0 {
        y.iter_mut().for_each(|v| *v = 0.0);
        return None;
    }
    let n = x.len() / k;
    if n == 0 {
        return None;
    }
    Some((n, y.len() / n))
}

/// `out = x / sqrt(mean(x^2) + eps) * weight`, with `weight` of any dtype.
pub fn rmsnorm(x: &[f32], weight: &[u8], wdtype: Dtype, eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "rmsnorm: length mismatch");
    if x.is_empty() {
        return;
    }
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for (i, (o, v)) in out.iter_mut().zip(x).enumerate() {
        *o = v * inv * wdtype.get(weight, i);
    }
}

/// `y[i] += b[i]`, with `b` of any dtype.
pub fn add_bias(y: &mut [f32], b: &[u8], bdtype: Dtype) {
    for (i, v) in y.iter_mut().enumerate() {
        *v += bdtype.get(b, i);
    }
}

/// `y[i] += x[i]`.
pub fn add(y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "add: length mismatch");
    for (a, b) in y.iter_mut().zip(x) {
        *a += b;
    }
}

/// The wrapping sum of `b` read as little-endian u64 words, each byte past the last whole
/// word added as itself: a checksum for streaming reads (`ops::stream_sum`).
pub fn stream_sum(b: &[u8]) -> u64 {
    let words = b.chunks_exact(8);
    let tail = words.remainder().iter().map(|&v| v as u64);
    words
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
        .chain(tail)
        .fold(0u64, u64::wrapping_add)
}

/// `gate[i] = silu(gate[i]) * up[i]`, `silu(g) = g / (1 + exp(-g))`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: length mismatch");
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// In-place softmax. Returns the log of the normalizer, `max + ln(sum(exp(x - max)))`.
pub fn softmax(x: &mut [f32]) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
    max + sum.ln()
}

/// NeoX rotate-half RoPE on every head of `x` (`[heads, head_dim]`): for `i < head_dim/2`,
/// `(a, b) = (x[i], x[i + half])` becomes `(a cos_i - b sin_i, b cos_i + a sin_i)`.
pub fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    assert!(
        cos.len() >= half && sin.len() >= half,
        "rope: table too short"
    );
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let a = head[i];
            let b = head[i + half];
            head[i] = a * cos[i] - b * sin[i];
            head[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

/// One query head against `len` cached positions ([`AttnHead`]: `keys`/`values` are
/// `[len, head_dim]` of KV type `T`, each element widened to f32 exactly, then the f32 math
/// below), `scores` has room for `len`, `out` is `[head_dim]`.
/// `out = softmax(keys · q * scale) · values`.
pub fn attention<T: KvType>(head: AttnHead<'_, T>, scores: &mut [f32], out: &mut [f32]) {
    let len = head.checked_len(scores, out);
    let hd = head.q.len();
    out.iter_mut().for_each(|v| *v = 0.0);
    if len == 0 {
        return;
    }
    let scores = &mut scores[..len];
    for (p, s) in scores.iter_mut().enumerate() {
        let key = &head.keys[p * hd..(p + 1) * hd];
        // the same sum as `dot(q, key)` on the widened key
        let dot: f32 = head.q.iter().zip(key).map(|(x, &k)| x * T::to_f32(k)).sum();
        *s = dot * head.scale;
    }
    softmax(scores);
    for (p, s) in scores.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&head.values[p * hd..(p + 1) * hd]) {
            *o += s * T::to_f32(v);
        }
    }
}

/// Index of the largest element (the first one on ties); 0 for an empty slice.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best
}
