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
//! - [`GgufWriter`]: writes a GGUF file as a stream (header, then each tensor's bytes in
//!   order), for files of any size ([`crate::model::synth`] writes multi-GB ones with it).
//! - `qwenrt::testkit::gguf::GgufBuilder` (feature `testkit`): emits valid (or deliberately
//!   broken) GGUF bytes for tests and fuzz targets, with the writer's value encoding.

mod dequant;
mod error;
mod header;
#[cfg(test)]
mod tests;
mod types;
mod writer;

use std::fs::File;
use std::path::Path;

pub use dequant::dequantize;
pub use error::GgufError;
pub use header::{GgufHeader, TensorInfo};
pub use types::{Array, GgmlType, Value, ValueType};
pub use writer::{put_str, put_value, GgufWriter, TensorSpec};

/// GGUF files start with these four bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor offset when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are rejected (guards the recursive parser's stack).
pub const MAX_ARRAY_DEPTH: usize = 8;

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An opened GGUF file: the bytes (memory-mapped) and the validated header.
pub struct GgufFile {
    backing: Backing,
    /// The validated header.
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
