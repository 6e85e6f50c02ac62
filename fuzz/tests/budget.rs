//! The fixed-budget fuzz run: every target on its seeds, then on a fixed
//! number of seeded mutations of them. Deterministic; a failure prints the
//! input that failed.

use outrigger_fuzz::budget::{run, seed_of, seeds};
use outrigger_fuzz::TARGETS;

fn fuzz(name: &str) {
    let target = outrigger_fuzz::target(name).expect("a target");
    let corpus = seeds(name).unwrap_or_else(|e| panic!("{name}: corpus: {e}"));
    let ran = run(target, &corpus, target.cases, seed_of(name));
    assert_eq!(ran, corpus.len() + target.cases);
}

#[test]
fn every_target_has_a_test_here_and_seeds() {
    let source = include_str!("budget.rs");
    for t in TARGETS {
        assert!(
            source.contains(&format!("\n    {},", t.name)),
            "{} has no test in tests/budget.rs",
            t.name
        );
        assert!(!seeds(t.name).unwrap().is_empty(), "{}: no seeds", t.name);
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                fuzz(stringify!($name));
            }
        )*
    };
}

targets!(
    classify,
    classify_http,
    h2_frames,
    host,
    client_hello,
    grpc_health,
    config_stream,
    snapshot_yaml,
    manifest_yaml,
    admission_review,
    certify_request,
    csr_der,
    quantity,
    redirect,
    normalize_path,
    hostile_paths,
);
