//! The control plane's verdicts over a set of manifests, or over what a
//! cluster holds, before anything is applied: every document that does not
//! read, and every mesh resource the translator would refuse, with the
//! reason. One implementation for `outrigger-control-plane check` and
//! `outrigger analyze`.
//!
//! [`read_paths`] and [`from_cluster`] are the edges (files, a kube
//! client); [`Analysis::of`] runs the translator ([`Mesh::build`]) over the
//! store, and the rest is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crd::{AuthorizationPolicy, DestinationRule, PeerAuthentication, VirtualService};
use crate::folder::{Folder, ReadError};
use crate::kubernetes::State;
use crate::manifest;
use crate::store::{Key, ResourceId, Store};
use crate::translate::{Mesh, Options, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot list {what} from the cluster: {source}")]
    List { what: String, source: kube::Error },
}

/// Reads every path (a folder, read recursively for `*.yaml`/`*.yml`, or
/// one file) into one store, as the folder source would: a document that
/// does not read is an error, the others apply. Objects that name no
/// namespace get `default_namespace`; a later path's object replaces an
/// earlier one of the same kind and key.
pub fn read_paths(
    paths: &[PathBuf],
    default_namespace: &str,
    max_file_bytes: u64,
) -> Result<(Store, Vec<ReadError>), AnalyzeError> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let read_err = |source| AnalyzeError::Read {
            path: path.clone(),
            source,
        };
        if path.is_dir() {
            let mut folder =
                Folder::new(path, default_namespace).with_max_file_bytes(max_file_bytes);
            folder.rescan().map_err(read_err)?;
            let store = folder.store();
            objects.extend(store.into_objects());
            errors.extend(folder.errors());
        } else {
            let (file_objects, file_errors) =
                read_file(path, default_namespace, max_file_bytes).map_err(read_err)?;
            objects.extend(file_objects);
            errors.extend(file_errors);
        }
    }
    Ok((Store::from_objects(objects), errors))
}

fn read_file(
    path: &Path,
    default_namespace: &str,
    max_file_bytes: u64,
) -> std::io::Result<(Vec<crate::store::Object>, Vec<ReadError>)> {
    let name = path.display().to_string();
    let size = std::fs::metadata(path)?.len();
    if size > max_file_bytes {
        let error = manifest::ManifestError {
            file: name,
            line: 0,
            message: format!(
                "{size} bytes, over the limit of {max_file_bytes} bytes for one manifest file \
                 (--max-manifest-bytes): not read; split it into smaller files"
            ),
        };
        return Ok((
            Vec::new(),
            vec![ReadError {
                error,
                kept: Vec::new(),
                id: None,
            }],
        ));
    }
    let text = std::fs::read_to_string(path)?;
    let parsed = manifest::parse_documents(&name, &text, default_namespace);
    let errors = parsed
        .bad
        .into_iter()
        .map(|bad| ReadError {
            error: bad.error,
            kept: Vec::new(),
            id: bad.id,
        })
        .collect();
    Ok((parsed.objects, errors))
}

/// What the cluster holds of every kind the translator reads (one list
/// each, cluster-wide: the control plane's own RBAC), the mesh resources
/// decoded as the control plane decodes them (one that does not decode is
/// refused by name, not an error of the whole list).
pub async fn from_cluster(client: Client) -> Result<Store, AnalyzeError> {
    async fn list<K>(api: Api<K>, what: &str) -> Result<BTreeMap<Key, K>, AnalyzeError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|source| AnalyzeError::List {
                what: what.to_string(),
                source,
            })?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|o| Some((Key::of(&o)?, o)))
            .collect())
    }
    let raw = |ar: ApiResource| Api::<DynamicObject>::all_with(client.clone(), &ar);
    let mut state = State::default();
    state.kube.namespaces = list(Api::<Namespace>::all(client.clone()), "namespaces").await?;
    state.kube.services = list(Api::<Service>::all(client.clone()), "services").await?;
    state.kube.endpoint_slices = list(
        Api::<EndpointSlice>::all(client.clone()),
        "endpointslices.discovery.k8s.io",
    )
    .await?;
    state.kube.pods = list(Api::<Pod>::all(client.clone()), "pods").await?;
    state.raw.virtual_services = list(
        raw(ApiResource::erase::<VirtualService>(&())),
        "virtualservices.outrigger.dev",
    )
    .await?;
    state.raw.destination_rules = list(
        raw(ApiResource::erase::<DestinationRule>(&())),
        "destinationrules.outrigger.dev",
    )
    .await?;
    state.raw.authorization_policies = list(
        raw(ApiResource::erase::<AuthorizationPolicy>(&())),
        "authorizationpolicies.outrigger.dev",
    )
    .await?;
    state.raw.peer_authentications = list(
        raw(ApiResource::erase::<PeerAuthentication>(&())),
        "peerauthentications.outrigger.dev",
    )
    .await?;
    Ok(state.store())
}

