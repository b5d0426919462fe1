//! The envelope: one binary frame format for requests, responses, errors, cancellations
//! and pub/sub. See the crate docs for the byte layout.

/// The envelope version this crate speaks.
pub const VERSION: u8 = 1;

/// One decoded frame, borrowing from the bytes it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Envelope<'a> {
    /// Call `method` of `service`; answer within `deadline_ms` (0: no deadline).
    Request {
        /// Correlation id, unique per caller and connection.
        id: u64,
        /// Relative deadline in ms (relative, so clocks need not agree).
        deadline_ms: u32,
        /// Service name.
        service: &'a str,
        /// Method name.
        method: &'a str,
        /// The codec-encoded request.
        payload: &'a [u8],
    },
    /// The codec-encoded return value of request `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The codec-encoded response.
        payload: &'a [u8],
    },
    /// Request `id` failed with an [`RpcError`](crate::RpcError) code.
    Error {
        /// The request's id.
        id: u64,
        /// The error's wire code.
        code: u8,
        /// Detail text.
        message: &'a str,
    },
    /// The caller gave up on request `id`: stop its handler.
    Cancel {
        /// The request's id.
        id: u64,
    },
    /// Deliver messages on subjects matching `pattern`, tagged with `sid`.
    Subscribe {
        /// Subscription id, unique per subscriber and connection.
        sid: u64,
        /// A subject pattern (`*` one token, `>` the rest).
        pattern: &'a str,
    },
    /// Stop subscription `sid`.
    Unsubscribe {
        /// The subscription's id.
        sid: u64,
    },
    /// Publish `payload` on `subject`.
    Publish {
        /// The subject (no wildcards).
        subject: &'a str,
        /// The codec-encoded message.
        payload: &'a [u8],
    },
    /// A published message, delivered for subscription `sid`.
    Message {
        /// The subscription it matched.
        sid: u64,
        /// The subject it was published on.
        subject: &'a str,
        /// The codec-encoded message.
        payload: &'a [u8],
    },
}

/// A frame that is not an envelope this crate can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A version byte this crate does not speak.
    #[error("unsupported envelope version {0}")]
    UnknownVersion(u8),
    /// Bytes that do not form an envelope.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
}

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const ERROR: u8 = 3;
const CANCEL: u8 = 4;
const SUBSCRIBE: u8 = 5;
const UNSUBSCRIBE: u8 = 6;
const PUBLISH: u8 = 7;
const MESSAGE: u8 = 8;

impl<'a> Envelope<'a> {
    /// Appends the encoded envelope to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, id) = match *self {
            Envelope::Request { id, .. } => (REQUEST, id),
            Envelope::Response { id, .. } => (RESPONSE, id),
            Envelope::Error { id, .. } => (ERROR, id),
            Envelope::Cancel { id } => (CANCEL, id),
            Envelope::Subscribe { sid, .. } => (SUBSCRIBE, sid),
            Envelope::Unsubscribe { sid } => (UNSUBSCRIBE, sid),
            Envelope::Publish { .. } => (PUBLISH, 0),
            Envelope::Message { sid, .. } => (MESSAGE, sid),
        };
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&id.to_le_bytes());
        match *self {
            Envelope::Request {
                deadline_ms,
                service,
                method,
                payload,
                ..
            } => {
                out.extend_from_slice(&deadline_ms.to_le_bytes());
                push_short(out, service);
                push_short(out, method);
                out.extend_from_slice(payload);
            }
            Envelope::Response { payload, .. } => out.extend_from_slice(payload),
            Envelope::Error { code, message, .. } => {
                out.push(code);
                out.extend_from_slice(message.as_bytes());
            }
            Envelope::Cancel { .. } | Envelope::Unsubscribe { .. } => {}
            Envelope::Subscribe { pattern, .. } => out.extend_from_slice(pattern.as_bytes()),
            Envelope::Publish { subject, payload }
            | Envelope::Message {
                subject, payload, ..
            } => {
                let len = u16::try_from(subject.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&subject.as_bytes()[..usize::from(len)]);
                out.extend_from_slice(payload);
            }
        }
    }

    /// Decodes an envelope. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// [`EnvelopeError::UnknownVersion`] for another version byte, and
    /// [`EnvelopeError::Malformed`] for anything else that is not an envelope.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        let [version, kind, rest @ ..] = bytes else {
            return Err(EnvelopeError::Malformed("shorter than its header"));
        };
        if *version != VERSION {
            return Err(EnvelopeError::UnknownVersion(*version));
        }
        let (id, body) = take_u64(rest)?;
        Ok(match *kind {
            REQUEST => {
                let (deadline, body) = body
                    .split_first_chunk::<4>()
                    .ok_or(EnvelopeError::Malformed("request without a deadline"))?;
                let (service, body) = take_short(body)?;
                let (method, payload) = take_short(body)?;
                Envelope::Request {
                    id,
                    deadline_ms: u32::from_le_bytes(*deadline),
                    service,
                    method,
                    payload,
                }
            }
            RESPONSE => Envelope::Response { id, payload: body },
            ERROR => {
                let (code, message) = body
                    .split_first()
                    .ok_or(EnvelopeError::Malformed("error without a code"))?;
                Envelope::Error {
                    id,
                    code: *code,
                    message: utf8(message)?,
                }
            }
            CANCEL => Envelope::Cancel { id },
            SUBSCRIBE => Envelope::Subscribe {
                sid: id,
                pattern: utf8(body)?,
            },
            UNSUBSCRIBE => Envelope::Unsubscribe { sid: id },
            PUBLISH | MESSAGE => {
                let (len, body) = body
                    .split_first_chunk::<2>()
                    .ok_or(EnvelopeError::Malformed("subject length missing"))?;
                let len = usize::from(u16::from_le_bytes(*len));
                if body.len() < len {
                    return Err(EnvelopeError::Malformed("subject cut short"));
                }
                let (subject, payload) = body.split_at(len);
                let subject = utf8(subject)?;
                if *kind == PUBLISH {
                    Envelope::Publish { subject, payload }
                } else {
                    Envelope::Message {
                        sid: id,
                        subject,
                        payload,
                    }
                }
            }
            _ => return Err(EnvelopeError::Malformed("unknown kind")),
        })
    }
}

