//! AVX2 elementwise kernels: rmsnorm, bias and residual adds, SiLU, softmax, RoPE.

use core::arch::x86_64::*;

use super::{dot_raw, exp_ps, hmax, hsum, ld, ld_part, mask8, prefetch_ahead};
use crate::dtype::{Dtype, WeightType};

/// `out[i] = x[i] * inv * w[i]`.
///
/// # Safety
/// `w` holds `x.len()` elements of `W`; `out.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_mul<W: WeightType>(x: &[f32], inv: f32, w: &[u8], out: &mut [f32]) {
    let n = x.len();
    let vi = _mm256_set1_ps(inv);
    let mut i = 0;
    while i < n {
        let cnt = (n - i).min(8);
        let m = mask8(cnt);
        // SAFETY: lanes masked / copied below n in x, w and out.
        unsafe {
            let v = _mm256_maskload_ps(x.as_ptr().add(i), m);
            let wv = if cnt == 8 {
                ld::<W>(w.as_ptr(), i)
            } else {
                ld_part::<W>(w.as_ptr(), i, cnt)
            };
            _mm256_maskstore_ps(
                out.as_mut_ptr().add(i),
                m,
                _mm256_mul_ps(_mm256_mul_ps(v, vi), wv),
            );
        }
        i += 8;
    }
}

/// `out = x / sqrt(mean(x²) + eps) * weight`.
///
/// # Safety
/// `weight` holds `x.len()` elements of `wdtype`, `out.len() == x.len()`; the CPU must support
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rmsnorm(x: &[f32], weight: &[u8], wdtype: Dtype, eps: f32, out: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    // SAFETY: forwarded contract.
    unsafe {
        let ss = dot_raw(x.as_ptr(), x.as_ptr(), x.len()) / x.len() as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        match wdtype {
            Dtype::F32 => scale_mul::<crate::F32>(x, inv, weight, out),
            Dtype::F16 => scale_mul::<crate::F16>(x, inv, weight, out),
            Dtype::BF16 => scale_mul::<crate::Bf16>(x, inv, weight, out),
        }
    }
}

/// `y[i] += b[i]`.
///
/// # Safety
/// `b` holds `y.len()` elements of `W`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add_w<W: WeightType>(y: &mut [f32], b: &[u8]) {
    let n = y.len();
    let mut i = 0;
    while i < n {
        let cnt = (n - i).min(8);
        let m = mask8(cnt);
        // SAFETY: lanes masked / copied below n in y and b.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            let bv = if cnt == 8 {
                ld::<W>(b.as_ptr(), i)
            } else {
                ld_part::<W>(b.as_ptr(), i, cnt)
            };
            _mm256_maskstore_ps(p, m, _mm256_add_ps(_mm256_maskload_ps(p, m), bv));
        }
        i += 8;
    }
}

/// `y[i] += b[i]` with `b` of dtype `bdtype`.
///
/// # Safety
/// `b` holds `y.len()` elements of `bdtype`; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn add_bias(y: &mut [f32], b: &[u8], bdtype: Dtype) {
    // SAFETY: forwarded contract.
    unsafe {
        match bdtype {
            Dtype::F32 => add_w::<crate::F32>(y, b),
            Dtype::F16 => add_w::<crate::F16>(y, b),
            Dtype::BF16 => add_w::<crate::Bf16>(y, b),
        }
    }
}

/// `y[i] += x[i]`.
///
/// # Safety
/// `x.len() >= y.len()`; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn add(y: &mut [f32], x: &[f32]) {
    // SAFETY: x has at least y.len() floats, viewed as their bytes.
    unsafe {
        let xb = std::slice::from_raw_parts(x.as_ptr() as *const u8, y.len() * 4);
        add_w::<crate::F32>(y, xb)
    }
}

/// [`crate::scalar::stream_sum`], reading 128 bytes per step in four independent loads, with
/// the decode matvecs' prefetch ([`crate::stream::prefetch_ahead`]).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn stream_sum(b: &[u8]) -> u64 {
    let steps = b.len() / 128;
    let p = b.as_ptr();
    let mut acc = [_mm256_setzero_si256(); 4];
    for i in 0..steps {
        // SAFETY: step i < steps covers bytes 128 i..128 i + 128 <= b.len(); the prefetches may
        // point past b, where they are no-op hints (formed with wrapping_add).
        unsafe {
            let q = p.add(128 * i);
            prefetch_ahead(q, 128);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi64(*a, _mm256_loadu_si256(q.add(32 * j).cast()));
            }
        }
    }
    let v = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    let mut w = [0u64; 4];
    // SAFETY: w holds 32 bytes.
    unsafe { _mm256_storeu_si256(w.as_mut_ptr().cast(), v) };
    w.iter()
        .fold(0u64, |a, &x| a.wrapping_add(x))
        .wrapping_add(crate::scalar::stream_sum(&b[128 * steps..]))
}

