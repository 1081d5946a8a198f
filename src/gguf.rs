//! GGUF (v2/v3) reader and ggml dequantization.
//!
//! Overview:
//! - [`GgufFile`]: an opened GGUF file (memory-mapped, or owned bytes), with its parsed
//!   [`GgufHeader`] and the raw bytes of each tensor.
//! - [`GgufHeader`]: version, metadata ([`Value`] by key, in file order), [`TensorInfo`]s,
//!   alignment and the offset of the data section. [`GgufHeader::parse`] validates every
//!   count, length, type, dimension and offset against the bytes it is given, so a hostile
//!   file yields a [`GgufError`] naming the key/tensor and offset at fault, never a panic or a
//!   huge allocation.
//! - [`GgmlType`]: the ggml tensor types with their block sizes.
//! - [`dequantize`]: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K to f32, bit-exact with
//!   ggml's `dequantize_row_*` (same operations, same order, no fused multiply-add).
//! - [`testing::GgufBuilder`]: emits valid (or deliberately broken) GGUF bytes for tests and
//!   fuzz targets.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// GGUF files start with these four bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor offset when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are rejected (guards the recursive parser's stack).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Everything that can go wrong reading a GGUF file. Offsets are byte offsets in the file.
#[derive(Debug)]
pub enum GgufError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Fewer bytes remain than `what` needs.
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    BadMagic {
        found: [u8; 4],
    },
    UnsupportedVersion {
        version: u32,
    },
    /// A count that cannot possibly fit in the bytes that remain.
    CountTooLarge {
        what: String,
        count: u64,
        offset: u64,
        remaining: u64,
    },
    InvalidUtf8 {
        what: String,
        offset: u64,
    },
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    InvalidBool {
        key: String,
        value: u8,
        offset: u64,
    },
    NestingTooDeep {
        key: String,
        offset: u64,
    },
    DuplicateKey {
        key: String,
        offset: u64,
    },
    DuplicateTensor {
        name: String,
        offset: u64,
    },
    BadAlignment {
        detail: String,
    },
    TooManyDims {
        tensor: String,
        n_dims: u32,
        offset: u64,
    },
    UnknownTensorType {
        tensor: String,
        type_id: u32,
        offset: u64,
    },
    DimsOverflow {
        tensor: String,
        dims: Vec<u64>,
    },
    /// The first dimension is not a multiple of the type's block size.
    BadShape {
        tensor: String,
        dims: Vec<u64>,
        ty: GgmlType,
    },
    MisalignedOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    UnsupportedDequant {
        ty: GgmlType,
    },
    /// Source/destination lengths that do not match the element count.
    LengthMismatch {
        detail: String,
    },
    MissingKey {
        key: String,
    },
    WrongValueType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    MissingTensor {
        name: String,
    },
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufError::*;
        match self {
            Io { path, source } => write!(f, "cannot read GGUF file {}: {source}", path.display()),
            Truncated { what, offset, needed, available } => write!(
                f,
                "GGUF truncated: {what} at offset {offset} needs {needed} bytes but only {available} remain"
            ),
            BadMagic { found } => write!(f, "not a GGUF file: magic is {found:02x?}, expected \"GGUF\""),
            UnsupportedVersion { version } => write!(
                f,
                "unsupported GGUF version {version} (supported: 2, 3; a huge number suggests a big-endian file)"
            ),
            CountTooLarge { what, count, offset, remaining } => write!(
                f,
                "GGUF {what} count {count} at offset {offset} is impossible: only {remaining} bytes remain"
            ),
            InvalidUtf8 { what, offset } => write!(f, "GGUF string for {what} at offset {offset} is not valid UTF-8"),
            UnknownValueType { key, type_id, offset } => {
                write!(f, "GGUF metadata key {key:?}: unknown value type {type_id} at offset {offset}")
            }
            InvalidBool { key, value, offset } => {
                write!(f, "GGUF metadata key {key:?}: bool byte {value} at offset {offset} is neither 0 nor 1")
            }
            NestingTooDeep { key, offset } => write!(
                f,
                "GGUF metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {offset}"
            ),
            DuplicateKey { key, offset } => write!(f, "GGUF metadata key {key:?} repeated at offset {offset}"),
            DuplicateTensor { name, offset } => write!(f, "GGUF tensor {name:?} repeated at offset {offset}"),
            BadAlignment { detail } => write!(f, "GGUF general.alignment invalid: {detail}"),
            TooManyDims { tensor, n_dims, offset } => write!(
                f,
                "GGUF tensor {tensor:?}: {n_dims} dimensions at offset {offset} (at most {MAX_DIMS})"
            ),
            UnknownTensorType { tensor, type_id, offset } => {
                write!(f, "GGUF tensor {tensor:?}: unknown ggml type {type_id} at offset {offset}")
            }
            DimsOverflow { tensor, dims } => {
                write!(f, "GGUF tensor {tensor:?}: dimensions {dims:?} overflow the element/byte count")
            }
            BadShape { tensor, dims, ty } => write!(
                f,
                "GGUF tensor {tensor:?}: first dimension of {dims:?} is not a multiple of {ty:?}'s block size {}",
                ty.block_size()
            ),
            MisalignedOffset { tensor, offset, alignment } => write!(
                f,
                "GGUF tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}"
            ),
            TensorOutOfBounds { tensor, start, end, file_len } => write!(
                f,
                "GGUF tensor {tensor:?}: data bytes {start}..{end} lie past the end of the file ({file_len} bytes)"
            ),
            UnsupportedDequant { ty } => write!(f, "dequantization of ggml type {ty:?} is not supported"),
            LengthMismatch { detail } => write!(f, "dequantize: {detail}"),
            MissingKey { key } => write!(f, "GGUF metadata key {key:?} is missing"),
            WrongValueType { key, expected, found } => {
                write!(f, "GGUF metadata key {key:?} has type {found}, expected {expected}")
            }
            MissingTensor { name } => write!(f, "GGUF tensor {name:?} is missing"),
        }
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GgufError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The ggml tensor types. Only some can be dequantized (see [`dequantize`]); the others are
/// still parsed so that their byte sizes can be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    /// Maps the on-disk type id; `None` for ids this reader does not know.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// The on-disk type id.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
        }
    }

    /// Bytes of `n_elements` elements, or `None` when `n_elements` is not a whole number of
    /// blocks or the byte count overflows.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }

    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q8_0 | Q4_0 | Q5_0 | Q4K | Q5K | Q6K
        )
    }
}

