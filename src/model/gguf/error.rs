//! What can go wrong reading a GGUF file.

use std::fmt;
use std::path::PathBuf;

use super::*;

/// Everything that can go wrong reading a GGUF file. Offsets are byte offsets in the file.
#[derive(Debug)]
pub enum GgufError {
    /// The file cannot be opened, mapped or read.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Fewer bytes remain than `what` needs.
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },
    /// The file does not start with `GGUF`.
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A version other than 2 or 3.
    UnsupportedVersion {
        /// The version read.
        version: u32,
    },
    /// A count that cannot possibly fit in the bytes that remain.
    CountTooLarge {
        /// What is being counted.
        what: String,
        /// The count read.
        count: u64,
        /// Where the count is.
        offset: u64,
        /// Bytes left after it.
        remaining: u64,
    },
    /// A string that is not UTF-8.
    InvalidUtf8 {
        /// Which string.
        what: String,
        /// Where it starts.
        offset: u64,
    },
    /// A metadata value type id this reader does not know.
    UnknownValueType {
        /// The metadata key.
        key: String,
        /// The type id read.
        type_id: u32,
        /// Where it is.
        offset: u64,
    },
    /// A bool byte that is neither 0 nor 1.
    InvalidBool {
        /// The metadata key.
        key: String,
        /// The byte read.
        value: u8,
        /// Where it is.
        offset: u64,
    },
    /// Arrays nested deeper than the reader allows.
    NestingTooDeep {
        /// The metadata key.
        key: String,
        /// Where the innermost array starts.
        offset: u64,
    },
    /// A metadata key that appears twice.
    DuplicateKey {
        /// The key.
        key: String,
        /// Where the second one is.
        offset: u64,
    },
    /// A tensor name that appears twice.
    DuplicateTensor {
        /// The tensor.
        name: String,
        /// Where the second one is.
        offset: u64,
    },
    /// An unusable `general.alignment`.
    BadAlignment {
        /// What is wrong with it.
        detail: String,
    },
    /// A tensor with more dimensions than ggml's four.
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// Its dimension count.
        n_dims: u32,
        /// Where its info is.
        offset: u64,
    },
    /// A tensor type id this reader does not know.
    UnknownTensorType {
        /// The tensor.
        tensor: String,
        /// The type id read.
        type_id: u32,
        /// Where its info is.
        offset: u64,
    },
    /// Dimensions whose element count overflows.
    DimsOverflow {
        /// The tensor.
        tensor: String,
        /// Its dimensions.
        dims: Vec<u64>,
    },
    /// The first dimension is not a multiple of the type's block size.
    BadShape {
        /// The tensor.
        tensor: String,
        /// Its dimensions.
        dims: Vec<u64>,
        /// Its type.
        ty: GgmlType,
    },
    /// A tensor offset that is not a multiple of the alignment.
    MisalignedOffset {
        /// The tensor.
        tensor: String,
        /// Its offset in the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// A tensor whose bytes run past the end of the file.
    TensorOutOfBounds {
        /// The tensor.
        tensor: String,
        /// Its first byte (from the start of the file).
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A type this crate cannot dequantize.
    UnsupportedDequant {
        /// The type.
        ty: GgmlType,
    },
    /// Source/destination lengths that do not match the element count.
    LengthMismatch {
        /// What does not match.
        detail: String,
    },
    /// A required metadata key is absent.
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata key whose value has the wrong type.
    WrongValueType {
        /// The key.
        key: String,
        /// The type wanted.
        expected: &'static str,
        /// The type present.
        found: &'static str,
    },
    /// A required tensor is absent.
    MissingTensor {
        /// The tensor.
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
