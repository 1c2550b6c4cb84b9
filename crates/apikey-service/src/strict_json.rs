//! JSON bodies read the way the filter reads its configuration: a field
//! given twice is refused at every level, whatever either value is
//! (contract §7.1), and the refusal names the field.
//!
//! `serde_json::Value` keeps the last of two equal names without a word,
//! so a body `{"scopes": ["a"], "scopes": ["*"]}` would mean whatever the
//! last one says while a reviewer reads the first. [`parse`] builds the
//! same `Value` through a seed that carries the field's path and refuses
//! the repeat; the rest of the service then works on plain values.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Parses one JSON document. A syntax error is a 400 naming the line and
/// column; a field given twice is a 400 naming the field's path
/// (`rate_limits.*.requests`).
pub fn parse(bytes: &[u8]) -> Result<Value, ApiError> {
    let repeated = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let seed = Strict {
        path: String::new(),
        repeated: &repeated,
    };
    let parsed = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, repeated.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(field)) => Err(ApiError::invalid(&field, "given twice")),
        (Err(error), None) => Err(ApiError::invalid("", format!("malformed JSON: {error}"))),
    }
}

/// Parses a document that must be an object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match parse(bytes)? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("", "the body must be a JSON object")),
    }
}

struct Strict<'a> {
    path: String,
    repeated: &'a RefCell<Option<String>>,
}

impl Strict<'_> {
    fn child(&self, path: String) -> Strict<'_> {
        Strict {
            path,
            repeated: self.repeated,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            match seq.next_element_seed(self.child(path))? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                name.clone()
            } else {
                format!("{}.{name}", self.path)
            };
            if fields.contains_key(&name) {
                *self.repeated.borrow_mut() = Some(path);
                return Err(A::Error::custom("a field given twice"));
            }
            let value = map.next_value_seed(self.child(path))?;
            fields.insert(name, value);
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_field_given_twice_is_refused_with_its_path_whatever_the_values() {
        for (body, field) in [
            (r#"{"tenant": "a", "tenant": "a"}"#, "tenant"),
            (r#"{"tenant": null, "tenant": null}"#, "tenant"),
            (
                r#"{"rate_limits": {"*": {"requests": 1, "requests": 2}}}"#,
                "rate_limits.*.requests",
            ),
            (r#"{"plans": [{"a": 1}, {"b": 1, "b": 2}]}"#, "plans[1].b"),
        ] {
            let error = parse(body.as_bytes()).unwrap_err();
            assert_eq!(error.field(), Some(field), "{body}: {error}");
            assert_eq!(error.kind.status(), 400, "{body}");
        }
    }

    #[test]
    fn malformed_json_and_trailing_text_are_refused() {
        for body in ["{", "{\"a\": 1} x", "", "[1,]", "{\"a\" 1}"] {
            let error = parse(body.as_bytes()).unwrap_err();
            assert!(
                error.message.starts_with("malformed JSON"),
                "{body:?}: {error}"
            );
        }
    }

    #[test]
    fn a_well_formed_body_reads_as_serde_json_reads_it() {
        let body = r#"{"a": [1, -2, 3.5, "x", null, true], "b": {"c": {}}}"#;
        assert_eq!(
            parse(body.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(body).unwrap()
        );
        assert_eq!(parse_object(b"{}").unwrap(), Map::new());
        assert!(parse_object(b"[]").is_err(), "an array is not an object");
        assert_eq!(parse(b"\"x\"").unwrap(), json!("x"));
    }
}
