//! The gRPC health probe's reader of a `HealthCheckResponse` (the app's
//! answer to kubelet's gRPC probe, read by the proxy).

use outrigger_proxy::probe::grpc_health;

/// Never panics (so never reads past its input: slices are checked);
/// reads only a whole uncompressed frame whose length is the body's; a
/// message it reads, with one more `status` field after it, reads as that
/// status (proto3: the last value wins); a proper prefix of a frame never
/// reads.
pub fn serving_status(data: &[u8]) {
    if let Ok(status) = grpc_health::serving_status(data) {
        assert_eq!(data[0], 0, "a compressed frame was read");
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(data.len(), 5 + len, "read past or short of the frame");
        let _ = status;
    }
    // The input as a message, in a frame.
    if let Ok(status) = grpc_health::serving_status(&frame(data)) {
        let last = u64::from(data.first().copied().unwrap_or(0)) * 1_000_003;
        let mut message = data.to_vec();
        message.push(0x08); // field 1, varint
        put_varint(&mut message, last);
        assert_eq!(grpc_health::serving_status(&frame(&message)), Ok(last));
        let f = frame(data);
        for n in 0..f.len() {
            assert!(
                grpc_health::serving_status(&f[..n]).is_err(),
                "{n} of {status}"
            );
        }
    }
}

/// One uncompressed gRPC message frame holding `message`.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut f = vec![0];
    f.extend_from_slice(&(message.len() as u32).to_be_bytes());
    f.extend_from_slice(message);
    f
}

/// A protobuf varint, written independently of the reader under test.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
