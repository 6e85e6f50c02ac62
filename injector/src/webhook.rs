//! One AdmissionReview in, one out: [`Webhook::review`] reads the request,
//! looks the namespace up in the cache, runs [`inject`] and writes the
//! response, whose `uid` is always the request's. A body that is not an
//! AdmissionReview with a request is a [`BadRequest`] (HTTP 400 with the
//! reason). No side effects: a dry-run request gets the same answer.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;

use crate::config::MeshConfig;
use crate::inject::{inject, Outcome, SkipReason};
use crate::metrics::{Metrics, ReasonLabel};
use crate::namespaces::Namespaces;

/// Why a body got a 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadRequest(pub String);

pub struct Webhook {
    /// The mesh config in force; its trust roots follow `--trust-roots`
    /// ([`Webhook::set_trust_roots`]).
    pub config: ArcSwap<MeshConfig>,
    pub namespaces: Arc<Namespaces>,
    pub metrics: Arc<Metrics>,
}

impl Webhook {
    /// Pods injected from now on start trusting `pem` (a CA rotation
    /// changed the roots; running proxies follow the CA themselves).
    /// Returns whether anything changed.
    pub fn set_trust_roots(&self, pem: &str) -> bool {
        let current = self.config.load();
        if current.trust_roots == pem {
            return false;
        }
        let mut next = MeshConfig::clone(&current);
        next.trust_roots = pem.to_string();
        self.config.store(Arc::new(next));
        true
    }

