//! Elementwise kernels: rmsnorm, bias and residual adds, SiLU, softmax, RoPE.

use super::attention::dot_kv;
use crate::dtype::{Dtype, WeightType};
use crate::simd::Simd;

/// `out[i] = x[i] * inv * w[i]`.
///
/// # Safety
/// `w` holds `x.len()` elements of `W`; `out.len() == x.len()`.
#[inline(always)]
unsafe fn scale_mul<S: Simd, W: WeightType>(s: S, x: &[f32], inv: f32, w: &[u8], out: &mut [f32]) {
    let n = x.len();
    let vi = s.splat(inv);
    let mut i = 0;
    while i < n {
        let left = n - i;
        // SAFETY: element i < n is inside x, w and out, and the tail accesses cover
        // min(left, LANES) elements of each.
        unsafe {
            let v = s.load_tail(x.as_ptr().add(i), left);
            let wv = s.load_w_tail::<W>(w.as_ptr(), i, left);
            s.store_tail(out.as_mut_ptr().add(i), left, s.mul(s.mul(v, vi), wv));
        }
        i += S::LANES;
    }
}

/// `out = x / sqrt(mean(x²) + eps) * weight`.
///
/// # Safety
/// `weight` holds `x.len()` elements of `wdtype`, `out.len() == x.len()`.
#[inline(always)]
pub(crate) unsafe fn rmsnorm<S: Simd>(
    s: S,
    x: &[f32],
    weight: &[u8],
    wdtype: Dtype,
    eps: f32,
    out: &mut [f32],
) {
    if x.is_empty() {
        return;
    }
    s.vectorize(
        #[inline(always)]
        || {
            // SAFETY: x is read twice as n floats; the rest is the forwarded contract.
            unsafe {
                let ss =
                    dot_kv::<S, crate::F32>(s, x.as_ptr(), x.as_ptr(), x.len()) / x.len() as f32;
                let inv = 1.0 / (ss + eps).sqrt();
                match wdtype {
                    Dtype::F32 => scale_mul::<S, crate::F32>(s, x, inv, weight, out),
                    Dtype::F16 => scale_mul::<S, crate::F16>(s, x, inv, weight, out),
                    Dtype::BF16 => scale_mul::<S, crate::Bf16>(s, x, inv, weight, out),
                }
            }
        },
    )
}

/// `y[i] += b[i]`.
///
/// # Safety
/// `b` holds `y.len()` elements of `W`.
#[inline(always)]
unsafe fn add_w<S: Simd, W: WeightType>(s: S, y: &mut [f32], b: &[u8]) {
    let n = y.len();
    let mut i = 0;
    while i < n {
        let left = n - i;
        // SAFETY: element i < n is inside y and b, and the tail accesses cover min(left, LANES)
        // elements of each.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            let bv = s.load_w_tail::<W>(b.as_ptr(), i, left);
            s.store_tail(p, left, s.add(s.load_tail(p, left), bv));
        }
        i += S::LANES;
    }
}

/// `y[i] += b[i]` with `b` of dtype `bdtype`.
///
/// # Safety
/// `b` holds `y.len()` elements of `bdtype`.
#[inline(always)]
pub(crate) unsafe fn add_bias<S: Simd>(s: S, y: &mut [f32], b: &[u8], bdtype: Dtype) {
    s.vectorize(
        #[inline(always)]
        || {
            // SAFETY: forwarded contract.
            unsafe {
                match bdtype {
                    Dtype::F32 => add_w::<S, crate::F32>(s, y, b),
                    Dtype::F16 => add_w::<S, crate::F16>(s, y, b),
                    Dtype::BF16 => add_w::<S, crate::Bf16>(s, y, b),
                }
            }
        },
    )
}

/// `y[i] += x[i]`.
///
/// # Safety
/// `x.len() >= y.len()`.
#[inline(always)]
pub(crate) unsafe fn add<S: Simd>(s: S, y: &mut [f32], x: &[f32]) {
    let xb: &[u8] = bytemuck::cast_slice(x);
    s.vectorize(
        #[inline(always)]
        || {
            // SAFETY: x holds at least y.len() floats (contract).
            unsafe { add_w::<S, crate::F32>(s, y, xb) }
        },
    )
}

/// `gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
///
/// # Safety
/// `up.len() >= gate.len()`.
#[inline(always)]
pub(crate) unsafe fn silu_mul<S: Simd>(s: S, gate: &mut [f32], up: &[f32]) {
    s.vectorize(
        #[inline(always)]
        || {
            let n = gate.len();
            let one = s.splat(1.0);
            let mut i = 0;
            while i < n {
                let left = n - i;
                // SAFETY: element i < n is inside gate and up; tails cover min(left, LANES).
                unsafe {
                    let p = gate.as_mut_ptr().add(i);
                    let g = s.load_tail(p, left);
                    let u = s.load_tail(up.as_ptr().add(i), left);
                    let e = s.exp(s.sub(s.zero(), g));
                    s.store_tail(p, left, s.mul(s.div(g, s.add(one, e)), u));
                }
                i += S::LANES;
            }
        },
    )
}

