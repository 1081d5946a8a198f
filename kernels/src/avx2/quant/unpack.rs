//! The AVX2 quantized matvec's weight unpacking: per format, a group of scale units of one
//! row as unsigned bytes in column order (32 per vector), with each unit's weight scale and
//! bias ([`Group`]). Groups hold 8 units (16 for Q6_K).

use core::arch::x86_64::*;

use super::super::mask8;
use crate::generic::{u32_le, Group, QUnpack};
use crate::quant::k_scales_mins;
use crate::simd::avx2::Avx2;

/// 32 bytes with 0x10 where bit j of `bits` is set (byte j), else 0.
#[inline(always)]
fn bit4_of(bits: u32) -> __m256i {
    // SAFETY: register-only AVX2 intrinsics, enabled by the calling kernel.
    unsafe {
        let v = _mm256_set1_epi32(bits as i32);
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let v = _mm256_shuffle_epi8(v, spread);
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
        let on = _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
        _mm256_and_si256(on, _mm256_set1_epi8(0x10))
    }
}

// SAFETY: see the backend's `QSimd` impl (the token proves the features).
impl QUnpack for Avx2 {
    #[inline(always)]
    unsafe fn f16_lanes(self, p: *const u8, stride: usize, n: usize) -> __m256 {
        let stride = stride as i32;
        // SAFETY: the gather reads 4 bytes at p + stride * u for the lanes u < n only (a lane
        // whose mask is clear touches no memory), readable by the contract.
        unsafe {
            let idx = _mm256_mullo_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(stride),
            );
            let zero = _mm256_setzero_si256();
            let v = _mm256_mask_i32gather_epi32::<1>(zero, p as *const i32, idx, mask8(n));
            let v = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));
            let v = _mm256_permute4x64_epi64::<0b00_00_10_00>(_mm256_packus_epi32(v, v));
            _mm256_cvtph_ps(_mm256_castsi256_si128(v))
        }
    }
    /// Q4_0 / Q5_0: one block per vector.
    #[inline(always)]
    unsafe fn unpack_q4q5<const Q5: bool>(self, p: *const u8, n: usize) -> Group<Self> {
        let mut g = Group::zero(self);
        let (bb, qs) = if Q5 { (22, 6) } else { (18, 2) };
        // SAFETY: only blocks u < n are read (at p + bb * u, inside the group by the contract).
        unsafe {
            for (u, q) in g.q.iter_mut().enumerate() {
                if u >= n {
                    break;
                }
                let b = p.add(bb * u);
                let lo = _mm_loadu_si128(b.add(qs) as *const __m128i);
                let v = _mm256_set_m128i(_mm_srli_epi16::<4>(lo), lo);
                let mut v = _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
                if Q5 {
                    v = _mm256_or_si256(v, bit4_of(u32_le(b.add(2))));
                }
                *q = v;
            }
        }
        g
    }
    /// Q8_0: one block per vector, magnitudes in `q` and the signed quants in `sgn`.
    #[inline(always)]
    unsafe fn unpack_q8_0(self, p: *const u8, n: usize) -> Group<Self> {
        let mut g = Group::zero(self);
        // SAFETY: only blocks u < n are read (34 bytes at p + 34 u, inside the group).
        unsafe {
            for u in 0..8 {
                if u >= n {
                    break;
                }
                let w = _mm256_loadu_si256(p.add(34 * u + 2) as *const __m256i);
                g.q[u] = _mm256_abs_epi8(w);
                g.sgn[u] = w;
            }
        }
        g
    }
    /// Q4_K / Q5_K: a group is one superblock.
    #[inline(always)]
    unsafe fn unpack_k45<const Q5: bool>(self, p: *const u8, _n: usize) -> Group<Self> {
        let mut g = Group::zero(self);
        let qs = if Q5 { 48 } else { 16 };
        // SAFETY: reads the bytes of the superblock at p (144, or 176 for Q5_K).
        unsafe {
            let lo4 = _mm256_set1_epi8(0x0f);
            let qh = if Q5 {
                _mm256_loadu_si256(p.add(16) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            let bit4 = _mm256_set1_epi8(0x10);
            // bit s of each qh byte moved to bit 4
            let hbit = |s: i32| {
                let v = if s <= 4 {
                    _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - s))
                } else {
                    _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s - 4))
                };
                _mm256_and_si256(v, bit4)
            };
            for j in 0..4 {
                let y = _mm256_loadu_si256(p.add(qs + 32 * j) as *const __m256i);
                let mut a = _mm256_and_si256(y, lo4);
                let mut b = _mm256_and_si256(_mm256_srli_epi16::<4>(y), lo4);
                if Q5 {
                    a = _mm256_or_si256(a, hbit(2 * j as i32));
                    b = _mm256_or_si256(b, hbit(2 * j as i32 + 1));
                }
                g.q[2 * j] = a;
                g.q[2 * j + 1] = b;
            }
            let (sc, mn) = k_scales_mins(&*(p.add(4) as *const [u8; 12]));
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(u32_le(p) as i32));
            let d = _mm256_broadcastss_ps(dd);
            let dm = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
            let widen =
                |v: u64| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)));
            g.scale[0] = _mm256_mul_ps(d, widen(sc));
            // -(dmin * m), exactly
            g.bias[0] = _mm256_xor_ps(_mm256_mul_ps(dm, widen(mn)), _mm256_set1_ps(-0.0));
        }
        g
    }
    /// Q6_K: a group is one superblock of 16 units, in two halves of 8.
    #[inline(always)]
    unsafe fn unpack_q6k(self, p: *const u8) -> Group<Self> {
        let mut g = Group::zero(self);
        // SAFETY: reads bytes 0..210 of the superblock at p (a group is one superblock).
        unsafe {
            let lo4 = _mm256_set1_epi8(0x0f);
            let hi2 = _mm256_set1_epi8(0x30);
            let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                std::ptr::read_unaligned(p.add(208) as *const u16) as i32,
            ))));
            for h in 0..2 {
                let l0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
                let l1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
                let lo = |v: __m256i| _mm256_and_si256(v, lo4);
                let hi = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(v), lo4);
                let or_hi = |v: __m256i, h: __m256i| _mm256_or_si256(v, _mm256_and_si256(h, hi2));
                g.q[4 * h] = or_hi(lo(l0), _mm256_slli_epi16::<4>(qh));
                g.q[4 * h + 1] = or_hi(lo(l1), _mm256_slli_epi16::<2>(qh));
                g.q[4 * h + 2] = or_hi(hi(l0), qh);
                g.q[4 * h + 3] = or_hi(hi(l1), _mm256_srli_epi16::<2>(qh));
                let sc = _mm_loadl_epi64(p.add(192 + 8 * h) as *const __m128i);
                g.scale[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)));
                g.bias[h] = _mm256_mul_ps(g.scale[h], _mm256_set1_ps(-32.0));
            }
        }
        g
    }
}