/// Metadata value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type occupies on disk (strings: their length
    /// prefix; arrays: element type + count).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// A typed array (possibly of arrays).
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type that is non-negative and fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// F32 or F64 (as f64).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata array, stored typed so that memory stays within a small multiple of the file
/// bytes it came from (at most 3x, for arrays of empty strings), whatever the file holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (cloned).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.clone()),
            Array::Array(v) => Value::Array(v.get(i)?.clone()),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }

    /// All elements as [`Value`]s (cloned).
    pub fn values(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// An array of any integer type as i64s (`None` for other types or a u64 above i64::MAX).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        match self {
            Array::U8(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::I8(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::U16(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::I16(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::U32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::I32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            Array::I64(v) => Some(v.clone()),
            Array::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect(),
            _ => None,
        }
    }

    /// Builds a typed array from values that all have type `elem_type` (`None` otherwise).
    pub fn from_values(elem_type: ValueType, items: Vec<Value>) -> Option<Array> {
        macro_rules! collect {
            ($variant:ident) => {
                Array::$variant(
                    items
                        .into_iter()
                        .map(|v| match v {
                            Value::$variant(x) => Some(x),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()?,
                )
            };
        }
        Some(match elem_type {
            ValueType::U8 => collect!(U8),
            ValueType::I8 => collect!(I8),
            ValueType::U16 => collect!(U16),
            ValueType::I16 => collect!(I16),
            ValueType::U32 => collect!(U32),
            ValueType::I32 => collect!(I32),
            ValueType::F32 => collect!(F32),
            ValueType::Bool => collect!(Bool),
            ValueType::String => collect!(String),
            ValueType::Array => collect!(Array),
            ValueType::U64 => collect!(U64),
            ValueType::I64 => collect!(I64),
            ValueType::F64 => collect!(F64),
        })
    }
}

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: fastest-varying dimension first (reverse for row-major shapes).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section (a multiple of the alignment).
    pub offset: u64,
    /// Product of `dims` (1 for a scalar with no dims).
    pub n_elements: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Row-major (PyTorch/safetensors) shape: `dims` reversed.
    pub fn row_major_shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// The parsed and validated header of a GGUF file.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

/// Bounds-checked little-endian cursor over the file bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        // n <= remaining <= usize::MAX, so the cast is lossless.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len_what = || format!("length of string for {}", what());
        let len = self.u64(&len_what)?;
        let offset = self.pos as u64;
        let bytes = self.take(len, &|| format!("string for {}", what()))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            what: what(),
            offset,
        })
    }

    /// Validates that `count` items of at least `min_size` bytes could fit in what remains,
    /// and returns a safe capacity for a Vec of them.
    fn check_count(
        &self,
        what: &dyn Fn() -> String,
        count: u64,
        min_size: u64,
        offset: u64,
    ) -> Result<usize, GgufError> {
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|n| n <= self.remaining());
        if !fits {
            return Err(GgufError::CountTooLarge {
                what: what(),
                count,
                offset,
                remaining: self.remaining(),
            });
        }
        // count * min_size <= remaining fits in usize, and min_size >= 1.
        Ok(count as usize)
    }

    fn value(&mut self, key: &str, ty: ValueType, depth: usize) -> Result<Value, GgufError> {
        let what = || format!("value of key {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8(&what)?),
            ValueType::I8 => Value::I8(self.u8(&what)? as i8),
            ValueType::U16 => Value::U16(self.u16(&what)?),
            ValueType::I16 => Value::I16(self.u16(&what)? as i16),
            ValueType::U32 => Value::U32(self.u32(&what)?),
            ValueType::I32 => Value::I32(self.u32(&what)? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32(&what)?)),
            ValueType::U64 => Value::U64(self.u64(&what)?),
            ValueType::I64 => Value::I64(self.u64(&what)? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64(&what)?)),
            ValueType::Bool => {
                let offset = self.pos as u64;
                match self.u8(&what)? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    value => {
                        return Err(GgufError::InvalidBool {
                            key: key.to_string(),
                            value,
                            offset,
                        })
                    }
                }
            }
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => Value::Array(self.array_value(key, depth)?),
        })
    }

    /// An array payload (element type, count, elements) for `key`; `depth` arrays enclose it.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array, GgufError> {
        let offset = self.pos as u64;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::NestingTooDeep {
                key: key.to_string(),
                offset,
            });
        }
        let type_id = self.u32(&|| format!("array element type of key {key:?}"))?;
        let elem_type = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_string(),
            type_id,
            offset,
        })?;
        let count_offset = self.pos as u64;
        let count = self.u64(&|| format!("array length of key {key:?}"))?;
        let cap = self.check_count(
            &|| format!("array element (key {key:?})"),
            count,
            elem_type.min_size(),
            count_offset,
        )?;
        let what = || format!("array elements of key {key:?}");
        // Fixed-size elements: check_count proved count * size bytes remain.
        macro_rules! fixed {
            ($variant:ident, $t:ty, $n:literal, $conv:expr) => {{
                let raw = self.take(count * $n, &what)?;
                Array::$variant(
                    raw.chunks_exact($n)
                        .map(|c| {
                            let mut a = [0u8; $n];
                            a.copy_from_slice(c);
                            $conv(a)
                        })
                        .collect::<Vec<$t>>(),
                )
            }};
        }
        Ok(match elem_type {
            ValueType::U8 => fixed!(U8, u8, 1, |a: [u8; 1]| a[0]),
            ValueType::I8 => fixed!(I8, i8, 1, |a: [u8; 1]| a[0] as i8),
            ValueType::U16 => fixed!(U16, u16, 2, u16::from_le_bytes),
            ValueType::I16 => fixed!(I16, i16, 2, i16::from_le_bytes),
            ValueType::U32 => fixed!(U32, u32, 4, u32::from_le_bytes),
            ValueType::I32 => fixed!(I32, i32, 4, i32::from_le_bytes),
            ValueType::F32 => fixed!(F32, f32, 4, f32::from_le_bytes),
            ValueType::U64 => fixed!(U64, u64, 8, u64::from_le_bytes),
            ValueType::I64 => fixed!(I64, i64, 8, i64::from_le_bytes),
            ValueType::F64 => fixed!(F64, f64, 8, f64::from_le_bytes),
            ValueType::Bool => {
                let start = self.pos as u64;
                let raw = self.take(count, &what)?;
                let mut v = Vec::with_capacity(cap);
                for (i, &b) in raw.iter().enumerate() {
                    match b {
                        0 | 1 => v.push(b == 1),
                        value => {
                            return Err(GgufError::InvalidBool {
                                key: key.to_string(),
                                value,
                                offset: start + i as u64,
                            })
                        }
                    }
                }
                Array::Bool(v)
            }
            ValueType::String => {
                let mut v = Vec::with_capacity(cap);
                for i in 0..count {
                    v.push(self.string(&|| format!("element {i} of key {key:?}"))?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(cap);
                for _ in 0..count {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

/// Smallest multiple of `alignment` (a power of two) that is >= `x`, if it fits.
fn align_up(x: u64, alignment: u64) -> Option<u64> {
    x.checked_add(alignment - 1).map(|v| v & !(alignment - 1))
}

impl GgufHeader {
    /// Parses and validates the header of the GGUF file held in `bytes` (the whole file: the
    /// tensor data is bounds-checked against its length).
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic: [u8; 4] = r.array(&|| "magic".to_string())?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = r.u32(&|| "version".to_string())?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tc_offset = r.pos as u64;
        let tensor_count = r.u64(&|| "tensor count".to_string())?;
        let kv_offset = r.pos as u64;
        let kv_count = r.u64(&|| "metadata key/value count".to_string())?;

        // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes.
        let kv_cap = r.check_count(
            &|| "metadata key/value".to_string(),
            kv_count,
            13,
            kv_offset,
        )?;
        let mut metadata = Vec::with_capacity(kv_cap);
        let mut key_index = HashMap::with_capacity(kv_cap);
        for i in 0..kv_count {
            let key_offset = r.pos as u64;
            let key = r.string(&|| format!("metadata key #{i}"))?;
            let type_offset = r.pos as u64;
            let type_id = r.u32(&|| format!("value type of key {key:?}"))?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
                key: key.clone(),
                type_id,
                offset: type_offset,
            })?;
            let value = r.value(&key, ty, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey {
                    key,
                    offset: key_offset,
                });
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match &metadata[i].1 {
                Value::U32(a) if *a != 0 && a.is_power_of_two() => u64::from(*a),
                Value::U32(a) => {
                    return Err(GgufError::BadAlignment {
                        detail: format!("{a} is not a non-zero power of two"),
                    })
                }
                other => {
                    return Err(GgufError::BadAlignment {
                        detail: format!("type {} instead of u32", other.value_type().name()),
                    })
                }
            },
        };

        // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        let t_cap = r.check_count(&|| "tensor".to_string(), tensor_count, 24, tc_offset)?;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(t_cap);
        let mut tensor_index = HashMap::with_capacity(t_cap);
        for i in 0..tensor_count {
            let info_offset = r.pos as u64;
            let name = r.string(&|| format!("name of tensor #{i}"))?;
            let nd_offset = r.pos as u64;
            let n_dims = r.u32(&|| format!("dimension count of tensor {name:?}"))?;
            if n_dims as usize > MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    tensor: name,
                    n_dims,
                    offset: nd_offset,
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(r.u64(&|| format!("dimension {d} of tensor {name:?}"))?);
            }
            let ty_offset = r.pos as u64;
            let type_id = r.u32(&|| format!("type of tensor {name:?}"))?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
                tensor: name.clone(),
                type_id,
                offset: ty_offset,
            })?;
            let offset = r.u64(&|| format!("data offset of tensor {name:?}"))?;

            // ggml stores dims as int64: anything above i64::MAX is corrupt.
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| {
                    if d > i64::MAX as u64 {
                        None
                    } else {
                        acc.checked_mul(d)
                    }
                })
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| GgufError::DimsOverflow {
                    tensor: name.clone(),
                    dims: dims.clone(),
                })?;
            if dims.first().is_some_and(|&d0| d0 % ty.block_size() != 0)
                || (dims.is_empty() && ty.block_size() != 1)
            {
                return Err(GgufError::BadShape {
                    tensor: name,
                    dims,
                    ty,
                });
            }
            let n_bytes = ty
                .bytes_for(n_elements)
                .ok_or_else(|| GgufError::DimsOverflow {
                    tensor: name.clone(),
                    dims: dims.clone(),
                })?;
            if offset % alignment != 0 {
                return Err(GgufError::MisalignedOffset {
                    tensor: name,
                    offset,
                    alignment,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor {
                    name,
                    offset: info_offset,
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                n_elements,
                n_bytes,
            });
        }

        let file_len = bytes.len() as u64;
        let data_offset =
            align_up(r.pos as u64, alignment).ok_or_else(|| GgufError::BadAlignment {
                detail: format!(
                    "data section offset overflows aligning {} to {alignment}",
                    r.pos
                ),
            })?;
        for t in &tensors {
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        tensor: t.name.clone(),
                        start: data_offset.saturating_add(t.offset),
                        end: data_offset
                            .saturating_add(t.offset)
                            .saturating_add(t.n_bytes),
                        file_len,
                    })
                }
            }
        }

        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            key_index,
            tensor_index,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongValueType {
            key: key.to_string(),
            expected,
            found: v.value_type().name(),
        }
    }

    /// A required non-negative integer (any integer type).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong(key, "non-negative integer", v))
    }

    /// A required float (f32 or f64).
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong(key, "float", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "string", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong(key, "array", v))
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An opened GGUF file: the bytes (memory-mapped) and the validated header.
pub struct GgufFile {
    backing: Backing,
    pub header: GgufHeader,
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and we never hand out references that outlive it. The one
    // hazard is another process truncating or rewriting the file while it is mapped (which
    // could fault or change bytes under us); model files are treated as immutable, and the
    // fetch code only ever renames complete files into place, never rewrites them.
    unsafe { memmap2::Mmap::map(file) }
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mmap = map_file(&file).map_err(io)?;
        let header = GgufHeader::parse(&mmap)?;
        Ok(GgufFile {
            backing: Backing::Mmap(mmap),
            header,
        })
    }

    /// Validates GGUF bytes held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        let header = GgufHeader::parse(&bytes)?;
        Ok(GgufFile {
            backing: Backing::Owned(bytes),
            header,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }

    /// The raw (still quantized) bytes of `info` (which must come from this file's header;
    /// the bounds were checked when parsing).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_offset + info.offset) as usize;
        &self.bytes()[start..start + info.n_bytes as usize]
    }

    /// Dequantizes the whole tensor `name` to f32.
    pub fn dequantize_tensor(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self
            .header
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_string(),
            })?;
        let mut out = vec![0f32; info.n_elements as usize];
        dequantize(info.ty, self.tensor_bytes(info), &mut out)?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization, following ggml-quants.c `dequantize_row_*` operation for operation.
