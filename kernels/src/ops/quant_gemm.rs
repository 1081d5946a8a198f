//! The prefill matmul on block-quantized weights: `y = x · wᵀ` with `x` `[n, k]` f32, `w`
//! `[rows, k]` in a [`QuantType`](quant::QuantType), `y` `[n, rows]`.
//!
//! - Scalar: each weight row is dequantized to f32 (ggml's dequantization) and dotted with the
//!   unquantized inputs in column order, so every output is bit for bit [`quant::matvec_ref`]'s.
//! - AVX-512 and AVX2: the inputs are quantized once to 8-bit blocks ([`quant::quantize_row_q8`]);
//!   each panel of 16 weight rows is repacked (`quant::panel::pack_q_panel`) as unsigned 8-bit
//!   quants, 4 consecutive k of 16 rows per 64 bytes, with a per (row, sub-block) f32 scale and
//!   bias (`w = scale * q + bias`), and the microkernels take `u8 × i8` dot products
//!   (`vpdpbusd` on AVX512-VNNI or AVX-VNNI, else `vpmaddubsw` + `vpmaddwd`; on AMX, one
//!   `tdpbsud` per sub-block of 16 inputs x 16 rows: [`prefill_amx`]), chosen by the [`Cpu`],
//!   converting to f32 once per sub-block: `acc += f32(idot) * (scale * d_x) + bias * (d_x *
//!   sum(x_q))`.
//! - NEON: the inputs quantized the same way, then the NEON quantized matvec (`sdot`, `smmla`
//!   or widening multiplies, as the [`Cpu`] has them) over tiles of weight rows, 4 inputs per
//!   call, so every output is bit for bit the NEON matvec's.

use super::*;
use crate::quant::{self, q8_len, QMatrix};

/// Whether the AVX-512 quantized prefill matmul on `cpu` runs on AMX tiles: the `Cpu` claims
/// AMX ([`Cpu::amx`]: AMX-TILE and AMX-INT8, the tile data granted by Linux, VNNI in use, not
/// `QWENRT_AMX=0`), and a first small matmul on AMX gave the AVX-512 tiles' bits (checked once
/// per process, on the first call; else a warning on stderr, and AMX stays off). Elsewhere it
/// runs AVX512-VNNI (or `vpmaddubsw`) tiles.
pub fn prefill_amx(cpu: impl Into<Cpu>) -> bool {
    let cpu: Cpu = cpu.into();
    #[cfg(target_arch = "x86_64")]
    if cpu.amx() {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        return *OK.get_or_init(|| tiles_agree(cpu));
    }
    let _ = cpu;
    false
}

/// Q8_0 (sub-blocks of 32) and Q6_K (of 16) matmuls of 17 weight rows by 19 inputs (a full
/// and a partial tile each way) on the AMX tiles and on the AVX-512 ones: whether the bits
/// agree. The AMX kernel could only be written, not run, where it was written (no AMX there),
/// so it proves itself once on the machine before serving. Where `cpu` (at the AVX-512 level)
/// has no AMX, both runs are on the AVX-512 tiles (the unit test on machines without AMX).
#[cfg(target_arch = "x86_64")]
fn tiles_agree(cpu: Cpu) -> bool {
    assert_eq!(cpu.isa(), Isa::Avx512, "tiles_agree: not an AVX-512 Cpu");
    let amx = cpu.amx();
    let mut s = 0x9e37_79b9u32;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        s
    };
    let vnni = cpu.vnni();
    let (rows, n) = (17, 19);
    use crate::quant::QuantType;
    for (qt, k, d_at) in [(QuantType::Q8_0, 96, 0), (QuantType::Q6K, 256, 208)] {
        let rb = qt.row_bytes(k).unwrap_or(0);
        let mut w: Vec<u8> = (0..rows * rb).map(|_| next() as u8).collect();
        for blk in w.chunks_exact_mut(qt.block_bytes()) {
            // the block scale 2^-6: a finite f16
            blk[d_at..d_at + 2].copy_from_slice(&0x2400u16.to_le_bytes());
        }
        let x: Vec<f32> = (0..n * k)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut xq = vec![0f32; n * q8_len(k)];
        for (xr, qr) in x.chunks_exact(k).zip(xq.chunks_exact_mut(q8_len(k))) {
            quant::quantize_row_q8(xr, qr);
        }
        let wm = QMatrix::new(qt, &w, rows, k);
        let mut panel = vec![0f32; matmul_q_panel_len(k)];
        let mut ys = [vec![0f32; n * rows], vec![0f32; n * rows]];
        for (amx, y) in [amx, false].into_iter().zip(ys.iter_mut()) {
            // SAFETY: `cpu` is at the AVX-512 level (asserted) and claims VNNI and AMX (the
            // tile data granted) only where detected; w holds `rows` rows of k, xq n rows,
            // panel one panel, y n rows of `rows` floats.
            unsafe {
                let b = Avx512::new_unchecked();
                let y = y.as_mut_ptr();
                generic::matmul_q_strided(b, &wm, vnni, amx, &xq, n, y, rows, &mut panel)
            }
        }
        if !ys[0]
            .iter()
            .zip(&ys[1])
            .all(|(a, b)| a.to_bits() == b.to_bits())
        {
            eprintln!(
                "qwenrt: the AMX prefill tiles disagree with the AVX-512 ones on this machine \
                 ({qt}); prefill runs without AMX"
            );
            return false;
        }
    }
    true
}