    /// The answer to one request body.
    pub fn review(&self, body: &[u8]) -> Result<AdmissionReview<DynamicObject>, BadRequest> {
        #[allow(
            clippy::disallowed_methods,
            reason = "the latency metric's start; nothing here runs on a paused clock"
        )]
        let started = Instant::now();
        self.metrics.requests.inc();
        let result = self.answer(body);
        if result.is_err() {
            self.count_error("bad_request");
        }
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn answer(&self, body: &[u8]) -> Result<AdmissionReview<DynamicObject>, BadRequest> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
            .map_err(|e| BadRequest(format!("not an AdmissionReview: {e}")))?;
        if review.types.api_version != "admission.k8s.io/v1"
            || review.types.kind != "AdmissionReview"
        {
            return Err(BadRequest(format!(
                "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {} {}",
                review.types.api_version, review.types.kind
            )));
        }
        let req: AdmissionRequest<DynamicObject> = review
            .try_into()
            .map_err(|_| BadRequest("the AdmissionReview has no request".into()))?;
        if req.uid.is_empty() {
            return Err(BadRequest("request.uid is empty".into()));
        }
        let response = AdmissionResponse::from(&req);
        if req.kind.kind != "Pod" || !req.kind.group.is_empty() || req.sub_resource.is_some() {
            self.count_skip("not_a_pod");
            return Ok(response.into_review());
        }
        if req.operation != Operation::Create {
            // UPDATE and the rest: a pod's containers cannot change after
            // creation, so there is nothing to add.
            self.count_skip("not_create");
            return Ok(response.into_review());
        }
        let Some(object) = &req.object else {
            return Err(BadRequest("request.object is missing for CREATE".into()));
        };
        // The patch is made against the pod as it was sent, not as the
        // typed read fills it in (a `metadata` it did not have), so that
        // every path the patch names exists in what the API server has.
        // (The typed read skips the strings it ignores without checking
        // their UTF-8: a body with invalid UTF-8 there fails only this.)
        let sent: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| BadRequest(format!("not an AdmissionReview: {e}")))?;
        let pod = &sent["request"]["object"];
        let ns_name = req
            .namespace
            .clone()
            .or_else(|| object.metadata.namespace.clone())
            .unwrap_or_default();
        let (namespace, known) = self.namespaces.get(&ns_name);
        if !known {
            tracing::debug!(namespace = %ns_name, "namespace not in the cache; only the pod's own annotation counts");
        }
        let name = object
            .metadata
            .name
            .clone()
            .or_else(|| object.metadata.generate_name.clone())
            .unwrap_or_default();
        Ok(match inject(pod, &namespace, &self.config.load()) {
            Outcome::Inject { patch, warnings } => {
                self.metrics.injected.inc();
                tracing::info!(namespace = %ns_name, pod = %name, dry_run = req.dry_run, "injected");
                let mut r = response.with_patch(patch).expect("a JSON Patch serializes");
                if !warnings.is_empty() {
                    r.warnings = Some(warnings);
                }
                r.into_review()
            }
            Outcome::Skip(SkipReason::NotEnabled) if !known => {
                // The namespace may be newer than the cache: say so rather
                // than leave the pod unmeshed without a word.
                self.count_skip("namespace_not_cached");
                tracing::warn!(namespace = %ns_name, pod = %name, "namespace not in the cache; admitted without the proxy");
                let mut r = response;
                r.warnings = Some(vec![format!(
                    "outrigger: namespace {ns_name} is not in the injector's cache yet, so its \
                     outrigger.dev/inject annotation was not seen; the pod was admitted without \
                     the proxy (recreate it to mesh it)"
                )]);
                r.into_review()
            }
            Outcome::Skip(reason) => {
                self.count_skip(reason.as_str());
                response.into_review()
            }
            Outcome::Refuse(message) => {
                self.metrics.refused.inc();
                tracing::info!(namespace = %ns_name, pod = %name, %message, "refused");
                response.deny(message).into_review()
            }
            Outcome::CannotHandle(why) => {
                self.count_error("cannot_handle");
                tracing::warn!(namespace = %ns_name, pod = %name, %why, "admitted without the proxy");
                let mut r = response;
                r.warnings = Some(vec![format!(
                    "outrigger: the pod was admitted without the proxy: {why}"
                )]);
                r.into_review()
            }
        })
    }

    fn count_skip(&self, reason: &'static str) {
        self.metrics
            .skipped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    fn count_error(&self, reason: &'static str) {
        self.metrics
            .errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}

/// The response as the API server reads it. `kube`'s AdmissionResponse
/// serializes its patch as an array of numbers; the API documents a
/// base64 string (Go's `[]byte`), which is what is sent.
pub fn encode(review: &AdmissionReview<DynamicObject>) -> Vec<u8> {
    use base64::Engine;
    let mut v = serde_json::to_value(review).expect("a review serializes");
    if let Some(patch) = v.pointer_mut("/response/patch") {
        if let Some(bytes) = patch.as_array().map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Vec<u8>>()
        }) {
            *patch =
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    serde_json::to_vec(&v).expect("serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the fuzz target `admission_review`: the typed read skips a
    /// string it ignores without checking its UTF-8, so the second read of
    /// a pod's CREATE failed on it, and that read's `expect` panicked.
    #[test]
    fn invalid_utf8_where_the_typed_read_does_not_look_is_a_bad_request() {
        let webhook = Webhook {
            config: Arc::new(MeshConfig::with_image("proxy:1")).into(),
            namespaces: Arc::new(Namespaces::fixed([])),
            metrics: Arc::new(Metrics::new()),
        };
        let mut body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
            "request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},
            "resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE",
            "userInfo":{},"object":{"metadata":{"name":"p"},"spec":{"containers":[]}},
            "ignored":"X"}}"#
            .to_vec();
        assert!(
            webhook.review(&body).is_ok(),
            "the same review, valid, is answered"
        );
        let at = body.iter().position(|&b| b == b'X').unwrap();
        body[at] = 0x93;
        // The typed read takes it; only the read of the pod as sent fails.
        assert!(serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body).is_ok());
        let Err(BadRequest(message)) = webhook.review(&body) else {
            panic!("answered");
        };
        assert!(message.starts_with("not an AdmissionReview: "), "{message}");
    }

    #[test]
    fn new_trust_roots_reach_the_config_pods_are_injected_with() {
        let webhook = Webhook {
            config: Arc::new(MeshConfig::with_image("proxy:1")).into(),
            namespaces: Arc::new(Namespaces::fixed([])),
            metrics: Arc::new(Metrics::new()),
        };
        let pem = "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n";
        assert!(webhook.set_trust_roots(pem));
        assert!(!webhook.set_trust_roots(pem), "unchanged");
        let config = webhook.config.load();
        assert_eq!(config.trust_roots, pem);
        assert_eq!(config.proxy_image, "proxy:1", "the rest stays");
    }
}
