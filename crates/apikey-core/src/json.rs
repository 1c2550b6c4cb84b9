//! A strict, streaming JSON reader (RFC 8259) for the plugin configuration.
//!
//! The configuration reader asks for the value it expects at each place (an
//! object's fields, a string, a whole number), so a document is read in one
//! pass without a tree in between: a 1,000,000-key table is parsed with no
//! copy beyond the strings it keeps. Every refusal names the field where it
//! happened, through a [`Path`] built on the stack and rendered only when
//! something is wrong.
//!
//! Why not serde: the derive code, its error formatting and path tracking
//! made up about a third of the Wasm module, and the configuration needs
//! refusals serde does not make (a name given twice) anyway.

use core::fmt::{self, Write as _};
use std::borrow::Cow;

/// Where a value sits in the document, as `keys[3].plan`: a chain of
/// borrowed segments on the caller's stack.
#[derive(Clone, Copy, Debug)]
pub enum Path<'p> {
    /// The document itself.
    Root,
    /// A field (or map entry) of the object at the parent path.
    Field(&'p Path<'p>, &'p str),
    /// An element of the array at the parent path.
    Index(&'p Path<'p>, usize),
}

impl Path<'_> {
    /// The path as the configuration errors spell it (`""` for the root).
    pub fn render(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// A refusal: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// The rendered [`Path`].
    pub field: String,
    /// Why, for an operator.
    pub reason: String,
}

impl JsonError {
    /// A refusal at `path`.
    pub fn at(path: &Path<'_>, reason: impl Into<String>) -> Self {
        Self {
            field: path.render(),
            reason: reason.into(),
        }
    }
}

/// What kind of value comes next, for "expected X, found Y" messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl Kind {
    fn article(self) -> &'static str {
        match self {
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Bool => "a boolean",
            Kind::Null => "null",
        }
    }
}

