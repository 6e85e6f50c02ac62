//! Export scope: which namespaces' proxies may see a Service, a route or a
//! DestinationRule (Istio's `exportTo`; for Services, an annotation).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service as KubeService;

use crate::store::Key;

/// A Service annotation: the namespaces whose proxies may see the Service
/// (comma-separated names, `.` for its own, `*` for all).
pub const EXPORT_TO_ANNOTATION: &str = "outrigger.dev/export-to";

/// The namespaces an object is visible to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTo {
    All,
    /// Only these namespaces (the object's own is written as its name).
    Namespaces(BTreeSet<String>),
}

impl ExportTo {
    /// Only the object's own namespace (`.`), resolved when the object is known.
    pub fn own() -> Self {
        ExportTo::Namespaces(BTreeSet::from([".".to_string()]))
    }

    /// Parses Istio's `exportTo` list relative to the object's namespace;
    /// an empty list is `*`.
    pub fn parse(values: &[String], own_namespace: &str) -> Result<Self, String> {
        if values.is_empty() {
            return Ok(ExportTo::All);
        }
        let mut out = BTreeSet::new();
        for v in values {
            match v.trim() {
                "*" => return Ok(ExportTo::All),
                "." => {
                    out.insert(own_namespace.to_string());
                }
                "~" => {
                    return Err("\"~\" (export to no namespace) is not supported".into());
                }
                ns if is_dns_label(ns) => {
                    out.insert(ns.to_string());
                }
                other => return Err(format!("{other:?} is not a namespace name, \".\" or \"*\"")),
            }
        }
        Ok(ExportTo::Namespaces(out))
    }

    pub(super) fn resolve(&self, own_namespace: &str) -> Self {
        match self {
            ExportTo::All => ExportTo::All,
            ExportTo::Namespaces(set) => ExportTo::Namespaces(
                set.iter()
                    .map(|n| {
                        if n == "." {
                            own_namespace.to_string()
                        } else {
                            n.clone()
                        }
                    })
                    .collect(),
            ),
        }
    }

    pub fn includes(&self, namespace: &str) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(set) => set.contains(namespace),
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The routes or the policy of one host, with who may see them.
#[derive(Clone, Debug)]
pub(super) struct Overlay<T> {
    pub(super) from: Key,
    pub(super) export: ExportTo,
    pub(super) value: T,
}

/// Who sees a Service: its `outrigger.dev/export-to` annotation (Istio's
/// `networking.istio.io/exportTo` values, comma-separated), or the default.
pub(super) fn export_of(
    key: &Key,
    svc: &KubeService,
    default: &ExportTo,
) -> Result<ExportTo, String> {
    let export = match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
    {
        Some(v) => {
            let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
            ExportTo::parse(&list, &key.namespace)?
        }
        None => default.clone(),
    };
    Ok(export.resolve(&key.namespace))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::translate::fixtures::*;
    use crate::translate::ExportTo;

    #[test]
    fn a_malformed_export_annotation_is_reported_and_keeps_the_service_home() {
        let m = mesh(
            r#"
apiVersion: v1
kind: Service
metadata: { name: ledger, namespace: billing, annotations: { outrigger.dev/export-to: "shop, Not_A_Namespace" } }
spec: { clusterIP: 10.96.1.1, ports: [{ port: 80 }] }
"#,
        );
        let (reason, message) = refused(verdict(&m, "Service", "billing", "ledger"));
        assert_eq!(reason, "InvalidAnnotation");
        assert!(
            message.contains("metadata.annotations[outrigger.dev/export-to]")
                && message.contains("Not_A_Namespace"),
            "{message}"
        );
        assert_eq!(config(&m, "billing", "p").services.len(), 1);
        assert!(
            config(&m, "shop", "p").services.is_empty(),
            "not exported by half"
        );
    }

    #[test]
    fn export_to_parses_istio_values() {
        assert_eq!(ExportTo::parse(&[], "a"), Ok(ExportTo::All));
        assert_eq!(
            ExportTo::parse(&[".".into(), "b".into()], "a"),
            Ok(ExportTo::Namespaces(BTreeSet::from([
                "a".into(),
                "b".into()
            ])))
        );
        assert!(ExportTo::parse(&["~".into()], "a")
            .unwrap_err()
            .contains("not supported"));
        assert!(ExportTo::parse(&["Bad_NS".into()], "a").is_err());
    }
}
