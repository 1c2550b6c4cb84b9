use super::*;

fn hash_of(n: u8) -> [u8; 32] {
    let mut hash = [0u8; 32];
    hash[31] = n;
    hash
}

#[test]
fn the_sum_carries_wraps_and_undoes_exactly() {
    let mut sum: Sum = [0, 0, 0, u64::MAX];
    add(&mut sum, &hash_of(1));
    assert_eq!(sum, [0, 0, 1, 0], "the carry did not reach the next limb");
    subtract(&mut sum, &hash_of(1));
    assert_eq!(sum, [0, 0, 0, u64::MAX], "subtracting did not undo adding");
    let mut wrapped: Sum = [u64::MAX; 4];
    add(&mut wrapped, &hash_of(1));
    assert_eq!(wrapped, [0; 4], "the sum is not modulo 2^256");
}

#[test]
fn the_digest_does_not_depend_on_the_order_keys_were_added() {
    let mut forward = Tally::default();
    let mut backward = Tally::default();
    for seq in 1..=50u8 {
        forward.put(i64::from(seq), sha256(&format!("key {seq}")));
        backward.put(i64::from(51 - seq), sha256(&format!("key {}", 51 - seq)));
    }
    assert_eq!(forward.summary(), backward.summary());
    backward.put(7, sha256("key 7 revoked"));
    assert_ne!(
        forward.summary(),
        backward.summary(),
        "a changed key left the digest alone"
    );
    backward.put(7, sha256("key 7"));
    assert_eq!(
        forward.summary(),
        backward.summary(),
        "a change undone left a trace"
    );
}

#[test]
fn queries_refuse_unknown_repeated_and_out_of_range_parameters() {
    assert!(ChangesQuery::parse(None).is_err(), "since is required");
    assert!(ChangesQuery::parse(Some("since=1&since=2")).is_err());
    assert!(ChangesQuery::parse(Some("since=1&wait=61")).is_err());
    assert!(ChangesQuery::parse(Some("since=-1")).is_err());
    assert!(SnapshotQuery::parse(Some("cursor=c12")).is_err());
    assert!(SnapshotQuery::parse(Some("limit=0")).is_err());
    assert!(SnapshotQuery::parse(Some("page=1")).is_err());
    let changes = ChangesQuery::parse(Some("since=12&wait=25&epoch=ab")).unwrap();
    assert_eq!(changes.since, 12);
    assert_eq!(changes.wait, Duration::from_secs(25));
    assert_eq!(changes.epoch.as_deref(), Some("ab"));
    let page = SnapshotQuery::parse(Some("cursor=s40&limit=2")).unwrap();
    assert_eq!((page.cursor, page.limit), (Some(40), 2));
}
