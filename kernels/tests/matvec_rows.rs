//! The multi-row matvec against the single-row one: `par::matvec_rows` (many inputs, one pass
//! over the weights) and `ops::matvec_rows_x` (the multi-row kernels on inputs prepared every
//! way) must give, for every input, bit for bit what `ops::matvec` gives for it alone, on every
//! ISA, weight format and thread count, for any number of inputs (groups of the kernels and
//! past `MATVEC_ROWS_MAX` included) and shapes that leave partial vectors, blocks and row
//! blocks.

mod common;

use common::{encode, Rng};
use qwenrt_kernels::ops::{self, Matrix};
use qwenrt_kernels::par;
use qwenrt_kernels::{Bf16, Cpu, Isa, ThreadPool, WeightType, F16, F32};

/// Every ISA this CPU runs (a skipped one is reported).
fn isas() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&isa| {
            let ok = isa.is_supported();
            if !ok {
                eprintln!("matvec_rows: skipping {isa}, which this CPU lacks");
            }
            ok
        })
        .collect()
}

/// Whether `a` and `b` are the same floats, bit for bit.
fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// One `ops::matvec` per input row of `x`.
fn one_by_one<W: WeightType>(isa: Isa, w: &[u8], cols: usize, x: &[f32], rows: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.len() / cols * rows];
    let mut s = vec![f32::NAN; ops::matvec_scratch_len(cols)];
    for (xr, yr) in x.chunks_exact(cols).zip(out.chunks_exact_mut(rows)) {
        ops::matvec::<W>(isa, w, xr, &mut s, yr);
    }
    out
}

fn check_par<W: WeightType>() {
    let mut rng = Rng(5);
    for nt in [1, 2, 3] {
        let pool = ThreadPool::new(nt).unwrap();
        for &(rows, cols) in &[
            (1usize, 1usize),
            (100, 96),
            (257, 130),
            (1000, 64),
            (70, 300),
        ] {
            let wb = encode(&rng.vec(rows * cols), W::DTYPE, 1);
            let w = &wb[1..];
            for n in [1, 3, 5, 8, 9, 17, par::MATVEC_ROWS_MAX + 5] {
                let x = rng.vec(n * cols);
                for isa in isas() {
                    let one = one_by_one::<W>(isa, w, cols, &x, rows);
                    let mut all = vec![f32::NAN; n * rows];
                    let mut s = vec![f32::NAN; par::matvec_rows_scratch_len(n, cols)];
                    let wm = Matrix { bytes: w, cols };
                    par::matvec_rows::<W>(&pool, isa, wm, &x, &mut s, &mut all);
                    assert!(
                        same(&one, &all),
                        "{} {isa}, {nt} threads, {n} x [{rows}, {cols}]: matvec_rows differs",
                        W::DTYPE
                    );
                }
            }
        }
    }
}

/// The kernels directly, on awkward shapes: columns around every vector, unroll and block width
/// (1..16, 17, 31, 33, 127, 129, 255, 257, 300, 513), rows not a multiple of any block, 1..9
/// and 17 inputs, each input prepared the fast way, the exact way and plain.
fn check_kernels<W: WeightType>() {
    let mut rng = Rng(11);
    let colss = [
        1usize, 7, 15, 16, 17, 31, 33, 100, 127, 129, 255, 257, 300, 513,
    ];
    for &cols in &colss {
        for rows in [1usize, 5, 33] {
            let wb = encode(&rng.vec(rows * cols), W::DTYPE, 1);
            let w = &wb[1..];
            for n in (1..=9).chain([17]) {
                let x = rng.vec(n * cols);
                for isa in isas() {
                    let mut scratch = vec![f32::NAN; n * ops::matvec_scratch_len(cols)];
                    for way in ["new", "exact", "plain"] {
                        let mut s = scratch.chunks_mut(ops::matvec_scratch_len(cols));
                        let xs: Vec<ops::MatvecX<'_>> = x
                            .chunks_exact(cols)
                            .map(|xr| {
                                let sc = s.next().unwrap();
                                match way {
                                    "new" => ops::MatvecX::new::<W>(isa, xr, sc),
                                    "exact" => ops::MatvecX::new::<W>(
                                        Cpu::from(isa).without_bf16(),
                                        xr,
                                        sc,
                                    ),
                                    _ => ops::MatvecX::plain(xr),
                                }
                            })
                            .collect();
                        let mut one = vec![f32::NAN; n * rows];
                        for (xt, yt) in xs.iter().zip(one.chunks_exact_mut(rows)) {
                            ops::matvec_x::<W>(isa, w, xt, yt);
                        }
                        let mut all = vec![f32::NAN; n * rows];
                        ops::matvec_rows_x::<W>(isa, w, &xs, &mut all);
                        assert!(
                            same(&one, &all),
                            "{} {isa} {way}: {n} x [{rows}, {cols}]: multi-row kernel differs",
                            W::DTYPE
                        );
                    }
                    // ...and the fast way is exactly the plain `ops::matvec`.
                    if cols == 257 {
                        let one = one_by_one::<W>(isa, w, cols, &x, rows);
                        let mut all = vec![f32::NAN; n * rows];
                        let mut s = scratch.chunks_mut(ops::matvec_scratch_len(cols));
                        let xs: Vec<_> = x
                            .chunks_exact(cols)
                            .map(|xr| ops::MatvecX::new::<W>(isa, xr, s.next().unwrap()))
                            .collect();
                        ops::matvec_rows_x::<W>(isa, w, &xs, &mut all);
                        assert!(same(&one, &all), "{} {isa}: vs ops::matvec", W::DTYPE);
                    }
                    scratch.fill(f32::NAN);
                }
            }
        }
    }
}

#[test]
fn matvec_rows_equals_separate_matvecs_f32() {
    check_par::<F32>();
}

#[test]
fn matvec_rows_equals_separate_matvecs_f16() {
    check_par::<F16>();
}

#[test]
fn matvec_rows_equals_separate_matvecs_bf16() {
    check_par::<Bf16>();
}

#[test]
fn multi_row_kernels_equal_single_row_f32() {
    check_kernels::<F32>();
}

#[test]
fn multi_row_kernels_equal_single_row_f16() {
    check_kernels::<F16>();
}

#[test]
fn multi_row_kernels_equal_single_row_bf16() {
    check_kernels::<Bf16>();
}
