//! The AVX-512 quantized matvec's weight unpacking: per format, a group of 16 scale units of
//! one row as unsigned bytes in column order (64 per vector: 8 vectors for 32-column units, 4
//! for Q6_K's 16-column units), with each unit's weight scale and bias ([`Group`], one vector
//! of scales: `scale[0]`, `bias[0]`).

use core::arch::x86_64::*;

use super::super::lanes;
use crate::generic::{u32_le, Group, QUnpack};
use crate::quant::k_scales_mins;
use crate::simd::avx512::Avx512;

/// 16 bytes of nibbles for each of two blocks as `[lo(a), hi(a), lo(b), hi(b)]`.
///
/// # Safety
/// AVX-512F/BW.
#[inline(always)]
unsafe fn nibbles2(a: __m128i, b: __m128i) -> __m512i {
    // SAFETY: register-only intrinsics; the features are enabled by the calling kernel.
    unsafe {
        let ab = _mm512_castsi256_si512(_mm256_set_m128i(b, a));
        let v = _mm512_shuffle_i64x2::<0b01_01_00_00>(ab, ab);
        let v = _mm512_mask_srli_epi16::<4>(v, 0xff00_ff00, v);
        _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
    }
}

// SAFETY: see the backend's `QSimd` impl (the token proves the features).
impl QUnpack for Avx512 {
    #[inline(always)]
    unsafe fn f16_lanes(self, p: *const u8, stride: usize, n: usize) -> __m512 {
        let stride = stride as i32;
        // SAFETY: the gather reads 4 bytes at p + stride * u for the lanes u < n only (masked-off
        // lanes touch no memory), readable by the contract.
        unsafe {
            let idx = _mm512_mullo_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(stride),
            );
            let v = _mm512_mask_i32gather_epi32::<1>(
                _mm512_setzero_si512(),
                lanes(n),
                idx,
                p as *const i32,
            );
            _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
        }
    }
    /// Q4_0 / Q5_0 pairs: (block a, block b if present) as 32 nibble-expanded bytes each, plus the
    /// 5th bits for Q5_0.
    #[inline(always)]
    unsafe fn unpack_q4q5<const Q5: bool>(self, p: *const u8, n: usize) -> Group<Self> {
        let mut g = Group::zero(self);
        let (bb, qs) = if Q5 { (22, 6) } else { (18, 2) };
        // SAFETY: only blocks u < n are read (at p + bb * u, inside the group by the contract).
        unsafe {
            for i in 0..8 {
                if 2 * i >= n {
                    break;
                }
                let a = p.add(bb * 2 * i);
                let b = (2 * i + 1 < n).then(|| a.add(bb));
                let qa = _mm_loadu_si128(a.add(qs) as *const __m128i);
                let qb = b.map_or(_mm_setzero_si128(), |b| {
                    _mm_loadu_si128(b.add(qs) as *const __m128i)
                });
                let mut v = nibbles2(qa, qb);
                if b.is_none() {
                    v = _mm512_maskz_mov_epi64(0x0f, v);
                }
                if Q5 {
                    let hb = b.map_or(0, |b| u32_le(b.add(2)) as u64);
                    let k = u32_le(a.add(2)) as u64 | hb << 32;
                    v = _mm512_mask_add_epi8(v, k, v, _mm512_set1_epi8(16));
                }
                g.q[i] = v;
            }
        }
        g
    }
    /// Q8_0: two blocks per vector, magnitudes in `q` and the negative bytes in `sgn`.
    #[inline(always)]
    unsafe fn unpack_q8_0(self, p: *const u8, n: usize) -> Group<Self> {
        let mut g = Group::zero(self);
        // SAFETY: only blocks u < n are read (34 bytes at p + 34 u, inside the group).
        unsafe {
            for i in 0..8 {
                if 2 * i >= n {
                    break;
                }
                let a = p.add(68 * i);
                let lo = _mm256_loadu_si256(a.add(2) as *const __m256i);
                let hi = if 2 * i + 1 < n {
                    _mm256_loadu_si256(a.add(36) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                g.q[i] = _mm512_abs_epi8(w);
                g.sgn[i] = _mm512_movepi8_mask(w);
            }
        }
        g
    }
    /// Q4_K / Q5_K: a group is one or two superblocks (`n` 8 or 16 units).
    #[inline(always)]
    unsafe fn unpack_k45<const Q5: bool>(self, p: *const u8, n: usize) -> Group<Self> {
        let mut g = Group::zero(self);
        let bb = if Q5 { 176 } else { 144 };
        let nsb = n / 8;
        let qs = if Q5 { 48 } else { 16 };
        // SAFETY: only the nsb superblocks of the group are read, at p + bb * s.
        unsafe {
            let mut sc = [0u64; 2];
            let mut mn = [0u64; 2];
            let mut dd = [0i32; 2];
            for s in 0..2 {
                if s >= nsb {
                    break;
                }
                let b = p.add(bb * s);
                (sc[s], mn[s]) = k_scales_mins(&*(b.add(4) as *const [u8; 12]));
                dd[s] = u32_le(b) as i32;
                let mut qh = if Q5 {
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(16) as *const __m256i))
                } else {
                    _mm512_setzero_si512()
                };
                let bits = _mm512_inserti64x4::<1>(_mm512_set1_epi8(1), _mm256_set1_epi8(2));
                for j in 0..4 {
                    let y = _mm256_loadu_si256(b.add(qs + 32 * j) as *const __m256i);
                    let v = _mm512_broadcast_i64x4(y);
                    let v = _mm512_mask_srli_epi16::<4>(v, 0xffff_0000, v);
                    let mut v = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
                    if Q5 {
                        let k = _mm512_test_epi8_mask(qh, bits);
                        v = _mm512_mask_add_epi8(v, k, v, _mm512_set1_epi8(16));
                        qh = _mm512_srli_epi16::<2>(qh);
                    }
                    g.q[4 * s + j] = v;
                }
            }
            // [d0, dmin0, d1, dmin1]
            let dd = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_set_epi32(0, 0, dd[1], dd[0])));
            let d = _mm512_permutexvar_ps(
                _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0),
                dd,
            );
            let dm = _mm512_permutexvar_ps(
                _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
                dd,
            );
            let widen = |v: [u64; 2]| {
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_set_epi64x(
                    v[1] as i64,
                    v[0] as i64,
                )))
            };
            g.scale[0] = _mm512_mul_ps(d, widen(sc));
            // -(dmin * m), exactly
            g.bias[0] = _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(_mm512_mul_ps(dm, widen(mn))),
                _mm512_set1_epi32(i32::MIN),
            ));
        }
        g
    }
    /// Q6_K: a group is one superblock of 16 units.
    #[inline(always)]
    unsafe fn unpack_q6k(self, p: *const u8) -> Group<Self> {
        let mut g = Group::zero(self);
        // SAFETY: reads bytes 0..210 of the superblock at p (the contract: n = 16 units).
        unsafe {
            let lo4 = _mm512_set1_epi8(0x0f);
            let hi2 = _mm512_set1_epi8(0x30);
            for h in 0..2 {
                let l = _mm512_loadu_si512(p.add(64 * h) as *const __m512i);
                let qh = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
                let qh = _mm512_broadcast_i64x4(qh);
                // [qh, qh >> 2]
                let qh = _mm512_mask_srli_epi16::<2>(qh, 0xffff_0000, qh);
                let a = _mm512_and_si512(l, lo4);
                let b = _mm512_and_si512(_mm512_srli_epi16::<4>(l), lo4);
                let ha = _mm512_and_si512(_mm512_slli_epi16::<4>(qh), hi2);
                let hb = _mm512_and_si512(qh, hi2);
                g.q[2 * h] = _mm512_or_si512(a, ha);
                g.q[2 * h + 1] = _mm512_or_si512(b, hb);
            }
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                p.add(192) as *const __m128i
            )));
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(
                std::ptr::read_unaligned(p.add(208) as *const u16) as i32,
            ));
            g.scale[0] = _mm512_mul_ps(_mm512_broadcastss_ps(d), sc);
            g.bias[0] = _mm512_mul_ps(g.scale[0], _mm512_set1_ps(-32.0));
        }
        g
    }
}