fn take_u64(bytes: &[u8]) -> Result<(u64, &[u8]), EnvelopeError> {
    let (id, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or(EnvelopeError::Malformed("shorter than its header"))?;
    Ok((u64::from_le_bytes(*id), rest))
}

fn push_short(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn take_short(bytes: &[u8]) -> Result<(&str, &[u8]), EnvelopeError> {
    let (len, rest) = bytes
        .split_first()
        .ok_or(EnvelopeError::Malformed("name length missing"))?;
    let len = usize::from(*len);
    if rest.len() < len {
        return Err(EnvelopeError::Malformed("name cut short"));
    }
    let (name, rest) = rest.split_at(len);
    Ok((utf8(name)?, rest))
}

fn utf8(bytes: &[u8]) -> Result<&str, EnvelopeError> {
    std::str::from_utf8(bytes).map_err(|_| EnvelopeError::Malformed("text is not utf-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn envelope() -> impl Strategy<Value = (u8, u64, u32, String, String, Vec<u8>)> {
        (
            0u8..8,
            any::<u64>(),
            any::<u32>(),
            "[a-zA-Z0-9_.*>]{0,40}",
            "[a-z_]{0,30}",
            any::<Vec<u8>>(),
        )
    }

    fn build<'a>(kind: u8, id: u64, d: u32, a: &'a str, b: &'a str, p: &'a [u8]) -> Envelope<'a> {
        match kind {
            0 => Envelope::Request {
                id,
                deadline_ms: d,
                service: a,
                method: b,
                payload: p,
            },
            1 => Envelope::Response { id, payload: p },
            2 => Envelope::Error {
                id,
                code: d as u8,
                message: b,
            },
            3 => Envelope::Cancel { id },
            4 => Envelope::Subscribe {
                sid: id,
                pattern: a,
            },
            5 => Envelope::Unsubscribe { sid: id },
            6 => Envelope::Publish {
                subject: a,
                payload: p,
            },
            _ => Envelope::Message {
                sid: id,
                subject: a,
                payload: p,
            },
        }
    }

    proptest! {
        #[test]
        fn round_trip((kind, id, d, a, b, p) in envelope()) {
            let e = build(kind, id, d, &a, &b, &p);
            let mut out = Vec::new();
            e.encode(&mut out);
            prop_assert_eq!(Envelope::decode(&out), Ok(e));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = Envelope::decode(&bytes);
        }
    }

    #[test]
    fn version_is_checked() {
        let mut out = Vec::new();
        Envelope::Cancel { id: 7 }.encode(&mut out);
        out[0] = 9;
        assert_eq!(
            Envelope::decode(&out),
            Err(EnvelopeError::UnknownVersion(9))
        );
        assert!(matches!(
            Envelope::decode(&[1]),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
