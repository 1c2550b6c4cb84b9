//! Strict reading: serde_json parses and serde's derive fills the
//! [`document`](super::document) types; this adapter between them adds
//! what the configuration promises beyond either (contract §7.1):
//!
//! - a refusal names where it happened, as `keys[3].plan`;
//! - a field given twice in one object is refused by its name, before its
//!   second value is read, whatever either value is (`null` too);
//! - a struct is read only from a JSON object: the derive alone also
//!   accepts an array of the field values in order (serde issue 1587), so
//!   `[["k", "…"]]` would pass as a key table.
//!
//! The path is written only on the way out of an error, one segment per
//! level the error crosses, so a valid document costs no allocation for it
//! (serde_path_to_error copies every field name it reads, which a
//! 1,000,000-key table pays 8,000,000 times).

use core::cell::Cell;
use core::fmt;
use core::ops::Deref;
use std::borrow::Cow;

use serde::de::value::{BorrowedStrDeserializer, StrDeserializer};
use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, Error as _, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Reads `text` as one JSON document into `T`, or the refusal naming
/// where and why.
pub(super) fn read<'de, T: Deserialize<'de>>(text: &'de [u8]) -> Result<T, ConfigError> {
    let trail = Trail::default();
    let mut json = serde_json::Deserializer::from_slice(text);
    let strict = Strict {
        de: &mut json,
        trail: &trail,
    };
    T::deserialize(strict)
        .and_then(|value| json.end().map(|()| value))
        .map_err(|error| refusal(&error, trail))
}

/// A string of the document: borrowed from the text when it holds no
/// escape, so strings that are only checked (hashes, dates, plan names)
/// are never copied.
#[derive(Debug, Deserialize, Serialize)]
#[serde(transparent)]
pub(super) struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A syntax error is placed by line and column and names no field; any
/// other refusal names the path the error crossed (the position serde_json
/// appends to it is dropped: the path says more).
fn refusal(error: &serde_json::Error, trail: Trail) -> ConfigError {
    let text = error.to_string();
    if !error.is_data() {
        return ConfigError {
            field: String::new(),
            reason: text,
        };
    }
    let position = format!(" at line {} column {}", error.line(), error.column());
    ConfigError {
        field: trail.render(),
        reason: text.strip_suffix(&position).unwrap_or(&text).to_owned(),
    }
}

/// One level of a path.
#[derive(Debug)]
enum Segment {
    Field(String),
    Index(usize),
}

/// The path of an error, innermost segment first, written as the error
/// leaves each level.
#[derive(Default)]
struct Trail(Cell<Vec<Segment>>);

impl Trail {
    fn push(&self, segment: Segment) {
        let mut segments = self.0.take();
        segments.push(segment);
        self.0.set(segments);
    }

    /// `keys[3].plan`; empty for the document itself.
    fn render(self) -> String {
        let mut out = String::new();
        for segment in self.0.into_inner().iter().rev() {
            match segment {
                Segment::Field(name) if out.is_empty() => out.push_str(name),
                Segment::Field(name) => {
                    out.push('.');
                    out.push_str(name);
                }
                Segment::Index(index) => out.push_str(&format!("[{index}]")),
            }
        }
        out
    }
}

/// A deserializer that reads like `D` but with the promises above.
struct Strict<'t, D> {
    de: D,
    trail: &'t Trail,
}

/// The visitor `V`, seeing nested values through [`Strict`] again.
struct Wrap<'t, V> {
    visitor: V,
    trail: &'t Trail,
    /// A struct's field names: then only an object is read, and a name
    /// given twice is refused.
    fields: Option<&'static [&'static str]>,
}

impl<'t, V> Wrap<'t, V> {
    fn new(visitor: V, trail: &'t Trail) -> Self {
        Self {
            visitor,
            trail,
            fields: None,
        }
    }
}

