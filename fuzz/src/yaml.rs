//! The YAML readers: a proxy's static snapshot (`--config`) and the
//! control plane's manifests (folder mode, `outrigger analyze`).

use outrigger_api::Snapshot;
use outrigger_control_plane::manifest;
use outrigger_proxy_policy::config::Config;

pub const DICTIONARY: &[&[u8]] = &[
    b"\n---\n",
    b": ",
    b"\n- ",
    b"\n  ",
    b"{",
    b"[",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"'",
    b"\"",
    b"#",
    b"\t",
    b"apiVersion: networking.istio.io/v1\n",
    b"kind: VirtualService\n",
    b"metadata:\n  name: x\n",
];

/// How many lines a position in `text` may name: its lines, and the one
/// after a final newline (where an unexpected end is reported).
fn last_line(text: &str) -> usize {
    text.lines().count() + 1
}

/// The line numbers a message names (`line 3`, `line: 3`).
fn lines_named(message: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find("line") {
        rest = &rest[i + 4..];
        let digits: String = rest
            .trim_start_matches([' ', ':'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

/// A snapshot: never panics; a line an error names is within the text;
/// one read serializes to JSON and reads back equal; it builds exactly
/// when it validates.
pub fn snapshot(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    match Snapshot::from_yaml(text) {
        Ok(snapshot) => {
            assert_eq!(
                Snapshot::from_json(&snapshot.to_json()).expect("its JSON reads"),
                snapshot
            );
            let valid = snapshot.validate().is_ok();
            assert_eq!(Config::build(snapshot, None).is_ok(), valid);
        }
        Err(e) => {
            let message = e.to_string();
            for line in lines_named(&message) {
                assert!(
                    line <= last_line(text),
                    "{message}: {} lines",
                    last_line(text)
                );
            }
        }
    }
}

/// A manifest file: never panics; each document is a slice of the file
/// starting on a line within it; every error and every skipped document
/// names a line within the file and the file itself; each document gives
/// at most one outcome; `parse` fails exactly when a document is bad, with
/// the first bad document's error.
pub fn manifest(data: &[u8]) {
    let Some(text) = crate::text(data) else {
        return;
    };
    let last = last_line(text);
    let documents = manifest::documents(text);
    for doc in &documents {
        assert!(
            (1..=last).contains(&doc.line),
            "document at line {}",
            doc.line
        );
        let range = text.as_bytes().as_ptr_range();
        let inside = doc.text.is_empty()
            || range.contains(&doc.text.as_ptr()) && doc.text.len() <= text.len();
        assert!(inside, "a document that is not a slice of the file");
    }
    let parsed = manifest::parse_documents("fuzz.yaml", text, "default");
    for bad in &parsed.bad {
        assert_eq!(bad.error.file, "fuzz.yaml");
        assert!((1..=last).contains(&bad.error.line), "{}", bad.error.line);
        assert!(!bad.error.message.is_empty());
    }
    for (kind, line) in &parsed.skipped {
        assert!((1..=last).contains(line), "{kind} at line {line}");
    }
    assert!(parsed.objects.len() + parsed.skipped.len() + parsed.bad.len() <= documents.len());
    match manifest::parse("fuzz.yaml", text, "default") {
        Ok(p) => assert!(parsed.bad.is_empty() && p.objects.len() == parsed.objects.len()),
        Err(e) => assert_eq!(Some(&e), parsed.bad.first().map(|b| &b.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_read_and_errors_name_lines() {
        let seed = |dir: &str, name: &str| {
            std::fs::read_to_string(crate::budget::corpus_dir(dir).join(name)).unwrap()
        };
        let s = Snapshot::from_yaml(&seed("snapshot_yaml", "server-proxy.yaml")).unwrap();
        Config::build(s, None).unwrap();
        let parsed = manifest::parse_documents("f", &seed("manifest_yaml", "shop.yaml"), "shop");
        assert!(parsed.bad.is_empty() && !parsed.objects.is_empty());
        // The bad document starts on line 8; its error is on line 12.
        let text = seed("manifest_yaml", "bad-second.yaml");
        let parsed = manifest::parse_documents("f", &text, "shop");
        assert_eq!(parsed.objects.len(), 1);
        assert_eq!(parsed.bad.len(), 1);
        assert!((8..=last_line(&text)).contains(&parsed.bad[0].error.line));
        assert_eq!(lines_named("at line 3 column 4; line: 12"), [3, 12]);
    }
}