/// A cursor over one JSON document.
#[derive(Debug)]
pub struct Reader<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `text`.
    pub fn new(text: &'a [u8]) -> Self {
        Self { text, pos: 0 }
    }

    /// Refuses anything but white space after the document.
    pub fn end(&mut self) -> Result<(), JsonError> {
        self.skip_space();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.syntax("trailing characters after the document")),
        }
    }

    /// Consumes a `null` when one comes next (an optional field given as
    /// null is treated as left out).
    pub fn null(&mut self) -> Result<bool, JsonError> {
        self.skip_space();
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Reads an object, calling `field` with each name and its path; the
    /// callback must read the value. Names are compared as decoded.
    pub fn object<F>(&mut self, path: &Path<'_>, mut field: F) -> Result<(), JsonError>
    where
        F: FnMut(&mut Self, &str, &Path<'_>) -> Result<(), JsonError>,
    {
        self.expect_kind(path, Kind::Object)?;
        self.pos += 1;
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_space();
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a field name in double quotes"));
            }
            let name = self.string_cow()?;
            self.skip_space();
            if self.peek() != Some(b':') {
                return Err(self.syntax("expected `:` after a field name"));
            }
            self.pos += 1;
            field(self, &name, &Path::Field(path, &name))?;
            self.skip_space();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected `,` or `}` in an object")),
            }
        }
    }

    /// Reads an array, calling `element` with each index and its path.
    pub fn array<F>(&mut self, path: &Path<'_>, mut element: F) -> Result<(), JsonError>
    where
        F: FnMut(&mut Self, &Path<'_>) -> Result<(), JsonError>,
    {
        self.expect_kind(path, Kind::Array)?;
        self.pos += 1;
        self.skip_space();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            element(self, &Path::Index(path, index))?;
            index = index.saturating_add(1);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("expected `,` or `]` in an array")),
            }
        }
    }

    /// Reads an array whose every element `element` reads.
    pub fn list<T>(
        &mut self,
        path: &Path<'_>,
        mut element: impl FnMut(&mut Self, &Path<'_>) -> Result<T, JsonError>,
    ) -> Result<Vec<T>, JsonError> {
        let mut items = Vec::new();
        self.array(path, |reader, path| {
            items.push(element(reader, path)?);
            Ok(())
        })?;
        Ok(items)
    }

    /// Reads an array of strings.
    pub fn strings(&mut self, path: &Path<'_>) -> Result<Vec<String>, JsonError> {
        self.list(path, Self::string)
    }

    /// Reads a string, borrowed from the text when it has no escape (no
    /// allocation: a 1,000,000-key configuration reads millions of them).
    pub fn text(&mut self, path: &Path<'_>) -> Result<Cow<'a, str>, JsonError> {
        self.expect_kind(path, Kind::String)?;
        self.string_cow()
    }

    /// Reads a string.
    pub fn string(&mut self, path: &Path<'_>) -> Result<String, JsonError> {
        self.text(path).map(Cow::into_owned)
    }

    /// Reads `true` or `false`.
    pub fn bool(&mut self, path: &Path<'_>) -> Result<bool, JsonError> {
        self.expect_kind(path, Kind::Bool)?;
        if self.peek() == Some(b't') {
            self.literal(b"true")?;
            Ok(true)
        } else {
            self.literal(b"false")?;
            Ok(false)
        }
    }

    /// Reads a whole number from 0 to `u64::MAX`; fractions, exponents and
    /// negative numbers are refused with the number as written.
    pub fn u64(&mut self, path: &Path<'_>) -> Result<u64, JsonError> {
        self.expect_kind(path, Kind::Number)?;
        let start = self.pos;
        self.number()?;
        let token = self.text.get(start..self.pos).unwrap_or_default();
        let written = String::from_utf8_lossy(token);
        if token.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            return Err(JsonError::at(
                path,
                format!("invalid type: {written} is not a whole number"),
            ));
        }
        if token.first() == Some(&b'-') {
            return Err(JsonError::at(
                path,
                format!("invalid value: {written}, expected a whole number 0 or more"),
            ));
        }
        written.parse::<u64>().map_err(|_| {
            JsonError::at(
                path,
                format!("invalid value: {written} is larger than {}", u64::MAX),
            )
        })
    }

    /// The byte offset the reader has reached.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn expect_kind(&mut self, path: &Path<'_>, expected: Kind) -> Result<(), JsonError> {
        self.skip_space();
        let found = match self.peek() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b'-' | b'0'..=b'9') => Kind::Number,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            Some(_) => return Err(self.syntax("expected a value")),
            None => return Err(self.syntax("the document ends early")),
        };
        if found == expected {
            Ok(())
        } else {
            Err(JsonError::at(
                path,
                format!(
                    "invalid type: {}, expected {}",
                    found.article(),
                    expected.article()
                ),
            ))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.text.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax("expected a value"))
        }
    }

    /// Consumes a number token, checking the RFC 8259 grammar.
    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("invalid number"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("invalid number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    /// Decodes the string at the cursor (which is on its `"`) into `out`.
    /// The string at the opening quote: borrowed when it is one run of
    /// plain UTF-8, decoded otherwise.
    fn string_cow(&mut self) -> Result<Cow<'a, str>, JsonError> {
        let text = self.text;
        let start = self.pos + 1;
        let mut end = start;
        while matches!(text.get(end), Some(&b) if b != b'"' && b != b'\\' && b >= 0x20) {
            end += 1;
        }
        if text.get(end) == Some(&b'"') {
            if let Some(run) = text
                .get(start..end)
                .and_then(|run| core::str::from_utf8(run).ok())
            {
                self.pos = end + 1;
                return Ok(Cow::Borrowed(run));
            }
        }
        // An escape, a control character, invalid UTF-8 or no closing
        // quote: decode, and refuse, as before.
        let mut owned = String::new();
        self.string_into(&mut owned)?;
        Ok(Cow::Owned(owned))
    }

    fn string_into(&mut self, out: &mut String) -> Result<(), JsonError> {
        self.pos += 1;
        loop {
            let run_start = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            let run = self.text.get(run_start..self.pos).unwrap_or_default();
            let run = core::str::from_utf8(run).map_err(|_| {
                self.pos = run_start;
                self.syntax("a string is not valid UTF-8")
            })?;
            out.push_str(run);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let decoded = self.escape()?;
                    out.push(decoded);
                }
                Some(_) => return Err(self.syntax("a control character inside a string")),
                None => return Err(self.syntax("a string is not closed")),
            }
        }
    }

    /// Decodes the escape after a `\`.
    fn escape(&mut self) -> Result<char, JsonError> {
        let Some(letter) = self.peek() else {
            return Err(self.syntax("a string is not closed"));
        };
        self.pos += 1;
        let simple = match letter {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => return Err(self.syntax("an unknown escape in a string")),
        };
        Ok(simple)
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.text.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(self.syntax("a lone surrogate in a \\u escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.syntax("a lone surrogate in a \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.syntax("a lone surrogate in a \\u escape")),
            other => other,
        };
        char::from_u32(code).ok_or_else(|| self.syntax("an invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .and_then(|digits| core::str::from_utf8(digits).ok())
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|digits| u32::from_str_radix(digits, 16).ok())
            .ok_or_else(|| self.syntax("a \\u escape needs four hexadecimal digits"))?;
        self.pos += 4;
        Ok(digits)
    }

    /// A syntax error, placed by line and column (1-based, in bytes).
    fn syntax(&self, what: &str) -> JsonError {
        let before = self.text.get(..self.pos).unwrap_or(self.text);
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        let mut reason = String::new();
        let _ = write!(reason, "{what} at line {line} column {column}");
        JsonError {
            field: String::new(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn read_strings(text: &str) -> Result<Vec<String>, JsonError> {
        let mut reader = Reader::new(text.as_bytes());
        let strings = reader.strings(&Path::Root)?;
        reader.end()?;
        Ok(strings)
    }

    #[test]
    fn escapes_decode_as_rfc_8259_says() {
        assert_eq!(
            read_strings(r#"["a\"b\\c\/d\n\t", "\u00e9\ud83d\ude00", "plain é"]"#).unwrap(),
            ["a\"b\\c/d\n\t", "é😀", "plain é"]
        );
    }

    #[test]
    fn malformed_strings_are_refused_with_a_position() {
        for text in [
            "[\"a\u{1}\"]",
            r#"["\ud800"]"#,
            r#"["\udc00"]"#,
            r#"["\x"]"#,
            r#"["\u12"]"#,
            r#"["open"#,
            "[\"a\"] x",
            "[\"a\",]",
        ] {
            let error = read_strings(text).unwrap_err();
            assert!(
                error.reason.contains("line 1 column"),
                "{text:?}: {error:?}"
            );
        }
        let invalid_utf8 = [b'[', b'"', 0xFF, b'"', b']'];
        let mut reader = Reader::new(&invalid_utf8);
        assert!(reader.strings(&Path::Root).is_err());
    }

    #[test]
    fn whole_numbers_are_read_and_others_named() {
        let read = |text: &str| Reader::new(text.as_bytes()).u64(&Path::Root);
        assert_eq!(read("0"), Ok(0));
        assert_eq!(read("18446744073709551615"), Ok(u64::MAX));
        assert!(read("18446744073709551616")
            .unwrap_err()
            .reason
            .contains("invalid value"));
        assert!(read("-1").unwrap_err().reason.contains("invalid value: -1"));
        assert!(read("1.5")
            .unwrap_err()
            .reason
            .contains("invalid type: 1.5"));
        assert!(read("1e3").unwrap_err().reason.contains("invalid type"));
        for bad in ["01", "1.", "-", "1e", "+1"] {
            let mut reader = Reader::new(bad.as_bytes());
            let result = reader.u64(&Path::Root).and_then(|_| reader.end());
            assert!(result.is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn paths_render_as_the_configuration_errors_spell_them() {
        let root = Path::Root;
        let keys = Path::Field(&root, "keys");
        let third = Path::Index(&keys, 3);
        let plan = Path::Field(&third, "plan");
        assert_eq!(plan.render(), "keys[3].plan");
        assert_eq!(root.render(), "");
    }

    #[test]
    fn a_type_mismatch_names_both_types_and_the_field() {
        let mut reader = Reader::new(br#"{"revoked": "yes"}"#);
        let error = reader
            .object(&Path::Root, |reader, _, path| reader.bool(path).map(drop))
            .unwrap_err();
        assert_eq!(error.field, "revoked");
        assert_eq!(error.reason, "invalid type: a string, expected a boolean");
    }

    #[test]
    fn the_position_is_the_offset_after_what_was_read() {
        let mut reader = Reader::new(br#"{"keys": [1, 2], "x": true}"#);
        let mut spans = Vec::new();
        reader
            .object(&Path::Root, |reader, _, path| {
                let start = reader.position();
                if reader.bool(path).is_err() {
                    reader.array(path, |reader, path| reader.u64(path).map(drop))?;
                }
                spans.push(start..reader.position());
                Ok(())
            })
            .unwrap();
        assert_eq!(spans, [8..15, 21..26]);
    }

    #[test]
    fn objects_hand_every_field_in_order() {
        let mut reader = Reader::new(br#" { "a" : true , "b":[ ], "c" : null } "#);
        let mut seen = Vec::new();
        reader
            .object(&Path::Root, |reader, name, path| {
                seen.push(name.to_owned());
                match name {
                    "a" => reader.bool(path).map(drop),
                    "b" => reader.strings(path).map(drop),
                    _ => reader.null().map(drop),
                }
            })
            .unwrap();
        reader.end().unwrap();
        assert_eq!(seen, ["a", "b", "c"]);
    }
}
