//! The seed's `ws.compressor` option: whether and how the provider compresses messages with
//! permessage-deflate (RFC 7692).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// How the provider compresses, after uWebSockets' presets (`NetworkCluster.COMPRESSORS`).
///
/// Compression is negotiated per connection, only when this is not
/// [`Disabled`](Compressor::Disabled) and the consumer offers permessage-deflate (the
/// original's consumer and ours both do). A connection that did not negotiate it holds no
/// compression state at all.
///
/// - [`Shared`](Compressor::Shared): no context takeover either way (the 101 says
///   `server_no_context_takeover; client_no_context_takeover`). Every message is compressed
///   on its own by a compressor shared per thread, so a connection holds no compression
///   state at all, and a broadcast is compressed once for every such connection.
/// - `Dedicated*`: each connection keeps its own compressor with context takeover and the
///   named window (3 KB and 4 KB: 512 bytes, 8 KB: 1 KB, … 256 KB: 32 KB, as uWebSockets
///   maps them), and its own decompressor. Better ratios on streams of similar messages;
///   it costs memory per connection: flate2 fixes zlib's `memLevel` at 8, so a dedicated
///   compressor holds about 128 KB of hash tables plus twice its window, and the
///   decompressor about 7 KB plus a 32 KB window once used.
///
/// In options it is written by name (`"shared"`, `"dedicated-4kb"`, …) or by the
/// uWebSockets number the original passes (`1` shared, `146` = `DEDICATED_COMPRESSOR_4KB`).
///
/// ```
/// use cluster_transport::Compressor;
/// assert_eq!("dedicated-4kb".parse::<Compressor>(), Ok(Compressor::Dedicated4Kb));
/// assert_eq!(Compressor::default(), Compressor::Disabled);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Compressor {
    /// No compression (the default, as in the seed).
    #[default]
    Disabled,
    /// One compressor per thread, no context takeover.
    Shared,
    /// A compressor per connection, 512-byte window (`DEDICATED_COMPRESSOR_3KB`).
    Dedicated3Kb,
    /// A compressor per connection, 512-byte window (`DEDICATED_COMPRESSOR_4KB`).
    Dedicated4Kb,
    /// A compressor per connection, 1 KB window (`DEDICATED_COMPRESSOR_8KB`).
    Dedicated8Kb,
    /// A compressor per connection, 2 KB window (`DEDICATED_COMPRESSOR_16KB`).
    Dedicated16Kb,
    /// A compressor per connection, 4 KB window (`DEDICATED_COMPRESSOR_32KB`).
    Dedicated32Kb,
    /// A compressor per connection, 8 KB window (`DEDICATED_COMPRESSOR_64KB`).
    Dedicated64Kb,
    /// A compressor per connection, 16 KB window (`DEDICATED_COMPRESSOR_128KB`).
    Dedicated128Kb,
    /// A compressor per connection, 32 KB window (`DEDICATED_COMPRESSOR_256KB`, also
    /// `DEDICATED_COMPRESSOR`).
    Dedicated256Kb,
}

/// Every preset with its name and its uWebSockets number.
const PRESETS: [(Compressor, &str, u32); 10] = [
    (Compressor::Disabled, "disabled", 0),
    (Compressor::Shared, "shared", 1),
    (Compressor::Dedicated3Kb, "dedicated-3kb", 9 << 4 | 1),
    (Compressor::Dedicated4Kb, "dedicated-4kb", 9 << 4 | 2),
    (Compressor::Dedicated8Kb, "dedicated-8kb", 10 << 4 | 3),
    (Compressor::Dedicated16Kb, "dedicated-16kb", 11 << 4 | 4),
    (Compressor::Dedicated32Kb, "dedicated-32kb", 12 << 4 | 5),
    (Compressor::Dedicated64Kb, "dedicated-64kb", 13 << 4 | 6),
    (Compressor::Dedicated128Kb, "dedicated-128kb", 14 << 4 | 7),
    (Compressor::Dedicated256Kb, "dedicated-256kb", 15 << 4 | 8),
];

impl Compressor {
    /// Every preset, for listing them.
    pub const ALL: [Compressor; 10] = [
        Compressor::Disabled,
        Compressor::Shared,
        Compressor::Dedicated3Kb,
        Compressor::Dedicated4Kb,
        Compressor::Dedicated8Kb,
        Compressor::Dedicated16Kb,
        Compressor::Dedicated32Kb,
        Compressor::Dedicated64Kb,
        Compressor::Dedicated128Kb,
        Compressor::Dedicated256Kb,
    ];

