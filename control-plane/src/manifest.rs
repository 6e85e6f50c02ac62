//! Reading manifests: the multi-document YAML a user would `kubectl apply`,
//! turned into store objects. Pure: text in, objects or errors out (the
//! folder source does the file I/O).
//!
//! Every document stands alone, as `kubectl apply -f` treats them: a bad
//! document is reported (file, line, the field the parser names) and the
//! file's other documents still read. Each document is parsed from its own
//! slice of the file, so a file costs one pass however many it holds.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::crd::{GROUP, VERSION};
use crate::store::{Key, Object, ResourceId};

/// A manifest document that could not be read; names the file and the line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ManifestError {
    pub file: String,
    /// 1-based line in the file (the document's first line when the parser
    /// gave no position; 0 for the file as a whole).
    pub line: usize,
    pub message: String,
}

/// A document that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadDocument {
    pub error: ManifestError,
    /// The object it names, when that much could be read: a kind the mesh
    /// reads, and a name.
    pub id: Option<ResourceId>,
}

/// What one file held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub objects: Vec<Object>,
    /// Documents of kinds the mesh does not read (Deployments, ConfigMaps,
    /// ...): `kind name` and line, skipped without error.
    pub skipped: Vec<(String, usize)>,
    /// Documents that could not be read; the others are in `objects`.
    pub bad: Vec<BadDocument>,
}

/// One YAML document of a file: a slice of the file's text, never a copy,
/// with the line it starts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Document<'a> {
    /// 1-based line of the document's first line in the file.
    pub line: usize,
    pub text: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Only the name of an object whose whole could not be read.
#[derive(Deserialize)]
struct NameOnly {
    metadata: NameMeta,
}

#[derive(Deserialize)]
struct NameMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Parses every document of one file, each on its own: the good ones are
/// read whatever the bad ones hold.
pub fn parse_documents(file: &str, text: &str, default_namespace: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for doc in documents(text) {
        match read_document(file, doc, default_namespace) {
            Ok(Read::Object(o)) => parsed.objects.push(o),
            Ok(Read::Skipped(kind)) => parsed.skipped.push((kind, doc.line)),
            Ok(Read::Empty) => {}
            Err(bad) => parsed.bad.push(bad),
        }
    }
    parsed
}

/// Parses every document of one file; the first bad document fails it.
pub fn parse(file: &str, text: &str, default_namespace: &str) -> Result<Parsed, ManifestError> {
    let parsed = parse_documents(file, text, default_namespace);
    match parsed.bad.first() {
        Some(bad) => Err(bad.error.clone()),
        None => Ok(parsed),
    }
}

// Moved once, from the parser to the file's list: sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Read {
    Object(Object),
    /// A kind the mesh does not read.
    Skipped(String),
    /// Blank lines and comments.
    Empty,
}

