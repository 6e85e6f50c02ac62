//! Authorization under hostile paths: generated forms of protected paths
//! (percent-encoded letters, `/`, `.` and `\`; dot segments; repeated
//! slashes; mixed case; `;` parameters; trailing `?`, `#`, `%00`) through
//! admit and authorize, under every `pathNormalization` mode, against
//! ALLOW and DENY rules (the properties: `outrigger_fuzz::hostile_paths`).

use outrigger_api::authz::AuthorizationAction::{Allow, Deny};
use outrigger_api::PathNormalization::{self, *};
use outrigger_fuzz::hostile_paths::{
    check, compose, generate, policy, Choices, Outcome, Seen, PROTECTED,
};
use outrigger_proxy_policy::authz::Decision;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[test]
fn no_generated_form_reaches_the_app_past_a_rule() {
    let mut rng = SmallRng::seed_from_u64(19);
    let mut seen = Seen::default();
    let mut forms = std::collections::BTreeSet::new();
    for _ in 0..10_000 {
        let p = PROTECTED[rng.random_range(0..PROTECTED.len())];
        let choices: Vec<u8> = (0..64).map(|_| rng.random()).collect();
        let form = generate(p, &mut Choices(&choices));
        check(&form, &mut seen);
        forms.insert(form);
    }
    // Not vacuous: many distinct forms, and under every normalizing mode
    // many that were not P itself reached the app as P and were denied.
    assert!(forms.len() > 8_000, "{} distinct forms", forms.len());
    for (m, mode) in ["NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"]
        .iter()
        .enumerate()
    {
        if m > 0 {
            assert!(seen.denied_disguised[m] > 250, "{mode}: {seen:?}");
            assert!(seen.refused[m] > 0, "{mode}: {seen:?}");
        }
    }
    // Each mode catches more disguises than the one before it.
    assert!(seen.denied_disguised[1] < seen.denied_disguised[2]);
    assert!(seen.denied_disguised[2] < seen.denied_disguised[3]);
}

fn forwarded(form: &str, mode: PathNormalization, deny: &str) -> (String, bool) {
    match compose(form, mode, &policy(Deny, deny)) {
        Outcome::Forwarded { path, decision } => (path, matches!(decision, Decision::Deny { .. })),
        other => panic!("{form}: {other:?}"),
    }
}

#[test]
fn istio_semantics_case_encoded_slashes_and_modes() {
    // Paths are case-sensitive: /ADMIN is another path.
    assert_eq!(
        forwarded("/ADMIN", MergeSlashes, "/admin*"),
        ("/ADMIN".into(), false)
    );
    // MERGE_SLASHES keeps %2F encoded: an exact rule on /admin/users does
    // not match it (nor does the app, which must not decode it), a prefix
    // rule does; DECODE_AND_MERGE_SLASHES forwards the decoded path.
    assert_eq!(
        forwarded("/admin%2fusers", MergeSlashes, "/admin/users"),
        ("/admin%2Fusers".into(), false)
    );
    assert!(forwarded("/admin%2Fusers", MergeSlashes, "/admin*").1);
    assert_eq!(
        forwarded("/admin%2Fusers", DecodeAndMergeSlashes, "/admin/users"),
        ("/admin/users".into(), true)
    );
    // BASE does not merge slashes (Istio's default, kept as an option).
    assert_eq!(
        forwarded("//admin", Base, "/admin*"),
        ("//admin".into(), false)
    );
    assert_eq!(
        forwarded("//admin", MergeSlashes, "/admin*"),
        ("/admin".into(), true)
    );
    // The query and fragment are not the path.
    assert_eq!(
        forwarded("/admin?x=/..", MergeSlashes, "/admin"),
        ("/admin".into(), true)
    );
    // `%00` and a lone `%` joined by decoding are refused before any rule.
    for form in ["/admin%00", "/%6%31dmin"] {
        assert_eq!(compose(form, Base, &policy(Allow, "*")), Outcome::Refused);
    }
    // ALLOW: a form allowed by /public/* is forwarded under /public/;
    // a dot segment that climbs out of it is not allowed.
    let allowed =
        |form: &str| match compose(form, DecodeAndMergeSlashes, &policy(Allow, "/public/*")) {
            Outcome::Forwarded { path, decision } => (path, decision == Decision::Allow),
            other => panic!("{form}: {other:?}"),
        };
    assert_eq!(allowed("/public/%2e%2e/admin"), ("/admin".into(), false));
    assert_eq!(allowed("/public/..%5Cadmin"), ("/admin".into(), false));
    assert_eq!(allowed("/public//../admin"), ("/public/admin".into(), true));
}
