//! Authorization decisions (Istio's AuthorizationPolicy semantics), pure:
//! DENY policies first (any rule matching denies), then ALLOW policies (if
//! there are any, a request must match one of their rules). Sources match
//! on the peer's identity, which only mutual TLS provides: a plaintext
//! request has no principal and no namespace, so it matches no
//! `principals`/`namespaces` condition (and every `not…` one).
//!
//! Opaque TCP connections have no method or path: a rule that needs them
//! never matches in an ALLOW policy, and ignores them in a DENY policy (so
//! a DENY errs on the side of denying), as Istio does.

use outrigger_api::authz::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationRule, Operation, Source,
};

/// What is known of a request or connection when it is authorized.
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts<'a> {
    /// The peer's identity without `spiffe://` (`<td>/ns/<ns>/sa/<sa>`).
    pub principal: Option<&'a str>,
    /// The peer's namespace (from its identity).
    pub namespace: Option<&'a str>,
    /// The destination port.
    pub port: u16,
    /// (method, path) for HTTP; None for opaque TCP.
    pub http: Option<(&'a str, &'a str)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by this policy (`namespace/name`), or by having ALLOW
    /// policies none of which matched (`policy` is then None).
    Deny {
        policy: Option<String>,
    },
}

pub fn evaluate(policies: &[AuthorizationPolicy], facts: &Facts<'_>) -> Decision {
    for p in policies
        .iter()
        .filter(|p| p.action == AuthorizationAction::Deny)
    {
        if p.rules.iter().any(|r| rule_matches(r, facts, Lenient::Yes)) {
            return Decision::Deny {
                policy: Some(p.name.clone()),
            };
        }
    }
    let mut allows = policies
        .iter()
        .filter(|p| p.action == AuthorizationAction::Allow)
        .peekable();
    if allows.peek().is_none() {
        return Decision::Allow;
    }
    if allows.any(|p| p.rules.iter().any(|r| rule_matches(r, facts, Lenient::No))) {
        Decision::Allow
    } else {
        Decision::Deny { policy: None }
    }
}

/// Whether HTTP-only conditions are skipped on a TCP connection (DENY) or
/// make the rule fail (ALLOW).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lenient {
    Yes,
    No,
}

fn rule_matches(rule: &AuthorizationRule, facts: &Facts<'_>, lenient: Lenient) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|f| source_matches(&f.source, facts)))
        && (rule.to.is_empty()
            || rule
                .to
                .iter()
                .any(|t| operation_matches(&t.operation, facts, lenient)))
}

fn source_matches(s: &Source, facts: &Facts<'_>) -> bool {
    within(&s.principals, facts.principal)
        && outside(&s.not_principals, facts.principal)
        && within(&s.namespaces, facts.namespace)
        && outside(&s.not_namespaces, facts.namespace)
}

fn operation_matches(op: &Operation, facts: &Facts<'_>, lenient: Lenient) -> bool {
    let port = facts.port.to_string();
    let ports =
        within(&op.ports, Some(port.as_str())) && outside(&op.not_ports, Some(port.as_str()));
    let http_conditions = !(op.methods.is_empty()
        && op.not_methods.is_empty()
        && op.paths.is_empty()
        && op.not_paths.is_empty());
    let http = match facts.http {
        Some((method, path)) => {
            within(&op.methods, Some(method))
                && outside(&op.not_methods, Some(method))
                && within(&op.paths, Some(path))
                && outside(&op.not_paths, Some(path))
        }
        None => !http_conditions || lenient == Lenient::Yes,
    };
    ports && http
}

/// An empty list is no condition; otherwise the value must match one.
fn within(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| matches(p, v)))
}

/// The value must match none (an absent value matches none).
fn outside(patterns: &[String], value: Option<&str>) -> bool {
    value.is_none_or(|v| !patterns.iter().any(|p| matches(p, v)))
}

