//! Broadcast with gather across hubs, and the directory of hubs it needs.
//!
//! Every hub announces itself on `{prefix}.hello` when it starts and every
//! [`ClusterOptions::presence_interval`](super::ClusterOptions::presence_interval), and says
//! goodbye when it shuts down; a hub that announced itself and is new to another answers
//! with its own hello, so a new hub knows the others within a round trip. A hub not heard
//! from for three intervals is taken as gone.
//!
//! A broadcast goes to `{prefix}.gather`, which every hub holds: each hub calls its own
//! members serving the service, waits for all of them (or the deadline), and answers once
//! with every member's outcome. The caller waits for each hub in its directory until the
//! deadline; the hubs that did not answer are named in the result, never left out
//! silently.

use crate::error::{RpcError, RpcErrorKind};
use bytes::{BufMut, Bytes, BytesMut};
use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest hub name sent in a hello.
const MAX_NAME: usize = 255;

/// The hubs this hub knows of, by id: their names and when they were last heard from.
#[derive(Default)]
pub(crate) struct Directory {
    hubs: Mutex<HashMap<Uuid, (String, Instant), RandomState>>,
}

impl Directory {
    fn hubs(&self) -> MutexGuard<'_, HashMap<Uuid, (String, Instant), RandomState>> {
        self.hubs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hub `id` said hello; true when it was not known.
    pub(crate) fn heard(&self, id: Uuid, name: &str) -> bool {
        self.hubs()
            .insert(id, (name.to_owned(), Instant::now()))
            .is_none()
    }

    /// Hub `id` said goodbye.
    pub(crate) fn left(&self, id: Uuid) {
        self.hubs().remove(&id);
    }

    /// The hubs heard from within `alive`, by id and name; the others are forgotten.
    pub(crate) fn alive(&self, alive: Duration) -> Vec<(Uuid, String)> {
        let mut hubs = self.hubs();
        hubs.retain(|_, (_, seen)| seen.elapsed() <= alive);
        hubs.iter()
            .map(|(id, (name, _))| (*id, name.clone()))
            .collect()
    }
}

/// A hello (`true`) or goodbye of hub `id` named `name`: a byte, the id, the name.
pub(crate) fn presence(hello: bool, id: Uuid, name: &str) -> Bytes {
    let name = clip_name(name);
    let mut out = BytesMut::with_capacity(17 + name.len());
    out.put_u8(u8::from(hello));
    out.put_slice(id.as_bytes());
    out.put_slice(name.as_bytes());
    out.freeze()
}

/// Reads a hello or goodbye: `(hello, id, name)`.
pub(crate) fn read_presence(bytes: &[u8]) -> Option<(bool, Uuid, &str)> {
    let (&kind, rest) = bytes.split_first()?;
    let id = Uuid::from_slice(rest.get(..16)?).ok()?;
    let name = std::str::from_utf8(rest.get(16..)?).ok()?;
    (kind <= 1 && name.len() <= MAX_NAME).then_some((kind == 1, id, name))
}

fn clip_name(name: &str) -> &str {
    crate::peer::clip(name, MAX_NAME)
}

/// One member's outcome in a hub's answer.
pub(crate) type MemberOutcome = (Uuid, Result<Vec<u8>, RpcError>);

