//! The namespace cache against a mocked API server (kube's tower-test
//! pattern): the first list fills it, a watch event changes it, and a watch
//! that expires (410 Gone) makes the watcher list again, which drops what
//! is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use outrigger_injector::namespaces::{self, Namespaces};
use serde_json::{json, Value};

type MockBody = Full<Bytes>;

fn ns(name: &str, inject: Option<&str>, rv: &str) -> Value {
    let mut meta = json!({ "name": name, "resourceVersion": rv });
    if let Some(v) = inject {
        meta["annotations"] = json!({ "outrigger.dev/inject": v });
    }
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": meta })
}

fn list(rv: &str, items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": "NamespaceList", "metadata": { "resourceVersion": rv }, "items": items })
}

/// Lists in order (the last repeats), then watches in order (after the
/// last, a watch stays open with nothing to say).
async fn serve(
    mut handle: tower_test::mock::Handle<Request<kube::client::Body>, Response<MockBody>>,
    lists: Vec<Value>,
    watches: Vec<String>,
    served: Arc<Mutex<HashMap<&'static str, usize>>>,
) {
    let mut held = Vec::new();
    while let Some((req, send)) = handle.next_request().await {
        assert_eq!(req.uri().path(), "/api/v1/namespaces");
        let watching = req.uri().query().unwrap_or("").contains("watch=true");
        let kind = if watching { "watch" } else { "list" };
        let n = {
            let mut s = served.lock().unwrap();
            let e = s.entry(kind).or_insert(0);
            *e += 1;
            *e - 1
        };
        if watching {
            match watches.get(n) {
                Some(events) => {
                    send.send_response(Response::new(Full::new(Bytes::from(events.clone()))))
                }
                None => held.push(send),
            }
        } else {
            let body = lists.get(n).or(lists.last()).unwrap();
            send.send_response(Response::new(Full::new(Bytes::from(
                serde_json::to_vec(body).unwrap(),
            ))));
        }
    }
}

async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check()
}

fn inject_of(n: &Namespaces, name: &str) -> Option<String> {
    let (ns, known) = n.get(name);
    known.then(|| {
        ns.annotations
            .get("outrigger.dev/inject")
            .cloned()
            .unwrap_or_default()
    })
}

#[tokio::test(start_paused = true)]
async fn the_cache_follows_lists_watch_events_and_relists() {
    let event = |t: &str, o: Value| format!("{}\n", json!({ "type": t, "object": o }));
    let gone = event(
        "ERROR",
        json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 410,
                "reason": "Expired", "message": "too old resource version: 2 (9)" }),
    );
    let lists = vec![
        list(
            "1",
            vec![
                ns("shop", Some("enabled"), "1"),
                ns("kube-system", None, "1"),
            ],
        ),
        // After the expired watch: shop is gone, billing was created.
        list(
            "9",
            vec![
                ns("kube-system", None, "1"),
                ns("billing", Some("enabled"), "8"),
            ],
        ),
    ];
    let watches = vec![
        // billing turns up, shop is switched off, then the watch expires.
        format!(
            "{}{}{}",
            event("ADDED", ns("staging", Some("enabled"), "2")),
            event("MODIFIED", ns("shop", Some("disabled"), "3")),
            gone
        ),
    ];
    let served = Arc::new(Mutex::new(HashMap::new()));
    let (mock, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    tokio::spawn(serve(handle, lists, watches, served.clone()));
    let client = kube::Client::new(mock, "default");
    let cache = Arc::new(Namespaces::default());
    assert!(!cache.is_synced(), "not ready before the first list");
    tokio::spawn(namespaces::watch(client, cache.clone()));

    assert!(eventually(Duration::from_secs(5), || cache.is_synced()).await);
    // The watch events, then the re-list after 410 Gone.
    assert!(
        eventually(Duration::from_secs(30), || inject_of(&cache, "billing")
            .is_some())
        .await,
        "never re-listed; served {:?}",
        served.lock().unwrap()
    );
    assert_eq!(inject_of(&cache, "billing").as_deref(), Some("enabled"));
    assert_eq!(inject_of(&cache, "kube-system").as_deref(), Some(""));
    assert_eq!(inject_of(&cache, "shop"), None, "dropped by the re-list");
    assert_eq!(inject_of(&cache, "staging"), None, "not in the new list");
    let s = served.lock().unwrap();
    assert!(s["list"] >= 2 && s["watch"] >= 1, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn watch_events_change_the_cache_between_lists() {
    let event = |t: &str, o: Value| format!("{}\n", json!({ "type": t, "object": o }));
    let lists = vec![list("1", vec![ns("shop", Some("enabled"), "1")])];
    let watches = vec![format!(
        "{}{}",
        event("ADDED", ns("staging", Some("enabled"), "2")),
        event("DELETED", ns("shop", Some("enabled"), "3"))
    )];
    let (mock, handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<MockBody>>();
    tokio::spawn(serve(handle, lists, watches, Arc::default()));
    let cache = Arc::new(Namespaces::default());
    tokio::spawn(namespaces::watch(
        kube::Client::new(mock, "default"),
        cache.clone(),
    ));
    assert!(
        eventually(Duration::from_secs(5), || inject_of(&cache, "staging")
            .is_some())
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || inject_of(&cache, "shop")
            .is_none())
        .await
    );
}
