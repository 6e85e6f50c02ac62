//! The HTTP/2 flood guard's frame scanner (`transport::h2_guard`): it reads
//! the frame headers of a client's bytes as they pass, in whatever pieces
//! TCP delivers them.

use outrigger_proxy::transport::h2_guard::{FrameHead, FrameScanner};

pub const DICTIONARY: &[&[u8]] = &[
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x00\x00\x08\x06\x00\x00\x00\x00\x00",
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"\x00\x00\x00\x04\x01\x00\x00\x00\x00",
    b"\x00\x00\x01\x01\x05\x00\x00\x00\x01",
    b"\xff\xff\xff",
];

/// Never panics; the frame heads found, and whether the bytes end between
/// two frames, are the same whatever the split of the input into reads
/// (the split is drawn from the input itself), and the same as a plain
/// reading of the preface and then header + payload after header.
pub fn scan(data: &[u8]) {
    let (cuts, stream) = match data.split_first() {
        Some((&k, rest)) => (usize::from(k % 16) + 1, rest),
        None => return,
    };
    let whole = heads_of(stream, &[stream.len()]);
    // Pieces of growing sizes from the input's first byte: 1, 2, ... up
    // to `cuts`, round and round.
    let mut sizes = Vec::new();
    let mut left = stream.len();
    let mut k = 0;
    while left > 0 {
        let size = (k % cuts + 1).min(left);
        sizes.push(size);
        left -= size;
        k += 1;
    }
    assert_eq!(heads_of(stream, &sizes), whole, "split into {sizes:?}");
    assert_eq!(whole, reference(stream));
}

fn heads_of(stream: &[u8], sizes: &[usize]) -> (Vec<FrameHead>, bool) {
    let mut scanner = FrameScanner::client();
    let mut heads = Vec::new();
    let mut at = 0;
    for &size in sizes {
        scanner.feed(&stream[at..at + size], |h| heads.push(h));
        at += size;
    }
    (heads, scanner.at_boundary())
}

/// A plain reading: 24 bytes of preface, then frames.
fn reference(stream: &[u8]) -> (Vec<FrameHead>, bool) {
    let mut heads = Vec::new();
    let Some(mut rest) = stream.get(24..) else {
        return (heads, false);
    };
    loop {
        if rest.is_empty() {
            return (heads, true);
        }
        let Some(h) = rest.get(..9) else {
            return (heads, false);
        };
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        heads.push(FrameHead {
            len,
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        });
        match rest.get(9 + len as usize..) {
            Some(r) => rest = r,
            None => return (heads, false),
        }
    }
}
