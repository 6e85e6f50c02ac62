//! The proxy's reader of the config stream: NDJSON lines, each a
//! `ConfigUpdate` read tolerantly (`outrigger_api::tolerant`), applied to
//! the bootstrap, validated and built into the tables requests use.

use std::sync::OnceLock;

use outrigger_api::features::FEATURES;
use outrigger_api::stream::ConfigUpdate;
use outrigger_api::Snapshot;
use outrigger_proxy::control::Lines;
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

/// The complete lines of `data` as the stream's reader gives them when
/// the bytes arrive in frames of 1 to 64 bytes (each size read off the
/// input), checked against splitting the whole at once: each byte is
/// in one line, in order, whatever the framing.
pub fn lines(data: &[u8]) -> Vec<bytes::Bytes> {
    let mut reader = Lines::default();
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (usize::from(data[i % data.len()]) % 64 + 1).min(rest.len());
        reader
            .push(&bytes::Bytes::copy_from_slice(&rest[..n]))
            .expect("no line is that long");
        while let Some(line) = reader.next_line() {
            out.push(line);
        }
        rest = &rest[n..];
        i += 1;
    }
    let whole: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let complete = &whole[..whole.len() - 1];
    assert_eq!(out.len(), complete.len());
    for (a, b) in out.iter().zip(complete) {
        assert_eq!(&a[..], *b);
    }
    out
}

/// The bootstrap every update is applied to.
fn bootstrap() -> &'static Snapshot {
    static BOOTSTRAP: OnceLock<Snapshot> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        Snapshot::from_yaml(include_str!("../corpus/bootstrap.yaml")).expect("the bootstrap reads")
    })
}

/// The input split into lines as the stream splits it, in frames of the
/// sizes its bytes choose ([`lines`]). Each line: never
/// panics; an update the strict reader takes reads the same through the
/// tolerant one, with nothing left out; what is read serializes and reads
/// back equal; the ignored fields reported are at most those counted;
/// applied to the bootstrap it validates or not without panicking, and
/// builds exactly when it validates.
pub fn read_update(data: &[u8]) {
    for line in lines(data) {
        let line = &line[..];
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
