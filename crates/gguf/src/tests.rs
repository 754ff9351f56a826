//! Reader tests: round trips through the writer, a table of corrupted files with the error each
//! must produce, and property tests that no mutation of a valid file makes the reader panic.

use super::*;
use proptest::prelude::*;

fn sample() -> GgufWriter {
    GgufWriter::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(2))
        .kv("u8", Value::U8(7))
        .kv("i8", Value::I8(-7))
        .kv("u16", Value::U16(700))
        .kv("i16", Value::I16(-700))
        .kv("i32", Value::I32(-70000))
        .kv("f32", Value::F32(1.5))
        .kv("bool", Value::Bool(true))
        .kv("u64", Value::U64(1 << 40))
        .kv("i64", Value::I64(-(1 << 40)))
        .kv("f64", Value::F64(2.25))
        .kv(
            "tokens",
            Value::Array(ArrayValue::String(vec!["a".into(), "é".into(), "".into()])),
        )
        .kv("scores", Value::Array(ArrayValue::F32(vec![0.5, -1.0])))
        .kv(
            "nested",
            Value::Array(ArrayValue::Array(vec![
                ArrayValue::I32(vec![1, 2]),
                ArrayValue::I32(vec![]),
            ])),
        )
        .tensor_f32("a", &[4], &[1.0, 2.0, 3.0, 4.0])
        .tensor_f32("b", &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
        // A Q8_0 block: f16 scale 1.0 then 32 int8 values.
        .tensor("q", &[32, 1], DType::Q8_0, {
            let mut d = vec![0x00, 0x3c];
            d.extend((0..32u8).map(|i| i.wrapping_sub(16)));
            d
        })
}

#[test]
fn round_trip_every_value_type() {
    let f = GgufFile::from_bytes(sample().finish()).expect("valid file");
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(f.get("i8"), Some(&Value::I8(-7)));
    assert_eq!(f.get("i16"), Some(&Value::I16(-700)));
    assert_eq!(f.get("i32"), Some(&Value::I32(-70000)));
    assert_eq!(f.get_u64("u64").unwrap(), 1 << 40);
    assert_eq!(f.get("i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(f.get_f32("f32").unwrap(), 1.5);
    assert_eq!(f.get_f32("f64").unwrap(), 2.25);
    assert_eq!(f.get_bool_opt("bool").unwrap(), Some(true));
    assert_eq!(
        f.get_array_opt("tokens").unwrap().unwrap().as_strings(),
        Some(&["a".to_string(), "é".to_string(), String::new()][..])
    );
    assert_eq!(f.get_array_opt("nested").unwrap().unwrap().len(), 2);
    // Metadata keeps file order.
    assert_eq!(f.metadata()[0].0, "general.architecture");

    let a = f.tensor("a").unwrap();
    assert_eq!(a.dtype, DType::F32);
    assert_eq!(a.n_bytes, 16);
    assert_eq!(
        f.tensor_data(a),
        &[1f32, 2.0, 3.0, 4.0].map(f32::to_le_bytes).concat()[..]
    );
    let b = f.tensor("b").unwrap();
    assert_eq!(b.as_matrix(), (3, 2));
    assert_eq!(b.offset % f.alignment(), 0);
    let q = f.tensor("q").unwrap();
    assert_eq!(q.n_bytes, 34);
    assert_eq!(f.tensor_data(q)[2], 0u8.wrapping_sub(16));
    assert_eq!(f.parameter_count(), 4 + 6 + 32);
}

#[test]
fn version_2_and_custom_alignment() {
    let bytes = sample()
        .version(2)
        .kv("general.alignment", Value::U32(64))
        .finish();
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()).len(), 24);
}

#[test]
fn typed_accessors_report_missing_and_wrong_types() {
    let f = GgufFile::from_bytes(sample().finish()).unwrap();
    let err = f.get_str("nope").unwrap_err().to_string();
    assert_eq!(err, "metadata key 'nope' is missing");
    let err = f.get_str("u8").unwrap_err().to_string();
    assert_eq!(err, "metadata key 'u8' has type u8, expected string");
    assert!(f.get_u64("i8").is_err(), "negative is not a u64");
    assert_eq!(f.get_str_opt("nope").unwrap(), None);
    assert!(f.get_array_opt("u8").is_err());
}

#[test]
fn open_reports_missing_file_and_empty_file() {
    let err = GgufFile::open("/nonexistent/x.gguf")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot open /nonexistent/x.gguf"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty),
        Err(GgufError::Truncated { .. })
    ));
    let good = dir.path().join("good.gguf");
    std::fs::write(&good, sample().finish()).unwrap();
    let f = GgufFile::open(&good).unwrap();
    assert_eq!(f.tensors().len(), 3);
}

/// Offsets into `sample()`'s encoding, found by searching rather than hard-coding so the table
/// below survives changes to the sample.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Position just after tensor `name`'s name in the tensor-info section.
fn tensor_info_at(b: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    needle.extend_from_slice(&[1, 0, 0, 0]); // n_dims = 1 for "a"
    find(b, &needle) + 8 + name.len()
}

