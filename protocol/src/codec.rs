//! The one place that touches bincode.
//!
//! Every frame body is bincode 2.0.1 with `config::standard()`: little-endian, variable-length
//! integers, and a decode limit. The message types derive `Encode`/`Decode` through the
//! re-exports below; nothing else in the workspace names bincode. Should bincode ever need
//! replacing with a compatible successor, this file and the derive paths are all that change.
//!
//! Decoding always runs with a limit: bincode charges every container against it *before*
//! allocating (`length × size_of::<T>()`), so a length prefix that claims more than the
//! limit fails without allocating. The limit passed here is the decode limit of the direction
//! (`limits::MAX_CLIENT_DECODE` for client frames, `limits::MAX_SERVER_FRAME` for server ones).

use bincode::config::{self, Configuration, LittleEndian, Varint};
use bincode::enc::write::Writer;

pub(crate) use bincode::de::{BorrowDecoder, Decoder};
pub(crate) use bincode::error::DecodeError as RawDecodeError;
pub(crate) use bincode::{BorrowDecode, Decode, Encode};

/// The configuration of every frame body, with the given decode limit in bytes.
const fn body_config<const LIMIT: usize>()
-> Configuration<LittleEndian, Varint, config::Limit<LIMIT>> {
    config::standard().with_limit::<LIMIT>()
}

/// Appends to a `Vec` without the `std::io` error detour.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends the encoding of `value` to `out`. Encoding into a `Vec` cannot fail for the
/// protocol's types (no maps, no I/O), so the error is only reported, never expected.
pub(crate) fn encode_into<T: Encode>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    // The limit only applies to decoding; any value works here.
    bincode::encode_into_writer(value, VecWriter(out), body_config::<0>())
        .map_err(|e| e.to_string())
}

/// The length of the encoding of `value`, without encoding it anywhere.
pub(crate) fn encoded_len<T: Encode>(value: &T) -> Result<usize, String> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(value, &mut size, body_config::<0>()).map_err(|e| e.to_string())?;
    Ok(size.bytes_written)
}

/// Decodes exactly one `T` from all of `bytes`, charging allocations against `LIMIT`.
/// Trailing bytes are an error: a body must be exactly one value.
pub(crate) fn decode_value<T: Decode<()>, const LIMIT: usize>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) =
        bincode::decode_from_slice::<T, _>(bytes, body_config::<LIMIT>()).map_err(|e| match e {
            RawDecodeError::UnexpectedEnd { .. } => "body ends before the value does".to_owned(),
            RawDecodeError::LimitExceeded => {
                "body claims more memory than the decode limit allows".to_owned()
            }
            other => other.to_string(),
        })?;
    if used != bytes.len() {
        return Err(format!(
            "{} bytes after the end of the value",
            bytes.len() - used
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_varints_little_endian() {
        let mut out = Vec::new();
        for v in [0u64, 250, 251, 65_535, 65_536, u64::from(u32::MAX) + 1] {
            encode_into(&v, &mut out).unwrap();
        }
        assert_eq!(
            hex::encode(out),
            concat!(
                "00",
                "fa",
                "fbfb00",
                "fbffff",
                "fc00000100",
                "fd0000000001000000"
            )
        );
    }

    #[test]
    fn trailing_bytes_and_short_bodies_are_rejected() {
        let trailing = decode_value::<u8, 16>(&[1, 2]).unwrap_err();
        assert!(trailing.contains("bytes after"), "{trailing}");
        let short = decode_value::<u32, 16>(&[0xfc, 1]).unwrap_err();
        assert!(short.contains("ends before"), "{short}");
        assert_eq!(decode_value::<u32, 16>(&[0xfb, 0x00, 0x01]).unwrap(), 256);
    }

    #[test]
    fn length_prefixes_beyond_the_limit_fail_before_allocating() {
        // A Vec<u64> claiming 2^40 elements in a 9-byte body.
        let body = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
        let err = decode_value::<Vec<u64>, 1024>(&body).unwrap_err();
        assert!(err.contains("limit"), "{err}");
    }
}
