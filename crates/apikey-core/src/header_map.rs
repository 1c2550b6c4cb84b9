//! The proxy-wasm header-map wire format, parsed without panicking.
//!
//! The host hands a whole header map over in one buffer: a little-endian
//! `u32` pair count, then a `u32` name length and a `u32` value length per
//! pair, then each name and value followed by a NUL byte. The SDK's helpers
//! turn names (and, for the string getters, values) into `String` and panic
//! on non-UTF-8 bytes, which traps the VM; here everything stays bytes and a
//! truncated or inconsistent buffer is an error, never a panic.

/// One header as the host sent it: raw name and value bytes.
pub type HeaderPair<'a> = (&'a [u8], &'a [u8]);

/// The buffer does not follow the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedHeaderMap;

/// Parses a serialised header map into borrowed (name, value) pairs, in the
/// host's order.
pub fn parse(buffer: &[u8]) -> Result<Vec<HeaderPair<'_>>, MalformedHeaderMap> {
    let count = read_u32(buffer, 0).ok_or(MalformedHeaderMap)? as usize;
    // Each pair needs at least 8 bytes of sizes and 2 NULs: refuse counts the
    // buffer cannot hold before allocating for them.
    if count > buffer.len() / 10 {
        return Err(MalformedHeaderMap);
    }
    let mut pairs = Vec::with_capacity(count);
    let mut data = 4usize
        .checked_add(count.checked_mul(8).ok_or(MalformedHeaderMap)?)
        .ok_or(MalformedHeaderMap)?;
    for index in 0..count {
        let sizes_at = 4 + index * 8;
        let name_len = read_u32(buffer, sizes_at).ok_or(MalformedHeaderMap)? as usize;
        let value_len = read_u32(buffer, sizes_at + 4).ok_or(MalformedHeaderMap)? as usize;
        let name = take(buffer, &mut data, name_len)?;
        let value = take(buffer, &mut data, value_len)?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Serialises pairs into the wire format, for replies and map writes.
pub fn serialise<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| 10 + n.as_ref().len() + v.as_ref().len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    // Header counts and lengths are far below u32::MAX in any request a
    // proxy accepts; saturating keeps this total even for absurd input.
    let as_u32 = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&as_u32(pairs.len()).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&as_u32(name.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&as_u32(value.as_ref().len()).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_ref());
        out.push(0);
        out.extend_from_slice(value.as_ref());
        out.push(0);
    }
    out
}

fn read_u32(buffer: &[u8], at: usize) -> Option<u32> {
    let bytes = buffer.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Takes `len` bytes at `*at` and the NUL after them.
fn take<'a>(buffer: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], MalformedHeaderMap> {
    let end = at.checked_add(len).ok_or(MalformedHeaderMap)?;
    let bytes = buffer.get(*at..end).ok_or(MalformedHeaderMap)?;
    if buffer.get(end) != Some(&0) {
        return Err(MalformedHeaderMap);
    }
    *at = end + 1;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn round_trips_arbitrary_bytes() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":path", b"/a"),
            (b"x-bin", b"\xff\x00\x80"),
            (b"\xc3\x28", b""),
        ];
        let wire = serialise(&pairs);
        assert_eq!(parse(&wire).unwrap(), pairs);
    }

    #[test]
    fn an_empty_map_parses_to_no_pairs() {
        assert_eq!(parse(&serialise::<&[u8], &[u8]>(&[])).unwrap(), vec![]);
    }

    #[test]
    fn truncated_or_inconsistent_buffers_are_errors_not_panics() {
        let wire = serialise(&[(b"name".as_slice(), b"value".as_slice())]);
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]), Err(MalformedHeaderMap), "cut at {cut}");
        }
        let mut no_nul = wire.clone();
        let last = no_nul.len() - 1;
        no_nul[last] = b'x';
        assert_eq!(parse(&no_nul), Err(MalformedHeaderMap));
        let mut huge_count = wire;
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge_count), Err(MalformedHeaderMap));
    }
}
