//! AVX2+FMA bodies (to come).
