use super::*;

#[test]
fn spread_sequence_meets_small_shares_exactly() {
    for share in [50u16, 100, 1000, 5000] {
        let n = 10_000;
        let green = (0..n).filter(|_| next_spread_bucket() < share).count();
        let expected = n * usize::from(share) / usize::from(FULL_BP);
        assert!(
            green.abs_diff(expected) <= 3,
            "share {share}bp: {green} of {n}, expected {expected}"
        );
    }
}

#[test]
fn affinity_bucket_is_deterministic_and_spread() {
    assert_eq!(
        affinity_bucket(b"user-42", 7),
        affinity_bucket(b"user-42", 7)
    );
    let below_half = (0..10_000)
        .filter(|i| affinity_bucket(format!("user-{i}").as_bytes(), 0) < 5000)
        .count();
    assert!((4700..5300).contains(&below_half), "{below_half}");
}

#[test]
fn raising_the_weight_only_moves_keys_to_green() {
    for i in 0..5_000 {
        let key = format!("k{i}");
        let b = affinity_bucket(key.as_bytes(), 99);
        // green iff bucket < weight: a key green at 10% is green at every higher weight
        if b < 1000 {
            assert!(b < 5000);
        }
    }
}
