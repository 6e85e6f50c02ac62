//! Validation through a scratch snapshot: a resource is checked with the
//! proxy's own validation (`Snapshot::validate`) by placing what it would
//! produce in an otherwise empty snapshot, and the errors' paths are renamed
//! to the resource's fields (`http[0]...` becomes `spec.http[0]...`). So the
//! control plane refuses exactly what a proxy would refuse, naming the field.

use outrigger_api::authz::AuthorizationPolicy;
use outrigger_api::inbound::Inbound;
use outrigger_api::{ProxyInfo, Service, Snapshot};

use super::verdict::Verdict;

/// A snapshot holding only what is to be checked with the proxy's own
/// validation (errors elsewhere in it are ignored by path).
fn scratch_snapshot(services: Vec<Service>, inbound: Inbound) -> Snapshot {
    Snapshot {
        version: "check".into(),
        proxy: ProxyInfo::default(),
        admin: Default::default(),
        limits: Default::default(),
        http: Default::default(),
        listeners: Vec::new(),
        services,
        inbound,
    }
}

/// Validates scratch services as the proxy would; refuses on the first
/// error, with the path renamed to the resource's field.
pub(super) fn check(
    scratch: Vec<Service>,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<(), Verdict> {
    let n = scratch.len();
    check_first(scratch, n, rename)
}

/// As [`check`], counting only errors in the first `n` services (the others
/// are context: destinations the routes refer to).
pub(super) fn check_first(
    scratch: Vec<Service>,
    n: usize,
    rename: impl Fn(&str) -> Option<String>,
) -> Result<(), Verdict> {
    let Err(errs) = scratch_snapshot(scratch, Inbound::default()).validate() else {
        return Ok(());
    };
    for e in errs.0 {
        // services[i].rest
        let Some(rest) = e.path.strip_prefix("services[") else {
            continue;
        };
        let Some((idx, field)) = rest.split_once("].") else {
            continue;
        };
        if idx.parse::<usize>().is_ok_and(|i| i < n) {
            if let Some(path) = rename(field) {
                return Err(Verdict::refused(
                    "InvalidSpec",
                    format!("{path}: {}", e.message),
                ));
            }
        }
    }
    Ok(())
}

/// `http[0].route[1].weight` with `("http", "spec.http")` → `spec.http[0].route[1].weight`;
/// paths outside the renamed fields → None.
pub(super) fn rename_path(path: &str, renames: &[(&str, &str)]) -> Option<String> {
    renames.iter().find_map(|(from, to)| {
        let rest = path.strip_prefix(from)?;
        (rest.is_empty() || rest.starts_with('[') || rest.starts_with('.'))
            .then(|| format!("{to}{rest}"))
    })
}

/// Validates an AuthorizationPolicy as the proxy would hold it; refuses on
/// the first error, with the path renamed to the resource's field.
pub(super) fn check_authorization(policy: &AuthorizationPolicy) -> Result<(), Verdict> {
    let snap = scratch_snapshot(
        Vec::new(),
        Inbound {
            authorization: vec![policy.clone()],
            ..Inbound::default()
        },
    );
    if let Err(errs) = snap.validate() {
        if let Some(e) = errs
            .0
            .iter()
            .find_map(|e| Some((e.path.strip_prefix("inbound.authorization[0].")?, e)))
        {
            return Err(Verdict::refused(
                "InvalidSpec",
                format!("spec.{}: {}", e.0, e.1.message),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::translate::fixtures::*;

    #[test]
    fn wire_model_validation_errors_are_reported_at_the_resource_field() {
        let vs = reviews_routes(
            r#"    - match: [{ uri: { regex: "(" } }]
      route: [{ destination: { host: reviews } }]
"#,
        );
        let m = mesh(&format!("{REVIEWS}---{vs}"));
        let (reason, message) = refused(verdict(&m, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "InvalidSpec");
        assert!(
            message.starts_with("spec.http[0].match[0].uri"),
            "{message}"
        );
    }

    #[test]
    fn destination_rule_errors_name_the_field() {
        let dr = r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  subsets: [{ name: v1, labels: { version: v1 } }, { name: v1, labels: { version: v2 } }]
"#;
        let m = mesh(&format!("{REVIEWS}---{dr}"));
        let (r, msg) = refused(verdict(&m, "DestinationRule", "shop", "reviews"));
        assert_eq!(r, "InvalidSpec");
        assert!(
            msg.starts_with("spec.subsets[1].name: subset \"v1\" is defined twice"),
            "{msg}"
        );
    }
}
