//! Routing resolution: DestinationRules and VirtualServices are checked
//! against the mesh (their hosts and destinations must be known Services,
//! the subsets a route names must be defined, one of each per host: the
//! oldest applies) and through the proxy's own validation, then attached
//! to their host. A VirtualService refused for a destination that is not
//! there, with no version of it in force, makes its hosts answer 503.

use std::collections::BTreeSet;

use outrigger_api::policy::{DirectBody, DirectResponse, HttpRoute};
use outrigger_api::Service;

use super::check::{check, check_first, rename_path};
use super::export::{ExportTo, Overlay};
use super::mesh::{host_key, Mesh};
use super::verdict::Verdict;
use crate::crd::{DestinationRule, VirtualService};
use crate::store::Key;

impl Mesh {
    pub(super) fn apply_destination_rule(&mut self, key: &Key, dr: &DestinationRule) -> Verdict {
        let spec = &dr.spec;
        let host = match self.resolve_host(&spec.host, &key.namespace) {
            Ok(h) => h,
            Err(e) => return Verdict::refused("UnknownHost", format!("spec.host: {e}")),
        };
        let export = match ExportTo::parse(&spec.export_to, &key.namespace) {
            Ok(e) => e,
            Err(e) => return Verdict::refused("InvalidSpec", format!("spec.exportTo: {e}")),
        };
        if let Some(other) = self.services[&host].rule.as_ref() {
            return Verdict::refused(
                "Conflict",
                format!(
                    "spec.host: {}.{} already has DestinationRule {} (the oldest one applies)",
                    host.name, host.namespace, other.from
                ),
            );
        }
        // The wire model's validation, on the host's entries with this rule.
        let mut scratch: Vec<Service> = self.services[&host].entries.clone();
        for e in &mut scratch {
            e.subsets = spec.subsets.clone();
            e.traffic_policy = spec.traffic_policy.clone();
        }
        if let Err(e) = check(scratch, |path| {
            rename_path(
                path,
                &[
                    ("subsets", "spec.subsets"),
                    ("trafficPolicy", "spec.trafficPolicy"),
                ],
            )
        }) {
            return e;
        }
        self.services.get_mut(&host).expect("resolved").rule = Some(Overlay {
            from: key.clone(),
            export,
            value: (spec.subsets.clone(), spec.traffic_policy.clone()),
        });
        Verdict::Accepted
    }

