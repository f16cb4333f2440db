//! Routing and forwarding: split accuracy, affinity, zero loss under weight flips,
//! streaming bodies, HTTP/2 and WebSocket.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_to_blue_at_zero_percent() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let p = proxy(&blue, &green, "").await;
    let c = client();
    let (status, headers, body) = send(&c, get(&p.url("/"))).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"blue");
    assert_eq!(headers[HASH_HEADER], HASH);
    assert_eq!(green.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
