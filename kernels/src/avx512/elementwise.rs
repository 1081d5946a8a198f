//! AVX-512 elementwise kernels: rmsnorm, bias and residual adds, SiLU, softmax, RoPE.

use core::arch::x86_64::*;

use super::{dot_raw, exp_ps, lanes, ld_mask, prefetch_ahead};
use crate::dtype::{Dtype, WeightType};

/// `sum(x²)` for rmsnorm.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn sumsq(x: &[f32]) -> f32 {
    // SAFETY: same slice twice.
    unsafe { dot_raw(x.as_ptr(), x.as_ptr(), x.len()) }
}

/// `out[i] = x[i] * inv * w[i]`.
///
/// # Safety
/// `w` holds `x.len()` elements of `W`; `out.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn scale_mul<W: WeightType>(x: &[f32], inv: f32, w: &[u8], out: &mut [f32]) {
    let n = x.len();
    let vi = _mm512_set1_ps(inv);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        // SAFETY: masked lanes stay below n in x, w and out.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
            let r = _mm512_mul_ps(_mm512_mul_ps(v, vi), ld_mask::<W>(w.as_ptr(), i, m));
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, r);
        }
        i += 16;
    }
}

/// `out = x / sqrt(mean(x²) + eps) * weight`.
///
/// # Safety
/// `weight` holds `x.len()` elements of `wdtype`, `out.len() == x.len()`; the CPU must support
/// AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn rmsnorm(x: &[f32], weight: &[u8], wdtype: Dtype, eps: f32, out: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    // SAFETY: forwarded contract.
    unsafe {
        let ss = sumsq(x) / x.len() as f32;
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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn add_w<W: WeightType>(y: &mut [f32], b: &[u8]) {
    let n = y.len();
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        // SAFETY: masked lanes stay below n in y and b.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            let v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), ld_mask::<W>(b.as_ptr(), i, m));
            _mm512_mask_storeu_ps(p, m, v);
        }
        i += 16;
    }
}

/// `y[i] += b[i]` with `b` of dtype `bdtype`.
///
/// # Safety
/// `b` holds `y.len()` elements of `bdtype`; the CPU must support AVX-512F/BW/VL, AVX2, FMA, F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
/// `x.len() >= y.len()`; the CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn add(y: &mut [f32], x: &[f32]) {
    // SAFETY: x has at least y.len() floats, read as f32 bytes.
    unsafe {
        let xb = std::slice::from_raw_parts(x.as_ptr() as *const u8, y.len() * 4);
        add_w::<crate::F32>(y, xb)
    }
}

/// [`crate::scalar::stream_sum`], reading 256 bytes per step in four independent loads, with
/// the decode matvecs' prefetch ([`crate::stream::prefetch_ahead`]).
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn stream_sum(b: &[u8]) -> u64 {
    let steps = b.len() / 256;
    let p = b.as_ptr();
    let mut acc = [_mm512_setzero_si512(); 4];
    for i in 0..steps {
        // SAFETY: step i < steps covers bytes 256 i..256 i + 256 <= b.len(); the prefetch may
        // point past b, where it is a no-op hint (wrapping_add forms no out-of-bounds pointer
        // arithmetic in the language's sense).
        unsafe {
            let q = p.add(256 * i);
            prefetch_ahead(q, 256);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_epi64(*a, _mm512_loadu_si512(q.add(64 * j).cast()));
            }
        }
    }
    let v = _mm512_add_epi64(
        _mm512_add_epi64(acc[0], acc[1]),
        _mm512_add_epi64(acc[2], acc[3]),
    );
    (_mm512_reduce_add_epi64(v) as u64).wrapping_add(crate::scalar::stream_sum(&b[256 * steps..]))
}

/// `gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
///
/// # Safety
/// `up.len() >= gate.len()`; the CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len();
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        // SAFETY: masked lanes stay below n in gate and up.
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            let g = _mm512_maskz_loadu_ps(m, p);
            let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
            let e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let r = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
            _mm512_mask_storeu_ps(p, m, r);
        }
        i += 16;
    }
}

/// Largest element (NaN ignored; -inf for an empty slice).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn max_of(x: &[f32]) -> f32 {
    let n = x.len();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut m0 = ninf;
    let mut m1 = ninf;
    let mut i = 0;
    // SAFETY: full vectors while i + 32 <= n, masked tail (masked lanes read as -inf).
    unsafe {
        while i + 32 <= n {
            // max(v, acc) returns acc when v is NaN.
            m0 = _mm512_max_ps(_mm512_loadu_ps(x.as_ptr().add(i)), m0);
            m1 = _mm512_max_ps(_mm512_loadu_ps(x.as_ptr().add(i + 16)), m1);
            i += 32;
        }
        while i < n {
            let m = lanes(n - i);
            m0 = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, m, x.as_ptr().add(i)), m0);
            i += 16;
        }
    }
    _mm512_reduce_max_ps(_mm512_max_ps(m0, m1))
}

/// In-place softmax; returns `max + ln(sum(exp(x - max)))`.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn softmax(x: &mut [f32]) -> f32 {
    if x.is_empty() {
        return f32::NEG_INFINITY;
    }
    let n = x.len();
    // SAFETY: all accesses are masked to lanes below n.
    unsafe {
        let max = max_of(x);
        let vm = _mm512_set1_ps(max);
        let p = x.as_mut_ptr();
        let mut s0 = _mm512_setzero_ps();
        let mut s1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            let e0 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), vm));
            let e1 = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(p.add(i + 16)), vm));
            _mm512_storeu_ps(p.add(i), e0);
            _mm512_storeu_ps(p.add(i + 16), e1);
            s0 = _mm512_add_ps(s0, e0);
            s1 = _mm512_add_ps(s1, e1);
            i += 32;
        }
        while i < n {
            let m = lanes(n - i);
            let e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), vm));
            _mm512_mask_storeu_ps(p.add(i), m, e);
            s0 = _mm512_mask_add_ps(s0, m, s0, e);
            i += 16;
        }
        let sum = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        let inv = _mm512_set1_ps(1.0 / sum);
        let mut i = 0;
        while i < n {
            let m = lanes(n - i);
            let v = _mm512_maskz_loadu_ps(m, p.add(i));
            _mm512_mask_storeu_ps(p.add(i), m, _mm512_mul_ps(v, inv));
            i += 16;
        }
        max + sum.ln()
    }
}

/// NeoX rotate-half RoPE on each `head_dim` chunk of `x`.
///
/// # Safety
/// `cos` and `sin` hold at least `head_dim / 2` floats; the CPU must support AVX-512F/BW/VL,
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    if head_dim == 0 {
        return;
    }
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let h = head.as_mut_ptr();
        let mut i = 0;
        while i < half {
            let m = lanes(half - i);
            // SAFETY: lanes i..i+16 masked below half: inside head (twice) and the tables.
            unsafe {
                let a = _mm512_maskz_loadu_ps(m, h.add(i));
                let b = _mm512_maskz_loadu_ps(m, h.add(i + half));
                let c = _mm512_maskz_loadu_ps(m, cos.as_ptr().add(i));
                let s = _mm512_maskz_loadu_ps(m, sin.as_ptr().add(i));
                // Separate multiplies (no FMA) to round exactly like the scalar reference.
                let ra = _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s));
                let rb = _mm512_add_ps(_mm512_mul_ps(b, c), _mm512_mul_ps(a, s));
                _mm512_mask_storeu_ps(h.add(i), m, ra);
                _mm512_mask_storeu_ps(h.add(i + half), m, rb);
            }
            i += 16;
        }
    }
}