    pub(super) fn apply_virtual_service(&mut self, key: &Key, vs: &VirtualService) -> Verdict {
        let spec = &vs.spec;
        if spec.hosts.is_empty() {
            return Verdict::refused("InvalidSpec", "spec.hosts: names at least one service");
        }
        let export = match ExportTo::parse(&spec.export_to, &key.namespace) {
            Ok(e) => e,
            Err(e) => return Verdict::refused("InvalidSpec", format!("spec.exportTo: {e}")),
        };
        for (i, g) in spec.gateways.iter().enumerate() {
            if let Err(e) = outrigger_api::check_gateway(g) {
                return Verdict::refused("InvalidSpec", format!("spec.gateways[{i}]: {e}"));
            }
        }
        let mut hosts = Vec::new();
        for (i, h) in spec.hosts.iter().enumerate() {
            let host = match self.resolve_host(h, &key.namespace) {
                Ok(h) => h,
                Err(e) => return Verdict::refused("UnknownHost", format!("spec.hosts[{i}]: {e}")),
            };
            if let Some(other) = self.services[&host].routes.as_ref() {
                return Verdict::refused(
                    "Conflict",
                    format!(
                        "spec.hosts[{i}]: {}.{} is already routed by VirtualService {} \
                         (the oldest one applies)",
                        host.name, host.namespace, other.from
                    ),
                );
            }
            hosts.push(host);
        }
        // Destinations are written relative to the VirtualService's namespace
        // (Istio's rule); the wire model reads `name.namespace` exactly.
        let mut routes = spec.http.clone();
        for (i, route) in routes.iter_mut().enumerate() {
            if route.route.is_empty() && route.direct_response.is_none() {
                return Verdict::refused(
                    "InvalidSpec",
                    format!("spec.http[{i}].route: a route has at least one destination"),
                );
            }
            for (j, rd) in route.route.iter_mut().enumerate() {
                let field = format!("spec.http[{i}].route[{j}].destination");
                let dest = match self.resolve_host(&rd.destination.host, &key.namespace) {
                    Ok(d) => d,
                    Err(e) => return Verdict::refused("UnknownHost", format!("{field}.host: {e}")),
                };
                if let Some(subset) = &rd.destination.subset {
                    let known = self.services[&dest]
                        .rule
                        .as_ref()
                        .is_some_and(|r| r.value.0.iter().any(|s| &s.name == subset));
                    if !known {
                        return Verdict::refused(
                            "UnknownSubset",
                            format!(
                                "{field}.subset: no subset {subset:?} in an accepted \
                                 DestinationRule for {}.{}",
                                dest.name, dest.namespace
                            ),
                        );
                    }
                }
                rd.destination.host = format!("{}.{}", dest.name, dest.namespace);
            }
        }
        // The wire model's validation (matches, regexes, weights, retries,
        // faults, ports, ...) on the hosts with these routes and every
        // destination with its rule.
        for host in &hosts {
            let mut scratch = Vec::new();
            for e in &self.services[host].entries {
                let mut e = e.clone();
                e.http = routes.clone();
                if let Some(r) = &self.services[host].rule {
                    e.subsets = r.value.0.clone();
                }
                scratch.push(e);
            }
            let n = scratch.len();
            let mut dests = BTreeSet::new();
            for route in &routes {
                for rd in &route.route {
                    dests.insert(host_key(&rd.destination.host, &host.namespace));
                }
            }
            for d in dests.iter().filter(|d| *d != host) {
                for e in &self.services[d].entries {
                    let mut e = e.clone();
                    if let Some(r) = &self.services[d].rule {
                        e.subsets = r.value.0.clone();
                    }
                    scratch.push(e);
                }
            }
            if let Err(v) = check_first(scratch, n, |path| {
                rename_path(path, &[("http", "spec.http")])
            }) {
                return v;
            }
        }
        for host in hosts {
            self.services.get_mut(&host).expect("resolved").routes = Some(Overlay {
                from: key.clone(),
                export: export.clone(),
                value: routes.clone(),
            });
        }
        Verdict::Accepted
    }

    /// A VirtualService refused for a destination that is not there (a
    /// subset no DestinationRule defines, a Service that does not exist)
    /// with no version of it in force (a new one, or history lost to a
    /// restart): its hosts answer 503, naming it, rather than falling back
    /// to their endpoints, where no route sent that traffic (Istio sends
    /// such routes to a missing cluster: 503). Other refusals (a spec
    /// that does not parse, a conflict) leave their hosts as they were.
    pub(super) fn fail_closed(
        &mut self,
        key: &Key,
        vs: &VirtualService,
        verdict: Verdict,
    ) -> Verdict {
        let Verdict::Refused { reason, message } = &verdict else {
            return verdict;
        };
        let dangling =
            matches!(*reason, "UnknownSubset" | "UnknownHost") && message.starts_with("spec.http[");
        let Ok(export) = ExportTo::parse(&vs.spec.export_to, &key.namespace) else {
            return verdict;
        };
        if !dangling {
            return verdict;
        }
        let answer = HttpRoute {
            name: Some("refused".into()),
            direct_response: Some(DirectResponse {
                status: 503,
                body: Some(DirectBody {
                    string: format!(
                        "VirtualService {key} is refused ({message}); its hosts answer 503 until it is fixed\n"
                    ),
                }),
            }),
            ..HttpRoute::default()
        };
        let mut closed = Vec::new();
        for h in &vs.spec.hosts {
            let Ok(host) = self.resolve_host(h, &key.namespace) else {
                continue;
            };
            let Some(ms) = self.services.get_mut(&host) else {
                continue;
            };
            if ms.routes.is_none() {
                ms.routes = Some(Overlay {
                    from: key.clone(),
                    export: export.clone(),
                    value: vec![answer.clone()],
                });
                closed.push(format!("{}.{}", host.name, host.namespace));
            }
        }
        if closed.is_empty() {
            return verdict;
        }
        Verdict::refused(
            reason,
            format!(
                "{message}; no version of it is in force, so {} answer 503 until it is \
                 fixed (traffic never goes where no route sent it)",
                closed.join(", ")
            ),
        )
    }
}
