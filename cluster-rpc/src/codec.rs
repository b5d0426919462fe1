//! Codecs: how typed values become the payload bytes of a binary frame.
//!
//! MessagePack ([`MessagePack`], rmp-serde) is the default; `Bincode` (bincode 2 with its
//! serde support) is the option for Rust-only clusters that want the smallest frames. A
//! member names its codec in its connect parameters (`codec=msgpack` or `codec=bincode`);
//! a hub refuses a codec it was not configured for at connect time (HTTP 406 with a body
//! that says which codecs it speaks), so messages are never garbled later.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

/// The connect parameter that carries the codec's name.
pub const CODEC_PARAMETER: &str = "codec";

/// Turns typed values into bytes and back.
pub trait Codec {
    /// The name a member sends in its `codec` connect parameter.
    fn name(&self) -> &'static str;

    /// Appends `value` encoded to `out`.
    ///
    /// # Errors
    /// When the value cannot be represented (a map with non-string keys in some codecs).
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>)
        -> Result<(), CodecError>;

    /// Decodes a value from `bytes`.
    ///
    /// # Errors
    /// When the bytes are not a valid encoding of `T`. Never panics, whatever the bytes.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// A value that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} codec: {message}")]
pub struct CodecError {
    codec: &'static str,
    message: String,
}

impl CodecError {
    fn new(codec: &'static str, error: impl fmt::Display) -> Self {
        Self {
            codec,
            message: error.to_string(),
        }
    }
}

/// MessagePack through rmp-serde, structs as maps (field names on the wire), so peers can
/// add fields without breaking each other. The default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessagePack;

impl Codec for MessagePack {
    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
        value
            .serialize(&mut ser)
            .map_err(|e| CodecError::new(self.name(), e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::new(self.name(), e))
    }
}

/// bincode 2 (serde mode, standard configuration): compact, Rust-only.
#[cfg(feature = "bincode")]
#[cfg_attr(docsrs, doc(cfg(feature = "bincode")))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bincode;

#[cfg(feature = "bincode")]
impl Codec for Bincode {
    fn name(&self) -> &'static str {
        "bincode"
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
            .map_err(|e| CodecError::new(self.name(), e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let limit = bincode::config::standard().with_limit::<{ 64 * 1024 * 1024 }>();
        bincode::serde::decode_from_slice(bytes, limit)
            .map(|(value, _)| value)
            .map_err(|e| CodecError::new(self.name(), e))
    }
}

/// A codec chosen at run time: what a connection speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecKind {
    /// [`MessagePack`], the default.
    #[default]
    MessagePack,
    /// [`Bincode`].
    #[cfg(feature = "bincode")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bincode")))]
    Bincode,
}

impl CodecKind {
    /// Every codec this crate has.
    pub const ALL: &'static [CodecKind] = &[
        CodecKind::MessagePack,
        #[cfg(feature = "bincode")]
        CodecKind::Bincode,
    ];

    /// The codec with this connect-parameter name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }
}

impl Codec for CodecKind {
    fn name(&self) -> &'static str {
        match self {
            CodecKind::MessagePack => MessagePack.name(),
            #[cfg(feature = "bincode")]
            CodecKind::Bincode => Bincode.name(),
        }
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        match self {
            CodecKind::MessagePack => MessagePack.encode(value, out),
            #[cfg(feature = "bincode")]
            CodecKind::Bincode => Bincode.encode(value, out),
        }
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            CodecKind::MessagePack => MessagePack.decode(bytes),
            #[cfg(feature = "bincode")]
            CodecKind::Bincode => Bincode.decode(bytes),
        }
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Tuple(u8, String),
        Struct {
            data: Vec<u8>,
            tags: BTreeMap<String, i64>,
            maybe: Option<f64>,
        },
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Unit),
            (any::<u8>(), any::<String>()).prop_map(|(a, b)| Shape::Tuple(a, b)),
            (
                any::<Vec<u8>>(),
                any::<BTreeMap<String, i64>>(),
                any::<Option<u32>>()
            )
                .prop_map(|(data, tags, maybe)| Shape::Struct {
                    data,
                    tags,
                    maybe: maybe.map(f64::from)
                }),
        ]
    }

    proptest! {
        #[test]
        fn both_codecs_round_trip(value in shape(), result: Result<u64, String>) {
            for &codec in CodecKind::ALL {
                let mut out = Vec::new();
                codec.encode(&(value.clone(), result.clone()), &mut out).unwrap();
                let back: (Shape, Result<u64, String>) = codec.decode(&out).unwrap();
                prop_assert_eq!(&back, &(value.clone(), result.clone()));
            }
        }

        #[test]
        fn arbitrary_bytes_are_an_error_not_a_panic(bytes: Vec<u8>) {
            for &codec in CodecKind::ALL {
                let _ = codec.decode::<Shape>(&bytes);
                let _ = codec.decode::<(Vec<String>, u64)>(&bytes);
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            CodecKind::from_name("msgpack"),
            Some(CodecKind::MessagePack)
        );
        #[cfg(feature = "bincode")]
        assert_eq!(CodecKind::from_name("bincode"), Some(CodecKind::Bincode));
        assert_eq!(CodecKind::from_name("json"), None);
        assert_eq!(CodecKind::default().to_string(), "msgpack");
    }
}