/// A hub's answer to a broadcast: its id and name, then per member its id, `0` and the
/// encoded response, or its error's code and detail, each with a u32 length.
pub(crate) fn encode_answer(id: Uuid, name: &str, outcomes: &[MemberOutcome]) -> Bytes {
    let name = clip_name(name);
    let mut out = BytesMut::new();
    out.put_slice(id.as_bytes());
    out.put_u8(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.put_slice(name.as_bytes());
    for (member, outcome) in outcomes {
        out.put_slice(member.as_bytes());
        let (code, body) = match outcome {
            Ok(bytes) => (0, bytes.as_slice()),
            Err(error) => (error.code(), error.detail().as_bytes()),
        };
        out.put_u8(code);
        out.put_u32_le(u32::try_from(body.len()).unwrap_or(u32::MAX));
        out.put_slice(body);
    }
    out.freeze()
}

/// A hub's answer to a broadcast.
pub(crate) struct HubAnswer {
    pub(crate) hub: Uuid,
    pub(crate) name: String,
    pub(crate) outcomes: Vec<MemberOutcome>,
}

/// Reads a hub's answer; an answer that does not add up is refused whole.
pub(crate) fn decode_answer(bytes: &[u8]) -> Result<HubAnswer, RpcError> {
    let bad = || RpcError::new(RpcErrorKind::Decode, "a malformed broadcast answer");
    let mut rest = Reader(bytes);
    let hub = Uuid::from_slice(rest.take(16).ok_or_else(bad)?).map_err(|_| bad())?;
    let name_len = usize::from(rest.byte().ok_or_else(bad)?);
    let name = std::str::from_utf8(rest.take(name_len).ok_or_else(bad)?)
        .map_err(|_| bad())?
        .to_owned();
    let mut outcomes = Vec::new();
    while !rest.0.is_empty() {
        let member = Uuid::from_slice(rest.take(16).ok_or_else(bad)?).map_err(|_| bad())?;
        let code = rest.byte().ok_or_else(bad)?;
        let len: [u8; 4] = rest
            .take(4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        let len = usize::try_from(u32::from_le_bytes(len)).map_err(|_| bad())?;
        let body = rest.take(len).ok_or_else(bad)?;
        let outcome = if code == 0 {
            Ok(body.to_vec())
        } else {
            let detail = std::str::from_utf8(body).map_err(|_| bad())?;
            Err(RpcError::from_wire(code, detail))
        };
        outcomes.push((member, outcome));
    }
    Ok(HubAnswer {
        hub,
        name,
        outcomes,
    })
}

/// The bytes of an answer not read yet.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_garbage_is_refused() {
        let (hub, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let outcomes = vec![
            (a, Ok(vec![1, 2, 3])),
            (b, Err(RpcError::new(RpcErrorKind::Timeout, "slow"))),
        ];
        let bytes = encode_answer(hub, "hub-b", &outcomes);
        let answer = decode_answer(&bytes).unwrap();
        assert_eq!((answer.hub, answer.name.as_str()), (hub, "hub-b"));
        assert_eq!(answer.outcomes, outcomes);
        let empty = decode_answer(&encode_answer(hub, "c", &[])).unwrap();
        assert!(empty.outcomes.is_empty());
        // Cut anywhere inside a member's record, or a length past the end: refused.
        // (22: the hub, 46: the first member; 51: five bytes into the second.)
        for cut in [17, 20, 51, bytes.len() - 1, bytes.len() - 30] {
            assert!(decode_answer(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = encode_answer(hub, "x", &[(a, Ok(vec![9]))]).to_vec();
        let at = 16 + 1 + 1 + 16 + 1;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_answer(&lying).is_err());
    }

    #[test]
    fn presence_round_trips_and_forgets_the_silent() {
        let id = Uuid::new_v4();
        let hello = presence(true, id, "hub-a");
        assert_eq!(read_presence(&hello), Some((true, id, "hub-a")));
        assert_eq!(
            read_presence(&presence(false, id, "")),
            Some((false, id, ""))
        );
        assert_eq!(read_presence(&hello[..10]), None);
        assert_eq!(read_presence(&[7; 20]), None);
        let directory = Directory::default();
        assert!(directory.heard(id, "hub-a"));
        assert!(!directory.heard(id, "hub-a"));
        assert_eq!(
            directory.alive(Duration::from_secs(60)),
            vec![(id, "hub-a".to_owned())]
        );
        directory.left(id);
        assert!(directory.alive(Duration::from_secs(60)).is_empty());
    }
}
