//! `par::matvec_rows` (many inputs, one pass over the weights) against one `par::matvec` per
//! input: bit for bit the same, on every ISA, weight format and thread count, for any number of
//! rows (groups past `MATVEC_ROWS_MAX` included) and shapes that leave partial blocks.

mod common;

use common::{encode, Rng};
use qwenrt_kernels::par;
use qwenrt_kernels::{ops, Bf16, Isa, ThreadPool, WeightType, F16, F32};

fn check<W: WeightType>() {
    let mut rng = Rng(5);
    for nt in [1, 2, 3] {
        let pool = ThreadPool::new(nt).unwrap();
        for &(rows, cols) in &[(1usize, 1usize), (100, 96), (257, 130), (1000, 64)] {
            let wb = encode(&rng.vec(rows * cols), W::DTYPE, 1);
            let w = &wb[1..];
            for n in [1, 3, 8, par::MATVEC_ROWS_MAX + 5] {
                let x = rng.vec(n * cols);
                for isa in Isa::available() {
                    let mut one = vec![0.0; n * rows];
                    let mut s = vec![f32::NAN; ops::matvec_scratch_len(cols)];
                    for (xr, yr) in x.chunks_exact(cols).zip(one.chunks_exact_mut(rows)) {
                        par::matvec::<W>(&pool, isa, w, xr, &mut s, yr);
                    }
                    let mut all = vec![f32::NAN; n * rows];
                    let mut s = vec![f32::NAN; par::matvec_rows_scratch_len(n, cols)];
                    par::matvec_rows::<W>(&pool, isa, w, cols, &x, &mut s, &mut all);
                    let same = one
                        .iter()
                        .zip(&all)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{} {isa}, {nt} threads, {n} x [{rows}, {cols}]: matvec_rows differs",
                        W::DTYPE
                    );
                }
            }
        }
    }
}

#[test]
fn matvec_rows_equals_separate_matvecs_f32() {
    check::<F32>();
}

#[test]
fn matvec_rows_equals_separate_matvecs_f16() {
    check::<F16>();
}

#[test]
fn matvec_rows_equals_separate_matvecs_bf16() {
    check::<Bf16>();
}
