//! Weight dtypes, and the KV cache's element types ([`KvType`]). Weights arrive as raw little-endian bytes straight from the memory map, so
//! nothing here assumes alignment.

/// A weight dtype, known at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE single precision, 4 bytes.
    F32,
    /// IEEE half precision, 2 bytes.
    F16,
    /// bfloat16 (the top half of an f32), 2 bytes.
    BF16,
}

impl Dtype {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// Element `i` of a little-endian buffer of this dtype, widened to f32.
    #[inline]
    pub fn get(self, bytes: &[u8], i: usize) -> f32 {
        match self {
            Dtype::F32 => F32::get(bytes, i),
            Dtype::F16 => F16::get(bytes, i),
            Dtype::BF16 => Bf16::get(bytes, i),
        }
    }

    /// Widen a whole buffer to f32: `out.len()` elements.
    pub fn to_f32(self, bytes: &[u8], out: &mut [f32]) {
        assert!(
            bytes.len() >= out.len() * self.size(),
            "to_f32: buffer too short"
        );
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.get(bytes, i);
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        })
    }
}

/// A weight dtype known at compile time, so the decode loop is monomorphized over it.
pub trait WeightType: Copy + Send + Sync + 'static {
    /// The run-time tag of this dtype.
    const DTYPE: Dtype;
    /// Bytes per element.
    const SIZE: usize = Self::DTYPE.size();
    /// Element `i` of a little-endian buffer, widened to f32.
    fn get(bytes: &[u8], i: usize) -> f32;
}

/// IEEE binary32 weights.
#[derive(Clone, Copy, Debug)]
pub struct F32;
/// IEEE binary16 weights.
#[derive(Clone, Copy, Debug)]
pub struct F16;
/// bfloat16 weights.
#[derive(Clone, Copy, Debug)]
pub struct Bf16;

impl WeightType for F32 {
    const DTYPE: Dtype = Dtype::F32;
    #[inline]
    fn get(b: &[u8], i: usize) -> f32 {
        f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    }
}

impl WeightType for F16 {
    const DTYPE: Dtype = Dtype::F16;
    #[inline]
    fn get(b: &[u8], i: usize) -> f32 {
        half::f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
    }
}

impl WeightType for Bf16 {
    const DTYPE: Dtype = Dtype::BF16;
    #[inline]
    fn get(b: &[u8], i: usize) -> f32 {
        f32::from_bits((u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32) << 16)
    }
}

/// A KV cache element type known at compile time, so attention is monomorphized over it. The
/// cache stores [`KvType::Elem`]s (`f32`, or the `u16` bits of a bf16 / f16); attention widens
/// them to f32 exactly ([`KvType::to_f32`]) and then does the f32 path's math.
pub trait KvType: WeightType {
    /// One stored element: `f32` for [`F32`], the `u16` bits for [`Bf16`] and [`F16`].
    type Elem: bytemuck::Pod + Default + Send + Sync + std::fmt::Debug + PartialEq;
    /// `x` rounded to this type: round to nearest, ties to even (NaN stays NaN; f16 overflows
    /// to infinity past 65504).
    fn from_f32(x: f32) -> Self::Elem;
    /// `e` widened to f32 (exact).
    fn to_f32(e: Self::Elem) -> f32;
    /// `dst[i] = from_f32(src[i])`.
    #[inline]
    fn store_row(src: &[f32], dst: &mut [Self::Elem]) {
        assert_eq!(src.len(), dst.len(), "store_row: length mismatch");
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = Self::from_f32(s);
        }
    }
}

impl KvType for F32 {
    type Elem = f32;
    #[inline]
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline]
    fn to_f32(e: f32) -> f32 {
        e
    }
}

impl KvType for Bf16 {
    type Elem = u16;
    #[inline]
    fn from_f32(x: f32) -> u16 {
        half::bf16::from_f32(x).to_bits()
    }
    #[inline]
    fn to_f32(e: u16) -> f32 {
        f32::from_bits((e as u32) << 16)
    }
}

impl KvType for F16 {
    type Elem = u16;
    #[inline]
    fn from_f32(x: f32) -> u16 {
        half::f16::from_f32(x).to_bits()
    }
    #[inline]
    fn to_f32(e: u16) -> f32 {
        half::f16::from_bits(e).to_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_rounding_is_to_nearest_even() {
        // bf16 keeps 8 significant bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7, so ties to
        // the even 1; 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties up to even.
        let bf = |x: f32| Bf16::to_f32(Bf16::from_f32(x));
        assert_eq!(bf(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(bf(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(
            bf(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert!(bf(f32::NAN).is_nan());
        assert_eq!(bf(-0.0).to_bits(), (-0.0f32).to_bits());
        // f16: 11 significant bits, range to 65504
        let h = |x: f32| F16::to_f32(F16::from_f32(x));
        assert_eq!(h(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(h(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2f32.powi(-9));
        assert_eq!(h(65504.0), 65504.0);
        assert_eq!(h(1e6), f32::INFINITY);
        assert_eq!(F32::to_f32(F32::from_f32(0.1)), 0.1);
        let mut row = [0u16; 3];
        Bf16::store_row(&[1.0, -2.0, 0.5], &mut row);
        assert_eq!(row, [0x3f80, 0xc000, 0x3f00]);
    }
}
