//! Writing GGUF: the value encoding (shared with the test builder,
//! `qwenrt::testkit::gguf::GgufBuilder`) and [`GgufWriter`], which writes the header first and
//! then takes each tensor's bytes in order as a stream, so a file of any size is written
//! without holding it in memory.

use std::io::{self, Write};

use super::{GgmlType, Value, GGUF_MAGIC};

/// Appends a GGUF string (u64 length, then the bytes).
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends a value's payload (no type id).
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

/// A tensor to be written: its name, dims (fastest-first, as GGUF stores them) and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The GGUF tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, fastest-varying first.
    pub dims: Vec<u64>,
    /// The ggml type of its data.
    pub ty: GgmlType,
}

impl TensorSpec {
    /// Elements in the tensor.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of its data, or `None` when its rows are not whole blocks of its type.
    pub fn n_bytes(&self) -> Option<u64> {
        let block = self.ty.block_size();
        if self.dims.first().is_none_or(|&d| !d.is_multiple_of(block)) {
            return None;
        }
        self.ty.bytes_for(self.n_elements())
    }
}

/// Writes a GGUF file as a stream: [`GgufWriter::new`] writes the header (metadata and the
/// tensor infos, offsets assigned in order and aligned), then [`GgufWriter::write`] takes the
/// tensors' bytes in that same order, in pieces of any size, and pads between tensors;
/// [`GgufWriter::finish`] checks that every tensor got exactly its bytes.
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    /// Bytes of each tensor, in order.
    sizes: Vec<u64>,
    /// The tensor being written and how many of its bytes have been written.
    current: usize,
    written: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header of a GGUF v3 file with `metadata` (in order) and `tensors` to `out`
    /// (alignment [`DEFAULT_ALIGNMENT`](super::DEFAULT_ALIGNMENT); a `general.alignment` entry
    /// is refused, as nothing here would honour it). Fails on a tensor whose rows are not whole
    /// blocks of its type.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> io::Result<GgufWriter<W>> {
        let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
        if metadata.iter().any(|(k, _)| k == "general.alignment") {
            return Err(invalid(
                "general.alignment: the writer uses the default alignment".into(),
            ));
        }
        let alignment = super::DEFAULT_ALIGNMENT;
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut head, k);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            let bytes = t.n_bytes().ok_or_else(|| {
                invalid(format!(
                    "tensor `{}`: dims {:?} are not whole {:?} blocks",
                    t.name, t.dims, t.ty
                ))
            })?;
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            sizes.push(bytes);
            offset = (offset + bytes).next_multiple_of(alignment);
        }
        while !(head.len() as u64).is_multiple_of(alignment) {
            head.push(0);
        }
        out.write_all(&head)?;
        Ok(GgufWriter {
            out,
            alignment,
            sizes,
            current: 0,
            written: 0,
        })
    }

    /// Appends `bytes` to the data of the current tensor (moving on to the next one, after the
    /// alignment padding, once a tensor is complete). Fails on more bytes than the tensors hold.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let Some(&size) = self.sizes.get(self.current) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "more tensor bytes than the header's tensors hold",
                ));
            };
            let n = (size - self.written).min(bytes.len() as u64) as usize;
            self.out.write_all(&bytes[..n])?;
            self.written += n as u64;
            bytes = &bytes[n..];
            if self.written == size {
                self.next_tensor()?;
            }
        }
        Ok(())
    }

    /// Pads the finished tensor and moves to the next (skipping any of 0 bytes).
    fn next_tensor(&mut self) -> io::Result<()> {
        let size = self.sizes[self.current];
        let pad = size.next_multiple_of(self.alignment) - size;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.current += 1;
        self.written = 0;
        if self.sizes.get(self.current) == Some(&0) {
            return self.next_tensor();
        }
        Ok(())
    }

    /// The index of the tensor whose bytes [`GgufWriter::write`] takes next.
    pub fn current_tensor(&self) -> usize {
        self.current
    }

    /// Checks that every tensor got its bytes, flushes, and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if self.current == 0 && self.sizes.first() == Some(&0) {
            self.next_tensor()?;
        }
        if self.current != self.sizes.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "tensor {} of {} is incomplete ({} of its {} bytes written)",
                    self.current,
                    self.sizes.len(),
                    self.written,
                    self.sizes[self.current]
                ),
            ));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}
