//! The Redis protocol as a client library sends it, for tests that speak it byte by byte.

/// A request: an array of bulk strings ([`ringkv_wire::resp::encode_request`]).
pub fn request(arguments: &[&[u8]]) -> Vec<u8> {
    let mut bytes = Vec::new();
    ringkv_wire::resp::encode_request(arguments, &mut bytes);
    bytes
}