fn read_document(
    file: &str,
    doc: Document<'_>,
    default_namespace: &str,
) -> Result<Read, BadDocument> {
    if doc.text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    }) {
        return Ok(Read::Empty);
    }
    let bad = |message: String, line: Option<usize>, id: Option<ResourceId>| BadDocument {
        error: ManifestError {
            file: file.to_string(),
            // The parser counts from the document's first line.
            line: line.map_or(doc.line, |l| doc.line + l.max(1) - 1),
            message,
        },
        id,
    };
    let meta: TypeMeta = de(doc.text).map_err(|e| {
        bad(
            format!("not a Kubernetes object: {}", reason(&e)),
            line_of(&e),
            None,
        )
    })?;
    if meta.api_version.is_empty() || meta.kind.is_empty() {
        return Err(bad(
            "a manifest needs apiVersion and kind".into(),
            None,
            None,
        ));
    }
    let ours = format!("{GROUP}/{VERSION}");
    let Some(kind) = known_kind(&meta.api_version, &meta.kind) else {
        let (v, k) = (&meta.api_version, &meta.kind);
        if v.starts_with("networking.istio.io/") || v.starts_with("security.istio.io/") {
            return Err(bad(
                format!("{k} {v} is Istio's: change apiVersion to {ours}"),
                None,
                None,
            ));
        }
        if v.starts_with(&format!("{GROUP}/")) {
            return Err(bad(format!("unknown mesh resource {k} {v}"), None, None));
        }
        return Ok(Read::Skipped(meta.kind));
    };
    let mut obj = match decode(kind, doc.text) {
        Ok(o) => o,
        Err(e) => {
            // Name the object when its metadata reads, so that its last
            // good version can stand in for it.
            let id = de::<NameOnly>(doc.text).ok().map(|n| {
                let namespace = match kind {
                    "Namespace" => String::new(),
                    _ => n
                        .metadata
                        .namespace
                        .filter(|ns| !ns.is_empty())
                        .unwrap_or_else(|| default_namespace.to_string()),
                };
                ResourceId {
                    kind,
                    key: Key::new(namespace, n.metadata.name),
                }
            });
            let named = id.as_ref().map_or(kind.to_string(), ToString::to_string);
            return Err(bad(format!("{named}: {}", reason(&e)), line_of(&e), id));
        }
    };
    if obj.key().is_none() {
        return Err(bad(format!("{kind} has no metadata.name"), None, None));
    }
    obj.default_namespace(default_namespace);
    Ok(Read::Object(obj))
}

/// The kinds the mesh reads, by apiVersion and kind.
fn known_kind(api_version: &str, kind: &str) -> Option<&'static str> {
    let ours = api_version
        .strip_prefix(GROUP)
        .and_then(|v| v.strip_prefix('/'))
        == Some(VERSION);
    Some(match (api_version, kind) {
        ("v1", "Namespace") => "Namespace",
        ("v1", "Service") => "Service",
        ("v1", "Endpoints") => "Endpoints",
        ("v1", "Pod") => "Pod",
        ("discovery.k8s.io/v1", "EndpointSlice") => "EndpointSlice",
        (_, "VirtualService") if ours => "VirtualService",
        (_, "DestinationRule") if ours => "DestinationRule",
        (_, "AuthorizationPolicy") if ours => "AuthorizationPolicy",
        (_, "PeerAuthentication") if ours => "PeerAuthentication",
        _ => return None,
    })
}

/// A document as the object of `kind` (one of [`known_kind`]'s).
fn decode(kind: &'static str, text: &str) -> Result<Object, serde_saphyr::Error> {
    match kind {
        "Namespace" => de(text).map(Object::Namespace),
        "Service" => de(text).map(Object::Service),
        "Endpoints" => de(text).map(Object::Endpoints),
        "Pod" => de(text).map(Object::Pod),
        "EndpointSlice" => de(text).map(Object::EndpointSlice),
        "VirtualService" => de(text).map(Object::VirtualService),
        "DestinationRule" => de(text).map(Object::DestinationRule),
        "AuthorizationPolicy" => de(text).map(Object::AuthorizationPolicy),
        _ => de(text).map(Object::PeerAuthentication),
    }
}

fn de<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str(text)
}

/// The line the parser points at, counted from the document's first line.
fn line_of(e: &serde_saphyr::Error) -> Option<usize> {
    e.location().map(|l| l.line() as usize).filter(|l| *l > 0)
}

/// The parser's message without the source excerpt it may append, and
/// without its position (which counts from the document, not the file; the
/// error's line is the file's).
fn reason(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((position, rest)) if position.contains("column") => rest.to_string(),
        _ => first.to_string(),
    }
}

