//! [`create_bytes`]: a FlatBuffers byte vector written with one copy.

use flatbuffers::{FlatBufferBuilder, Vector, WIPOffset};

/// `data` as a `[ubyte]` vector, copied in one go. `create_vector` copies a slice element by
/// element, a call per byte of every key and value; a byte string is the same vector with a
/// zero byte after its end, which no reader sees (the length prefix bounds the vector).
pub(crate) fn create_bytes<'fbb>(
    builder: &mut FlatBufferBuilder<'fbb>,
    data: &[u8],
) -> WIPOffset<Vector<'fbb, u8>> {
    WIPOffset::new(builder.create_byte_string(data).value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_as_the_same_bytes_as_an_element_by_element_vector() {
        for data in [&b""[..], b"k", b"a value of some length", &[0u8, 255, 7, 0][..]] {
            let mut builder = FlatBufferBuilder::new();
            let vector = create_bytes(&mut builder, data);
            builder.finish_minimal(vector);
            let read = flatbuffers::root::<Vector<u8>>(builder.finished_data()).expect("verifies");
            assert_eq!(read.bytes(), data);
        }
    }
}
