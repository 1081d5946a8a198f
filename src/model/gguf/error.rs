//! What can go wrong reading a GGUF file.

use std::fmt;
use std::path::PathBuf;

use super::*;

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