/// The documents that did not read and every mesh resource's verdict.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub read_errors: Vec<ReadError>,
    pub verdicts: BTreeMap<ResourceId, Verdict>,
}

/// One thing that would be refused, as `outrigger analyze` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The resource's kind, namespace and name; empty where a document
    /// could not be read that far.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The field at fault (`spec.http[0].route[0].destination.subset`,
    /// or the unknown field's name), when the message names one.
    pub field: String,
    /// CamelCase: the verdict's reason (as the `Accepted` condition says
    /// it), or `Unreadable` for a document that does not parse as its kind.
    pub reason: String,
    pub message: String,
    /// Where the document is (`file:line`), for files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Analysis {
    /// The translator's verdicts over `store` (with `read_errors` from
    /// reading it).
    pub fn of(store: &Store, read_errors: Vec<ReadError>, options: &Options) -> Self {
        let mesh = Mesh::build(store, options);
        Self {
            read_errors,
            verdicts: mesh.verdicts().clone(),
        }
    }

    /// Whether anything would be refused (a document or a resource).
    pub fn refused(&self) -> bool {
        !self.read_errors.is_empty() || self.verdicts.values().any(|v| !v.is_accepted())
    }

    pub fn accepted(&self) -> impl Iterator<Item = &ResourceId> {
        self.verdicts
            .iter()
            .filter(|(_, v)| v.is_accepted())
            .map(|(id, _)| id)
    }

    /// `outrigger-control-plane check`'s report: each read error, then
    /// each mesh resource, accepted or not, one line each.
    pub fn check_lines(&self) -> String {
        let mut out = String::new();
        for e in &self.read_errors {
            out.push_str(&format!("{e}\n"));
        }
        for (id, v) in &self.verdicts {
            match v {
                Verdict::Accepted => out.push_str(&format!("{} {}: accepted\n", id.kind, id.key)),
                Verdict::Refused { reason, message } => out.push_str(&format!(
                    "{} {}: not accepted ({reason}): {message}\n",
                    id.kind, id.key
                )),
            }
        }
        out
    }

    /// Every refusal, documents first.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        for e in &self.read_errors {
            let (kind, namespace, name) = match &e.id {
                Some(id) => (
                    id.kind.to_string(),
                    id.key.namespace.clone(),
                    id.key.name.clone(),
                ),
                None => Default::default(),
            };
            let message = match &e.id {
                Some(id) => e
                    .error
                    .message
                    .strip_prefix(&format!("{} {}: ", id.kind, id.key))
                    .unwrap_or(&e.error.message)
                    .to_string(),
                None => e.error.message.clone(),
            };
            out.push(Finding {
                kind,
                namespace,
                name,
                field: unknown_field(&message).unwrap_or_default().to_string(),
                reason: "Unreadable".into(),
                message,
                source: Some(format!("{}:{}", e.error.file, e.error.line)),
            });
        }
        for (id, v) in &self.verdicts {
            let Verdict::Refused { reason, message } = v else {
                continue;
            };
            let (field, rest) = split_field(message);
            out.push(Finding {
                kind: id.kind.to_string(),
                namespace: id.key.namespace.clone(),
                name: id.key.name.clone(),
                field: unknown_field(rest).unwrap_or(field).to_string(),
                reason: reason.to_string(),
                message: rest.to_string(),
                source: None,
            });
        }
        out
    }
}

