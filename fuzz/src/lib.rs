//! Fuzz targets for every parser of Outrigger that reads bytes from outside
//! the process, in one place. Each target takes arbitrary bytes and checks
//! properties of what the parser makes of them (a panic is a finding):
//! more than "does not panic" wherever a stronger property exists.
//!
//! Two engines drive the same [`TARGETS`]:
//! - [`budget`]: a seeded, fixed number of mutations of the checked-in
//!   corpus (`fuzz/corpus/<target>/`), run by `cargo test` (so in CI);
//! - AFL++ through cargo-afl: `src/bin/outrigger-fuzz.rs` built with the
//!   `afl` feature, for long coverage-guided runs (docs/testing.md).

pub mod admission;
pub mod budget;
pub mod certify;
pub mod config_stream;
pub mod detect;
pub mod grpc_health;
pub mod h2_frames;
pub mod host;
pub mod hostile_paths;
pub mod path;
pub mod quantity;
pub mod redirect;
pub mod yaml;

/// One fuzz target.
pub struct Target {
    /// Its name: the corpus directory and the binary's argument.
    pub name: &'static str,
    /// Runs the parser on `data` and panics when a property fails.
    pub run: fn(&[u8]),
    /// Tokens the mutator splices in: the parser's keywords and delimiters.
    pub dictionary: &'static [&'static [u8]],
    /// Mutated cases in the fixed-budget run (`cargo test`): fewer for
    /// the targets whose every case is costly (YAML, certificates).
    pub cases: usize,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "classify",
        run: detect::classify,
        dictionary: detect::DICTIONARY,
        cases: 4000,
    },
    Target {
        name: "classify_http",
        run: detect::classify_http,
        dictionary: detect::HTTP_DICTIONARY,
        cases: 4000,
    },
    Target {
        name: "h2_frames",
        run: h2_frames::scan,
        dictionary: h2_frames::DICTIONARY,
        cases: 4000,
    },
    Target {
        name: "host",
        run: host::decide,
        dictionary: host::DICTIONARY,
        cases: 4000,
    },
    Target {
        name: "client_hello",
        run: detect::client_hello,
        dictionary: &[b"\x16\x03\x01", b"\x00\x00", b"\x01\x00", b"\xff\xff"],
        cases: 4000,
    },
    Target {
        name: "grpc_health",
        run: grpc_health::serving_status,
        dictionary: &[
            b"\x08",
            b"\x80",
            b"\xff\xff\xff\xff",
            b"\x0a\x05",
            b"\x0d",
            b"\x09",
        ],
        cases: 4000,
    },
    Target {
        name: "config_stream",
        run: config_stream::read_update,
        dictionary: config_stream::DICTIONARY,
        cases: 1500,
    },
    Target {
        name: "snapshot_yaml",
        run: yaml::snapshot,
        dictionary: yaml::DICTIONARY,
        cases: 1500,
    },
    Target {
        name: "manifest_yaml",
        run: yaml::manifest,
        dictionary: yaml::DICTIONARY,
        cases: 1500,
    },
    Target {
        name: "admission_review",
        run: admission::review,
        dictionary: admission::DICTIONARY,
        cases: 1000,
    },
    Target {
        name: "certify_request",
        run: certify::request,
        dictionary: &[
            b"Bearer ", b"buyer", b"web", b"down", b"\n", b"\"csr\"", b"-----",
        ],
        cases: 600,
    },
    Target {
        name: "csr_der",
        run: certify::csr_der,
        dictionary: &[b"\x30\x82", b"\x06\x03\x55\x1d\x11", b"\x86", b"spiffe://"],
        cases: 1000,
    },
    Target {
        name: "quantity",
        run: quantity::quantity,
        dictionary: &[
            b"Ki",
            b"Mi",
            b"Ei",
            b"e",
            b"E-",
            b"n",
            b"m",
            b".",
            b"+",
            b"999999999999",
        ],
        cases: 4000,
    },
    Target {
        name: "redirect",
        run: redirect::ranges,
        dictionary: &[b",", b"-", b":", b"65535", b"/", b"::", b"0.0.0.0", b" "],
        cases: 4000,
    },
    Target {
        name: "normalize_path",
        run: path::normalize,
        dictionary: path::DICTIONARY,
        cases: 4000,
    },
    Target {
        name: "hostile_paths",
        run: hostile_paths::target,
        dictionary: path::DICTIONARY,
        cases: 4000,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// `data` as text, when it is UTF-8 (text parsers take `&str`; what
/// reaches them from a socket or a file has been decoded already).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