/// Forwards each `deserialize_*` method to `D`, wrapping the visitor.
macro_rules! forward_wrapped {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.de.$method(Wrap::new(visitor, self.trail))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<'_, D> {
    type Error = D::Error;

    forward_wrapped! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16
        deserialize_i32 deserialize_i64 deserialize_i128 deserialize_u8
        deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_unit deserialize_seq deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de
            .deserialize_unit_struct(name, Wrap::new(visitor, self.trail))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de
            .deserialize_newtype_struct(name, Wrap::new(visitor, self.trail))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de
            .deserialize_tuple(len, Wrap::new(visitor, self.trail))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de
            .deserialize_tuple_struct(name, len, Wrap::new(visitor, self.trail))
    }

    /// Read as a map, never as a sequence of field values.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_map(Wrap {
            visitor,
            trail: self.trail,
            fields: Some(fields),
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de
            .deserialize_enum(name, variants, Wrap::new(visitor, self.trail))
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// Forwards each `visit_*` method of a plain value to `V`.
macro_rules! forward_visits {
    ($($method:ident($($ty:ty)?))*) => {$(
        fn $method<E: serde::de::Error>(self $(, value: $ty)?) -> Result<V::Value, E> {
            self.visitor.$method($(forward_visits!(@value value $ty))?)
        }
    )*};
    (@value $value:ident $ty:ty) => { $value };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fields {
            Some(_) => formatter.write_str("an object"),
            None => self.visitor.expecting(formatter),
        }
    }

    forward_visits! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32)
        visit_i64(i64) visit_i128(i128) visit_u8(u8) visit_u16(u16)
        visit_u32(u32) visit_u64(u64) visit_u128(u128) visit_f32(f32)
        visit_f64(f64) visit_char(char) visit_str(&str)
        visit_borrowed_str(&'de str) visit_string(String)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8])
        visit_byte_buf(Vec<u8>) visit_none() visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_some(Strict {
            de,
            trail: self.trail,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.visitor.visit_newtype_struct(Strict {
            de,
            trail: self.trail,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(Seq {
            seq,
            trail: self.trail,
            index: 0,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(Map {
            map,
            trail: self.trail,
            fields: self.fields,
            seen: 0,
            key: Cow::Borrowed(""),
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_enum(data)
    }
}

/// A seed whose value is read through [`Strict`].
struct StrictSeed<'t, S> {
    seed: S,
    trail: &'t Trail,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for StrictSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Strict {
            de,
            trail: self.trail,
        })
    }
}

/// An array's elements, each named by its index when it fails.
struct Seq<'t, A> {
    seq: A,
    trail: &'t Trail,
    index: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        let index = self.index;
        self.index = index.saturating_add(1);
        let trail = self.trail;
        self.seq
            .next_element_seed(StrictSeed { seed, trail })
            .inspect_err(|_| trail.push(Segment::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

/// An object's fields, each named when it fails.
struct Map<'t, 'de, A> {
    map: A,
    trail: &'t Trail,
    fields: Option<&'static [&'static str]>,
    /// Which of `fields` were read (a struct has at most 64).
    seen: u64,
    /// The name being read.
    key: Cow<'de, str>,
}

impl<'de, A: MapAccess<'de>> Map<'_, 'de, A> {
    /// Names the current field on an error's way out.
    fn mark(&self) {
        self.trail.push(Segment::Field(self.key.to_string()));
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, 'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let Some(Text(name)) = self.map.next_key::<Text<'de>>()? else {
            return Ok(None);
        };
        self.key = name;
        if let Some(fields) = self.fields {
            let bit = fields
                .iter()
                .position(|field| *field == self.key)
                .and_then(|index| u32::try_from(index).ok())
                .and_then(|index| 1u64.checked_shl(index))
                .unwrap_or(0);
            if self.seen & bit != 0 {
                self.mark();
                return Err(A::Error::custom("is given twice"));
            }
            self.seen |= bit;
        }
        let read = match &self.key {
            Cow::Borrowed(name) => seed.deserialize(BorrowedStrDeserializer::new(name)),
            Cow::Owned(name) => seed.deserialize(StrDeserializer::new(name)),
        };
        read.map(Some).inspect_err(|_| self.mark())
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let trail = self.trail;
        self.map
            .next_value_seed(StrictSeed { seed, trail })
            .inspect_err(|_| self.mark())
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_decoded() {
        let texts: Vec<Text<'_>> = read(br#"["plain", "esc\u0061ped"]"#).unwrap();
        assert!(
            matches!(texts[0].0, Cow::Borrowed("plain")),
            "a plain string was copied: {texts:?}"
        );
        assert!(
            matches!(&texts[1].0, Cow::Owned(text) if text == "escaped"),
            "an escaped string was not decoded: {texts:?}"
        );
    }

    #[test]
    fn the_path_names_every_level_the_error_crossed() {
        let error = read::<Vec<Vec<bool>>>(b"[[true], [false, 1]]").unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.reason.as_str()),
            ("[1][1]", "invalid type: integer `1`, expected a boolean")
        );
    }
}
