//! Pins the blob store's promises on both backends: a blob is read back byte for byte
//! under the SHA-256 of its bytes; a second put of the same bytes stores nothing new; a
//! workspace never reads or deletes another's blob; a delete answers whether the blob
//! existed; a blob over `max_bytes` is refused and nothing is stored; pruning takes the
//! blobs unused for longer than the retention and no others; claim checks keep a large
//! value as a blob and resolve its reference back.

use super::*;
use ferry_store::{BlobError, Blobs, BlobsConfig, Media};

conformance!(
    put_get_delete_round_trip_by_hash,
    put_is_idempotent_and_workspaces_are_apart,
    the_size_limit_holds_at_its_edge,
    pruning_takes_unused_blobs_only,
    claim_checks_keep_large_values_and_resolve_them,
);

fn blobs(store: &Arc<dyn Store>) -> Blobs {
    Blobs::new(store.blobs(), BlobsConfig { max_bytes: 1000, claim_check_bytes: 100 })
}

async fn put_get_delete_round_trip_by_hash(store: Arc<dyn Store>) {
    let b = blobs(&store);
    let bytes: Vec<u8> = (0..=255u8).collect();
    let put = b.put("w", Media::Bytes, bytes.clone()).await.unwrap();
    assert_eq!(put.hash, ferry_store::blobs::hash_of(&bytes), "the address is the bytes' SHA-256");
    assert_eq!(put.size, 256);
    let got = b.get("w", &put.hash).await.unwrap().expect("the blob is there");
    assert_eq!((got.media, got.data), (Media::Bytes, bytes));
    assert!(b.delete("w", &put.hash).await.unwrap(), "a delete says the blob existed");
    assert!(b.get("w", &put.hash).await.unwrap().is_none(), "and it is gone");
    assert!(!b.delete("w", &put.hash).await.unwrap(), "a second delete is no error, and says so");
    assert!(matches!(b.get("w", "../../etc/passwd").await, Err(BlobError::BadHash(_))), "a hash is a hash");
}

async fn put_is_idempotent_and_workspaces_are_apart(store: Arc<dyn Store>) {
    let b = blobs(&store);
    let first = b.put("w", Media::Text, b"hello".to_vec()).await.unwrap();
    let again = b.put("w", Media::Json, b"hello".to_vec()).await.unwrap();
    assert_eq!(first, again, "the same bytes, the same blob");
    let got = b.get("w", &first.hash).await.unwrap().unwrap();
    assert_eq!(got.media, Media::Text, "the first put's media stays");
    assert!(b.get("other", &first.hash).await.unwrap().is_none(), "another workspace does not see it");
    assert!(!b.delete("other", &first.hash).await.unwrap(), "nor delete it");
    assert!(b.get("w", &first.hash).await.unwrap().is_some(), "which left it in place");
    // The other workspace's own copy of the same bytes is its own.
    b.put("other", Media::Text, b"hello".to_vec()).await.unwrap();
    assert!(b.delete("other", &first.hash).await.unwrap());
    assert!(b.get("w", &first.hash).await.unwrap().is_some(), "deleting one copy leaves the other");
}

async fn the_size_limit_holds_at_its_edge(store: Arc<dyn Store>) {
    let b = blobs(&store);
    let at = b.put("w", Media::Bytes, vec![7; 1000]).await.expect("exactly max_bytes is accepted");
    assert_eq!(at.size, 1000);
    let over = vec![7; 1001];
    let hash = ferry_store::blobs::hash_of(&over);
    assert!(matches!(b.put("w", Media::Bytes, over).await, Err(BlobError::TooLarge { size: 1001, max: 1000 })));
    assert!(b.get("w", &hash).await.unwrap().is_none(), "nothing was stored");
}

async fn pruning_takes_unused_blobs_only(store: Arc<dyn Store>) {
    let b = blobs(&store);
    let one = b.put("w", Media::Text, b"one".to_vec()).await.unwrap();
    let two = b.put("v", Media::Text, b"two".to_vec()).await.unwrap();
    assert_eq!(b.prune(3_600_000, 10).await.unwrap(), 0, "nothing has been unused for an hour");
    assert!(b.get("w", &one.hash).await.unwrap().is_some());
    // Unused for longer than 0 ms: every blob put before now, in batches.
    assert_eq!(b.prune(0, 1).await.unwrap(), 2, "each batch of one, repeated until none is left");
    assert!(b.get("w", &one.hash).await.unwrap().is_none());
    assert!(b.get("v", &two.hash).await.unwrap().is_none());
}

async fn claim_checks_keep_large_values_and_resolve_them(store: Arc<dyn Store>) {
    let b = blobs(&store);
    // 100 bytes of JSON stays inline; 101 is checked.
    let inline = json!("x".repeat(98));
    assert_eq!(serde_json::to_vec(&inline).unwrap().len(), 100);
    assert_eq!(b.check_in("w", inline.clone()).await.unwrap(), inline);
    let large = json!("x".repeat(99));
    let reference = b.check_in("w", large.clone()).await.unwrap();
    let r = ferry_store::blobs::parse_reference(&reference).expect("a reference").unwrap();
    assert_eq!(r.size, 101);
    assert_eq!(b.resolve("w", reference.clone()).await.unwrap(), large, "the reference resolves to the value");
    assert!(matches!(b.resolve("other", reference).await, Err(BlobError::NotFound(_))), "in its workspace only");
    assert!(matches!(b.check_in("w", json!("x".repeat(999))).await, Err(BlobError::TooLarge { .. })));
}
