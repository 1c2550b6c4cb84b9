//! The two protobuf messages of Envoy's rate-limit service API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), encoded
//! and decoded by hand.
//!
//! The filter needs one request shape (one descriptor with `key_id` and
//! `scope` entries and a limit override) and three fields of the answer
//! (the overall code and each descriptor's code and time to reset), so a
//! few dozen lines of wire format replace a code generator. Decoding
//! skips unknown fields as protobuf requires, and a malformed answer is an
//! error, never a panic.

/// `RateLimitRequest.descriptors[].limit.unit` (`envoy.type.v3.RateLimitUnit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Per second.
    Second = 1,
    /// Per minute.
    Minute = 2,
    /// Per hour.
    Hour = 3,
    /// Per day.
    Day = 4,
}

impl Unit {
    /// The unit a period of `seconds` maps to, when the service has one.
    pub fn of_period(seconds: u64) -> Option<Self> {
        match seconds {
            1 => Some(Self::Second),
            60 => Some(Self::Minute),
            3600 => Some(Self::Hour),
            86_400 => Some(Self::Day),
            _ => None,
        }
    }
}

/// The one descriptor the filter sends per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor<'a> {
    /// The key's `id` (entry `key_id`).
    pub key_id: &'a str,
    /// The bucket's pattern (entry `scope`).
    pub scope: &'a str,
    /// `requests` of the limit, sent as the override.
    pub requests_per_unit: u32,
    /// The limit's period as a unit.
    pub unit: Unit,
}

/// Encodes a `RateLimitRequest` with one descriptor and `hits_addend: 1`.
pub fn encode_request(domain: &str, descriptor: &Descriptor<'_>) -> Vec<u8> {
    let mut entries = Vec::with_capacity(64);
    for (key, value) in [("key_id", descriptor.key_id), ("scope", descriptor.scope)] {
        let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
        put_bytes(&mut entry, 1, key.as_bytes());
        put_bytes(&mut entry, 2, value.as_bytes());
        put_bytes(&mut entries, 1, &entry);
    }
    let mut limit = Vec::with_capacity(8);
    put_varint_field(&mut limit, 1, u64::from(descriptor.requests_per_unit));
    put_varint_field(&mut limit, 2, descriptor.unit as u64);
    put_bytes(&mut entries, 2, &limit);
    let mut request = Vec::with_capacity(domain.len() + entries.len() + 8);
    put_bytes(&mut request, 1, domain.as_bytes());
    put_bytes(&mut request, 2, &entries);
    put_varint_field(&mut request, 3, 1);
    request
}

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// Unknown or unset.
    Unknown,
    /// Under the limit.
    Ok,
    /// Over the limit.
    OverLimit,
}

/// The parts of a `RateLimitResponse` the filter reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The overall code.
    pub overall: Code,
    /// Whole seconds until the first over-limit descriptor's window resets,
    /// rounded up, when the service said.
    pub reset_seconds: Option<u64>,
}

/// The answer could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Decodes a `RateLimitResponse`.
pub fn decode_response(bytes: &[u8]) -> Result<Answer, Malformed> {
    let mut answer = Answer {
        overall: Code::Unknown,
        reset_seconds: None,
    };
    for field in Fields(bytes) {
        match field? {
            (1, Value::Varint(code)) => answer.overall = code_of(code),
            (2, Value::Bytes(status)) => {
                let (code, reset) = decode_status(status)?;
                if answer.reset_seconds.is_none() && code == Code::OverLimit {
                    answer.reset_seconds = reset;
                }
            }
            _ => {}
        }
    }
    Ok(answer)
}

fn code_of(value: u64) -> Code {
    match value {
        1 => Code::Ok,
        2 => Code::OverLimit,
        _ => Code::Unknown,
    }
}

