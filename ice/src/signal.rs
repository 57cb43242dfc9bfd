//! The ICE path's signals, carried in rendezvous transport messages: one line of text each,
//! several to a message (at most [`MAX_TRANSPORT_SIGNAL`] bytes), separated by `\n`.
//!
//! ```text
//! creds <generation> <ufrag> <pwd>      this generation's credentials
//! cand <generation> <candidate>         a candidate, as webrtc-ice marshals it (RFC 8839)
//! end <generation> <count>              gathering done: that many candidates were shared
//! ```
//!
//! The generation starts at 0 and grows by one at each ICE restart; signals of an older
//! generation are stale.

use punchline::proto::rendezvous::MAX_TRANSPORT_SIGNAL;

/// One ICE signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The sender's credentials for a generation.
    Credentials {
        /// The generation.
        generation: u32,
        /// ICE user fragment.
        ufrag: String,
        /// ICE password.
        pwd: String,
    },
    /// One of the sender's candidates.
    Candidate {
        /// The generation.
        generation: u32,
        /// The candidate's attribute text (without `candidate:`).
        candidate: String,
    },
    /// The sender has gathered everything: `count` candidates in this generation.
    EndOfCandidates {
        /// The generation.
        generation: u32,
        /// How many candidates it shared.
        count: u32,
    },
}

/// Why a signal could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// Longer than a transport message may be.
    #[error("ICE signal of {0} bytes is too long")]
    TooLong(usize),
    /// Not UTF-8 text.
    #[error("ICE signal is not text")]
    NotText,
    /// An unknown kind.
    #[error("unknown ICE signal {0:?}")]
    UnknownKind(String),
    /// A field missing or malformed.
    #[error("malformed ICE signal: {0}")]
    Malformed(&'static str),
}

impl Signal {
    /// Its generation.
    pub fn generation(&self) -> u32 {
        match self {
            Signal::Credentials { generation, .. }
            | Signal::Candidate { generation, .. }
            | Signal::EndOfCandidates { generation, .. } => *generation,
        }
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Signal::Credentials {
                generation,
                ufrag,
                pwd,
            } => format!("creds {generation} {ufrag} {pwd}"),
            Signal::Candidate {
                generation,
                candidate,
            } => format!("cand {generation} {candidate}"),
            Signal::EndOfCandidates { generation, count } => format!("end {generation} {count}"),
        }
        .into_bytes()
    }

    /// Reads a signal.
    pub fn decode(bytes: &[u8]) -> Result<Signal, SignalError> {
        if bytes.len() > MAX_TRANSPORT_SIGNAL {
            return Err(SignalError::TooLong(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| SignalError::NotText)?;
        let (kind, rest) = text
            .split_once(' ')
            .ok_or(SignalError::Malformed("no fields"))?;
        let (generation, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let generation: u32 = generation
            .parse()
            .map_err(|_| SignalError::Malformed("generation"))?;
        let token = |s: &str, what| {
            if s.is_empty() || s.len() > 256 || !s.chars().all(|c| c.is_ascii_graphic()) {
                Err(SignalError::Malformed(what))
            } else {
                Ok(s.to_string())
            }
        };
        match kind {
            "creds" => {
                let (ufrag, pwd) = rest
                    .split_once(' ')
                    .ok_or(SignalError::Malformed("credentials"))?;
                Ok(Signal::Credentials {
                    generation,
                    ufrag: token(ufrag, "ufrag")?,
                    pwd: token(pwd, "pwd")?,
                })
            }
            "cand" => {
                if rest.is_empty() || rest.chars().any(|c| c.is_control()) {
                    return Err(SignalError::Malformed("candidate"));
                }
                Ok(Signal::Candidate {
                    generation,
                    candidate: rest.to_string(),
                })
            }
            "end" => Ok(Signal::EndOfCandidates {
                generation,
                count: rest.parse().map_err(|_| SignalError::Malformed("count"))?,
            }),
            other => Err(SignalError::UnknownKind(other.chars().take(16).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip() {
        for s in [
            Signal::Credentials {
                generation: 0,
                ufrag: "abcd".into(),
                pwd: "0123456789abcdef0123".into(),
            },
            Signal::Candidate {
                generation: 3,
                candidate: "1 1 udp 2130706431 127.0.0.1 40000 typ host".into(),
            },
            Signal::EndOfCandidates {
                generation: 1,
                count: 4,
            },
        ] {
            assert_eq!(Signal::decode(&s.encode()).unwrap(), s);
        }
    }

    #[test]
    fn bad_signals_are_refused_with_a_reason() {
        let bad: [(&[u8], &str); 7] = [
            (b"", "no fields"),
            (b"creds x a b", "generation"),
            (b"creds 1 onlyufrag", "credentials"),
            (b"cand 1 ", "candidate"),
            (b"end 1 many", "count"),
            (b"\xff\xfe", "not text"),
            (b"hello 1 2", "unknown"),
        ];
        for (input, want) in bad {
            let e = Signal::decode(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input:?}: {e}");
        }
        assert!(matches!(
            Signal::decode(&vec![b'a'; MAX_TRANSPORT_SIGNAL + 1]),
            Err(SignalError::TooLong(_))
        ));
    }
}