/// Splits a YAML stream at `---` lines (and after `...` lines), in one pass:
/// each document is a slice of `text` with its first line's number.
pub fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let (mut line, mut start) = (1, 0);
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let l = raw.trim_end_matches(['\n', '\r']);
        let is_separator = l == "---"
            || l.starts_with("--- ")
            || l.starts_with("---\t")
            || l.starts_with("---#")
            // End of document: what follows starts another.
            || l == "...";
        if is_separator {
            docs.push(Document {
                line,
                text: &text[start..offset],
            });
            line = i + 2;
            start = offset + raw.len();
        }
        offset += raw.len();
    }
    docs.push(Document {
        line,
        text: &text[start..],
    });
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
        let docs = documents("a: 1\n---\nb: '---'\n--- # c\nc: 3\n...\nd: 4\r\n---\r\ne: 5");
        let got: Vec<(usize, &str)> = docs.iter().map(|d| (d.line, d.text)).collect();
        assert_eq!(
            got,
            [
                (1, "a: 1\n"),
                (3, "b: '---'\n"),
                (5, "c: 3\n"),
                (7, "d: 4\r\n"),
                (9, "e: 5")
            ]
        );
    }

    /// `n` Services, one document of three lines each.
    fn services(n: usize) -> String {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{ name: s{i} }}\n"
            ));
        }
        text
    }

    #[test]
    fn documents_are_slices_of_the_file_numbered_in_one_pass() {
        // The parser is handed each document's own slice of the file, not
        // the file up to it (which made a file of n documents cost n²):
        // the slices cover the file once, in order, and carry their lines.
        let text = services(20_000);
        let docs = documents(&text);
        assert_eq!(docs.len(), 20_001, "an empty one before the first ---");
        let range = text.as_ptr() as usize..text.as_ptr() as usize + text.len();
        let mut end = range.start;
        for (i, d) in docs.iter().enumerate().skip(1) {
            let at = d.text.as_ptr() as usize;
            assert!(
                range.contains(&at) && at >= end,
                "document {i} is not the file's own text"
            );
            end = at + d.text.len();
            assert_eq!(d.line, 4 * i - 2, "document {i}");
            assert_eq!(d.text.lines().count(), 3);
        }
        assert_eq!(
            docs.iter().map(|d| d.text.len()).sum::<usize>() + 4 * 20_000,
            text.len(),
            "every byte once, bar the separators"
        );
    }

    #[test]
    fn twenty_thousand_documents_parse_each_with_the_line_of_the_file() {
        let mut text = services(20_000);
        text.push_str(
            "---\napiVersion: v1\nkind: Service\nmetadata: { name: last }\nspec: { ports: 80 }\n",
        );
        let p = parse_documents("big.yaml", &text, "default");
        assert_eq!(p.objects.len(), 20_000);
        let bad = &p.bad[..];
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].error.line, 80_005, "{}", bad[0].error);
        assert!(
            bad[0].error.message.starts_with("Service default/last: "),
            "{}",
            bad[0].error
        );
    }

    #[test]
    fn every_document_stands_alone() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: { name: a }\n---\napiVersion: outrigger.dev/v1alpha1\nkind: VirtualService\nmetadata: { name: b, namespace: shop }\nspec:\n  hosts: [b]\n  http:\n    - mirror: { host: b }\n---\napiVersion: outrigger.dev/v1alpha1\nkind: DestinationRule\nmetadata: { name: c\n---\napiVersion: outrigger.dev/v1alpha1\nkind: DestinationRule\nmetadata: { name: d }\nspec: { host: d }\n";
        let p = parse_documents("mixed.yaml", text, "dev");
        let ids: Vec<String> = p
            .objects
            .iter()
            .map(|o| o.id().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["Service dev/a", "DestinationRule dev/d"]);
        assert_eq!(p.bad.len(), 2);
        let vs = &p.bad[0];
        assert_eq!(vs.id.as_ref().unwrap().to_string(), "VirtualService shop/b");
        assert_eq!(vs.error.line, 11);
        assert!(
            vs.error
                .to_string()
                .starts_with("mixed.yaml:11: VirtualService shop/b: unknown field `mirror`"),
            "names the file, the line and the field, without the document's own position: {}",
            vs.error
        );
        let broken = &p.bad[1];
        assert_eq!(broken.id, None, "its name cannot be read");
        assert_eq!(broken.error.line, 15, "{}", broken.error);
        // The strict reading fails on the first.
        assert_eq!(parse("mixed.yaml", text, "dev").unwrap_err(), vs.error);
    }
}