// ---------------------------------------------------------------------------------------------

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `src` (whole blocks of `ty`) into `dst`. `dst.len()` must be the element count
/// that `src` holds.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), GgufError> {
    if !ty.can_dequantize() {
        return Err(GgufError::UnsupportedDequant { ty });
    }
    let n = dst.len() as u64;
    let expected = ty.bytes_for(n);
    if expected != Some(src.len() as u64) {
        return Err(GgufError::LengthMismatch {
            detail: format!(
                "{ty:?}: {} source bytes for {n} elements (expected {})",
                src.len(),
                expected.map_or("a whole number of blocks".to_string(), |e| e.to_string())
            ),
        });
    }
    let bs = ty.block_size() as usize;
    let ts = ty.type_size() as usize;
    let blocks = src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(s, d)| d[0] = f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(s, d)| d[0] = f16_at(s, 0)),
        GgmlType::BF16 => blocks.for_each(|(s, d)| {
            d[0] = half::bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32()
        }),
        GgmlType::Q8_0 => blocks.for_each(|(s, d)| dequantize_block_q8_0(s, d)),
        GgmlType::Q4_0 => blocks.for_each(|(s, d)| dequantize_block_q4_0(s, d)),
        GgmlType::Q5_0 => blocks.for_each(|(s, d)| dequantize_block_q5_0(s, d)),
        GgmlType::Q4K => blocks.for_each(|(s, d)| dequantize_block_q4_k(s, d)),
        GgmlType::Q5K => blocks.for_each(|(s, d)| dequantize_block_q5_k(s, d)),
        GgmlType::Q6K => blocks.for_each(|(s, d)| dequantize_block_q6_k(s, d)),
        _ => unreachable!("can_dequantize checked above"),
    }
    Ok(())
}

