//! The fixed-budget engine: every seed of a target's corpus, then a fixed
//! number of mutations of them drawn from a seeded generator, so a run is
//! the same on every machine. A failing case is printed (escaped) before
//! its panic goes on, so it can be added to the corpus as a regression.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::Target;

/// Longest input the mutator makes: parsers meet longer inputs in the
/// corpus and under AFL++; here, cases stay cheap.
const MAX_LEN: usize = 8192;

/// The checked-in corpus of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The seeds of `target`, sorted by file name (the order is part of the
/// run's determinism).
pub fn seeds(target: &str) -> std::io::Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    files.iter().map(std::fs::read).collect()
}

/// Runs `target` on each of `seeds`, then on `cases` mutations of them
/// drawn from `seed`. Returns how many inputs ran.
pub fn run(target: &Target, seeds: &[Vec<u8>], cases: usize, seed: u64) -> usize {
    assert!(!seeds.is_empty(), "{}: no seeds", target.name);
    for input in seeds {
        check(target, input, "seed");
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    for _ in 0..cases {
        let input = mutate(&mut rng, seeds, target.dictionary);
        check(target, &input, "mutated case");
    }
    seeds.len() + cases
}

fn check(target: &Target, input: &[u8], what: &str) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (target.run)(input))) {
        eprintln!(
            "{}: {what} failed ({} bytes): \"{}\"",
            target.name,
            input.len(),
            input.escape_ascii()
        );
        std::panic::resume_unwind(panic);
    }
}

/// One mutated input: a seed with 1 to 8 edits (AFL's havoc stage in
/// small: bit flips, interesting bytes, dictionary tokens, deletions,
/// duplications, splices with another seed, truncation).
pub fn mutate(rng: &mut SmallRng, seeds: &[Vec<u8>], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut data = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=8) {
        let len = data.len();
        let at = |rng: &mut SmallRng| rng.random_range(0..=len);
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = *[0u8, 0x7f, 0x80, 0xff, b'\n', b'\r', b' ', b'%', b'/', b'.']
                    .get(rng.random_range(0..10))
                    .unwrap_or(&0);
            }
            2 => {
                let i = at(rng);
                data.insert(i, rng.random());
            }
            3 | 4 if !dictionary.is_empty() => {
                let token = dictionary[rng.random_range(0..dictionary.len())];
                let i = at(rng);
                data.splice(i..i, token.iter().copied());
            }
            5 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                data.drain(a..b);
            }
            6 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                let chunk = data[a..b].to_vec();
                let i = at(rng);
                data.splice(i..i, chunk);
            }
            7 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => data.truncate(rng.random_range(0..len)),
            _ => {}
        }
    }
    data.truncate(MAX_LEN);
    data
}

/// A seed per target from its name, so that targets draw different cases
/// and a run stays reproducible (FNV-1a).
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
