//! Authorization under hostile paths: a request's path as the inbound
//! stack composes its two pure steps (`proxy/src/http/stack.rs`): admit
//! normalizes the URI ([`normalize_uri`]), then authorize evaluates the
//! workload's policies on what admit left ([`evaluate`]), and that URI is
//! what the app receives.
//!
//! The app is modelled per mode by [`app_view`]: what an app makes of the
//! path it receives, written here independently of the proxy (RFC 3986's
//! own dot-segment algorithm). Under `NONE` the app takes the path as it
//! is; under `BASE` it also decodes escapes of unreserved characters,
//! takes `\` for `/` and resolves dot segments; from `MERGE_SLASHES` on it
//! merges slashes; only under `DECODE_AND_MERGE_SLASHES` does it decode
//! `%2F` and `%5C` (Istio's documented semantics: with `MERGE_SLASHES`
//! an encoded slash stays encoded, and an app that decodes it needs
//! `DECODE_AND_MERGE_SLASHES`). Paths are case-sensitive; `;` is no
//! delimiter (an app that strips `;params` needs a prefix rule).
//!
//! The properties, for every mode and every rule on a protected path P
//! (exact `P`, prefix `P*`, suffix `*P`): the path forwarded is one the
//! app reads as itself (a fixed point of [`app_view`]), and the app's
//! reading of the form sent; a DENY rule matching what the app reads
//! denies; an ALLOW rule allows only what, as the app reads it, matches.

use http::Uri;
use outrigger_api::authz::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationRule, Operation, RuleTo,
};
use outrigger_api::PathNormalization;
use outrigger_proxy::layers::admit::normalize_uri;
use outrigger_proxy_policy::authz::{evaluate, Decision, Facts};

use crate::path::{hex_pair, MODES};

/// The protected paths.
pub const PROTECTED: &[&str] = &["/admin", "/admin/users", "/api/v1/secret.key"];

/// What becomes of one request target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a URI (hyper answers 400 before any layer).
    Unparsable,
    /// Refused by admit (400).
    Refused,
    /// Forwarded with this path, after this decision.
    Forwarded { path: String, decision: Decision },
}

/// `target` through admit and authorize under `mode` and `policy`.
pub fn compose(target: &str, mode: PathNormalization, policy: &AuthorizationPolicy) -> Outcome {
    let Ok(mut uri) = target.parse::<Uri>() else {
        return Outcome::Unparsable;
    };
    if normalize_uri(&mut uri, mode).is_err() {
        return Outcome::Refused;
    }
    let facts = Facts {
        principal: None,
        namespace: None,
        port: 8080,
        http: Some(("GET", uri.path())),
    };
    let decision = evaluate(std::slice::from_ref(policy), &facts);
    Outcome::Forwarded {
        path: uri.path().to_string(),
        decision,
    }
}

/// A policy with one rule on one path pattern.
pub fn policy(action: AuthorizationAction, pattern: &str) -> AuthorizationPolicy {
    AuthorizationPolicy {
        name: format!("shop/{action:?}-{pattern}"),
        action,
        rules: vec![AuthorizationRule {
            from: vec![],
            to: vec![RuleTo {
                operation: Operation {
                    paths: vec![pattern.to_string()],
                    ..Operation::default()
                },
            }],
        }],
    }
}

/// The rules on `p`: exact, prefix and suffix.
pub fn patterns(p: &str) -> [String; 3] {
    [p.to_string(), format!("{p}*"), format!("*{p}")]
}

/// Istio's string match, written again here: `*`, `prefix*`, `*suffix`,
/// or exact.
pub fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        pattern == value
    }
}

/// What an app that interprets paths as `mode` promises reads in `path`
/// (see the module's notes).
pub fn app_view(path: &str, mode: PathNormalization) -> String {
    if mode == PathNormalization::None || !(path.starts_with('/') || path.starts_with('\\')) {
        return path.to_string();
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(v) = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3).and_then(hex_pair))
            .flatten()
        {
            let unreserved = v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~');
            let slash = v == b'/' || v == b'\\';
            if unreserved || (slash && mode == PathNormalization::DecodeAndMergeSlashes) {
                decoded.push(char::from(v));
            } else {
                decoded.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else {
            // Whole characters: a path from a URI is ASCII, one given
            // here directly need not be.
            let c = path[i..].chars().next().expect("within the path");
            decoded.push(c);
            i += c.len_utf8();
        }
    }
    let mut out = remove_dot_segments(&decoded.replace('\\', "/"));
    if mode >= PathNormalization::MergeSlashes {
        while out.contains("//") {
            out = out.replace("//", "/");
        }
    }
    out
}

/// RFC 3986 §5.2.4, step by step.
pub fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_string();
    let mut output = String::new();
    let pop = |output: &mut String| match output.rfind('/') {
        Some(i) => output.truncate(i),
        None => output.clear(),
    };
    while !input.is_empty() {
        if input.starts_with("../") {
            input.drain(..3);
        } else if input.starts_with("./") {
            input.drain(..2);
        } else if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input = "/".into();
        } else if input.starts_with("/../") {
            input.replace_range(..4, "/");
            pop(&mut output);
        } else if input == "/.." {
            input = "/".into();
            pop(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input.drain(..end);
        }
    }
    output
}

