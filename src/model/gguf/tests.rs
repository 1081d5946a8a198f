//! Unit tests of the reader and of dequantization.
#![allow(clippy::needless_range_loop)] // index loops mirror ggml's reference formulation

use super::*;
use crate::testkit::gguf::*;
use qwenrt_kernels::quant::scale_min_k4;

fn f16b(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

fn deq(ty: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize(ty, src, &mut out).unwrap();
    out
}

#[test]
fn q8_0_block() {
    let mut b = f16b(0.5).to_vec();
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    let y = deq(GgmlType::Q8_0, &b, 32);
    for (i, &yi) in y.iter().enumerate() {
        assert_eq!(yi, (i as f32 - 16.0) * 0.5);
    }
}

#[test]
fn q4_0_block() {
    let mut b = f16b(2.0).to_vec();
    // element j: low nibble j, element j+16: high nibble 15-j
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = deq(GgmlType::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
        assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 2.0);
    }
}

#[test]
fn q5_0_block_high_bits() {
    let mut b = f16b(0.25).to_vec();
    // high bits set for elements 1, 3 (low half) and 16, 31 (high half)
    let qh: u32 = (1 << 1) | (1 << 3) | (1 << 16) | (1 << 31);
    b.extend_from_slice(&qh.to_le_bytes());
    b.extend((0..16u8).map(|j| (j & 0xF) | ((j ^ 0xF) << 4)));
    let y = deq(GgmlType::Q5_0, &b, 32);
    for j in 0..16 {
        let h0 = if qh & (1 << j) != 0 { 16 } else { 0 };
        let h1 = if qh & (1 << (j + 16)) != 0 { 16 } else { 0 };
        assert_eq!(y[j], ((j as i32 | h0) - 16) as f32 * 0.25, "elem {j}");
        assert_eq!(
            y[j + 16],
            (((j as i32 ^ 0xF) | h1) - 16) as f32 * 0.25,
            "elem {}",
            j + 16
        );
    }
    assert_eq!(y[1], (1 + 16 - 16) as f32 * 0.25);
    assert_eq!(y[0], -16.0 * 0.25);
    assert_eq!(y[31], (16 - 16) as f32 * 0.25);
}

/// Packs eight 6-bit (scale, min) pairs the way ggml's K-quants do.
fn pack_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
    q
}

#[test]
fn k_scale_unpacking_roundtrips() {
    let sc = [1, 63, 17, 32, 48, 5, 60, 33];
    let m = [62, 0, 9, 41, 19, 63, 28, 50];
    let q = pack_scales(sc, m);
    for j in 0..8 {
        assert_eq!(scale_min_k4(j, &q), (sc[j], m[j]), "sub-block {j}");
    }
}

#[test]
fn q4_k_block() {
    let sc = [1, 2, 3, 4, 60, 61, 62, 63];
    let m = [5, 6, 7, 8, 40, 41, 42, 43];
    let (d, dmin) = (0.125f32, 0.0625f32);
    let mut b = Vec::new();
    b.extend_from_slice(&f16b(d));
    b.extend_from_slice(&f16b(dmin));
    b.extend_from_slice(&pack_scales(sc, m));
    let qs: Vec<u8> = (0..128).map(|i| (i * 7 % 251) as u8).collect();
    b.extend_from_slice(&qs);
    let y = deq(GgmlType::Q4K, &b, 256);
    for (i, &yi) in y.iter().enumerate() {
        let (g, r) = (i / 64, i % 64);
        let (sub, l) = (2 * g + r / 32, r % 32);
        let byte = qs[32 * g + l];
        let q = if r < 32 { byte & 0xF } else { byte >> 4 };
        let want = (d * sc[sub] as f32) * q as f32 - dmin * m[sub] as f32;
        assert_eq!(yi.to_bits(), want.to_bits(), "elem {i}");
    }
}

