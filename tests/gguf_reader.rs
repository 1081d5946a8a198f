//! GGUF reader on small files built in memory: valid layouts and hostile ones. Every hostile
//! file must give an `Err` whose message names the problem, never a panic.

use qwenrt::model::gguf::{GgmlType, GgufError, GgufFile, GgufHeader, Value, ValueType};
use qwenrt::testkit::gguf::{array_of, GgufBuilder};

fn small() -> GgufBuilder {
    GgufBuilder::new()
        .kv("general.architecture", Value::String("qwen2".into()))
        .kv("general.name", Value::String("tiny".into()))
        .tensor_f32("a", &[4, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
        .tensor_f32("b", &[3], &[8.0, 9.0, 10.0])
}

fn err(bytes: &[u8]) -> String {
    match GgufHeader::parse(bytes) {
        Ok(_) => panic!("hostile file parsed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn all_value_types_and_nested_arrays() {
    let nested = array_of(
        ValueType::Array,
        vec![
            array_of(
                ValueType::String,
                vec![Value::String("x".into()), Value::String("".into())],
            ),
            array_of(ValueType::String, vec![]),
        ],
    );
    let b = GgufBuilder::new()
        .kv("u8", Value::U8(200))
        .kv("i8", Value::I8(-3))
        .kv("u16", Value::U16(60000))
        .kv("i16", Value::I16(-30000))
        .kv("u32", Value::U32(4_000_000_000))
        .kv("i32", Value::I32(-2_000_000_000))
        .kv("f32", Value::F32(1.5))
        .kv("bool", Value::Bool(true))
        .kv("string", Value::String("héllo".into()))
        .kv("u64", Value::U64(u64::MAX))
        .kv("i64", Value::I64(i64::MIN))
        .kv("f64", Value::F64(-2.5))
        .kv("nested", nested.clone())
        .kv("empty", array_of(ValueType::U8, vec![]));
    let h = GgufHeader::parse(&b.build()).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.metadata.len(), 14);
    assert_eq!(h.get("u8"), Some(&Value::U8(200)));
    assert_eq!(h.get("i64"), Some(&Value::I64(i64::MIN)));
    assert_eq!(h.get("nested"), Some(&nested));
    assert_eq!(h.get_str("string").unwrap(), "héllo");
    assert_eq!(h.get_u64("u32").unwrap(), 4_000_000_000);
    assert!(h.get_u64("i8").is_err());
    assert_eq!(h.alignment, 32);
    assert_eq!(h.data_offset % 32, 0);
    assert!(h.tensors.is_empty());
    let e = h.get_str("u8").unwrap_err().to_string();
    assert!(e.contains("\"u8\"") && e.contains("expected string"), "{e}");
    assert!(h
        .get_u64("nope")
        .unwrap_err()
        .to_string()
        .contains("\"nope\" is missing"));
}

#[test]
fn tensors_data_and_custom_alignment() {
    let mut b = small().kv("general.alignment", Value::U32(64));
    b.alignment = 64;
    let bytes64 = b.build();
    let f = GgufFile::from_bytes(bytes64).unwrap();
    assert_eq!(f.header.alignment, 64);
    assert_eq!(f.header.data_offset % 64, 0);
    let b_info = f.header.tensor("b").unwrap();
    assert_eq!(b_info.offset, 64);
    assert_eq!(
        f.dequantize_tensor("a").unwrap(),
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    );
    assert_eq!(f.dequantize_tensor("b").unwrap(), vec![8.0, 9.0, 10.0]);
    assert_eq!(f.header.tensor("a").unwrap().row_major_shape(), vec![2, 4]);
    assert!(f
        .dequantize_tensor("zzz")
        .unwrap_err()
        .to_string()
        .contains("\"zzz\""));
}

#[test]
fn quantized_tensor_sizes() {
    let q8 = vec![0u8; 34 * 2];
    let f = GgufFile::from_bytes(
        GgufBuilder::new()
            .tensor("q", &[32, 2], GgmlType::Q8_0, q8)
            .build(),
    )
    .unwrap();
    let t = f.header.tensor("q").unwrap();
    assert_eq!((t.n_elements, t.n_bytes), (64, 68));
    assert_eq!(f.dequantize_tensor("q").unwrap(), vec![0.0; 64]);
}

#[test]
fn open_from_disk_uses_the_map() {
    let path = std::env::temp_dir().join(format!("qwenrt-gguf-open-{}.gguf", std::process::id()));
    std::fs::write(&path, small().build()).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.dequantize_tensor("b").unwrap(), vec![8.0, 9.0, 10.0]);
    std::fs::remove_file(&path).unwrap();
    let e = GgufFile::open(&path).err().unwrap().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small().build();
    assert!(GgufHeader::parse(&bytes).is_ok());
    for cut in 0..bytes.len() {
        let e = err(&bytes[..cut]);
        assert!(
            e.contains("truncated") || e.contains("past the end") || e.contains("impossible"),
            "cut {cut}: {e}"
        );
    }
    // the message names what was being read, where, and how many bytes were left
    let e = err(&bytes[..30]);
    assert!(
        e.contains("key/value count 2 at offset 16") && e.contains("only 6 bytes remain"),
        "{e}"
    );
    let h = GgufHeader::parse(&bytes).unwrap();
    let e = err(&bytes[..h.data_offset as usize - 40]);
    assert!(
        e.contains("tensor count 2 at offset 8") && e.contains("impossible"),
        "{e}"
    );
}

#[test]
fn lying_tensor_count() {
    let mut b = small();
    b.tensor_count_override = Some(u64::MAX);
    let e = err(&b.build());
    assert!(
        e.contains("tensor count 18446744073709551615") && e.contains("impossible"),
        "{e}"
    );
    b.tensor_count_override = Some(3);
    let e = err(&b.build());
    // one tensor info too many: read from the padding/data, so the data no longer fits
    assert!(
        e.contains("tensor")
            && (e.contains("truncated") || e.contains("impossible") || e.contains("past the end")),
        "{e}"
    );
}

#[test]
fn lying_kv_count() {
    let mut b = small();
    b.kv_count_override = Some(1 << 40);
    let e = err(&b.build());
    assert!(
        e.contains("metadata key/value count") && e.contains("impossible"),
        "{e}"
    );
}

#[test]
fn lying_array_and_string_lengths() {
    // array count patched to a huge number
    let b = GgufBuilder::new().kv("arr", array_of(ValueType::U32, vec![Value::U32(1)]));
    let mut bytes = b.build();
    // header 24, key len 8 + "arr" 3, type 4, elem type 4 -> count at 43
    bytes[43..51].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = err(&bytes);
    assert!(e.contains("\"arr\"") && e.contains("impossible"), "{e}");

    // key length patched to a huge number
    let mut bytes = small().build();
    bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = err(&bytes);
    assert!(
        e.contains("truncated") && e.contains("metadata key #0"),
        "{e}"
    );
}

#[test]
fn unknown_tensor_type() {
    let mut b = small();
    b.tensors[1].type_id = 99;
    let e = err(&b.build());
    assert!(
        e.contains("\"b\"") && e.contains("unknown ggml type 99"),
        "{e}"
    );
}

#[test]
fn unknown_value_type() {
    let mut bytes = GgufBuilder::new().kv("k", Value::U32(1)).build();
    // header 24, key len 8, "k" 1 -> type id at 33
    bytes[33..37].copy_from_slice(&77u32.to_le_bytes());
    let e = err(&bytes);
    assert!(
        e.contains("\"k\"") && e.contains("unknown value type 77") && e.contains("offset 33"),
        "{e}"
    );
}

#[test]
fn misaligned_tensor_offset() {
    let mut b = small();
    b.tensors[1].offset_override = Some(36);
    let e = err(&b.build());
    assert!(
        e.contains("\"b\"") && e.contains("offset 36") && e.contains("alignment 32"),
        "{e}"
    );
}

#[test]
fn dims_overflow() {
    let b = GgufBuilder::new().tensor("big", &[1 << 40, 1 << 40], GgmlType::F32, vec![]);
    let e = err(&b.build());
    assert!(e.contains("\"big\"") && e.contains("overflow"), "{e}");
    let b = GgufBuilder::new().tensor("neg", &[u64::MAX], GgmlType::F32, vec![]);
    assert!(err(&b.build()).contains("overflow"));
    // elements fit but bytes do not
    let b = GgufBuilder::new().tensor("bytes", &[1 << 62], GgmlType::F32, vec![]);
    assert!(err(&b.build()).contains("overflow"));
}

#[test]
fn tensor_past_eof() {
    let mut b = small();
    b.tensors[1].offset_override = Some(1 << 20);
    let e = err(&b.build());
    assert!(e.contains("\"b\"") && e.contains("past the end"), "{e}");
    let mut b = small();
    b.tensors[0].dims = vec![4, 1000];
    let e = err(&b.build());
    assert!(e.contains("\"a\"") && e.contains("past the end"), "{e}");
    // offset so large that offset + size overflows
    let mut b = small();
    b.tensors[1].offset_override = Some(u64::MAX - 31);
    assert!(err(&b.build()).contains("past the end"));
}

#[test]
fn other_hostile_headers() {
    let good = small().build();

    let mut bytes = good.clone();
    bytes[0] = b'X';
    assert!(err(&bytes).contains("not a GGUF file"));

    let mut bytes = good.clone();
    bytes[4..8].copy_from_slice(&0x0300_0000u32.to_le_bytes());
    assert!(err(&bytes).contains("unsupported GGUF version 50331648"));

    let b = GgufBuilder::new().kv("flag", Value::U8(2));
    let mut bytes = b.build();
    bytes[36..40].copy_from_slice(&7u32.to_le_bytes()); // retype the u8 as bool: byte 2
    let e = err(&bytes);
    assert!(e.contains("\"flag\"") && e.contains("bool byte 2"), "{e}");

    let mut deep = Value::U8(1);
    for _ in 0..20 {
        deep = array_of(deep.value_type(), vec![deep]);
    }
    let e = err(&GgufBuilder::new().kv("deep", deep).build());
    assert!(e.contains("\"deep\"") && e.contains("nested deeper"), "{e}");

    let e = err(&small().kv("general.alignment", Value::U32(3)).build());
    assert!(e.contains("alignment") && e.contains("power of two"), "{e}");
    let e = err(&small().kv("general.alignment", Value::U64(32)).build());
    assert!(e.contains("alignment") && e.contains("u64"), "{e}");
    let e = err(&small().kv("general.alignment", Value::U32(0)).build());
    assert!(e.contains("alignment"), "{e}");

    let e = err(&small()
        .kv("general.name", Value::String("again".into()))
        .build());
    assert!(e.contains("\"general.name\" repeated"), "{e}");
    let e = err(&small().tensor_f32("a", &[1], &[1.0]).build());
    assert!(e.contains("tensor \"a\" repeated"), "{e}");

    let e = err(&GgufBuilder::new()
        .tensor("five", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4])
        .build());
    assert!(e.contains("\"five\"") && e.contains("5 dimensions"), "{e}");

    let e = err(&GgufBuilder::new()
        .tensor("q", &[31], GgmlType::Q8_0, vec![0; 34])
        .build());
    assert!(e.contains("\"q\"") && e.contains("block size 32"), "{e}");

    let mut bytes = GgufBuilder::new()
        .kv("s", Value::String("ab".into()))
        .build();
    bytes[45] = 0xFF; // header 24, key len 8, "s" 1, type 4, string len 8

    let e = err(&bytes);
    assert!(e.contains("\"s\"") && e.contains("UTF-8"), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let good = small()
        .kv("arr", array_of(ValueType::I32, vec![Value::I32(5); 7]))
        .build();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for _ in 0..20_000 {
        let mut bytes = good.clone();
        for _ in 0..1 + rand() % 4 {
            let i = (rand() % bytes.len() as u64) as usize;
            bytes[i] = match rand() % 3 {
                0 => rand() as u8,
                1 => 0xFF,
                _ => bytes[i] ^ (1 << (rand() % 8)),
            };
        }
        if let Err(e) = GgufHeader::parse(&bytes) {
            assert!(!e.to_string().is_empty());
            errors += 1;
        }
    }
    assert!(
        errors > 1000,
        "corruption should usually be caught ({errors})"
    );
}

#[test]
fn error_is_std_error() {
    fn is_error<E: std::error::Error>(_: &E) {}
    let e: GgufError = GgufHeader::parse(b"GG").unwrap_err();
    is_error(&e);
}

#[test]
fn arrays_are_stored_typed() {
    use qwenrt::model::gguf::Array;
    let big = Array::U8((0..=255u8).cycle().take(1 << 20).collect());
    let bytes = GgufBuilder::new()
        .kv("big", Value::Array(big.clone()))
        .kv("types", Value::Array(Array::I32(vec![1, 3, -4])))
        .kv("flags", Value::Array(Array::Bool(vec![true, false])))
        .build();
    let h = GgufHeader::parse(&bytes).unwrap();
    assert_eq!(h.get_array("big").unwrap(), &big);
    assert_eq!(
        h.get_array("types").unwrap().to_i64s(),
        Some(vec![1, 3, -4])
    );
    assert_eq!(
        h.get_array("flags").unwrap().get(1),
        Some(Value::Bool(false))
    );
    assert!(h.get_array("big").unwrap().as_strings().is_none());

    // a bool element that is neither 0 nor 1 is named with its offset
    let mut bytes = GgufBuilder::new()
        .kv("flags", Value::Array(Array::Bool(vec![true, false])))
        .build();
    // header 24, key len 8, "flags" 5, type 4, elem type 4, count 8 -> elements at 53
    bytes[54] = 7;
    let e = err(&bytes);
    assert!(
        e.contains("\"flags\"") && e.contains("bool byte 7 at offset 54"),
        "{e}"
    );
}
