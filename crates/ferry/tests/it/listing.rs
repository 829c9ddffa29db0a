//! Promise: the job listing pages through every job exactly once, newest first, and its
//! filters (state, kind, queue) and page size are honoured.

use crate::harness::{Backend, TestServer, assert_error, both};
use ferry::config::QueueSettings;
use reqwest::StatusCode;
use serde_json::{Value, json};

both!(pages_newest_first_without_duplicates, filters_by_state_kind_and_queue, bad_listing_parameters_are_refused);

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().expect("items").iter().map(|j| j["id"].as_str().expect("id").to_string()).collect()
}

async fn pages_newest_first_without_duplicates(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Submitted one by one, so creation order is unambiguous; delayed, so they stay put.
    let mut submitted = Vec::new();
    for i in 0..25 {
        submitted.push(server.submit(json!({"kind": "noop", "input": {"i": i}, "delay_ms": 600000})).await);
    }

    let mut pages = Vec::new();
    let mut path = "/v1/jobs?limit=10".to_string();
    loop {
        let (status, page) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages.push(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert_eq!(Some(cursor), pages.last().unwrap().last().map(String::as_str), "cursor is the last id");
                path = format!("/v1/jobs?limit=10&cursor={cursor}");
            }
            None => {
                assert!(page.get("next_cursor").is_none_or(Value::is_null), "{page}");
                break;
            }
        }
        assert!(pages.len() <= 3, "more pages than jobs: {pages:?}");
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5]);

    let listed: Vec<String> = pages.concat();
    let mut newest_first = submitted.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first, "every job once, newest first");
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, sorted, "ids descend");

    // An exact multiple of the page size ends without an empty page.
    let (_, page) = server.get("/v1/jobs?limit=25").await;
    assert_eq!(ids(&page).len(), 25);
    assert!(page["next_cursor"].is_null(), "{}", page["next_cursor"]);
    server.stop().await;
}

async fn filters_by_state_kind_and_queue(backend: Backend) {
    let server = TestServer::start_with(backend, |cfg| {
        cfg.queues.insert("other".into(), QueueSettings { concurrency: Some(0), max_depth: None, severity: None });
    })
    .await;
    let scheduled: Vec<String> =
        server.submit_batch((0..4).map(|_| json!({"kind": "noop", "delay_ms": 600000})).collect()).await;
    let parked = server
        .submit_batch((0..3).map(|_| json!({"kind": "sleep", "input": {"ms": 1}, "queue": "other"})).collect())
        .await;
    let done = server.submit(json!({"kind": "noop"})).await;
    server.wait_state(&done, &["succeeded"]).await;

    let list = async |query: &str| {
        let (status, page) = server.get(&format!("/v1/jobs?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {page}");
        let mut got = ids(&page);
        got.sort();
        got
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(list("state=scheduled").await, sorted(scheduled.clone()));
    assert_eq!(list("state=queued").await, sorted(parked.clone()), "the `other` queue has no worker");
    assert_eq!(list("state=succeeded").await, vec![done.clone()]);
    assert_eq!(list("state=dead").await, Vec::<String>::new());
    assert_eq!(list("kind=sleep").await, sorted(parked.clone()));
    assert_eq!(list("queue=other").await, sorted(parked.clone()));
    let mut default_queue = scheduled.clone();
    default_queue.push(done.clone());
    assert_eq!(list("queue=default").await, sorted(default_queue.clone()));
    assert_eq!(list("kind=noop").await, sorted(default_queue));
    assert_eq!(list("kind=noop&state=scheduled&queue=default").await, sorted(scheduled.clone()));
    assert_eq!(list("kind=sleep&queue=default").await, Vec::<String>::new());

    // Filters and paging together.
    let (_, page) = server.get("/v1/jobs?state=scheduled&limit=3").await;
    assert_eq!(ids(&page).len(), 3);
    let cursor = page["next_cursor"].as_str().expect("a next page").to_string();
    let (_, rest) = server.get(&format!("/v1/jobs?state=scheduled&limit=3&cursor={cursor}")).await;
    assert_eq!(ids(&rest).len(), 1);
    assert!(rest["next_cursor"].is_null());
    server.stop().await;
}

async fn bad_listing_parameters_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("state=finished", "state"),
        ("cursor=page-2", "cursor"),
        ("colour=red", "colour"),
    ] {
        let got = server.get(&format!("/v1/jobs?{query}")).await;
        assert_error(&got, StatusCode::BAD_REQUEST, "invalid_field", Some(field));
    }
    let (status, page) = server.get("/v1/jobs?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, page) = server.get("/v1/jobs?limit=1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    server.stop().await;
}
