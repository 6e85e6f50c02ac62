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

#[cfg(test)]
mod tests {
    use crate::translate::fixtures::*;

    #[test]
    fn istio_canary_by_weight_routes_with_subsets() {
        let m = mesh(&format!("{REVIEWS}---{CANARY}"));
        assert_accepted(&m, "VirtualService", "shop", "reviews");
        assert_accepted(&m, "DestinationRule", "shop", "reviews");
        let c = config(&m, "shop", "productpage-1");
        let reviews = service(&c, "reviews");
        assert_eq!(reviews.subsets.len(), 2);
        assert_eq!(
            reviews
                .traffic_policy
                .as_ref()
                .unwrap()
                .outlier_detection
                .as_ref()
                .unwrap()
                .consecutive_5xx_errors,
            3
        );
        let route = &reviews.http[0];
        assert_eq!(
            route.route[0].destination.host, "reviews.shop",
            "written relative to the VS"
        );
        assert_eq!(route.route[0].weight, Some(75));
        assert_eq!(route.route[1].destination.subset.as_deref(), Some("v2"));
        // The ratings service has no routes of its own.
        assert!(service(&c, "ratings").http.is_empty());
    }

    #[test]
    fn istio_routing_by_header_keeps_match_order() {
        let vs = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
    - match: [{ headers: { end-user: { exact: jason } } }]
      route: [{ destination: { host: reviews, subset: v2 } }]
    - route: [{ destination: { host: reviews, subset: v1 } }]
"#;
        let m = mesh(&format!(
            "{REVIEWS}---{}---{vs}",
            CANARY.split("---").next().unwrap()
        ));
        assert_accepted(&m, "VirtualService", "shop", "reviews");
        let c = config(&m, "shop", "productpage-1");
        let reviews = service(&c, "reviews");
        assert_eq!(reviews.http.len(), 2);
        assert_eq!(
            reviews.http[0].matches[0].headers["end-user"]
                .exact
                .as_deref(),
            Some("jason")
        );
        assert_eq!(
            reviews.http[1].route[0].destination.subset.as_deref(),
            Some("v1")
        );
    }

    #[test]
    fn a_missing_subset_is_refused_naming_the_field_and_its_hosts_answer_503() {
        let vs = reviews_routes(
            r#"    - route: [{ destination: { host: reviews, subset: v3 } }]
"#,
        );
        let m = mesh(&format!(
            "{REVIEWS}---{}---{vs}",
            CANARY.split("---").next().unwrap()
        ));
        let (reason, message) = refused(verdict(&m, "VirtualService", "shop", "reviews"));
        assert_eq!(reason, "UnknownSubset");
        assert!(
            message.starts_with("spec.http[0].route[0].destination.subset: no subset \"v3\""),
            "{message}"
        );
        // Nothing of it was ever in force: its host answers 503 rather than
        // spreading over every version, where no route sent the traffic.
        assert!(message.contains("reviews.shop answer 503"), "{message}");
        assert_fails_closed(&config(&m, "shop", "productpage-1"), "shop/reviews");
    }

    #[test]
    fn unknown_hosts_and_destinations_are_refused() {
        let vs = r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: a, namespace: shop }
spec:
  hosts: [details]
  http: [{ route: [{ destination: { host: reviews } }] }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: b, namespace: shop }
spec:
  hosts: [reviews]
  http: [{ route: [{ destination: { host: reviews.other } }] }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: c, namespace: shop }
spec:
  hosts: ["*.shop"]
  http: [{ route: [{ destination: { host: reviews } }] }]
"#;
        let m = mesh(&format!("{REVIEWS}---{vs}"));
        let (r, msg) = refused(verdict(&m, "VirtualService", "shop", "a"));
        assert_eq!(r, "UnknownHost");
        assert!(
            msg.starts_with("spec.hosts[0]: \"details\": no Service details in namespace shop"),
            "{msg}"
        );
        let (_, msg) = refused(verdict(&m, "VirtualService", "shop", "b"));
        assert!(
            msg.starts_with("spec.http[0].route[0].destination.host: \"reviews.other\""),
            "{msg}"
        );
        let (_, msg) = refused(verdict(&m, "VirtualService", "shop", "c"));
        assert!(msg.contains("wildcard hosts are not supported"), "{msg}");
    }

    /// The fields of Istio's own task manifests (circuit breaking,
    /// `destination-rule-all-mtls.yaml`, request timeouts' `percent`) that
    /// used to be refused: accepted and handed to the proxy as written.
    #[test]
    fn istio_task_fields_reach_the_proxy_as_written() {
        let rules = r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  trafficPolicy:
    tls: { mode: ISTIO_MUTUAL }
    connectionPool:
      tcp: { maxConnections: 1, connectTimeout: 250ms }
      http: { http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 30s }
  subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]
