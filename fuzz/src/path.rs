//! The path normaliser (`pathNormalization`): what every policy and the
//! app see of a request's path.

use outrigger_api::PathNormalization;
use outrigger_proxy::layers::admit::{normalize_path, PathError};

pub const DICTIONARY: &[&[u8]] = &[
    b"/", b"//", b"\\", b".", b"..", b"/./", b"/../", b"%2e", b"%2E", b"%2f", b"%2F", b"%5c",
    b"%5C", b"%00", b"%25", b"%61", b";", b"?", b"#", b"%",
];

pub const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

/// Under every mode: never panics; `NONE`, and any path that starts with
/// neither `/` nor `\`, is left alone; only a path with `%00` or a lone
/// `%` is refused;
/// otherwise the result starts with `/`, holds no `\`, no `.` or `..`
/// segment, no escape of an unreserved character, escapes in upper case;
/// no `//` from `MERGE_SLASHES` on, no `%2F`/`%5C` under
/// `DECODE_AND_MERGE_SLASHES`; and normalizing it again changes nothing.
pub fn normalize(data: &[u8]) {
    let Some(path) = crate::text(data) else {
        return;
    };
    for mode in MODES {
        let out = match normalize_path(path, mode) {
            Err(PathError::Nul) => {
                assert_ne!(mode, PathNormalization::None);
                assert!(
                    escapes(path).any(|e| e == 0),
                    "{path:?} refused without %00"
                );
                continue;
            }
            Err(PathError::JoinedEscape) => {
                assert_ne!(mode, PathNormalization::None);
                let lone = path.match_indices('%').count() > escapes(path).count();
                assert!(lone, "{path:?} refused without a lone %");
                continue;
            }
            Ok(None) => path.to_string(),
            Ok(Some(out)) => {
                assert_ne!(out, path, "Some(the same path)");
                out
            }
        };
        if mode == PathNormalization::None || !(path.starts_with('/') || path.starts_with('\\')) {
            assert_eq!(out, path, "{mode:?} changed {path:?}");
            continue;
        }
        check_normal(&out, mode);
        assert_eq!(
            normalize_path(&out, mode),
            Ok(None),
            "{mode:?}: {path:?} -> {out:?}"
        );
    }
}

/// The properties of a path normalized under `mode` (not `NONE`).
pub fn check_normal(out: &str, mode: PathNormalization) {
    assert!(out.starts_with('/'), "{out:?}");
    assert!(!out.contains('\\'), "{out:?}");
    for segment in out[1..].split('/') {
        assert!(segment != "." && segment != "..", "dot segment in {out:?}");
    }
    let bytes = out.as_bytes();
    for (i, v) in escapes_at(out) {
        assert!(
            !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')),
            "an escaped unreserved character in {out:?}"
        );
        assert!(
            !bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase),
            "lower-case escape in {out:?}"
        );
        if mode == PathNormalization::DecodeAndMergeSlashes {
            assert!(v != b'/' && v != b'\\', "an encoded slash in {out:?}");
        }
        assert_ne!(v, 0, "%00 in {out:?}");
    }
    if mode >= PathNormalization::MergeSlashes {
        assert!(!out.contains("//"), "{out:?}");
    }
}

/// The values of the percent-escapes of `path`, read left to right as a
/// decoder does (`%252F` is `%25` then `2F`).
pub fn escapes(path: &str) -> impl Iterator<Item = u8> + '_ {
    escapes_at(path).map(|(_, v)| v)
}

fn escapes_at(path: &str) -> impl Iterator<Item = (usize, u8)> + '_ {
    let bytes = path.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if bytes[i] == b'%' {
                if let Some(v) = bytes.get(i + 1..i + 3).and_then(hex_pair) {
                    let at = i;
                    i += 3;
                    return Some((at, v));
                }
            }
            i += 1;
        }
        None
    })
}

/// Two hex digits as a byte.
pub fn hex_pair(digits: &[u8]) -> Option<u8> {
    let d = |b: u8| char::from(b).to_digit(16);
    Some((d(digits[0])? * 16 + d(digits[1])?) as u8)
}
