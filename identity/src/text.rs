//! Small helpers shared by the text forms: hex encoding and decoding, and error snippets.

use std::fmt;

/// The first character of a hex string that is not a hex digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadHexChar {
    /// Byte offset of the character in the string that was decoded.
    pub(crate) position: usize,
    /// The offending character.
    pub(crate) found: char,
}

/// Decodes the hex string `s` into `out`, upper- or lowercase.
///
/// The caller checks beforehand that `s.len() == 2 * out.len()`; this function only reports the
/// first character that is not a hex digit.
pub(crate) fn decode_hex_into(s: &str, out: &mut [u8]) -> Result<(), BadHexChar> {
    if let Some((position, found)) = s.char_indices().find(|&(_, c)| !c.is_ascii_hexdigit()) {
        return Err(BadHexChar { position, found });
    }
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *byte = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
    Ok(())
}

/// The value of one ASCII hex digit (already checked to be one).
fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// Writes `bytes` as lowercase hex.
pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// At most the first 64 characters of `s`, followed by `…` when cut, for error messages about
/// input of any size.
pub(crate) fn snippet(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_mixed_case_hex() {
        let mut out = [0u8; 3];
        assert_eq!(decode_hex_into("0aFf10", &mut out), Ok(()));
        assert_eq!(out, [0x0a, 0xff, 0x10]);
    }

    #[test]
    fn reports_the_first_bad_character_with_its_byte_offset() {
        let mut out = [0u8; 3];
        assert_eq!(
            decode_hex_into("0aé1", &mut out),
            Err(BadHexChar {
                position: 2,
                found: 'é'
            })
        );
    }

    #[test]
    fn snippets_cut_long_input_on_a_character_boundary() {
        assert_eq!(snippet("short"), "short");
        let long = "é".repeat(100);
        let cut = snippet(&long);
        assert_eq!(cut.chars().count(), 65);
        assert!(cut.ends_with('…'));
    }
}
