//! Dequantization, following ggml-quants.c `dequantize_row_*` operation for operation (the
//! block formats' code lives in the kernels crate, [`qwenrt_kernels::quant`], which the
//! scalar reference kernels share).

use qwenrt_kernels::quant;

use super::*;

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
        _ => match ty.quant_type() {
            Some(qt) => quant::dequantize_row(qt, src, dst),
            None => unreachable!("can_dequantize checked above"),
        },
    }
    Ok(())
}