/// Largest element (NaN ignored; -inf for an empty slice).
#[inline(always)]
fn max_of<S: Simd>(s: S, x: &[f32]) -> f32 {
    let n = x.len();
    let ninf = s.splat(f32::NEG_INFINITY);
    let mut m0 = ninf;
    let mut m1 = ninf;
    let mut i = 0;
    // SAFETY: full vectors while i + 2 LANES <= n, then tails starting at i < n (masked-off
    // lanes read as -inf).
    unsafe {
        while i + 2 * S::LANES <= n {
            // max(v, acc) returns acc when v is NaN.
            m0 = s.max(s.load(x.as_ptr().add(i)), m0);
            m1 = s.max(s.load(x.as_ptr().add(i + S::LANES)), m1);
            i += 2 * S::LANES;
        }
        while i < n {
            m0 = s.max(s.load_tail_or(x.as_ptr().add(i), n - i, ninf), m0);
            i += S::LANES;
        }
    }
    s.hmax(s.max(m0, m1))
}

/// In-place softmax; returns `max + ln(sum(exp(x - max)))`.
///
/// Must run inside [`Simd::vectorize`].
#[inline(always)]
pub(crate) fn softmax<S: Simd>(s: S, x: &mut [f32]) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let n = x.len();
    let l = S::LANES;
    let max = max_of(s, x);
    let vm = s.splat(max);
    let p = x.as_mut_ptr();
    let mut s0 = s.zero();
    let mut s1 = s.zero();
    let mut i = 0;
    // SAFETY: full vectors while i + 2 LANES <= n, then tails starting at i < n, all inside x.
    unsafe {
        while i + 2 * l <= n {
            let e0 = s.exp(s.sub(s.load(p.add(i)), vm));
            let e1 = s.exp(s.sub(s.load(p.add(i + l)), vm));
            s.store(p.add(i), e0);
            s.store(p.add(i + l), e1);
            s0 = s.add(s0, e0);
            s1 = s.add(s1, e1);
            i += 2 * l;
        }
        while i < n {
            let e = s.exp(s.sub(s.load_tail(p.add(i), n - i), vm));
            s.store_tail(p.add(i), n - i, e);
            s0 = s.add_tail(s0, e, n - i);
            i += l;
        }
        let sum = s.hsum(s.add(s0, s1));
        let inv = s.splat(1.0 / sum);
        let mut i = 0;
        while i < n {
            let v = s.load_tail(p.add(i), n - i);
            s.store_tail(p.add(i), n - i, s.mul(v, inv));
            i += l;
        }
        max + sum.ln()
    }
}

/// NeoX rotate-half RoPE on each `head_dim` chunk of `x`.
///
/// # Safety
/// `cos` and `sin` hold at least `head_dim / 2` floats.
#[inline(always)]
pub(crate) unsafe fn rope<S: Simd>(s: S, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    if head_dim == 0 {
        return;
    }
    s.vectorize(
        #[inline(always)]
        || {
            let half = head_dim / 2;
            for head in x.chunks_exact_mut(head_dim) {
                let h = head.as_mut_ptr();
                let mut i = 0;
                while i < half {
                    let left = half - i;
                    // SAFETY: element i < half is inside both halves of head and the tables;
                    // the tails cover min(left, LANES) elements of each.
                    unsafe {
                        let a = s.load_tail(h.add(i), left);
                        let b = s.load_tail(h.add(i + half), left);
                        let c = s.load_tail(cos.as_ptr().add(i), left);
                        let sn = s.load_tail(sin.as_ptr().add(i), left);
                        // Separate multiplies (no FMA) to round exactly like the scalar
                        // reference.
                        let ra = s.sub(s.mul(a, c), s.mul(b, sn));
                        let rb = s.add(s.mul(b, c), s.mul(a, sn));
                        s.store_tail(h.add(i), left, ra);
                        s.store_tail(h.add(i + half), left, rb);
                    }
                    i += S::LANES;
                }
            }
        },
    )
}

/// [`crate::scalar::stream_sum`], reading four vectors (`16 * LANES` bytes) per step in
/// independent loads, with the decode matvecs' prefetch ([`Simd::prefetch_ahead`]). Integer
/// sums wrap, so the order of the lanes does not change the result.
#[inline(always)]
pub(crate) fn stream_sum<S: Simd>(s: S, b: &[u8]) -> u64 {
    s.vectorize(
        #[inline(always)]
        || {
            let vb = 4 * S::LANES;
            let step = 4 * vb;
            let steps = b.len() / step;
            let p = b.as_ptr();
            let mut acc = [s.zero_u64(); 4];
            for i in 0..steps {
                // SAFETY: step i < steps covers bytes step i..step (i + 1) <= b.len(); the
                // prefetches may point past b, where they are no-op hints.
                unsafe {
                    let q = p.add(step * i);
                    s.prefetch_ahead(q, step);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = s.add_u64(*a, s.load_u64(q.add(vb * j)));
                    }
                }
            }
            let v = s.add_u64(s.add_u64(acc[0], acc[1]), s.add_u64(acc[2], acc[3]));
            s.hsum_u64(v)
                .wrapping_add(crate::scalar::stream_sum(&b[step * steps..]))
        },
    )
}
