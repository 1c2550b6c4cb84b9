//! The text format the header-map targets read, so seeds are readable and
//! libFuzzer's mutations (which work on bytes and dictionary tokens) stay
//! meaningful.
//!
//! An input is lines separated by `\n`. A line starting with `@` is a
//! directive for the target (`@schemes bearer,x-api-key`); a blank line
//! ends one request and starts the next; any other line is a header: the
//! name runs to the first `:` after the first byte (so `:path` works), then
//! one optional space is dropped and the rest is the value. `\xHH` in a name
//! or value stands for the byte `0xHH` (so a value can hold `\n` or NUL);
//! every other byte, including 0x80–0xFF and `\r`, stands for itself.

/// One request's lines: its directives and its headers, in order.
#[derive(Debug, Default)]
pub struct Block {
    /// `(name, argument)` of each `@name argument` line.
    pub directives: Vec<(Vec<u8>, Vec<u8>)>,
    /// `(name, value)` of each header line.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Block {
    /// The argument of the last directive called `name`.
    pub fn directive(&self, name: &str) -> Option<&[u8]> {
        self.directives
            .iter()
            .rev()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, argument)| argument.as_slice())
    }

    /// The headers as the borrowed pairs the core reads.
    pub fn pairs(&self) -> Vec<(&[u8], &[u8])> {
        self.headers.iter().map(|(n, v)| (&n[..], &v[..])).collect()
    }
}

/// Splits an input into blocks (requests). Never fails: every byte string
/// is some input.
pub fn blocks(input: &[u8]) -> Vec<Block> {
    let mut blocks = vec![Block::default()];
    for line in input.split(|&b| b == b'\n') {
        if line.is_empty() {
            blocks.push(Block::default());
            continue;
        }
        let Some(block) = blocks.last_mut() else {
            continue;
        };
        if let Some(directive) = line.strip_prefix(b"@") {
            let at = directive
                .iter()
                .position(|&b| b == b' ')
                .unwrap_or(directive.len());
            let (name, argument) = directive.split_at(at);
            let argument = argument.strip_prefix(b" ").unwrap_or(argument);
            block.directives.push((name.to_vec(), argument.to_vec()));
            continue;
        }
        let at = line
            .iter()
            .skip(1)
            .position(|&b| b == b':')
            .map_or(line.len(), |i| i + 1);
        let (name, value) = line.split_at(at);
        let value = value.strip_prefix(b":").unwrap_or(value);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        block.headers.push((unescape(name), unescape(value)));
    }
    blocks.retain(|b| !b.headers.is_empty() || !b.directives.is_empty());
    blocks
}

/// Replaces each `\xHH` by the byte it names.
pub fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' && text.get(i + 1) == Some(&b'x') {
            if let Some(byte) = text
                .get(i + 2..i + 4)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// A directive's argument as a comma-separated list of strings.
pub fn list(argument: &[u8]) -> Vec<String> {
    argument
        .split(|&b| b == b',')
        .map(|item| String::from_utf8_lossy(item).into_owned())
        .collect()
}

/// A directive's argument as a signed number (`None` when it is not one).
pub fn number(argument: &[u8]) -> Option<i128> {
    std::str::from_utf8(argument).ok()?.trim().parse().ok()
}
