//! The injector's AdmissionReview handling (`POST /mutate`): JSON from the
//! API server, a pod inside, a JSON Patch out.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use outrigger_injector::annotations::INJECT;
use outrigger_injector::config::MeshConfig;
use outrigger_injector::inject::Namespace;
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
    b"\"outrigger.dev/inject\":\"disabled\"",
    b"\"config.outrigger.dev/proxy-cpu-request\":\"",
    b"\"subResource\":\"status\"",
    b"null",
];

fn webhook() -> &'static Webhook {
    static WEBHOOK: OnceLock<Webhook> = OnceLock::new();
    WEBHOOK.get_or_init(|| Webhook {
        config: Arc::new(MeshConfig::with_image("ghcr.io/outrigger/proxy:0.1.0")).into(),
        // `shop` asks for the proxy; pods elsewhere ask for themselves.
        namespaces: Arc::new(Namespaces::fixed([Namespace {
            name: "shop".into(),
            annotations: [(INJECT.to_string(), "enabled".to_string())].into(),
        }])),
        metrics: Arc::new(Metrics::new()),
    })
}

/// Never panics; an answer is an AdmissionReview for the request's uid;
/// a pod refused (its own annotations are wrong) is refused with a
/// message and no patch; a patch is a JSON Patch that applies to the pod
/// it was made for.
pub fn review(data: &[u8]) {
    let Ok(review) = webhook().review(data) else {
        return;
    };
    let answer: Value = serde_json::from_slice(&encode(&review)).expect("the answer is JSON");
    // The typed read skips strings it ignores without checking their
    // UTF-8: such a body is answered, though it is no JSON tree.
    let Ok(asked) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], asked["request"]["uid"]);
    if answer["response"]["allowed"] == false {
        // A pod whose own annotations are wrong: refused, saying why.
        let message = answer["response"]["status"]["message"].as_str();
        assert!(message.is_some_and(|m| !m.is_empty()), "{answer}");
        assert!(answer["response"]["patch"].is_null(), "{answer}");
        return;
    }
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    if let Some(patch) = answer["response"]["patch"].as_str() {
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("the patch is base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON Patch");
        let mut pod = asked["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed of a pod's CREATE is answered with a patch, so the
    /// target's patch property runs.
    #[test]
    fn a_create_seed_gets_a_patch() {
        let path = crate::budget::corpus_dir("admission_review").join("create-pod");
        let review = webhook()
            .review(&std::fs::read(path).unwrap())
            .ok()
            .unwrap();
        let answer: Value = serde_json::from_slice(&encode(&review)).unwrap();
        assert!(answer["response"]["patch"].is_string(), "{answer}");
    }
}
