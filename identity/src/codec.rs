//! The binary decoding error and the bounds-checked reader shared by every punchline wire
//! format: identities and certificates here, packets, frames and signals in `punchline`.

/// Why binary input (an identity, a certificate, a packet, a frame) could not be decoded.
///
/// Offsets and lengths are counted in bytes from the start of the input given to the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("input truncated: needed {needed} bytes, only {available} available")]
    Truncated {
        /// How many bytes the decoder needed in total.
        needed: usize,
        /// How many bytes the input had.
        available: usize,
    },
    /// A length field is larger than the format allows.
    #[error("{what} is too long: {len} > {max}")]
    TooLong {
        /// What the length describes.
        what: &'static str,
        /// The length found in the input.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// A count or value is larger than the format allows.
    #[error("{what} is {value}, more than the maximum {max}")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A fixed-size body has the wrong length.
    #[error("{what} has length {len}, expected {expected}")]
    BadLength {
        /// What the length describes.
        what: &'static str,
        /// The length found in the input.
        len: usize,
        /// The only length allowed.
        expected: usize,
    },
    /// An identity type tag that this crate cannot decode.
    #[error("unknown identity type tag {0}")]
    UnknownTag(u8),
    /// An unknown packet, frame or signal type.
    #[error("unknown {what} type 0x{tag:02x}")]
    UnknownType {
        /// Packet, frame or signal.
        what: &'static str,
        /// The type byte.
        tag: u8,
    },
    /// A format version that this crate does not understand.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// A string body is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// 32 bytes that are not a valid ed25519 public key.
    #[error("bytes are not a valid ed25519 public key")]
    InvalidKey,
    /// The input is well-framed but its content breaks a rule of the format.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
}

/// A cursor over a byte slice whose every read is bounds-checked; a failed read consumes
/// nothing.
///
/// Errors report positions relative to the start of the whole slice, so nested decoders sharing
/// one reader report consistent offsets.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Reader { input, pos: 0 }
    }

    /// How many bytes have been consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    /// The unread rest.
    pub fn rest(&self) -> &'a [u8] {
        &self.input[self.pos..]
    }

    /// Consumes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.saturating_add(n);
        match self.input.get(self.pos..end) {
            Some(bytes) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(DecodeError::Truncated {
                needed: end,
                available: self.input.len(),
            }),
        }
    }

    /// Consumes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Consumes one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Consumes a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Consumes a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Consumes a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Runs a read made of several reads; when it fails, the reader is back where it was.
    fn atomic<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        let start = self.pos;
        let r = read(self);
        if r.is_err() {
            self.pos = start;
        }
        r
    }

    /// Consumes a QUIC variable-length integer (1, 2, 4 or 8 bytes; up to 2^62 - 1).
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        self.atomic(|r| {
            let first = r.u8()?;
            let len = 1usize << (first >> 6);
            let v = r
                .bytes(len - 1)?
                .iter()
                .fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
            Ok(v)
        })
    }

    /// Consumes a varint that must not exceed `max`; `what` names it in the error.
    pub fn varint_max(&mut self, what: &'static str, max: u64) -> Result<u64, DecodeError> {
        self.atomic(|r| {
            let value = r.varint()?;
            if value > max {
                return Err(DecodeError::TooLarge { what, value, max });
            }
            Ok(value)
        })
    }

    /// Consumes at most `max` bytes preceded by a one-byte length; `what` names them in errors.
    pub fn short_bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        self.atomic(|r| {
            let len = r.u8()? as usize;
            if len > max {
                return Err(DecodeError::TooLong { what, len, max });
            }
            r.bytes(len)
        })
    }

    /// Consumes a UTF-8 string of at most `max` bytes preceded by a one-byte length.
    pub fn short_string(&mut self, max: usize) -> Result<String, DecodeError> {
        self.atomic(|r| {
            String::from_utf8(r.short_bytes("string", max)?.to_vec())
                .map_err(|_| DecodeError::InvalidUtf8)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_fields_in_order() {
        let bytes = [7, 0x01, 0x02, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u32(), Ok(3));
        assert_eq!(r.u64(), Ok(4));
        assert_eq!(r.position(), bytes.len());
    }

    #[test]
    fn truncation_reports_absolute_offsets() {
        let bytes = [1, 2, 3];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(
            r.u32(),
            Err(DecodeError::Truncated {
                needed: 6,
                available: 3
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.position(), 2);
        assert_eq!(
            r.bytes(usize::MAX),
            Err(DecodeError::Truncated {
                needed: usize::MAX,
                available: 3
            })
        );
    }

    #[test]
    fn a_failed_composite_read_consumes_nothing() {
        // A length byte of 5 over 2 bytes, a length over the limit, a cut varint.
        for (bytes, max) in [(&[5u8, 1, 2][..], 10), (&[5, 1, 2, 3, 4, 5][..], 4)] {
            let mut r = Reader::new(bytes);
            assert!(r.short_bytes("name", max).is_err());
            assert_eq!(r.position(), 0);
            assert!(r.short_string(max).is_err());
            assert_eq!(r.position(), 0);
        }
        let mut r = Reader::new(&[5, 1, 2, 3, 4, 5]);
        assert_eq!(
            r.short_bytes("name", 4),
            Err(DecodeError::TooLong {
                what: "name",
                len: 5,
                max: 4
            })
        );
        let mut r = Reader::new(&[0x80, 0, 1]);
        assert!(r.varint().is_err());
        assert_eq!(r.position(), 0);
        let mut r = Reader::new(&[0x40, 0xff]);
        assert_eq!(
            r.varint_max("count", 10),
            Err(DecodeError::TooLarge {
                what: "count",
                value: 255,
                max: 10
            })
        );
        assert_eq!(r.position(), 0);
        assert_eq!(r.varint(), Ok(255));
    }
}