/// `spec.http[0].route: why` → (`spec.http[0].route`, `why`); a message
/// that does not start with a field path is all message.
fn split_field(message: &str) -> (&str, &str) {
    match message.split_once(": ") {
        Some((field, rest))
            if (field.starts_with("spec") || field.starts_with("metadata"))
                && !field.contains(char::is_whitespace) =>
        {
            (field, rest)
        }
        _ => ("", message),
    }
}

/// The field a parser's "unknown field `x`" message names (its name only:
/// serde does not say where it is; the file's line does).
fn unknown_field(message: &str) -> Option<&str> {
    message
        .split_once("unknown field `")
        .and_then(|(_, r)| r.split_once('`'))
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { clusterIP: 10.96.0.10, ports: [{ name: http, port: 80 }] }
";

    const RULE: &str = "\
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: web, namespace: shop }
spec: { host: web, subsets: [{ name: v1, labels: { version: v1 } }] }
";

    fn route(subset: &str) -> String {
        format!(
            "apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: web, namespace: shop }}
spec:
  hosts: [web]
  http:
    - route: [{{ destination: {{ host: web, subset: {subset} }} }}]
"
        )
    }

    #[test]
    fn a_good_set_over_files_and_folders_has_no_findings() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("routes");
        std::fs::create_dir(&sub).unwrap();
        let svc = write(dir.path(), "svc.yaml", SERVICE);
        write(&sub, "rule.yaml", RULE);
        write(&sub, "route.yaml", &route("v1"));
        let (store, errors) = read_paths(&[svc, sub], "default", 1 << 20).unwrap();
        let a = Analysis::of(&store, errors, &Options::default());
        assert!(!a.refused(), "{}", a.check_lines());
        assert_eq!(a.findings(), vec![]);
        assert_eq!(a.accepted().count(), 2);
    }

    #[test]
    fn an_unknown_subset_is_a_finding_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "all.yaml",
            &format!("{SERVICE}---\n{RULE}---\n{}", route("v9")),
        );
        let (store, errors) = read_paths(&[f], "default", 1 << 20).unwrap();
        let a = Analysis::of(&store, errors, &Options::default());
        assert!(a.refused());
        let findings = a.findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        let f = &findings[0];
        assert_eq!(
            (f.kind.as_str(), f.namespace.as_str(), f.name.as_str()),
            ("VirtualService", "shop", "web")
        );
        assert!(f.field.contains("subset"), "{f:?}");
        assert!(f.message.contains("v9"), "{f:?}");
        assert!(!f.reason.is_empty());
    }

    #[test]
    fn an_unsupported_field_is_an_unreadable_document_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let text = route("v1").replace("- route:", "- mirror: { host: web }\n      route:");
        let f = write(dir.path(), "route.yaml", &format!("{SERVICE}---\n{text}"));
        let (store, errors) = read_paths(std::slice::from_ref(&f), "default", 1 << 20).unwrap();
        let a = Analysis::of(&store, errors, &Options::default());
        assert!(a.refused());
        let findings = a.findings();
        assert_eq!(findings.len(), 1, "{findings:?}");
        let got = &findings[0];
        assert_eq!(got.kind, "VirtualService");
        assert_eq!(got.name, "web");
        assert_eq!(got.field, "mirror");
        assert_eq!(got.reason, "Unreadable");
        assert!(got.message.starts_with("unknown field `mirror`"), "{got:?}");
        assert!(
            got.source
                .as_deref()
                .unwrap()
                .starts_with(&f.display().to_string()),
            "{got:?}"
        );
    }

    #[test]
    fn fields_are_split_off_messages_that_start_with_one() {
        assert_eq!(
            split_field("spec.http[0].route[0].destination.subset: \"v9\" is not defined"),
            (
                "spec.http[0].route[0].destination.subset",
                "\"v9\" is not defined"
            )
        );
        assert_eq!(split_field("no such thing: x"), ("", "no such thing: x"));
        assert_eq!(
            unknown_field("unknown field `mirror`, expected one of `route`"),
            Some("mirror")
        );
    }
}