#[test]
fn corrupted_files_give_clear_errors() {
    type Mutation = fn(&mut Vec<u8>);
    let cases: &[(&str, Mutation, &str)] = &[
        ("bad magic", |b| b[0] = b'X', "not a GGUF file"),
        (
            "version 1",
            |b| put_u32(b, 4, 1),
            "unsupported GGUF version 1",
        ),
        (
            "version 99",
            |b| put_u32(b, 4, 99),
            "unsupported GGUF version 99",
        ),
        ("truncated header", |b| b.truncate(10), "file truncated"),
        (
            "huge tensor count",
            |b| put_u64(b, 8, u64::MAX),
            "tensor count",
        ),
        (
            "huge kv count",
            |b| put_u64(b, 16, 1 << 40),
            "metadata count",
        ),
        (
            "kv count larger than file",
            |b| put_u64(b, 16, 60_000),
            "cannot fit",
        ),
        (
            "key length beyond file",
            |b| put_u64(b, 24, 1 << 23),
            "file truncated",
        ),
        (
            "key length beyond limit",
            |b| put_u64(b, 24, u64::MAX),
            "exceeds the limit",
        ),
        (
            "unknown value type",
            |b| {
                let at = find(b, b"general.architecture") + "general.architecture".len();
                put_u32(b, at, 77);
            },
            "unknown metadata value type 77",
        ),
        (
            "bool not 0 or 1",
            |b| {
                let at = find(b, b"bool") + 4 + 4;
                b[at] = 2;
            },
            "neither 0 nor 1",
        ),
        (
            "array length beyond file",
            |b| {
                let at = find(b, b"scores") + 6 + 4 + 4;
                put_u64(b, at, 1 << 30);
            },
            "array element count",
        ),
        (
            "invalid utf-8 string",
            |b| {
                let at = find(b, b"llama");
                b[at] = 0xff;
            },
            "not valid UTF-8",
        ),
        (
            "zero dimensions",
            |b| {
                let at = tensor_info_at(b, "a");
                put_u32(b, at, 0);
            },
            "0 dimensions",
        ),
        (
            "five dimensions",
            |b| {
                let at = tensor_info_at(b, "a");
                put_u32(b, at, 5);
            },
            "5 dimensions",
        ),
        (
            "unknown tensor type",
            |b| {
                let at = tensor_info_at(b, "a") + 4 + 8;
                put_u32(b, at, 200);
            },
            "unknown tensor type id 200",
        ),
        (
            "tensor beyond end of file",
            |b| {
                let at = tensor_info_at(b, "a") + 4 + 8 + 4;
                put_u64(b, at, 1 << 20);
            },
            "outside",
        ),
        (
            "tensor offset overflow",
            |b| {
                let at = tensor_info_at(b, "a") + 4 + 8 + 4;
                put_u64(b, at, u64::MAX - 31);
            },
            "outside",
        ),
        (
            "misaligned tensor offset",
            |b| {
                let at = tensor_info_at(b, "a") + 4 + 8 + 4;
                put_u64(b, at, 4);
            },
            "not a multiple of the alignment",
        ),
        (
            "dimension overflow",
            |b| {
                let at = tensor_info_at(b, "a") + 4;
                put_u64(b, at, u64::MAX);
            },
            "out of range",
        ),
        (
            "row not a multiple of the block",
            |b| {
                // Tensor "q" is Q8_0 with ne0 = 32; make it 31.
                let mut needle = 1u64.to_le_bytes().to_vec();
                needle.push(b'q');
                let at = find(b, &needle) + 9 + 4;
                put_u64(b, at, 31);
            },
            "not a multiple of the Q8_0 block size 32",
        ),
        (
            "data section truncated",
            |b| {
                let n = b.len();
                b.truncate(n - 10);
            },
            "outside",
        ),
    ];
    let base = sample().finish();
    for (name, mutate, expect) in cases {
        let mut bytes = base.clone();
        mutate(&mut bytes);
        match GgufFile::from_bytes(bytes) {
            Ok(_) => panic!("{name}: corrupted file was accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(expect),
                    "{name}: error {msg:?} does not mention {expect:?}"
                );
            }
        }
    }
}

#[test]
fn duplicates_are_rejected() {
    let dup_key = sample().kv("u8", Value::U8(1)).finish();
    assert_eq!(
        GgufFile::from_bytes(dup_key).unwrap_err().to_string(),
        "duplicate metadata key 'u8'"
    );
    let dup_tensor = sample().tensor_f32("a", &[1], &[0.0]).finish();
    assert_eq!(
        GgufFile::from_bytes(dup_tensor).unwrap_err().to_string(),
        "duplicate tensor name 'a'"
    );
}

#[test]
fn bad_alignment_is_rejected() {
    let bytes = GgufWriter::new()
        .kv("general.alignment", Value::U32(3))
        .finish();
    let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(err.contains("power of two"), "{err}");
}

#[test]
fn deep_nesting_is_rejected() {
    let mut a = ArrayValue::I32(vec![1]);
    for _ in 0..10 {
        a = ArrayValue::Array(vec![a]);
    }
    let bytes = GgufWriter::new().kv("deep", Value::Array(a)).finish();
    let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
    assert!(err.contains("nested deeper"), "{err}");
}

/// Whatever the reader accepts must be internally consistent: every tensor readable.
fn check_consistent(f: &GgufFile) {
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes, "{}", t.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_byte_edits_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = sample().finish();
        let n = bytes.len();
        for (at, v) in edits {
            bytes[at % n] = v;
        }
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            check_consistent(&f);
        }
    }

    #[test]
    fn truncation_never_panics(cut in 0usize..600) {
        let mut bytes = sample().finish();
        let keep = bytes.len().saturating_sub(cut);
        bytes.truncate(keep);
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            check_consistent(&f);
        }
    }

    #[test]
    fn random_bytes_after_magic_never_panic(tail in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = MAGIC.to_le_bytes().to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&tail);
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            check_consistent(&f);
        }
    }
}
