//! The quantized prefill matmul's tiles on AMX (Advanced Matrix Extensions, `amx_tile` +
//! `amx_int8`), where the CPU has them and Linux grants this process the tile state.
//!
//! A packed panel sub-block ([`crate::quant::panel::pack_q_panel`]: `S / 4` lines of 64 bytes, each
//! 4 consecutive k of 16 weight rows, unsigned quants) is exactly AMX's "VNNI" layout for the
//! second operand of `tdpbsud` (signed × unsigned bytes, i32 sums). The first operand is up to
//! 16 input rows' 8-bit quants for the sub-block's k, loaded straight from the quantized rows
//! with their row stride. One `tdpbsud` per sub-block gives the `R × 16` integer dots the
//! AVX512-VNNI tile builds with `S / 4 × R` `vpdpbusd`; they are stored to a 1 KiB buffer and
//! scaled into f32 accumulators by the same code as that tile (`generic::add_sub_block`), so
//! the two give the same bits (`tests/quant_gemm.rs` checks it where AMX exists).
//!
//! Linux keeps AMX's 8 KiB tile data out of a thread's saved state until the process asks for
//! it; [`crate::Cpu`] asks once while detecting, and claims AMX only where granted (else the
//! AVX512-VNNI tiles run). Rust has no stable AMX intrinsics, so the tile instructions are
//! inline assembly.

use core::arch::asm;
use core::arch::x86_64::*;

use crate::generic::{add_sub_block, store_rows, PanelRun};
use crate::quant::panel::{q_sub_block_bytes, QNR};
use crate::simd::avx512::Avx512;

/// Input rows per AMX tile: the tile's 16 rows.
const AMX_MR: usize = 16;

/// Runs every tile of `n` input rows against one packed panel of unsigned quants.
///
/// # Safety
/// As [`tile_amx`], for `n` rows of the run.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn amx_panel<const S: usize>(run: PanelRun, n: usize) {
    let mut t0 = 0;
    while t0 < n {
        let r = (n - t0).min(AMX_MR);
        // SAFETY: rows t0..t0 + r < n of the run exist (contract); AMX granted (contract).
        unsafe {
            let run = run.rows_from(t0);
            macro_rules! go {
                ($($r:literal)*) => {
                    match r {
                        $($r => tile_amx::<$r, S>(run),)*
                        _ => unreachable!("AMX tiles hold at most 16 rows"),
                    }
                };
            }
            go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
        }
        t0 += r;
    }
}

/// AMX's 64-byte tile configuration (palette 1): bytes per row and rows of each tile register.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Configuration for `R` input rows and sub-blocks of `S` k: tmm0 the `R × 16` i32 dots,
/// tmm1 the inputs (`R` rows of `S` bytes), tmm2 the weights (`S / 4` rows of 64 bytes).
fn config(r: usize, s: usize) -> TileConfig {
    let mut c = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    c.colsb[0] = 64;
    c.rows[0] = r as u8;
    c.colsb[1] = s as u16;
    c.rows[1] = r as u8;
    c.colsb[2] = 64;
    c.rows[2] = (s / 4) as u8;
    c
}

/// The AMX tile: as the AVX512-VNNI tile of `generic::quant_gemm` (same contract, the same
/// bits) for `R <= 16` input rows, with unsigned weight quants.
///
/// # Safety
/// The run's panel valid for `nsb` sub-blocks; `xq` for `R` rows of `xs` words holding `nb`
/// blocks; `y` valid for writes to `R` rows of `ldy` floats at columns `0..nr`,
/// `1 <= nr <= 16`; the CPU must support AVX-512F/BW/VL, AVX2, FMA and F16C, and a
/// [`crate::Cpu`] must have claimed AMX (the tile data granted).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn tile_amx<const R: usize, const S: usize>(run: PanelRun) {
    let PanelRun {
        panel,
        nsb,
        xq,
        xs,
        nb,
        ..
    } = run;
    // SAFETY: this function runs with the AVX-512 features (contract).
    let b = unsafe { Avx512::new_unchecked() };
    let cfg = config(R, S);
    let mut dots = Dots([0; 256]);
    let sbb = q_sub_block_bytes(S);
    let x_stride = xs * 4;
    let line = 64usize;
    let mut facc = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY: `cfg` is a valid palette-1 configuration (tile shapes within 16 rows x 64
    // bytes, tmm1's bytes per row = 4 x tmm2's rows as tdpbsud requires); the process holds
    // the tile data permission (contract).
    unsafe {
        asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly))
    };
    for i in 0..nsb {
        let k0 = i * S;
        // SAFETY: sub-block i < nsb of the panel holds its S / 4 lines of 64 quant bytes, then
        // 16 scales and 16 biases; input row t < R has its quants at word 3 * nb, and bytes
        // k0..k0 + S of them lie inside its nb * 32 (contract). tileloadd reads R rows of S
        // bytes from the inputs (stride x_stride) and S / 4 rows of 64 bytes from the panel;
        // tilestored writes R rows of 64 bytes into `dots` (1 KiB).
        unsafe {
            let p = panel.add(i * sbb);
            let xa = xq.add(3 * nb).cast::<u8>().add(k0);
            asm!(
                "tilezero tmm0",
                "tileloadd tmm1, [{xa} + {xs}*1]",
                "tileloadd tmm2, [{w} + {line}*1]",
                "tdpbsud tmm0, tmm1, tmm2",
                "tilestored [{d} + {line}*1], tmm0",
                xa = in(reg) xa,
                xs = in(reg) x_stride,
                w = in(reg) p,
                line = in(reg) line,
                d = in(reg) dots.0.as_mut_ptr(),
                options(nostack),
            );
            let sc = _mm512_loadu_ps(p.add(QNR * S).cast());
            let bi = _mm512_loadu_ps(p.add(QNR * S + 64).cast());
            for (t, f) in facc.iter_mut().enumerate() {
                let a = _mm512_loadu_si512(dots.0.as_ptr().add(16 * t).cast());
                add_sub_block::<Avx512, S>(b, &mut f[0], a, sc, bi, xq.add(t * xs), nb, i);
            }
        }
    }
    // SAFETY: releases the tile registers (so the thread's saved state shrinks again).
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    // SAFETY: R rows, columns 0..nr of y: writable by the contract.
    unsafe { store_rows(b, &facc, run.y, run.ldy, run.nr) }
}

/// The tile's `R × 16` i32 dots, as `tilestored` leaves them (rows of 64 bytes).
#[repr(C, align(64))]
struct Dots([i32; 256]);
