//! Weight dtypes. Weights arrive as raw little-endian bytes straight from the memory map, so
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