/// Q8_0 block (34 bytes): d: f16, qs: [i8; 32]. y = qs * d.
fn dequantize_block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (yj, &q) in y.iter_mut().zip(&b[2..34]) {
        *yj = (q as i8) as f32 * d;
    }
}

/// Q4_0 block (18 bytes): d: f16, qs: [u8; 16]. Low nibbles are elements 0..16, high nibbles
/// 16..32, each minus 8, times d.
fn dequantize_block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        let x0 = (qs[j] & 0x0F) as i32 - 8;
        let x1 = (qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// Q5_0 block (22 bytes): d: f16, qh: u32 (LE, bit j = 5th bit of element j), qs: [u8; 16].
fn dequantize_block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as i32;
        let xh1 = ((qh >> (j + 12)) & 0x10) as i32;
        let x0 = ((qs[j] & 0x0F) as i32 | xh0) - 16;
        let x1 = ((qs[j] >> 4) as i32 | xh1) - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed K-quant scale bytes.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K block (144 bytes): d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]. Four groups
/// of 64 elements; each group's 32 bytes give 32 low nibbles (sub-block 2g) then 32 high
/// nibbles (sub-block 2g+1); y = d*sc * q - dmin*m.
fn dequantize_block_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &qs[32 * g..32 * g + 32];
        let out = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K block (176 bytes): d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128].