/// Weight rows per tile of the NEON quantized matmul: 64 rows of 4864 Q8_0 columns are
/// about 330 KiB, within the L2 of the ARM server cores (1-2 MiB).
#[cfg(target_arch = "aarch64")]
const NEON_ROW_TILE: usize = 64;

/// f32 words of one thread's packed panel at depth `k`, whatever the format and ISA: the
/// largest is Q6_K's (`k / 16` sub-blocks of 384 bytes = `6k` words); the scalar path uses `k`.
pub fn matmul_q_panel_len(k: usize) -> usize {
    6 * k
}

/// Words of scratch [`matmul_q`] needs for `n` rows of `k`: the quantized inputs
/// (`n * q8_len(k)`) and one packed panel.
pub fn matmul_q_scratch_len(n: usize, k: usize) -> usize {
    n * q8_len(k) + matmul_q_panel_len(k)
}

/// `y = x · wᵀ` on the quantized matrix `w` (`[rows, k]`), on the calling thread: `x` is
/// `[n, k]`, `y` `[n, rows]`. `scratch` holds [`matmul_q_scratch_len`]`(n, k)` words.
///
/// # Panics
/// Unless `x` is whole rows of `k`, `y` as many rows of `rows` and `scratch` long enough.
pub fn matmul_q(
    cpu: impl Into<Cpu>,
    w: &QMatrix<'_>,
    x: &[f32],
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let (k, rows) = (w.cols(), w.rows());
    let n = w.inputs("matmul_q", x.len(), y.len());
    let need = matmul_q_scratch_len(n, k);
    assert!(
        scratch.len() >= need,
        "matmul_q: scratch holds {} words, {need} needed",
        scratch.len()
    );
    let (xq, panel) = scratch.split_at_mut(n * q8_len(k));
    let cpu: Cpu = cpu.into();
    if cpu.isa() != Isa::Scalar {
        quantize_rows(cpu.isa(), x, k, n, xq);
    }
    // SAFETY: `x` holds n*k floats (checked), `xq` the quantized rows (just filled), `panel`
    // one panel (checked); y (borrowed mutably here) holds n*rows floats: row t < n, column
    // j < rows at t*rows + j.
    unsafe { matmul_q_strided(cpu, w, x, xq, n, y.as_mut_ptr(), rows, panel) }
}

/// Quantizes rows `0..n` of `x` (`k` each) into `xq`, `q8_len(k)` words per row, exactly as
/// [`quant::quantize_row_q8`] does (vectorized on AVX-512).
pub(crate) fn quantize_rows(isa: Isa, x: &[f32], k: usize, n: usize, xq: &mut [f32]) {
    let per = q8_len(k);
    assert!(x.len() >= n * k && xq.len() >= n * per);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && k.is_multiple_of(32) {
        check(Isa::Avx512);
        // SAFETY: CPU support checked; lengths and k checked.
        unsafe { avx512::quantize_rows_q8(x, k, n, xq) };
        return;
    }
    let _ = isa;
    for (xr, out) in x.chunks_exact(k).zip(xq.chunks_exact_mut(per)).take(n) {
        quant::quantize_row_q8(xr, out);
    }
}

