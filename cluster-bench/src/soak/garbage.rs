//! Garbage after a valid upgrade: each connection completes the upgrade, then sends one
//! kind of broken frame. The provider must close each one with the right close code.

use super::wire::{self, opcode};
use super::Check;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use tokio::io::AsyncWriteExt;

/// Connections doing their garbage at once.
const CONCURRENCY: usize = 50;

/// One kind of broken input, and the close code RFC 6455 asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Garbage {
    /// A client frame without a mask (1002).
    Unmasked,
    /// A reserved data opcode (1002).
    BadOpcode,
    /// RSV1, RSV2 and RSV3 set with no extension negotiated (1002).
    ReservedBits,
    /// A 64-bit length with its most significant bit set, 2^63 (1002).
    HugeLength,
    /// A ping without FIN: control frames cannot be fragmented (1002).
    FragmentedControl,
    /// A text message that is not UTF-8 (1007).
    InvalidUtf8,
}

/// How many kinds of garbage there are.
pub(crate) const KINDS: usize = ALL.len();

const ALL: [Garbage; 6] = [
    Garbage::Unmasked,
    Garbage::BadOpcode,
    Garbage::ReservedBits,
    Garbage::HugeLength,
    Garbage::FragmentedControl,
    Garbage::InvalidUtf8,
];

impl Garbage {
    /// The bytes sent after the upgrade.
    fn bytes(self) -> Vec<u8> {
        match self {
            Garbage::Unmasked => vec![0x80 | opcode::TEXT, 5, b'h', b'e', b'l', b'l', b'o'],
            Garbage::BadOpcode => wire::final_frame(opcode::RESERVED, b"x"),
            Garbage::ReservedBits => wire::client_frame(0x80 | 0x70 | opcode::TEXT, b"x"),
            Garbage::HugeLength => {
                let mut frame = vec![0x80 | opcode::BINARY];
                wire::push_length(&mut frame, 0x80, 1 << 63);
                frame.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
                frame
            }
            Garbage::FragmentedControl => wire::client_frame(opcode::PING, b"not final"),
            Garbage::InvalidUtf8 => wire::final_frame(opcode::TEXT, &[b'o', b'k', 0xff, 0xfe]),
        }
    }

    /// The close code the provider must answer with.
    fn expected(self) -> u16 {
        match self {
            Garbage::InvalidUtf8 => cluster_transport::close_code::INVALID_PAYLOAD,
            _ => cluster_transport::close_code::PROTOCOL,
        }
    }
}

/// How the phase runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GarbageAfterUpgrade {
    /// Connections, spread evenly over the kinds of garbage.
    pub(crate) conns: usize,
}

impl GarbageAfterUpgrade {
    /// Runs the phase against the provider on `port`.
    pub(crate) async fn run(self, port: u16, key: &str) -> anyhow::Result<Vec<Check>> {
        let outcomes: Vec<(Garbage, Result<Option<u16>, String>)> =
            futures_util::stream::iter((0..self.conns).map(|i| ALL[i % ALL.len()]))
                .map(|garbage| async move {
                    let got = send(port, key, garbage).await.map_err(|e| format!("{e:#}"));
                    (garbage, got)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        let mut wrong: BTreeMap<Garbage, Vec<String>> = BTreeMap::new();
        for (garbage, got) in &outcomes {
            let seen = match got {
                Ok(Some(code)) if *code == garbage.expected() => continue,
                Ok(Some(code)) => format!("close {code}"),
                Ok(None) => "no close frame".to_owned(),
                Err(error) => error.clone(),
            };
            wrong.entry(*garbage).or_default().push(seen);
        }
        let right = outcomes.len() - wrong.values().map(Vec::len).sum::<usize>();
        let detail = if wrong.is_empty() {
            format!("{right} of {} closed with the right code", self.conns)
        } else {
            let worst: Vec<String> = wrong
                .iter()
                .map(|(garbage, seen)| {
                    format!(
                        "{garbage:?} (want {}): {} wrong, e.g. {}",
                        garbage.expected(),
                        seen.len(),
                        seen.first().map_or("", String::as_str)
                    )
                })
                .collect();
            format!(
                "{right} of {} closed with the right code; {}",
                self.conns,
                worst.join("; ")
            )
        };
        Ok(vec![Check::new(
            "every garbage connection closed with the right code",
            wrong.is_empty() && right == self.conns,
            detail,
        )])
    }
}

/// Upgrades, sends `garbage`, and returns the close code the provider answered with.
async fn send(port: u16, key: &str, garbage: Garbage) -> anyhow::Result<Option<u16>> {
    let (mut stream, pending) = wire::upgraded(port, key).await?;
    stream.write_all(&garbage.bytes()).await?;
    wire::close_code(&mut stream, pending).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_broken_in_its_own_way() {
        assert_eq!(Garbage::Unmasked.bytes()[1] & 0x80, 0);
        assert_eq!(Garbage::BadOpcode.bytes()[0] & 0x0F, opcode::RESERVED);
        assert_eq!(Garbage::ReservedBits.bytes()[0] & 0x70, 0x70);
        let huge = Garbage::HugeLength.bytes();
        assert_eq!((huge[1], huge[2]), (0x80 | 127, 0x80));
        assert_eq!(Garbage::FragmentedControl.bytes()[0], opcode::PING);
        assert_eq!(Garbage::InvalidUtf8.expected(), 1007);
        assert!(ALL.iter().filter(|g| g.expected() == 1002).count() == 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provider_closes_each_kind_with_its_code() {
        let provider = cluster_transport::Provider::builder()
            .host("127.0.0.1")
            .port(0)
            .auth_parameter("key", "K")
            .bind()
            .await
            .unwrap();
        let checks = GarbageAfterUpgrade { conns: 12 }
            .run(provider.port(), "K")
            .await
            .unwrap();
        assert_eq!(checks[0].ok, Some(true), "{}", checks[0].detail);
        assert!(
            checks[0].detail.starts_with("12 of 12"),
            "{}",
            checks[0].detail
        );
        // Without the key nothing is upgraded: every connection is counted wrong.
        let checks = GarbageAfterUpgrade { conns: 6 }
            .run(provider.port(), "WRONG")
            .await
            .unwrap();
        assert_eq!(checks[0].ok, Some(false));
        assert!(
            checks[0].detail.contains("upgrade refused"),
            "{}",
            checks[0].detail
        );
    }
}