/// Like Q4_K, with the 5th bit of element l of sub-block s in bit s of qh[l].
fn dequantize_block_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let q = &qs[32 * g..32 * g + 32];
        let out = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
            out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// Q6_K block (210 bytes): ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16. Two halves
/// of 128 elements; y = (d * scale) * (q - 32) with q = 4 low bits from ql, 2 high from qh.
fn dequantize_block_q6_k(b: &[u8], y: &mut [f32]) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for h in 0..2 {
        let ql = &ql_all[64 * h..64 * h + 64];
        let qh = &qh_all[32 * h..32 * h + 32];
        let sc = &sc_all[8 * h..8 * h + 8];
        let out = &mut y[128 * h..128 * h + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Builders of GGUF bytes for tests and fuzz targets.
pub mod testing {
    use super::{Array, GgmlType, Value, ValueType, GGUF_MAGIC};

    /// Writes GGUF bytes. By default the output is a valid file: tensor offsets are assigned
    /// in order, aligned, and the data section is padded. The `raw_*` hooks and the public
    /// fields allow building hostile files.
    #[derive(Clone, Debug)]
    pub struct GgufBuilder {
        pub version: u32,
        pub alignment: u64,
        pub kvs: Vec<(String, Value)>,
        pub tensors: Vec<BuilderTensor>,
        /// When set, written instead of the real tensor count.
        pub tensor_count_override: Option<u64>,
        /// When set, written instead of the real metadata count.
        pub kv_count_override: Option<u64>,
    }

    #[derive(Clone, Debug)]
    pub struct BuilderTensor {
        pub name: String,
        pub dims: Vec<u64>,
        /// Raw ggml type id (so unknown ids can be written).
        pub type_id: u32,
        pub data: Vec<u8>,
        /// When set, written instead of the computed offset.
        pub offset_override: Option<u64>,
    }

    impl Default for GgufBuilder {
        fn default() -> Self {
            GgufBuilder {
                version: 3,
                alignment: super::DEFAULT_ALIGNMENT,
                kvs: Vec::new(),
                tensors: Vec::new(),
                tensor_count_override: None,
                kv_count_override: None,
            }
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// Writes a value's payload (no type id).
    pub fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => put_str(out, s),
            Value::Array(a) => {
                out.extend_from_slice(&a.elem_type().id().to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                for it in a.values() {
                    put_value(out, &it);
                }
            }
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        }
    }

    impl GgufBuilder {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn kv(mut self, key: &str, value: Value) -> Self {
            self.kvs.push((key.to_string(), value));
            self
        }

        /// Convenience: an array of strings.
        pub fn kv_strings(self, key: &str, items: &[&str]) -> Self {
            let items = items.iter().map(|s| s.to_string()).collect();
            self.kv(key, Value::Array(Array::String(items)))
        }

        /// Adds a tensor with its raw bytes (dims fastest-first, as GGUF stores them).
        pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
            self.tensors.push(BuilderTensor {
                name: name.to_string(),
                dims: dims.to_vec(),
                type_id: ty.id(),
                data,
                offset_override: None,
            });
            self
        }

        /// Adds an f32 tensor.
        pub fn tensor_f32(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.tensor(name, dims, GgmlType::F32, data)
        }

        /// The GGUF bytes.
        pub fn build(&self) -> Vec<u8> {
            let a = self.alignment.max(1) as usize;
            let mut out = Vec::new();
            out.extend_from_slice(&GGUF_MAGIC);
            out.extend_from_slice(&self.version.to_le_bytes());
            let tc = self
                .tensor_count_override
                .unwrap_or(self.tensors.len() as u64);
            let kc = self.kv_count_override.unwrap_or(self.kvs.len() as u64);
            out.extend_from_slice(&tc.to_le_bytes());
            out.extend_from_slice(&kc.to_le_bytes());
            for (k, v) in &self.kvs {
                put_str(&mut out, k);
                out.extend_from_slice(&v.value_type().id().to_le_bytes());
                put_value(&mut out, v);
            }
            let mut offsets = Vec::new();
            let mut next = 0usize;
            for t in &self.tensors {
                put_str(&mut out, &t.name);
                out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
                for d in &t.dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&t.type_id.to_le_bytes());
                let off = t.offset_override.unwrap_or(next as u64);
                out.extend_from_slice(&off.to_le_bytes());
                offsets.push(next);
                next = (next + t.data.len()).div_ceil(a) * a;
            }
            while out.len() % a != 0 {
                out.push(0);
            }
            let data_start = out.len();
            for (t, off) in self.tensors.iter().zip(offsets) {
                out.resize(data_start + off, 0);
                out.extend_from_slice(&t.data);
            }
            out
        }
    }

    /// A `Value::Array` of `elem_type` from loose values, for [`GgufBuilder::kv`].
    ///
    /// # Panics
    /// If an item does not have type `elem_type` (a bug in the calling test).
    pub fn array_of(elem_type: ValueType, items: Vec<Value>) -> Value {
        Value::Array(
            Array::from_values(elem_type, items).expect("array_of: items must all be elem_type"),
        )
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index loops mirror ggml's reference formulation
mod tests {
    use super::testing::*;
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    fn deq(ty: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; n];
        dequantize(ty, src, &mut out).unwrap();
        out
    }

    #[test]
    fn q8_0_block() {
        let mut b = f16b(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = deq(GgmlType::Q8_0, &b, 32);
        for (i, &yi) in y.iter().enumerate() {
            assert_eq!(yi, (i as f32 - 16.0) * 0.5);
        }
    }

    #[test]
    fn q4_0_block() {
        let mut b = f16b(2.0).to_vec();
        // element j: low nibble j, element j+16: high nibble 15-j
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = deq(GgmlType::Q4_0, &b, 32);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 2.0);
        }
    }

    #[test]
    fn q5_0_block_high_bits() {
        let mut b = f16b(0.25).to_vec();
        // high bits set for elements 1, 3 (low half) and 16, 31 (high half)
        let qh: u32 = (1 << 1) | (1 << 3) | (1 << 16) | (1 << 31);
        b.extend_from_slice(&qh.to_le_bytes());
        b.extend((0..16u8).map(|j| (j & 0xF) | ((j ^ 0xF) << 4)));
        let y = deq(GgmlType::Q5_0, &b, 32);
        for j in 0..16 {
            let h0 = if qh & (1 << j) != 0 { 16 } else { 0 };
            let h1 = if qh & (1 << (j + 16)) != 0 { 16 } else { 0 };
            assert_eq!(y[j], ((j as i32 | h0) - 16) as f32 * 0.25, "elem {j}");
            assert_eq!(
                y[j + 16],
                (((j as i32 ^ 0xF) | h1) - 16) as f32 * 0.25,
                "elem {}",
                j + 16
            );
        }
        assert_eq!(y[1], (1 + 16 - 16) as f32 * 0.25);
        assert_eq!(y[0], -16.0 * 0.25);
        assert_eq!(y[31], (16 - 16) as f32 * 0.25);
    }

    /// Packs eight 6-bit (scale, min) pairs the way ggml's K-quants do.
    fn pack_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
        let mut q = [0u8; 12];
        for j in 0..4 {
            q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
        }
        q
    }

    #[test]
    fn k_scale_unpacking_roundtrips() {
        let sc = [1, 63, 17, 32, 48, 5, 60, 33];
        let m = [62, 0, 9, 41, 19, 63, 28, 50];
        let q = pack_scales(sc, m);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (sc[j], m[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q4_k_block() {
        let sc = [1, 2, 3, 4, 60, 61, 62, 63];
        let m = [5, 6, 7, 8, 40, 41, 42, 43];
        let (d, dmin) = (0.125f32, 0.0625f32);
        let mut b = Vec::new();
        b.extend_from_slice(&f16b(d));
        b.extend_from_slice(&f16b(dmin));
        b.extend_from_slice(&pack_scales(sc, m));
        let qs: Vec<u8> = (0..128).map(|i| (i * 7 % 251) as u8).collect();
        b.extend_from_slice(&qs);
        let y = deq(GgmlType::Q4K, &b, 256);
        for (i, &yi) in y.iter().enumerate() {
            let (g, r) = (i / 64, i % 64);
            let (sub, l) = (2 * g + r / 32, r % 32);
            let byte = qs[32 * g + l];
            let q = if r < 32 { byte & 0xF } else { byte >> 4 };
            let want = (d * sc[sub] as f32) * q as f32 - dmin * m[sub] as f32;
            assert_eq!(yi.to_bits(), want.to_bits(), "elem {i}");
        }
    }

    #[test]
    fn q5_k_block() {
        let sc = [9, 8, 7, 6, 50, 51, 52, 53];
        let m = [1, 0, 3, 2, 33, 34, 35, 36];
        let (d, dmin) = (0.5f32, 0.25f32);
        let mut b = Vec::new();
        b.extend_from_slice(&f16b(d));
        b.extend_from_slice(&f16b(dmin));
        b.extend_from_slice(&pack_scales(sc, m));
        let qh: Vec<u8> = (0..32).map(|i| (i * 37 % 256) as u8).collect();
        let qs: Vec<u8> = (0..128).map(|i| (i * 11 % 256) as u8).collect();
        b.extend_from_slice(&qh);
        b.extend_from_slice(&qs);
        let y = deq(GgmlType::Q5K, &b, 256);
        for (i, &yi) in y.iter().enumerate() {
            let (g, r) = (i / 64, i % 64);
            let (sub, l) = (2 * g + r / 32, r % 32);
            let byte = qs[32 * g + l];
            let lo = if r < 32 { byte & 0xF } else { byte >> 4 };
            let hi = (qh[l] >> sub) & 1;
            let q = lo + 16 * hi;
            let want = (d * sc[sub] as f32) * q as f32 - dmin * m[sub] as f32;
            assert_eq!(yi.to_bits(), want.to_bits(), "elem {i}");
        }
    }

    #[test]
    fn q6_k_block() {
        let ql: Vec<u8> = (0..128).map(|i| (i * 13 % 256) as u8).collect();
        let qh: Vec<u8> = (0..64).map(|i| (i * 29 % 256) as u8).collect();
        let scales: Vec<i8> = (0..16).map(|i| (i as i8 - 8) * 3).collect();
        let d = 0.03125f32;
        let mut b = Vec::new();
        b.extend_from_slice(&ql);
        b.extend_from_slice(&qh);
        b.extend(scales.iter().map(|&s| s as u8));
        b.extend_from_slice(&f16b(d));
        assert_eq!(b.len(), 210);
        let y = deq(GgmlType::Q6K, &b, 256);
        // Independent formulation: element i = 128*h + 32*k + l, k in 0..4 picks nibble/half.
        for (i, &yi) in y.iter().enumerate() {
            let (h, r) = (i / 128, i % 128);
            let (k, l) = (r / 32, r % 32);
            let qlb = ql[64 * h + l + 32 * (k % 2)];
            let lo = if k < 2 { qlb & 0xF } else { qlb >> 4 };
            let hi = (qh[32 * h + l] >> (2 * k)) & 3;
            let q = (lo | (hi << 4)) as i32 - 32;
            let s = scales[8 * h + l / 16 + 2 * k];
            let want = d * s as f32 * q as f32;
            assert_eq!(yi.to_bits(), want.to_bits(), "elem {i}");
        }
    }

    #[test]
    fn float_types() {
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(deq(GgmlType::F32, &f32b, 4), vals);
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(deq(GgmlType::F16, &f16b, 4), vals);
        let bf: Vec<u8> = vals[..3]
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(deq(GgmlType::BF16, &bf, 3), &vals[..3]);
    }

    #[test]
    fn dequantize_rejects_bad_lengths_and_types() {
        let mut out = vec![0f32; 32];
        let e = dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).unwrap_err();
        assert!(e.to_string().contains("33 source bytes"), "{e}");
        let e = dequantize(GgmlType::Q4_1, &[0u8; 20], &mut out).unwrap_err();
        assert!(e.to_string().contains("Q4_1"), "{e}");
    }

    #[test]
    fn builder_roundtrip() {
        let bytes = GgufBuilder::new()
            .kv("general.architecture", Value::String("qwen2".into()))
            .kv("a.u8", Value::U8(7))
            .kv("a.bool", Value::Bool(true))
            .kv(
                "a.nested",
                array_of(
                    ValueType::Array,
                    vec![array_of(
                        ValueType::I32,
                        vec![Value::I32(-1), Value::I32(2)],
                    )],
                ),
            )
            .tensor_f32("t", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .tensor_f32("u", &[1], &[9.0])
            .build();
        let f = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(f.header.get_str("general.architecture").unwrap(), "qwen2");
        assert_eq!(f.header.get("a.u8"), Some(&Value::U8(7)));
        assert_eq!(f.header.tensors.len(), 2);
        let t = f.header.tensor("t").unwrap();
        assert_eq!(t.row_major_shape(), vec![3, 2]);
        assert_eq!(f.header.tensor("u").unwrap().offset, 32);
        assert_eq!(f.dequantize_tensor("u").unwrap(), vec![9.0]);
    }
}
