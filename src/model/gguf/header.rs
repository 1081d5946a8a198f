//! The GGUF header: a bounds-checked parse of metadata and tensor descriptions.

use std::collections::HashMap;

use super::*;

/// One tensor's description from the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// ggml order: fastest-varying dimension first (reverse for row-major shapes).
    pub dims: Vec<u64>,
    /// Its type.
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
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data (`general.alignment`, default 32).
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

    /// The metadata value at `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The tensor called `name`.
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

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "string", v))
    }

    /// A required array.
    pub fn get_array(&self, key: &str) -> Result<&Array, GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong(key, "array", v))
    }
}