/// `gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
///
/// # Safety
/// `up.len() >= gate.len()`; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len();
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = mask8(n - i);
        // SAFETY: lanes masked below n in gate and up.
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            let g = _mm256_maskload_ps(p, m);
            let u = _mm256_maskload_ps(up.as_ptr().add(i), m);
            let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let r = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
            _mm256_maskstore_ps(p, m, r);
        }
        i += 8;
    }
}

/// Largest element (NaN ignored; -inf for an empty slice).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn max_of(x: &[f32]) -> f32 {
    let n = x.len();
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut m0 = ninf;
    let mut m1 = ninf;
    let mut i = 0;
    // SAFETY: full vectors while i + 16 <= n.
    unsafe {
        while i + 16 <= n {
            // max(v, acc) returns acc when v is NaN.
            m0 = _mm256_max_ps(_mm256_loadu_ps(x.as_ptr().add(i)), m0);
            m1 = _mm256_max_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8)), m1);
            i += 16;
        }
    }
    let mut m = hmax(_mm256_max_ps(m0, m1));
    for &v in &x[i..] {
        if v > m {
            m = v;
        }
    }
    m
}

/// In-place softmax; returns `max + ln(sum(exp(x - max)))`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn softmax(x: &mut [f32]) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let n = x.len();
    let max = max_of(x);
    let vm = _mm256_set1_ps(max);
    let p = x.as_mut_ptr();
    let mut s0 = _mm256_setzero_ps();
    let mut s1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: full vectors below n, then masked lanes below n.
    unsafe {
        while i + 16 <= n {
            let e0 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
            let e1 = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p.add(i + 8)), vm));
            _mm256_storeu_ps(p.add(i), e0);
            _mm256_storeu_ps(p.add(i + 8), e1);
            s0 = _mm256_add_ps(s0, e0);
            s1 = _mm256_add_ps(s1, e1);
            i += 16;
        }
        while i < n {
            let m = mask8(n - i);
            let e = exp_ps(_mm256_sub_ps(_mm256_maskload_ps(p.add(i), m), vm));
            _mm256_maskstore_ps(p.add(i), m, e);
            s0 = _mm256_add_ps(s0, _mm256_and_ps(e, _mm256_castsi256_ps(m)));
            i += 8;
        }
        let sum = hsum(_mm256_add_ps(s0, s1));
        let inv = _mm256_set1_ps(1.0 / sum);
        let mut i = 0;
        while i < n {
            let m = mask8(n - i);
            let v = _mm256_maskload_ps(p.add(i), m);
            _mm256_maskstore_ps(p.add(i), m, _mm256_mul_ps(v, inv));
            i += 8;
        }
        max + sum.ln()
    }
}

/// NeoX rotate-half RoPE on each `head_dim` chunk of `x`.
///
/// # Safety
/// `cos` and `sin` hold at least `head_dim / 2` floats; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    if head_dim == 0 {
        return;
    }
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let h = head.as_mut_ptr();
        let mut i = 0;
        while i < half {
            let m = mask8(half - i);
            // SAFETY: lanes masked below half: inside head (twice) and the tables.
            unsafe {
                let a = _mm256_maskload_ps(h.add(i), m);
                let b = _mm256_maskload_ps(h.add(i + half), m);
                let c = _mm256_maskload_ps(cos.as_ptr().add(i), m);
                let s = _mm256_maskload_ps(sin.as_ptr().add(i), m);
                // Separate multiplies (no FMA) to round exactly like the scalar reference.
                let ra = _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s));
                let rb = _mm256_add_ps(_mm256_mul_ps(b, c), _mm256_mul_ps(a, s));
                _mm256_maskstore_ps(h.add(i), m, ra);
                _mm256_maskstore_ps(h.add(i + half), m, rb);
            }
            i += 8;
        }
    }
}