/// Istio's string match: `*` (anything), `prefix*`, `*suffix`, or exact.
fn matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;
    use outrigger_api::authz::{RuleFrom, RuleTo};

    fn policy(
        name: &str,
        action: AuthorizationAction,
        rules: Vec<AuthorizationRule>,
    ) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: name.into(),
            action,
            rules,
        }
    }

    fn from(source: Source) -> AuthorizationRule {
        AuthorizationRule {
            from: vec![RuleFrom { source }],
            to: vec![],
        }
    }

    fn to(operation: Operation) -> AuthorizationRule {
        AuthorizationRule {
            from: vec![],
            to: vec![RuleTo { operation }],
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const BUYER: &str = "cluster.local/ns/shop/sa/buyer";

    fn http<'a>(principal: Option<&'a str>, method: &'a str, path: &'a str) -> Facts<'a> {
        Facts {
            principal,
            namespace: principal.and_then(|p| p.split('/').nth(2)),
            port: 8080,
            http: Some((method, path)),
        }
    }

    fn tcp(principal: Option<&str>, port: u16) -> Facts<'_> {
        Facts {
            principal,
            namespace: principal.and_then(|p| p.split('/').nth(2)),
            port,
            http: None,
        }
    }

    use AuthorizationAction::{Allow, Deny};

    #[test]
    fn no_policy_allows_and_an_allow_policy_with_no_rules_denies_all() {
        assert_eq!(evaluate(&[], &http(None, "GET", "/")), Decision::Allow);
        let nothing = [policy("shop/none", Allow, vec![])];
        assert_eq!(
            evaluate(&nothing, &http(Some(BUYER), "GET", "/")),
            Decision::Deny { policy: None }
        );
        // An empty rule matches everything.
        let all = [policy(
            "shop/all",
            Allow,
            vec![AuthorizationRule::default()],
        )];
        assert_eq!(evaluate(&all, &http(None, "GET", "/")), Decision::Allow);
    }

    #[test]
    fn deny_wins_over_allow() {
        let policies = [
            policy("shop/all", Allow, vec![AuthorizationRule::default()]),
            policy(
                "shop/no-admin",
                Deny,
                vec![to(Operation {
                    paths: strings(&["/admin*"]),
                    ..Operation::default()
                })],
            ),
        ];
        assert_eq!(
            evaluate(&policies, &http(Some(BUYER), "GET", "/admin/users")),
            Decision::Deny {
                policy: Some("shop/no-admin".into())
            }
        );
        assert_eq!(
            evaluate(&policies, &http(Some(BUYER), "GET", "/products")),
            Decision::Allow
        );
    }

    #[test]
    fn sources_match_on_principal_and_namespace_which_need_mtls() {
        let policies = [policy(
            "shop/buyers",
            Allow,
            vec![from(Source {
                principals: strings(&["cluster.local/ns/shop/sa/*"]),
                ..Source::default()
            })],
        )];
        assert_eq!(
            evaluate(&policies, &http(Some(BUYER), "GET", "/")),
            Decision::Allow
        );
        assert!(matches!(
            evaluate(
                &policies,
                &http(Some("cluster.local/ns/billing/sa/x"), "GET", "/")
            ),
            Decision::Deny { .. }
        ));
        assert!(
            matches!(
                evaluate(&policies, &http(None, "GET", "/")),
                Decision::Deny { .. }
            ),
            "plaintext has no principal"
        );
        let by_namespace = [policy(
            "shop/ns",
            Allow,
            vec![from(Source {
                namespaces: strings(&["shop"]),
                not_principals: strings(&["*/sa/intruder"]),
                ..Source::default()
            })],
        )];
        assert_eq!(
            evaluate(&by_namespace, &http(Some(BUYER), "GET", "/")),
            Decision::Allow
        );
        assert!(matches!(
            evaluate(
                &by_namespace,
                &http(Some("cluster.local/ns/shop/sa/intruder"), "GET", "/")
            ),
            Decision::Deny { .. }
        ));
        // Requests without identity, denied by `notPrincipals: ["*"]`.
        let need_identity = [policy(
            "shop/mtls-only",
            Deny,
            vec![from(Source {
                not_principals: strings(&["*"]),
                ..Source::default()
            })],
        )];
        assert!(matches!(
            evaluate(&need_identity, &http(None, "GET", "/")),
            Decision::Deny { .. }
        ));
        assert_eq!(
            evaluate(&need_identity, &http(Some(BUYER), "GET", "/")),
            Decision::Allow
        );
    }

    #[test]
    fn operations_match_on_ports_methods_and_paths() {
        let policies = [policy(
            "shop/read",
            Allow,
            vec![to(Operation {
                ports: strings(&["8080"]),
                methods: strings(&["GET", "HEAD"]),
                paths: strings(&["/products*", "*.png", "/health"]),
                not_paths: strings(&["/products/secret"]),
                ..Operation::default()
            })],
        )];
        for (method, path, allowed) in [
            ("GET", "/products", true),
            ("HEAD", "/products/1", true),
            ("GET", "/img/logo.png", true),
            ("GET", "/health", true),
            ("GET", "/healthz", false),
            ("POST", "/products", false),
            ("GET", "/products/secret", false),
            ("GET", "/", false),
        ] {
            assert_eq!(
                evaluate(&policies, &http(None, method, path)) == Decision::Allow,
                allowed,
                "{method} {path}"
            );
        }
        let mut other_port = http(None, "GET", "/products");
        other_port.port = 9090;
        assert!(matches!(
            evaluate(&policies, &other_port),
            Decision::Deny { .. }
        ));
        let not_ports = [policy(
            "shop/not-debug",
            Allow,
            vec![to(Operation {
                not_ports: strings(&["9090"]),
                not_methods: strings(&["DELETE"]),
                ..Operation::default()
            })],
        )];
        assert_eq!(
            evaluate(&not_ports, &http(None, "GET", "/")),
            Decision::Allow
        );
        assert!(matches!(
            evaluate(&not_ports, &http(None, "DELETE", "/")),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            evaluate(&not_ports, &other_port),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn tcp_connections_fail_http_conditions_in_allow_and_skip_them_in_deny() {
        let read_only = Operation {
            ports: strings(&["5432"]),
            methods: strings(&["GET"]),
            ..Operation::default()
        };
        let allow = [policy("db/read", Allow, vec![to(read_only.clone())])];
        assert!(matches!(
            evaluate(&allow, &tcp(Some(BUYER), 5432)),
            Decision::Deny { .. }
        ));
        let deny = [policy("db/no-get", Deny, vec![to(read_only)])];
        assert_eq!(
            evaluate(&deny, &tcp(Some(BUYER), 5432)),
            Decision::Deny {
                policy: Some("db/no-get".into())
            },
            "a DENY errs on the side of denying"
        );
        assert_eq!(evaluate(&deny, &tcp(Some(BUYER), 6379)), Decision::Allow);
        // Port and principal rules apply to TCP as they are.
        let by_port = [policy(
            "db/port",
            Allow,
            vec![AuthorizationRule {
                from: vec![RuleFrom {
                    source: Source {
                        principals: strings(&[BUYER]),
                        ..Source::default()
                    },
                }],
                to: vec![RuleTo {
                    operation: Operation {
                        ports: strings(&["5432"]),
                        ..Operation::default()
                    },
                }],
            }],
        )];
        assert_eq!(evaluate(&by_port, &tcp(Some(BUYER), 5432)), Decision::Allow);
        assert!(matches!(
            evaluate(&by_port, &tcp(None, 5432)),
            Decision::Deny { .. }
        ));
        assert!(matches!(
            evaluate(&by_port, &tcp(Some(BUYER), 5433)),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn istio_string_matching() {
        for (pattern, value, expected) in [
            ("*", "anything", true),
            ("/api/*", "/api/v1", true),
            ("/api/*", "/apis", false),
            ("*.html", "/index.html", true),
            ("*.html", "/index.htm", false),
            ("/exact", "/exact", true),
            ("/exact", "/exact/", false),
        ] {
            assert_eq!(matches(pattern, value), expected, "{pattern} {value}");
        }
    }
}