/// The body behind [`matmul_q`] and `par::matmul_q`: `y[t * ldy + j] = sum_c w[j, c] *
/// x[t * k + c]` for `t < n`, `j < rows` (`w` is `[rows, k]`), so that a thread can fill a
/// column block of a wider output. The SIMD ISAs read `xq` (`n` rows quantized by
/// [`quantize_rows`]), the scalar one `x`; `panel` is the thread's own
/// [`matmul_q_panel_len`]`(k)` words.
///
/// # Safety
/// `x.len() >= n * k`, `xq.len() >= n * q8_len(k)` (filled unless `isa` is scalar), `ldy >=
/// rows`, and `y` must be valid for writes at `t * ldy + j` (`t < n`, `j < rows`) with
/// nothing else reading or writing those elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_q_strided(
    cpu: Cpu,
    w: &QMatrix<'_>,
    x: &[f32],
    xq: &[f32],
    n: usize,
    y: *mut f32,
    ldy: usize,
    panel: &mut [f32],
) {
    let (qt, k, rows) = (w.qt(), w.cols(), w.rows());
    assert!(x.len() >= n * k && ldy >= rows);
    assert!(
        panel.len() >= matmul_q_panel_len(k),
        "matmul_q: panel too short"
    );
    match cpu.isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            check(Isa::Avx512);
            assert!(xq.len() >= n * q8_len(k));
            let vnni = cpu.vnni();
            // (a `Cpu` without VNNI has no AMX either, so the `vpmaddubsw` tiles get tested
            // on AMX machines)
            let amx = prefill_amx(cpu);
            // SAFETY: CPU support checked; a `Cpu` claims VNNI and AMX (the tile data
            // granted) only where detected; buffers checked above or forwarded from our
            // caller's contract.
            unsafe {
                let b = Avx512::new_unchecked();
                generic::matmul_q_strided(b, w, vnni, amx, xq, n, y, ldy, panel)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            check(Isa::Avx2);
            assert!(xq.len() >= n * q8_len(k));
            let vnni = cpu.vnni();
            // SAFETY: CPU support checked (AVX-VNNI too, when `vnni`: a `Cpu` claims it only
            // where detected); buffers checked above or forwarded.
            unsafe {
                let b = Avx2::new().unwrap_or_else(|| unsupported(Isa::Avx2));
                generic::matmul_q_strided(b, w, vnni, false, xq, n, y, ldy, panel)
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            check(Isa::Neon);
            let per = q8_len(k);
            assert!(xq.len() >= n * per);
            let dot = neon_dot(cpu);
            let q8 = |t: usize| quant::Q8Row::new(&xq[t * per..(t + 1) * per], k);
            for_each_tile(rows, NEON_ROW_TILE, n, neon::Q_GROUP, |r0, rt, t0, g| {
                let wt = w.row_block(r0, r0 + rt).bytes();
                let q: [quant::Q8Row<'_>; neon::Q_GROUP] = group_of(g, |i| q8(t0 + i));
                let yt = y.wrapping_add(t0 * ldy + r0);
                // SAFETY: NEON checked, and dotprod / i8mm claimed by `dot` only where
                // detected; `wt` holds rows r0..r0 + rt of `w` (a `QMatrix` of k columns);
                // every input row of xq was quantized from k columns; y's columns r0..r0 + rt
                // of rows t0..t0 + g are forwarded from the contract (r0 + rt <= rows <= ldy).
                unsafe {
                    neon::matvec_q(qt, generic::Matvec::new(wt, rt, k, &q[..g], yt, ldy), dot)
                }
            });
        }
        _ => {
            let deq = &mut panel[..k];
            for j in 0..rows {
                quant::dequantize_row(qt, w.row_block(j, j + 1).bytes(), deq);
                for t in 0..n {
                    let mut acc = 0f32;
                    for (a, b) in deq.iter().zip(&x[t * k..(t + 1) * k]) {
                        acc += a * b;
                    }
                    // SAFETY: t < n, j < rows: writable and unaliased by the contract.
                    unsafe { *y.add(t * ldy + j) = acc };
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    /// The self-check's data and calls hold together (AVX-512 against itself where AMX is
    /// absent; against AMX where present).
    #[test]
    fn amx_self_check_runs() {
        let Ok(cpu) = crate::Cpu::for_isa(crate::Isa::Avx512) else {
            println!("skipped: CPU lacks AVX-512");
            return;
        };
        assert!(super::tiles_agree(cpu));
    }
}
