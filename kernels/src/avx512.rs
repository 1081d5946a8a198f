//! AVX-512 bodies (to come).
