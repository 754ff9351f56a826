//! The GGML type table.

use autoglm_kernels::DType;

#[test]
fn known_sizes() {
    let table = [
        (DType::F32, 0, "F32", 1, 4),
        (DType::F16, 1, "F16", 1, 2),
        (DType::Q4_0, 2, "Q4_0", 32, 18),
        (DType::Q4_1, 3, "Q4_1", 32, 20),
        (DType::Q5_0, 6, "Q5_0", 32, 22),
        (DType::Q5_1, 7, "Q5_1", 32, 24),
        (DType::Q8_0, 8, "Q8_0", 32, 34),
        (DType::Q8_1, 9, "Q8_1", 32, 36),
        (DType::Q2_K, 10, "Q2_K", 256, 84),
        (DType::Q3_K, 11, "Q3_K", 256, 110),
        (DType::Q4_K, 12, "Q4_K", 256, 144),
        (DType::Q5_K, 13, "Q5_K", 256, 176),
        (DType::Q6_K, 14, "Q6_K", 256, 210),
        (DType::Q8_K, 15, "Q8_K", 256, 292),
        (DType::BF16, 30, "BF16", 1, 2),
    ];
    assert_eq!(table.len(), DType::ALL.len());
    for (t, id, name, bl, bb) in table {
        assert_eq!(t.ggml_id(), id);
        assert_eq!(DType::from_ggml(id), Some(t));
        assert_eq!(t.name(), name);
        assert_eq!(t.to_string(), name);
        assert_eq!(t.block_len(), bl);
        assert_eq!(t.block_bytes(), bb);
    }
    for id in [4, 5, 16, 29, 31, 39, u32::MAX] {
        assert_eq!(DType::from_ggml(id), None, "id {id}");
    }
}

#[test]
fn row_bytes() {
    assert_eq!(DType::Q4_1.row_bytes(576), Some(18 * 20));
    assert_eq!(DType::Q6_K.row_bytes(1024), Some(4 * 210));
    assert_eq!(DType::F16.row_bytes(3), Some(6));
    assert_eq!(DType::Q4_1.row_bytes(0), Some(0));
    assert_eq!(DType::Q4_1.row_bytes(33), None);
    assert_eq!(DType::Q4_K.row_bytes(128), None);
    assert_eq!(DType::F32.row_bytes(usize::MAX / 2), None);
    assert_eq!(DType::Q8_0.row_bytes(usize::MAX - 31), None);
}

#[test]
fn supported_set() {
    let supported: Vec<_> = DType::ALL
        .iter()
        .copied()
        .filter(|t| t.is_supported())
        .collect();
    assert_eq!(
        supported,
        [
            DType::F32,
            DType::F16,
            DType::Q4_0,
            DType::Q4_1,
            DType::Q5_0,
            DType::Q8_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
            DType::BF16
        ]
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn row_bytes_is_exact_or_none(t in 0usize..15, n in any::<usize>()) {
            let t = DType::ALL[t];
            match t.row_bytes(n) {
                Some(b) => {
                    prop_assert_eq!(n % t.block_len(), 0);
                    prop_assert_eq!(b as u128, (n / t.block_len()) as u128 * t.block_bytes() as u128);
                }
                None => prop_assert!(n % t.block_len() != 0
                    || (n / t.block_len()) as u128 * t.block_bytes() as u128 > usize::MAX as u128),
            }
        }
    }
}