    /// The preset's name, as `FromStr` and serde read it.
    pub fn name(self) -> &'static str {
        PRESETS
            .iter()
            .find(|(c, _, _)| *c == self)
            .map_or("disabled", |(_, name, _)| name)
    }

    /// The preset for a uWebSockets `CompressOptions` number. Decompressor bits (above the
    /// low byte) are ignored: the decompressor follows the compressor's mode.
    pub fn from_uws(value: u32) -> Option<Compressor> {
        let low = value & 0xFF;
        PRESETS
            .iter()
            .find(|(_, _, n)| *n == low)
            .map(|(c, _, _)| *c)
    }

    /// Whether compression is on.
    pub fn is_enabled(self) -> bool {
        self != Compressor::Disabled
    }

    /// The LZ77 window (as base-2 bits) this side compresses with, and whether it keeps
    /// its context between messages.
    pub(crate) fn window(self) -> (u8, bool) {
        match self {
            Compressor::Disabled | Compressor::Shared => (15, false),
            Compressor::Dedicated3Kb | Compressor::Dedicated4Kb => (9, true),
            Compressor::Dedicated8Kb => (10, true),
            Compressor::Dedicated16Kb => (11, true),
            Compressor::Dedicated32Kb => (12, true),
            Compressor::Dedicated64Kb => (13, true),
            Compressor::Dedicated128Kb => (14, true),
            Compressor::Dedicated256Kb => (15, true),
        }
    }
}

impl fmt::Display for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compressor name that is not a preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCompressor(String);

impl fmt::Display for UnknownCompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = PRESETS.iter().map(|(_, name, _)| *name).collect();
        write!(
            f,
            "unknown compressor {:?}; expected one of {}",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownCompressor {}

impl FromStr for Compressor {
    type Err = UnknownCompressor;

    /// Reads a preset name (`shared`, `dedicated-4kb`), a uWebSockets constant name
    /// (`SHARED_COMPRESSOR`, `DEDICATED_COMPRESSOR_4KB`) or its number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownCompressor(s.to_owned());
        if let Ok(n) = s.parse::<u32>() {
            return Compressor::from_uws(n).ok_or_else(unknown);
        }
        let name = s.to_ascii_lowercase().replace('_', "-");
        let name = match name.as_str() {
            "shared-compressor" => "shared",
            "dedicated-compressor" | "dedicated" => "dedicated-256kb",
            other => other
                .strip_prefix("dedicated-compressor-")
                .map_or(other, |size| {
                    PRESETS
                        .iter()
                        .map(|(_, n, _)| *n)
                        .find(|n| n.strip_prefix("dedicated-") == Some(size))
                        .unwrap_or(other)
                }),
        };
        PRESETS
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(c, _, _)| *c)
            .ok_or_else(unknown)
    }
}

impl Serialize for Compressor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Compressor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Compressor::from_uws(n)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown compressor number {n}"))),
            Raw::Name(name) => name.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Compressor::ALL {
            assert_eq!(c.name().parse::<Compressor>(), Ok(c));
            assert_eq!(c.to_string(), c.name());
        }
    }

    #[test]
    fn uws_names_and_numbers() {
        assert_eq!("SHARED_COMPRESSOR".parse(), Ok(Compressor::Shared));
        assert_eq!(
            "DEDICATED_COMPRESSOR_4KB".parse(),
            Ok(Compressor::Dedicated4Kb)
        );
        assert_eq!(
            "DEDICATED_COMPRESSOR".parse(),
            Ok(Compressor::Dedicated256Kb)
        );
        assert_eq!("0".parse(), Ok(Compressor::Disabled));
        assert_eq!("146".parse(), Ok(Compressor::Dedicated4Kb));
        assert_eq!(Compressor::from_uws(1 | 15 << 8), Some(Compressor::Shared));
        assert!("zstd".parse::<Compressor>().is_err());
        assert!("7".parse::<Compressor>().is_err());
    }

    #[test]
    fn serde_reads_names_and_numbers() {
        let c: Compressor = serde_json::from_str("\"dedicated-8kb\"").unwrap();
        assert_eq!(c, Compressor::Dedicated8Kb);
        let c: Compressor = serde_json::from_str("1").unwrap();
        assert_eq!(c, Compressor::Shared);
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"shared\"");
        assert!(serde_json::from_str::<Compressor>("\"gzip\"").is_err());
    }
}
