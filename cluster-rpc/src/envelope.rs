//! The envelope: one binary frame format for requests, responses, errors, cancellations
//! and pub/sub. See the crate docs for the byte layout.

/// The envelope version this crate speaks. Version 2 added `Ready` and `Subscribed`, and
/// jobs get their ids from the hub, their progress and results travelling as job records
/// (see [`jobs`](crate::jobs)).
pub const VERSION: u8 = 2;

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
    /// The hub has registered the member (its services, job names and credits): calls to
    /// it can be routed from now on. The hub sends it first on every member connection.
    Ready {
        /// The largest frame the hub accepts; the member refuses larger ones itself.
        max_payload: u32,
    },
    /// The hub's answer to a `Subscribe`: the subscription is in place (`code` 0), or it
    /// was refused (`code` is an [`RpcErrorKind`](crate::RpcErrorKind) code).
    Subscribed {
        /// The subscription's id.
        sid: u64,
        /// 0, or why not.
        code: u8,
        /// Detail text of a refusal.
        message: &'a str,
    },
}

/// A frame that is not an envelope this crate can read, or an envelope that cannot be
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A version byte this crate does not speak.
    #[error("unsupported envelope version {0}")]
    UnknownVersion(u8),
    /// Bytes that do not form an envelope.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// A field longer than its length prefix can say (names: 255 bytes, subjects:
    /// 65,535). Refused rather than cut, so the far side never reads half a name.
    #[error("{field} of {len} bytes is longer than the envelope's limit of {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The most the envelope carries.
        max: usize,
    },
}

/// Longest service or method name an envelope carries.
pub const MAX_NAME_LEN: usize = u8::MAX as usize;
/// Longest subject an envelope carries.
pub const MAX_SUBJECT_LEN: usize = u16::MAX as usize;

const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const ERROR: u8 = 3;
const CANCEL: u8 = 4;
const SUBSCRIBE: u8 = 5;
const UNSUBSCRIBE: u8 = 6;
const PUBLISH: u8 = 7;
const MESSAGE: u8 = 8;
const READY: u8 = 9;
const SUBSCRIBED: u8 = 10;

impl<'a> Envelope<'a> {
    /// Appends the encoded envelope to `out`.
    ///
    /// # Errors
    /// [`EnvelopeError::TooLong`] for a name or subject longer than its length prefix
    /// allows; `out` is left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let start = out.len();
        let written = self.encode_into(out);
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let (kind, id) = match *self {
            Envelope::Request { id, .. } => (REQUEST, id),
            Envelope::Response { id, .. } => (RESPONSE, id),
            Envelope::Error { id, .. } => (ERROR, id),
            Envelope::Cancel { id } => (CANCEL, id),
            Envelope::Subscribe { sid, .. } => (SUBSCRIBE, sid),
            Envelope::Unsubscribe { sid } => (UNSUBSCRIBE, sid),
            Envelope::Publish { .. } => (PUBLISH, 0),
            Envelope::Message { sid, .. } => (MESSAGE, sid),
            Envelope::Ready { .. } => (READY, 0),
            Envelope::Subscribed { sid, .. } => (SUBSCRIBED, sid),
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
                push_name(out, "service name", service)?;
                push_name(out, "method name", method)?;
                out.extend_from_slice(payload);
            }
            Envelope::Response { payload, .. } => out.extend_from_slice(payload),
            Envelope::Error { code, message, .. } | Envelope::Subscribed { code, message, .. } => {
                out.push(code);
                out.extend_from_slice(message.as_bytes());
            }
            Envelope::Ready { max_payload } => out.extend_from_slice(&max_payload.to_le_bytes()),
            Envelope::Cancel { .. } | Envelope::Unsubscribe { .. } => {}
            Envelope::Subscribe { pattern, .. } => out.extend_from_slice(pattern.as_bytes()),
            Envelope::Publish { subject, payload }
            | Envelope::Message {
                subject, payload, ..
            } => {
                let len = u16::try_from(subject.len()).map_err(|_| EnvelopeError::TooLong {
                    field: "subject",
                    len: subject.len(),
                    max: MAX_SUBJECT_LEN,
                })?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(subject.as_bytes());
                out.extend_from_slice(payload);
            }
        }
        Ok(())
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
            ERROR | SUBSCRIBED => {
                let (code, message) = body
                    .split_first()
                    .ok_or(EnvelopeError::Malformed("answer without a code"))?;
                let (code, message) = (*code, utf8(message)?);
                if *kind == ERROR {
                    Envelope::Error { id, code, message }
                } else {
                    Envelope::Subscribed {
                        sid: id,
                        code,
                        message,
                    }
                }
            }
            READY => {
                let (max_payload, _) = body
                    .split_first_chunk::<4>()
                    .ok_or(EnvelopeError::Malformed("ready without a payload limit"))?;
                Envelope::Ready {
                    max_payload: u32::from_le_bytes(*max_payload),
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

fn push_name(out: &mut Vec<u8>, field: &'static str, name: &str) -> Result<(), EnvelopeError> {
    let len = u8::try_from(name.len()).map_err(|_| EnvelopeError::TooLong {
        field,
        len: name.len(),
        max: MAX_NAME_LEN,
    })?;
    out.push(len);
    out.extend_from_slice(name.as_bytes());
    Ok(())
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
            0u8..10,
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
            8 => Envelope::Ready { max_payload: d },
            9 => Envelope::Subscribed {
                sid: id,
                code: d as u8,
                message: b,
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
            e.encode(&mut out).unwrap();
            prop_assert_eq!(Envelope::decode(&out), Ok(e));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = Envelope::decode(&bytes);
        }
    }

    #[test]
    fn long_names_and_subjects_are_refused_not_cut() {
        let long = "m".repeat(MAX_NAME_LEN + 1);
        let mut out = vec![7];
        let request = Envelope::Request {
            id: 1,
            deadline_ms: 1,
            service: "S",
            method: &long,
            payload: b"",
        };
        assert_eq!(
            request.encode(&mut out),
            Err(EnvelopeError::TooLong {
                field: "method name",
                len: 256,
                max: 255
            })
        );
        assert_eq!(out, [7], "a refused envelope leaves nothing behind");
        let subject = "s".repeat(MAX_SUBJECT_LEN + 1);
        let publish = Envelope::Publish {
            subject: &subject,
            payload: b"",
        };
        assert!(matches!(
            publish.encode(&mut out),
            Err(EnvelopeError::TooLong {
                field: "subject",
                ..
            })
        ));
        let fits = "m".repeat(MAX_NAME_LEN);
        let request = Envelope::Request {
            id: 1,
            deadline_ms: 1,
            service: &fits,
            method: &fits,
            payload: b"",
        };
        let mut out = Vec::new();
        request.encode(&mut out).unwrap();
        assert_eq!(Envelope::decode(&out), Ok(request));
    }

    #[test]
    fn version_is_checked() {
        let mut out = Vec::new();
        Envelope::Cancel { id: 7 }.encode(&mut out).unwrap();
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
