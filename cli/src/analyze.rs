//! `outrigger analyze`: the control plane's own verdicts (its library's
//! [`analyze`](outrigger_control_plane::analyze), which
//! `outrigger-control-plane check` runs too) over manifest files before they
//! are applied, or over what the cluster holds. [`render`] is what to print,
//! pure; [`options_from_cluster`] reads the control plane's translation
//! options from its Deployment.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::Api;
use outrigger_control_plane::analyze::{Analysis, Finding};
use outrigger_control_plane::translate::{ExportTo, Options};
use serde::Serialize;

use crate::cluster::ClusterArgs;
use crate::output::{self, Format, OutputError};

/// `outrigger analyze`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files, or folders read recursively for *.yaml and *.yml.
    /// With --cluster, analyzed as if applied to what the cluster holds.
    #[arg(required_unless_present = "cluster")]
    pub paths: Vec<std::path::PathBuf>,
    /// Analyze the mesh resources, Services, EndpointSlices, Pods and
    /// Namespaces the cluster holds, with the control plane's options
    /// (read from its Deployment in --mesh-namespace); with PATHs, their
    /// objects replace the cluster's of the same kind and name.
    #[arg(long)]
    pub cluster: bool,
    /// Where the mesh is installed (the chart's release namespace).
    #[arg(long, default_value = crate::inject::DEFAULT_MESH_NAMESPACE)]
    pub mesh_namespace: String,
    /// For files: who sees a Service without an outrigger.dev/export-to
    /// annotation, as the control plane's flag ("." or "*").
    #[arg(long, default_value = ".", conflicts_with = "cluster")]
    pub default_export_to: String,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

/// Runs `outrigger analyze`: prints the report; whether everything would
/// be accepted (the exit status: 0, else 1).
pub async fn run(cluster: &ClusterArgs, args: Args) -> anyhow::Result<bool> {
    use anyhow::Context as _;
    use outrigger_control_plane::analyze as cp;
    let read_files = |namespace: &str| {
        cp::read_paths(
            &args.paths,
            namespace,
            outrigger_control_plane::folder::DEFAULT_MAX_FILE_BYTES,
        )
    };
    let analysis = if args.cluster {
        let (client, namespace) = cluster.client_in().await?;
        let options = options_from_cluster(client.clone(), &args.mesh_namespace)
            .await?
            .unwrap_or_else(|| {
                eprintln!(
                    "warning: no deployment/{CONTROL_PLANE_DEPLOYMENT} in namespace {}: \
                     analyzing with the control plane's default options (pass --mesh-namespace)",
                    args.mesh_namespace
                );
                Default::default()
            });
        let store = cp::from_cluster(client)
            .await
            .context("reading the mesh from the cluster")?;
        let (store, errors) = if args.paths.is_empty() {
            (store, Vec::new())
        } else {
            // A file that does not read leaves the cluster's object in
            // the analysis: it is what stays in force when the apply fails.
            let (files, errors) = read_files(&namespace)?;
            (store.overlay(files), errors)
        };
        Analysis::of(&store, errors, &options)
    } else {
        let options =
            options_from_args(&[format!("--default-export-to={}", args.default_export_to)])
                .map_err(anyhow::Error::msg)?;
        let namespace = cluster.namespace.as_deref().unwrap_or("default");
        let (store, errors) = read_files(namespace)?;
        Analysis::of(&store, errors, &options)
    };
    let report = Report::of(&analysis);
    crate::output::print(&render(&report, args.output)?)?;
    Ok(report.ok)
}

/// The control plane's Deployment in the chart.
pub const CONTROL_PLANE_DEPLOYMENT: &str = "outrigger-control-plane";

/// The whole result, for `-o json|yaml`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether everything would be accepted (the exit status: 0, else 1).
    pub ok: bool,
    pub findings: Vec<Finding>,
    /// `Kind namespace/name` of each mesh resource that would be accepted.
    pub accepted: Vec<String>,
}

impl Report {
    pub fn of(analysis: &Analysis) -> Self {
        Self {
            ok: !analysis.refused(),
            findings: analysis.findings(),
            accepted: analysis.accepted().map(|id| id.to_string()).collect(),
        }
    }
}

/// `Kind/namespace/name`, or `-` for a document read too little to say.
fn resource(f: &Finding) -> String {
    match (f.kind.as_str(), f.namespace.as_str(), f.name.as_str()) {
        ("", _, _) => "-".into(),
        (kind, "", name) => format!("{kind}/{name}"),
        (kind, ns, name) => format!("{kind}/{ns}/{name}"),
    }
}