#[test]
fn q5_k_block() {
    let sc = [9, 8, 7, 6, 50, 51, 52, 53];
    let m = [1, 0, 3, 2, 33, 34, 35, 36];
    let (d, dmin) = (0.5f32, 0.25f32);
    let mut b = Vec::new();
    b.extend_from_slice(&f16b(d));
    b.extend_from_slice(&f16b(dmin));
    b.extend_from_slice(&pack_scales(sc, m));
    let qh: Vec<u8> = (0..32).map(|i| (i * 37 % 256) as u8).collect();
    let qs: Vec<u8> = (0..128).map(|i| (i * 11 % 256) as u8).collect();
    b.extend_from_slice(&qh);
    b.extend_from_slice(&qs);
    let y = deq(GgmlType::Q5K, &b, 256);
    for (i, &yi) in y.iter().enumerate() {
        let (g, r) = (i / 64, i % 64);
        let (sub, l) = (2 * g + r / 32, r % 32);
        let byte = qs[32 * g + l];
        let lo = if r < 32 { byte & 0xF } else { byte >> 4 };
        let hi = (qh[l] >> sub) & 1;
        let q = lo + 16 * hi;
        let want = (d * sc[sub] as f32) * q as f32 - dmin * m[sub] as f32;
        assert_eq!(yi.to_bits(), want.to_bits(), "elem {i}");
    }
}

#[test]
fn q6_k_block() {
    let ql: Vec<u8> = (0..128).map(|i| (i * 13 % 256) as u8).collect();
    let qh: Vec<u8> = (0..64).map(|i| (i * 29 % 256) as u8).collect();
    let scales: Vec<i8> = (0..16).map(|i| (i as i8 - 8) * 3).collect();
    let d = 0.03125f32;
    let mut b = Vec::new();
    b.extend_from_slice(&ql);
    b.extend_from_slice(&qh);
    b.extend(scales.iter().map(|&s| s as u8));
    b.extend_from_slice(&f16b(d));
    assert_eq!(b.len(), 210);
    let y = deq(GgmlType::Q6K, &b, 256);
    // Independent formulation: element i = 128*h + 32*k + l, k in 0..4 picks nibble/half.
    for (i, &yi) in y.iter().enumerate() {
        let (h, r) = (i / 128, i % 128);
        let (k, l) = (r / 32, r % 32);
        let qlb = ql[64 * h + l + 32 * (k % 2)];
        let lo = if k < 2 { qlb & 0xF } else { qlb >> 4 };
        let hi = (qh[32 * h + l] >> (2 * k)) & 3;
        let q = (lo | (hi << 4)) as i32 - 32;
        let s = scales[8 * h + l / 16 + 2 * k];
        let want = d * s as f32 * q as f32;
        assert_eq!(yi.to_bits(), want.to_bits(), "elem {i}");
    }
}

#[test]
fn float_types() {
    let vals = [1.5f32, -2.25, 0.0, 65504.0];
    let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(deq(GgmlType::F32, &f32b, 4), vals);
    let f16b: Vec<u8> = vals
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(deq(GgmlType::F16, &f16b, 4), vals);
    let bf: Vec<u8> = vals[..3]
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(deq(GgmlType::BF16, &bf, 3), &vals[..3]);
}

#[test]
fn dequantize_rejects_bad_lengths_and_types() {
    let mut out = vec![0f32; 32];
    let e = dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).unwrap_err();
    assert!(e.to_string().contains("33 source bytes"), "{e}");
    let e = dequantize(GgmlType::Q4_1, &[0u8; 20], &mut out).unwrap_err();
    assert!(e.to_string().contains("Q4_1"), "{e}");
}

#[test]
fn builder_roundtrip() {
    let bytes = GgufBuilder::new()
        .kv("general.architecture", Value::String("qwen2".into()))
        .kv("a.u8", Value::U8(7))
        .kv("a.bool", Value::Bool(true))
        .kv(
            "a.nested",
            array_of(
                ValueType::Array,
                vec![array_of(
                    ValueType::I32,
                    vec![Value::I32(-1), Value::I32(2)],
                )],
            ),
        )
        .tensor_f32("t", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .tensor_f32("u", &[1], &[9.0])
        .build();
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.header.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(f.header.get("a.u8"), Some(&Value::U8(7)));
    assert_eq!(f.header.tensors.len(), 2);
    let t = f.header.tensor("t").unwrap();
    assert_eq!(t.row_major_shape(), vec![3, 2]);
    assert_eq!(f.header.tensor("u").unwrap().offset, 32);
    assert_eq!(f.dequantize_tensor("u").unwrap(), vec![9.0]);
}