---
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  gateways: [mesh]
  http:
    - match: [{ uri: { prefix: /Reviews }, ignoreUriCase: true, gateways: [mesh] }]
      fault: { delay: { percent: 100, fixedDelay: 2s } }
      route: [{ destination: { host: reviews, subset: v2 } }]
    - route: [{ destination: { host: reviews, subset: v1 } }]
"#;
        let m = mesh(&format!("{REVIEWS}---{rules}"));
        assert_accepted(&m, "DestinationRule", "shop", "reviews");
        assert_accepted(&m, "VirtualService", "shop", "reviews");
        let c = config(&m, "shop", "productpage-1");
        let reviews = service(&c, "reviews");
        let tp = reviews.traffic_policy.as_ref().unwrap();
        assert_eq!(
            tp.tls.as_ref().map(|t| t.mode),
            Some(outrigger_api::policy::TlsMode::IstioMutual)
        );
        let cp = tp.connection_pool.as_ref().unwrap();
        let http = cp.http.as_ref().unwrap();
        assert_eq!(http.max_requests_per_connection, Some(1));
        assert_eq!(http.max_retries, Some(3));
        assert_eq!(
            http.idle_timeout,
            Some(outrigger_api::Duration::from_secs(30))
        );
        assert_eq!(
            cp.tcp.as_ref().unwrap().connect_timeout,
            Some(outrigger_api::Duration::from_millis(250))
        );
        let route = &reviews.http[0];
        assert!(route.matches[0].ignore_uri_case);
        assert_eq!(route.matches[0].gateways, vec!["mesh".to_string()]);
        let delay = route.fault.as_ref().unwrap().delay.as_ref().unwrap();
        assert_eq!((delay.percent, delay.share()), (Some(100), 100.0));
    }

    #[test]
    fn gateways_and_tls_origination_are_refused_by_field() {
        let vs = |gateways: &str, match_gateways: &str| {
            format!(
                r#"
apiVersion: outrigger.dev/v1alpha1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews]
  gateways: {gateways}
  http:
    - match: [{{ uri: {{ prefix: / }}, gateways: {match_gateways} }}]
      route: [{{ destination: {{ host: reviews }} }}]
"#
            )
        };
        let m = mesh(&format!("{REVIEWS}---{}", vs("[bookinfo-gateway]", "[]")));
        let (r, msg) = refused(verdict(&m, "VirtualService", "shop", "reviews"));
        assert_eq!(r, "InvalidSpec");
        assert!(
            msg.starts_with("spec.gateways[0]: \"bookinfo-gateway\": gateways are not supported"),
            "{msg}"
        );
        let m = mesh(&format!(
            "{REVIEWS}---{}",
            vs("[mesh]", "[mesh, istio-system/ingress]")
        ));
        let (_, msg) = refused(verdict(&m, "VirtualService", "shop", "reviews"));
        assert!(
            msg.starts_with("spec.http[0].match[0].gateways[1]: \"istio-system/ingress\""),
            "{msg}"
        );

        let dr = |mode: &str| {
            format!(
                r#"
apiVersion: outrigger.dev/v1alpha1
kind: DestinationRule
metadata: {{ name: reviews, namespace: shop }}
spec:
  host: reviews
  trafficPolicy: {{ tls: {{ mode: {mode} }} }}
"#
            )
        };
        for mode in ["SIMPLE", "MUTUAL"] {
            let m = mesh(&format!("{REVIEWS}---{}", dr(mode)));
            let (r, msg) = refused(verdict(&m, "DestinationRule", "shop", "reviews"));
            assert_eq!(r, "InvalidSpec");
            assert!(
                msg.starts_with("spec.trafficPolicy.tls.mode: SIMPLE and MUTUAL"),
                "{msg}"
            );
        }
        let m = mesh(&format!("{REVIEWS}---{}", dr("DISABLE")));
        assert_accepted(&m, "DestinationRule", "shop", "reviews");
    }
}