/// Choices read off the fuzzer's bytes (zeros once they run out).
pub struct Choices<'a>(pub &'a [u8]);

impl Choices<'_> {
    pub fn next(&mut self, n: usize) -> usize {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                usize::from(b) % n
            }
            None => 0,
        }
    }
}

/// What may stand where `p` has a `/`: itself, repeated, the other
/// slash, encoded, or with dot segments around it.
const SLASHES: &[&str] = &[
    "/",
    "/",
    "/",
    "//",
    "///",
    "\\",
    "%2F",
    "%2f",
    "%5C",
    "%5c",
    "/./",
    "/.//",
    "/%2e/",
    "/%2E/",
    "/zz/../",
    "/zz/%2e%2e/",
    "/zz/.%2E/",
    "/zz/%2E./",
    "/zz//../",
    "/zz\\..\\",
    "/zz%2F..%2F",
];

/// What may follow the path.
const ENDINGS: &[&str] = &[
    "", "", "", "/", "/.", "/..", "/x/..", ";x", ";/x", "?q=1", "?/../x", "#f", "%00", "%2F",
    "/%2e", "%3B",
];

/// A form of `p` made by `choices`: each `/` replaced per [`SLASHES`], each
/// character as it is, percent-encoded (either case of hex digits) or in
/// the other case, then an ending per [`ENDINGS`].
pub fn generate(p: &str, choices: &mut Choices<'_>) -> String {
    let mut form = String::new();
    for c in p.chars() {
        if c == '/' {
            form.push_str(SLASHES[choices.next(SLASHES.len())]);
            continue;
        }
        match choices.next(6) {
            1 => form.push_str(&format!("%{:02x}", c as u32)),
            2 => form.push_str(&format!("%{:02X}", c as u32)),
            3 if c.is_ascii_alphabetic() => form.push(if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }),
            _ => form.push(c),
        }
    }
    form.push_str(ENDINGS[choices.next(ENDINGS.len())]);
    form
}

/// What [`check`] saw of one form, for the tests' coverage counts.
#[derive(Default, Debug, Clone, Copy)]
pub struct Seen {
    /// (mode, exact DENY rule) pairs where a form other than `P` itself
    /// reached the app as `P` and was denied.
    pub denied_disguised: [usize; 4],
    /// Forms refused by admit (`%00`), per mode.
    pub refused: [usize; 4],
}

/// Checks one request target against every rule on every protected path,
/// under every mode (the properties of the module's notes).
pub fn check(target: &str, seen: &mut Seen) {
    let form_path = target.parse::<Uri>().ok().map(|u| u.path().to_string());
    for (m, mode) in MODES.into_iter().enumerate() {
        for p in PROTECTED {
            for pattern in patterns(p) {
                for action in [AuthorizationAction::Deny, AuthorizationAction::Allow] {
                    let policy = policy(action, &pattern);
                    let (path, decision) = match compose(target, mode, &policy) {
                        Outcome::Unparsable => return,
                        Outcome::Refused => {
                            seen.refused[m] += 1;
                            continue;
                        }
                        Outcome::Forwarded { path, decision } => (path, decision),
                    };
                    let view = app_view(&path, mode);
                    assert_eq!(view, path, "{mode:?}: the app reads {path:?} as {view:?}");
                    if let Some(form_path) = &form_path {
                        assert_eq!(
                            app_view(form_path, mode),
                            path,
                            "{mode:?}: {target:?} is not forwarded as the app reads it"
                        );
                    }
                    let matched = pattern_matches(&pattern, &view);
                    match action {
                        AuthorizationAction::Deny => {
                            assert!(
                                !matched || matches!(decision, Decision::Deny { .. }),
                                "{mode:?}: {target:?} reaches the app as {view:?} past DENY {pattern}"
                            );
                            if matched && pattern == *p && target != *p {
                                seen.denied_disguised[m] += 1;
                            }
                        }
                        AuthorizationAction::Allow => assert!(
                            decision != Decision::Allow || matched,
                            "{mode:?}: {target:?} allowed by {pattern} as {view:?}"
                        ),
                    }
                }
            }
        }
    }
}

/// The fuzz target: an odd first byte makes the rest the request target
/// itself; otherwise the bytes choose a protected path and a form of it.
pub fn target(data: &[u8]) {
    let mut seen = Seen::default();
    match data.split_first() {
        Some((&b, rest)) if b % 2 == 1 => {
            if let Some(t) = crate::text(rest) {
                check(t, &mut seen);
            }
        }
        Some((&b, rest)) => {
            let p = PROTECTED[usize::from(b / 2) % PROTECTED.len()];
            check(&generate(p, &mut Choices(rest)), &mut seen);
        }
        None => {}
    }
}
