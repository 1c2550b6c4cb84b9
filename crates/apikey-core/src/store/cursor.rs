//! The reader and writer of every binary record kept in shared data: the
//! table's head, settings, key records and list of known ids, the token
//! buckets and the fleet's circuit.
//!
//! Shared data is written by this module's code only, but possibly by
//! another version of it (two modules share a `vm_id` during an upgrade),
//! or cut short by a writer that trapped; so a [`Reader`] checks every
//! length and answers `None` instead of panicking. Numbers are
//! little-endian; lengths and counts that can grow are LEB128 (one byte
//! below 128), spelt one way only so a record has exactly one encoding.

/// Reads fields from the front of a record.
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The next `N` bytes.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[byte]| byte)
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian `u128`.
    pub fn u128(&mut self) -> Option<u128> {
        self.array().map(u128::from_le_bytes)
    }

    /// A LEB128 count; `None` when it is cut short, does not fit a
    /// `usize`, or is spelt with more bytes than it needs.
    pub fn count(&mut self) -> Option<usize> {
        let mut value = 0usize;
        let mut shift = 0u32;
        loop {
            let byte = self.u8()?;
            let bits = usize::from(byte & 0x7F);
            let shifted = bits.checked_shl(shift)?;
            if shifted >> shift != bits {
                return None;
            }
            value |= shifted;
            if byte & 0x80 == 0 {
                return (byte != 0 || shift == 0).then_some(value);
            }
            shift += 7;
        }
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.bytes.len() {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(taken)
    }

    /// Bytes preceded by their LEB128 length.
    pub fn prefixed(&mut self) -> Option<&'a [u8]> {
        let len = self.count()?;
        self.bytes(len)
    }

    /// UTF-8 text preceded by its LEB128 length.
    pub fn str(&mut self) -> Option<&'a str> {
        core::str::from_utf8(self.prefixed()?).ok()
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Everything left, which the reader then no longer holds.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.bytes)
    }

    /// Whether the whole record was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Appends fields to a record, in the spelling [`Reader`] reads.
#[derive(Clone, Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    /// An empty record with room for `capacity` bytes, so a record of a
    /// known size is written with one allocation.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            out: Vec::with_capacity(capacity),
        }
    }

    /// One byte.
    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.out.push(value);
        self
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// A little-endian `u128`.
    pub fn u128(&mut self, value: u128) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// `count` as LEB128: seven bits a byte, lowest first, the high bit set
    /// on every byte but the last. Any `usize` fits, so nothing is cut.
    pub fn count(&mut self, count: usize) -> &mut Self {
        let mut rest = count;
        loop {
            let low = (rest & 0x7F) as u8;
            rest >>= 7;
            if rest == 0 {
                self.out.push(low);
                return self;
            }
            self.out.push(low | 0x80);
        }
    }

    /// Bytes as they are (a fixed-size field, or the record's tail).
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// Bytes preceded by their LEB128 length.
    pub fn prefixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.count(bytes.len()).bytes(bytes)
    }

    /// Text preceded by its LEB128 length.
    pub fn str(&mut self, text: &str) -> &mut Self {
        self.prefixed(text.as_bytes())
    }

    /// The record written.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn every_field_reads_back_as_written() {
        let mut writer = Writer::with_capacity(0);
        writer
            .u8(7)
            .u16(0xBEEF)
            .u32(u32::MAX - 1)
            .u64(u64::MAX)
            .u128(1 << 100)
            .count(300)
            .str("héllo")
            .prefixed(b"")
            .bytes(b"tail");
        let bytes = writer.finish();
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8(), Some(7));
        assert_eq!(reader.u16(), Some(0xBEEF));
        assert_eq!(reader.u32(), Some(u32::MAX - 1));
        assert_eq!(reader.u64(), Some(u64::MAX));
        assert_eq!(reader.u128(), Some(1 << 100));
        assert_eq!(reader.count(), Some(300));
        assert_eq!(reader.str(), Some("héllo"));
        assert_eq!(reader.prefixed(), Some(&b""[..]));
        assert_eq!(reader.remaining(), 4);
        assert_eq!(reader.rest(), b"tail");
        assert!(reader.is_empty(), "bytes left after the last field");
    }

    #[test]
    fn counts_are_read_whole_and_spelt_one_way() {
        let read = |bytes: &[u8]| Reader::new(bytes).count();
        for value in [0, 1, 127, 128, 300, 65_535, 65_536, usize::MAX] {
            let mut writer = Writer::default();
            writer.count(value);
            let out = writer.finish();
            assert_eq!(read(&out), Some(value), "{value} spelt {out:?}");
        }
        assert_eq!(read(&[0x80, 0x00]), None, "a needless zero byte");
        assert_eq!(read(&[0x80]), None, "cut short");
        assert_eq!(read(&[0xFF; 11]), None, "more bits than a usize");
        let mut too_wide = vec![0xFF; (usize::BITS / 7) as usize];
        too_wide.push(0x7F);
        assert_eq!(read(&too_wide), None, "bits beyond a usize");
    }

    #[test]
    fn short_records_answer_none_and_consume_nothing_they_lack() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert_eq!(reader.u64(), None, "read 8 bytes out of 3");
        assert_eq!(reader.bytes(4), None, "took 4 bytes out of 3");
        assert_eq!(reader.remaining(), 3, "a failed read consumed bytes");
        assert_eq!(
            Reader::new(&[5, b'a']).prefixed(),
            None,
            "length beyond the end"
        );
        assert_eq!(Reader::new(&[2, 0xC3, 0x28]).str(), None, "invalid UTF-8");
        assert_eq!(Reader::new(&[]).u8(), None);
    }
}
