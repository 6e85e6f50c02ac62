//! The injector's AdmissionReview handling (`POST /mutate`): JSON from the
//! API server, a pod inside, a JSON Patch out.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use outrigger_injector::config::MeshConfig;
use outrigger_injector::metrics::Metrics;
use outrigger_injector::namespaces::Namespaces;
use outrigger_injector::webhook::{encode, Webhook};
use serde_json::Value;

pub const DICTIONARY: &[&[u8]] = &[
    b"\"apiVersion\":\"admission.k8s.io/v1\"",
    b"\"kind\":\"AdmissionReview\"",
    b"\"operation\":\"CREATE\"",
    b"\"uid\":\"",
    b"\"containers\":[",
    b"\"annotations\":{",
    b"\"sidecar.outrigger.dev/inject\":\"false\"",
    b"\"config.outrigger.dev/proxy-cpu\":\"",
    b"\"subResource\":\"status\"",
    b"null",
];

fn webhook() -> &'static Webhook {
    static WEBHOOK: OnceLock<Webhook> = OnceLock::new();
    WEBHOOK.get_or_init(|| Webhook {
        config: Arc::new(MeshConfig::with_image("ghcr.io/outrigger/proxy:0.1.0")).into(),
        namespaces: Arc::new(Namespaces::fixed([])),
        metrics: Arc::new(Metrics::new()),
    })
}

/// Never panics; a refusal says why; an answer is an AdmissionReview for
/// the request's uid, and its patch, if any, is a JSON Patch that applies
/// to the pod it was made for.
pub fn review(data: &[u8]) {
    let Ok(review) = webhook().review(data) else {
        return;
    };
    let answer: Value = serde_json::from_slice(&encode(&review)).expect("the answer is JSON");
    let asked: Value = serde_json::from_slice(data).expect("what was answered is JSON");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], asked["request"]["uid"]);
    assert_eq!(
        answer["response"]["allowed"], true,
        "the injector never refuses a pod"
    );
    if let Some(patch) = answer["response"]["patch"].as_str() {
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("the patch is base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON Patch");
        let mut pod = asked["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
    }
}
