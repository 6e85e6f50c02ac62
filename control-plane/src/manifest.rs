//! Reading manifests: the multi-document YAML a user would `kubectl apply`,
//! turned into store objects. Pure: text in, objects or errors out (the
//! folder source does the file I/O).

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::crd::{GROUP, VERSION};
use crate::store::Object;

/// A manifest document that could not be read; names the file and the line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ManifestError {
    pub file: String,
    /// 1-based line in the file (the document's first line when the parser
    /// gave no position).
    pub line: usize,
    pub message: String,
}

/// What one file held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Object>,
    /// Documents of kinds the mesh does not read (Deployments, ConfigMaps,
    /// ...): `kind name` and line, skipped without error.
    pub skipped: Vec<(String, usize)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses every document of one file. Any bad document fails the whole
/// file, so a half-read file never replaces a good one.
pub fn parse(file: &str, text: &str, default_namespace: &str) -> Result<Parsed, ManifestError> {
    let mut parsed = Parsed::default();
    for (start, doc) in documents(text) {
        if doc.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        }) {
            continue;
        }
        // Blank lines before the document keep the parser's line numbers
        // those of the file.
        let padded = format!("{}{doc}", "\n".repeat(start - 1));
        let err = |message: String, line: Option<usize>| ManifestError {
            file: file.to_string(),
            line: line.unwrap_or(start),
            message,
        };
        let meta: TypeMeta = serde_saphyr::from_str(&padded).map_err(|e| {
            err(
                format!("not a Kubernetes object: {}", first_line(&e.to_string())),
                e.location().map(|l| l.line() as usize),
            )
        })?;
        if meta.api_version.is_empty() || meta.kind.is_empty() {
            return Err(err("a manifest needs apiVersion and kind".into(), None));
        }
        let typed = |r: Result<Object, serde_saphyr::Error>| {
            r.map_err(|e| {
                err(
                    format!(
                        "{} {}: {}",
                        meta.kind,
                        meta.api_version,
                        first_line(&e.to_string())
                    ),
                    e.location().map(|l| l.line() as usize),
                )
            })
        };
        let ours = format!("{GROUP}/{VERSION}");
        let mut obj = match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("v1", "Namespace") => typed(de(&padded).map(Object::Namespace))?,
            ("v1", "Service") => typed(de(&padded).map(Object::Service))?,
            ("v1", "Endpoints") => typed(de(&padded).map(Object::Endpoints))?,
            ("v1", "Pod") => typed(de(&padded).map(Object::Pod))?,
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                typed(de(&padded).map(Object::EndpointSlice))?
            }
            (v, "VirtualService") if v == ours => typed(de(&padded).map(Object::VirtualService))?,
            (v, "DestinationRule") if v == ours => typed(de(&padded).map(Object::DestinationRule))?,
            (v, "AuthorizationPolicy") if v == ours => {
                typed(de(&padded).map(Object::AuthorizationPolicy))?
            }
            (v, "PeerAuthentication") if v == ours => {
                typed(de(&padded).map(Object::PeerAuthentication))?
            }
            (v, kind)
                if v.starts_with("networking.istio.io/") || v.starts_with("security.istio.io/") =>
            {
                return Err(err(
                    format!("{kind} {v} is Istio's: change apiVersion to {ours}"),
                    None,
                ));
            }
            (v, kind) if v == ours || v.starts_with(&format!("{GROUP}/")) => {
                return Err(err(format!("unknown mesh resource {kind} {v}"), None));
            }
            (_, kind) => {
                parsed.skipped.push((kind.to_string(), start));
                continue;
            }
        };
        if obj.key().is_none() {
            return Err(err(format!("{} has no metadata.name", meta.kind), None));
        }
        obj.default_namespace(default_namespace);
        parsed.objects.push(obj);
    }
    Ok(parsed)
}

fn de<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str(text)
}

/// The parser's message without the source excerpt it may append.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Splits a YAML stream at `---` lines: (first line number, text) per document.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.starts_with("---#");
        if is_separator {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
        } else if line == "..." {
            // End of document: what follows until the next `---` is not YAML content.
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push((start, current));
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_kind_and_skips_the_others_with_their_line() {
        let text = r#"# a comment before the first document
apiVersion: v1
kind: Service
metadata: { name: web }
spec: { clusterIP: 10.0.0.1, ports: [{ port: 80 }] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: web }
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec: { hosts: [web], http: [{ route: [{ destination: { host: web } }] }] }
---
"#;
        let p = parse("a.yaml", text, "dev").unwrap();
        let kinds: Vec<_> = p
            .objects
            .iter()
            .map(|o| (o.kind(), o.key().unwrap().to_string()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Service", "dev/web".into()),
                ("VirtualService", "shop/web".into())
            ]
        );
        assert_eq!(p.skipped, [("Deployment".to_string(), 7)]);
    }

    #[test]
    fn a_bad_document_names_the_file_and_the_line_in_the_file() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: { name: a }\n---\napiVersion: outrigger.dev/v1alpha1\nkind: VirtualService\nmetadata: { name: b }\nspec:\n  hosts: [b]\n  http:\n    - mirror: { host: b }\n";
        let e = parse("routes.yaml", text, "default").unwrap_err();
        assert_eq!(e.file, "routes.yaml");
        assert_eq!(e.line, 11, "{e}");
        assert!(
            e.message.contains("mirror"),
            "names the unsupported field: {e}"
        );
        assert!(
            e.to_string().starts_with("routes.yaml:11: VirtualService"),
            "{e}"
        );
    }

    #[test]
    fn broken_yaml_is_reported_with_its_line() {
        let e = parse(
            "x.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: { name: [\n",
            "default",
        )
        .unwrap_err();
        assert_eq!(e.file, "x.yaml");
        assert!(e.line >= 3, "{e}");
    }

    #[test]
    fn istio_api_versions_get_a_hint() {
        let e = parse(
            "istio.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: a }\n",
            "default",
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("change apiVersion to outrigger.dev/v1alpha1"),
            "{e}"
        );
        assert_eq!(e.line, 1);
    }

    #[test]
    fn objects_need_a_kind_and_a_name() {
        assert!(parse("a.yaml", "metadata: { name: a }\n", "d")
            .unwrap_err()
            .message
            .contains("apiVersion and kind"));
        assert!(parse(
            "a.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {}\n",
            "d"
        )
        .unwrap_err()
        .message
        .contains("metadata.name"));
    }

    #[test]
    fn documents_split_on_separator_lines_only() {
        let docs = documents("a: 1\n---\nb: '---'\n--- # c\nc: 3\n");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1], (3, "b: '---'\n".to_string()));
        assert_eq!(docs[2].0, 5);
    }
}