/// A `DescriptorStatus`: its code and `duration_until_reset` in whole
/// seconds, rounded up.
fn decode_status(bytes: &[u8]) -> Result<(Code, Option<u64>), Malformed> {
    let mut code = Code::Unknown;
    let mut reset = None;
    for field in Fields(bytes) {
        match field? {
            (1, Value::Varint(value)) => code = code_of(value),
            (4, Value::Bytes(duration)) => {
                let (mut seconds, mut nanos) = (0u64, 0u64);
                for field in Fields(duration) {
                    match field? {
                        // Negative durations arrive as huge varints; they
                        // are clamped to 0 and then raised to 1 by callers.
                        (1, Value::Varint(value)) => {
                            seconds = if (value as i64) < 0 { 0 } else { value }
                        }
                        (2, Value::Varint(value)) => {
                            nanos = if (value as i32) < 0 {
                                0
                            } else {
                                value & 0xFFFF_FFFF
                            }
                        }
                        _ => {}
                    }
                }
                reset = Some(seconds.saturating_add(u64::from(nanos > 0)));
            }
            _ => {}
        }
    }
    Ok((code, reset))
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Iterates over (field number, value) pairs.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.field())
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Result<(u64, Value<'a>), Malformed> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
                if len > self.0.len() {
                    return Err(Malformed);
                }
                let (bytes, rest) = self.0.split_at(len);
                self.0 = rest;
                Value::Bytes(bytes)
            }
            5 => self.skip(4)?,
            _ => return Err(Malformed),
        };
        Ok((key >> 3, value))
    }

    fn skip(&mut self, len: usize) -> Result<Value<'a>, Malformed> {
        self.0 = self.0.get(len..).ok_or(Malformed)?;
        Ok(Value::Other)
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or(Malformed)?;
            self.0 = rest;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, value: u64) {
    put_varint(out, field << 3);
    put_varint(out, value);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn the_request_matches_protoc_encoding() {
        // Expected bytes written out from the .proto by hand:
        // domain "d"; descriptors { entries {key_id=k} entries {scope=*} limit {5, MINUTE} }; hits_addend 1
        let request = encode_request(
            "d",
            &Descriptor {
                key_id: "k",
                scope: "*",
                requests_per_unit: 5,
                unit: Unit::Minute,
            },
        );
        let expected: &[u8] = &[
            0x0A, 1, b'd', // domain
            0x12, 31, // descriptors, 31 bytes
            0x0A, 11, 0x0A, 6, b'k', b'e', b'y', b'_', b'i', b'd', 0x12, 1,
            b'k', // entry key_id=k
            0x0A, 10, 0x0A, 5, b's', b'c', b'o', b'p', b'e', 0x12, 1, b'*', // entry scope=*
            0x12, 4, 0x08, 5, 0x10, 2, // limit override
            0x18, 1, // hits_addend
        ];
        assert_eq!(request, expected);
    }

    #[test]
    fn over_limit_answers_carry_the_reset_rounded_up() {
        // overall OVER_LIMIT; statuses [{OK}, {OVER_LIMIT, duration {seconds 4, nanos 1}}]
        let bytes = [
            0x08, 2, 0x12, 2, 0x08, 1, 0x12, 8, 0x08, 2, 0x22, 4, 0x08, 4, 0x10, 1,
        ];
        assert_eq!(
            decode_response(&bytes),
            Ok(Answer {
                overall: Code::OverLimit,
                reset_seconds: Some(5)
            })
        );
    }

    #[test]
    fn ok_answers_and_unknown_fields_decode() {
        // overall OK, then an unknown fixed64 field 9 and an unknown string field 10
        let bytes = [0x08, 1, 0x49, 1, 2, 3, 4, 5, 6, 7, 8, 0x52, 1, b'x'];
        assert_eq!(
            decode_response(&bytes),
            Ok(Answer {
                overall: Code::Ok,
                reset_seconds: None
            })
        );
        assert_eq!(
            decode_response(&[]),
            Ok(Answer {
                overall: Code::Unknown,
                reset_seconds: None
            })
        );
    }

    #[test]
    fn malformed_answers_are_errors() {
        for bytes in [
            &[0x08][..],
            &[0x12, 5, 0x08],
            &[0x0B],
            &[0xFF; 11],
            &[0x12, 2, 0x22, 9],
        ] {
            assert_eq!(decode_response(bytes), Err(Malformed), "{bytes:?}");
        }
    }

    #[test]
    fn periods_map_to_the_services_units() {
        assert_eq!(Unit::of_period(1), Some(Unit::Second));
        assert_eq!(Unit::of_period(86_400), Some(Unit::Day));
        assert_eq!(Unit::of_period(30), None);
    }
}