/// What `outrigger analyze` prints: one row per finding (the resource, the
/// field, the reason, and the message with the file and line when there is
/// one), or a line saying all is well; or the whole report as JSON/YAML.
pub fn render(report: &Report, format: Format) -> Result<String, OutputError> {
    if let Some(text) = output::structured(format, report)? {
        return Ok(text);
    }
    if report.findings.is_empty() {
        return Ok(format!(
            "✔ no findings: {} mesh resource{} would be accepted\n",
            report.accepted.len(),
            if report.accepted.len() == 1 { "" } else { "s" }
        ));
    }
    let rows: Vec<Vec<String>> = report
        .findings
        .iter()
        .map(|f| {
            vec![
                resource(f),
                if f.field.is_empty() {
                    "-".into()
                } else {
                    f.field.clone()
                },
                f.reason.clone(),
                match &f.source {
                    Some(s) => format!("{s}: {}", f.message),
                    None => f.message.clone(),
                },
            ]
        })
        .collect();
    Ok(output::table(
        &["RESOURCE", "FIELD", "REASON", "MESSAGE"],
        &rows,
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("cannot read deployment/{CONTROL_PLANE_DEPLOYMENT} -n {namespace}: {source}")]
    Api {
        namespace: String,
        source: kube::Error,
    },
    #[error("deployment/{CONTROL_PLANE_DEPLOYMENT} -n {namespace}: {message}")]
    Invalid { namespace: String, message: String },
}

/// The translation options a control plane started with these arguments
/// uses (`--trust-domain`, `--default-export-to`, as the chart writes
/// them: `--flag=value` or `--flag value`); the defaults for the rest.
pub fn options_from_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let value = |flag: &str| {
        args.iter().enumerate().find_map(|(i, a)| {
            a.strip_prefix(&format!("{flag}="))
                .map(str::to_string)
                .or_else(|| (a == flag).then(|| args.get(i + 1).cloned()).flatten())
        })
    };
    if let Some(domain) = value("--trust-domain") {
        options.trust_domain = domain;
    }
    if let Some(export) = value("--default-export-to") {
        options.default_export_to = ExportTo::parse(std::slice::from_ref(&export), ".")
            .map_err(|e| format!("--default-export-to {export:?}: {e}"))?;
    }
    Ok(options)
}

/// The options of the control plane installed in `namespace`, read from its
/// Deployment's arguments; `None` when there is no such Deployment (then
/// the defaults apply, which the caller says).
pub async fn options_from_cluster(
    client: kube::Client,
    namespace: &str,
) -> Result<Option<Options>, OptionsError> {
    let api: Api<Deployment> = Api::namespaced(client, namespace);
    let list = api
        .list(&ListParams::default().fields(&format!("metadata.name={CONTROL_PLANE_DEPLOYMENT}")))
        .await
        .map_err(|source| OptionsError::Api {
            namespace: namespace.into(),
            source,
        })?;
    let Some(deploy) = list
        .items
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some(CONTROL_PLANE_DEPLOYMENT))
    else {
        return Ok(None);
    };
    let args: Vec<String> = deploy
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|c| c.args.unwrap_or_default())
        .collect();
    options_from_args(&args)
        .map(Some)
        .map_err(|message| OptionsError::Invalid {
            namespace: namespace.into(),
            message,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: &str, field: &str, source: Option<&str>) -> Finding {
        Finding {
            kind: kind.into(),
            namespace: "shop".into(),
            name: "web".into(),
            field: field.into(),
            reason: "Reason".into(),
            message: "why".into(),
            source: source.map(Into::into),
        }
    }

    #[test]
    fn a_row_per_finding_with_the_file_where_there_is_one() {
        let report = Report {
            ok: false,
            findings: vec![
                finding("VirtualService", "mirror", Some("r.yaml:7")),
                finding("DestinationRule", "", None),
            ],
            accepted: vec!["PeerAuthentication shop/default".into()],
        };
        assert_eq!(
            render(&report, Format::Table).unwrap(),
            "RESOURCE                  FIELD   REASON  MESSAGE\n\
             VirtualService/shop/web   mirror  Reason  r.yaml:7: why\n\
             DestinationRule/shop/web  -       Reason  why\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&report, Format::Json).unwrap()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["findings"][0]["field"], "mirror");
        assert_eq!(json["findings"][1].get("source"), None);
    }

    #[test]
    fn no_findings_is_one_line() {
        let report = Report {
            ok: true,
            findings: vec![],
            accepted: vec!["VirtualService shop/web".into()],
        };
        assert_eq!(
            render(&report, Format::Table).unwrap(),
            "✔ no findings: 1 mesh resource would be accepted\n"
        );
    }

    #[test]
    fn options_come_from_the_chart_args() {
        let args: Vec<String> = [
            "--kubernetes",
            "--trust-domain=corp.example",
            "--default-export-to",
            "*",
        ]
        .map(String::from)
        .to_vec();
        let o = options_from_args(&args).unwrap();
        assert_eq!(o.trust_domain, "corp.example");
        assert_eq!(
            o.default_export_to,
            ExportTo::parse(&["*".into()], ".").unwrap()
        );
        assert!(options_from_args(&["--default-export-to=a b".into()]).is_err());
    }
}
