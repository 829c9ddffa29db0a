//! Promise: a connection cannot hold the server for free: a slow head, a stalled body and
//! an idle kept-alive connection are cut at their (configured) timeouts, an event stream
//! is never cut by the idle timeout, and past `http.max_connections` new connections wait
//! until one closes.
//!
//! The clients here speak raw HTTP/1.1 over TCP, to send half a request on purpose. They
//! wait on the socket (a read returning 0 or an error) with a generous deadline.

use crate::harness::{Backend, DEADLINE, TestServer};
use ferry::config::Config;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short timeouts for tests; each test lengthens the ones it does not look at.
fn short(header_ms: u64, body_ms: u64, idle_ms: u64) -> impl FnOnce(&mut Config) {
    move |cfg: &mut Config| {
        cfg.http.header_timeout_ms = header_ms;
        cfg.http.body_timeout_ms = body_ms;
        cfg.http.idle_timeout_ms = idle_ms;
    }
}

async fn connect(server: &TestServer) -> TcpStream {
    let addr = server.url().trim_start_matches("http://").to_string();
    TcpStream::connect(addr).await.expect("the server accepts a connection")
}

/// Reads until the server closes the connection (a read of 0 bytes or an error); panics
/// after [`DEADLINE`]. Returns everything read.
async fn until_closed(conn: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await.expect("the server closes the connection");
    got
}

/// One answer read from a kept-alive connection: (status, headers as text, body).
async fn read_answer(conn: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut chunk).await.expect("readable");
            assert!(n > 0, "the server closed before answering; got {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head[9..12].parse().expect("a status code");
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .map_or(0, |v| v.parse().expect("a length"));
        while buf.len() < head_end + length {
            let n = conn.read(&mut chunk).await.expect("readable");
            assert!(n > 0, "the server closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        (status, head, buf[head_end..head_end + length].to_vec())
    };
    tokio::time::timeout(DEADLINE, read).await.expect("the server answers")
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: ferry\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_head_is_cut_after_the_header_timeout() {
    let server = TestServer::start_with(Backend::Sqlite, short(300, 60_000, 60_000)).await;

    // Half a request line, then nothing.
    let mut conn = connect(&server).await;
    let started = Instant::now();
    conn.write_all(b"GET /heal").await.unwrap();
    let got = until_closed(&mut conn).await;
    assert!(got.is_empty(), "no answer, only a close: {:?}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() >= Duration::from_millis(250), "cut after {:?}", started.elapsed());

    // Headers trickled a byte at a time: arriving bytes do not extend the deadline.
    let mut conn = connect(&server).await;
    let started = Instant::now();
    let (mut rd, mut wr) = conn.split();
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: ferry\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 64];
        matches!(rd.read(&mut buf).await, Ok(0) | Err(_))
    };
    let cut = tokio::select! {
        () = trickle => true,
        closed = closed => closed,
        () = tokio::time::sleep(DEADLINE) => false,
    };
    assert!(cut, "a trickled head is cut");
    assert!(started.elapsed() < Duration::from_secs(5), "cut near the header timeout, not {:?}", started.elapsed());

    // A connection that sends nothing at all is cut too.
    let mut conn = connect(&server).await;
    let got = until_closed(&mut conn).await;
    assert!(got.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_and_closed() {
    let server = TestServer::start_with(Backend::Sqlite, short(60_000, 300, 60_000)).await;
    let mut conn = connect(&server).await;
    let started = Instant::now();
    conn.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: ferry\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\": ",
    )
    .await
    .unwrap();
    let (status, _, body) = read_answer(&mut conn).await;
    assert!(started.elapsed() >= Duration::from_millis(250), "answered after {:?}", started.elapsed());
    let body: Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    until_closed(&mut conn).await;
    assert_eq!(server.count_jobs().await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    // The idle timeout is longer than the header timeout: the close must come from it.
    let server = TestServer::start_with(Backend::Sqlite, short(200, 60_000, 800)).await;
    let mut conn = connect(&server).await;
    // Kept alive: two requests on one connection, then silence. The server's idle clock
    // starts once it has answered, so after the last request was sent: measured from
    // there, a load that delays this reader cannot make the close look early.
    let mut sent = Instant::now();
    for _ in 0..2 {
        sent = Instant::now();
        conn.write_all(HEALTHZ).await.unwrap();
        let (status, head, _) = read_answer(&mut conn).await;
        assert_eq!(status, 200, "{head}");
    }
    let got = until_closed(&mut conn).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let idle = sent.elapsed();
    assert!(idle >= Duration::from_millis(790), "closed after {idle:?}, before the idle timeout");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_outlives_the_idle_timeout() {
    let server = TestServer::start_with(Backend::Sqlite, short(200, 200, 200)).await;
    let id = server.submit(json!({"kind": "sleep", "input": {"ms": 1500}})).await;
    let started = Instant::now();
    let mut resp = server
        .client()
        .get(format!("{}/v1/jobs/{id}/events", server.url()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("the stream starts");
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = resp.chunk().await.expect("the stream is not cut") {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("event: succeeded") {
                return;
            }
        }
        panic!("the stream ended before the job did: {text}");
    };
    tokio::time::timeout(DEADLINE, read).await.expect("the job's last event arrives");
    assert!(started.elapsed() >= Duration::from_millis(1000), "the stream was open for {:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_connection_waits_until_one_closes() {
    const CAP: usize = 3;
    let server = TestServer::start_with(Backend::Sqlite, |cfg| cfg.http.max_connections = CAP).await;
    // CAP connections, each served and kept open.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut conn = connect(&server).await;
        conn.write_all(HEALTHZ).await.unwrap();
        assert_eq!(read_answer(&mut conn).await.0, 200);
        held.push(conn);
    }
    // One more: connected (the kernel's backlog holds it) but not served.
    let mut extra = connect(&server).await;
    extra.write_all(HEALTHZ).await.unwrap();
    let mut buf = [0u8; 16];
    let early = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf)).await;
    assert!(early.is_err(), "the connection past the cap was served: {early:?}");
    // One closes: the waiting one is served.
    drop(held.pop());
    let (status, head, _) = read_answer(&mut extra).await;
    assert_eq!(status, 200, "{head}");
    // The others were kept throughout.
    for conn in &mut held {
        conn.write_all(HEALTHZ).await.unwrap();
        assert_eq!(read_answer(conn).await.0, 200);
    }
    drop(held);
    drop(extra);
    server.stop().await;
}
