//! Helpers shared by the kernels' test binaries.
#![allow(dead_code)]

use qwenrt_kernels::ops::AttnHead;
use qwenrt_kernels::par::KvLayout;
use qwenrt_kernels::{scalar, Dtype, KvType, QuantType};

/// xorshift64*: tiny, deterministic.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

/// `v` as little-endian `dtype` bytes after `offset` filler bytes (to make the weights unaligned).
pub fn encode(v: &[f32], dtype: Dtype, offset: usize) -> Vec<u8> {
    let mut out = vec![0xAB; offset];
    for &x in v {
        match dtype {
            Dtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes()),
        }
    }
    out
}

/// Random valid blocks: random bytes for the quants, small finite f16 scales.
pub fn random_weights(qt: QuantType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let rb = qt.row_bytes(cols).unwrap();
    let mut w: Vec<u8> = (0..rows * rb).map(|_| rng.next() as u8).collect();
    let f16 = |rng: &mut Rng, w: &mut [u8], at: usize| {
        let v = half::f16::from_f32(rng.f() * 0.05);
        w[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
    };
    for blk in w.chunks_exact_mut(qt.block_bytes()) {
        match qt {
            QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => f16(rng, blk, 0),
            QuantType::Q4K | QuantType::Q5K => {
                f16(rng, blk, 0);
                f16(rng, blk, 2);
            }
            QuantType::Q6K => f16(rng, blk, 208),
        }
    }
    w
}

/// A random input: uniform in [-1, 1), with one block scaled up, one down, one all zero.
pub fn random_x(cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x = rng.vec(cols);
    let nb = cols / 32;
    if nb >= 3 {
        x[32..64].iter_mut().for_each(|v| *v *= 40.0);
        x[64..96].iter_mut().for_each(|v| *v *= 0.01);
    }
    if nb >= 4 {
        x[(nb - 1) * 32..].iter_mut().for_each(|v| *v = 0.0);
    }
    x
}

/// Scalar reference for `par::Attention::run` on a `T` cache: one (token, head) at a time.
pub fn attention_ref<T: KvType>(
    layout: KvLayout,
    pos0: usize,
    q: &[f32],
    k: &[T::Elem],
    v: &[T::Elem],
) -> Vec<f32> {
    let hd = layout.head_dim;
    let qdim = layout.n_heads * hd;
    let n = q.len() / qdim;
    let group = layout.n_heads / layout.n_kv_heads;
    let mut sc = vec![0.0; layout.cap];
    let mut r = vec![0.0; n * qdim];
    for t in 0..n {
        let len = pos0 + t + 1;
        for h in 0..layout.n_heads {
            let base = (h / group) * layout.cap * hd;
            let head = AttnHead::<T> {
                q: &q[t * qdim + h * hd..t * qdim + (h + 1) * hd],
                keys: &k[base..base + len * hd],
                values: &v[base..base + len * hd],
                scale: 1.0 / (hd as f32).sqrt(),
            };
            scalar::attention(
                head,
                &mut sc,
                &mut r[t * qdim + h * hd..t * qdim + (h + 1) * hd],
            );
        }
    }
    r
}
