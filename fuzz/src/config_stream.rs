//! The proxy's reader of the config stream: NDJSON lines, each a
//! `ConfigUpdate` read tolerantly (`outrigger_api::tolerant`), applied to
//! the bootstrap, validated and built into the tables requests use.

use std::sync::OnceLock;

use outrigger_api::features::FEATURES;
use outrigger_api::stream::ConfigUpdate;
use outrigger_api::Snapshot;
use outrigger_proxy_policy::config::Config;

pub const DICTIONARY: &[&[u8]] = &[
    b"\n",
    b"{\"version\":\"v1\"}",
    b"\"services\":[",
    b"\"endpoints\":[{\"address\":\"10.0.0.1:80\"}]",
    b"\"routes\":",
    b"\"requires\":[\"x\"]",
    b"null",
    b"1e999",
    b"\"\\u0000\"",
];

/// The bootstrap every update is applied to.
fn bootstrap() -> &'static Snapshot {
    static BOOTSTRAP: OnceLock<Snapshot> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        Snapshot::from_yaml(include_str!("../corpus/bootstrap.yaml")).expect("the bootstrap reads")
    })
}

/// The input split into lines as the stream splits it. Each line: never
/// panics; an update the strict reader takes reads the same through the
/// tolerant one, with nothing left out; what is read serializes and reads
/// back equal; the ignored fields reported are at most those counted;
/// applied to the bootstrap it validates or not without panicking, and
/// builds exactly when it validates.
pub fn read_update(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        let Ok((update, ignored)) = outrigger_proxy::control::read_update(line, FEATURES) else {
            continue;
        };
        assert!(ignored.paths.len() <= ignored.count);
        if let Ok(strict) = serde_json::from_slice::<ConfigUpdate>(line) {
            assert_eq!(strict, update);
            assert_eq!(ignored.count, 0, "{:?}", ignored.paths);
        }
        let json = serde_json::to_vec(&update).expect("an update serializes");
        let back: ConfigUpdate = serde_json::from_slice(&json).expect("what was read reads back");
        assert_eq!(back, update);
        let snapshot = update.apply_to(bootstrap());
        let valid = snapshot.validate().is_ok();
        assert_eq!(Config::build(snapshot, None).is_ok(), valid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds read, and one applied to the bootstrap builds, so the
    /// target's properties run past the reader.
    #[test]
    fn the_seeds_read_and_build() {
        let path = crate::budget::corpus_dir("config_stream").join("update");
        let line = std::fs::read(path).unwrap();
        let (update, _) =
            outrigger_proxy::control::read_update(line.trim_ascii_end(), FEATURES).unwrap();
        Config::build(update.apply_to(bootstrap()), None).unwrap();
    }
}
