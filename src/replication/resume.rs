//! Resume tokens: where an interrupted transfer stands, as the receiver reports it in
//! `ListFilesystems` (`Filesystem.ResumeToken`) and the sender accepts it (`SendReq.ResumeToken`).
//!
//! Two kinds:
//! - [`ByteToken`], ours (`rdmarpc1-…`), for `dir:` targets: the stream's byte offset and the
//!   CRC32C of the prefix the receiver holds, so a sender that regenerates the stream can prove
//!   that its prefix is the same before it continues (and a file source just seeks).
//! - [`ZfsToken`], the `receive_resume_token` of `zfs receive -s`, passed to `zfs send -t`
//!   untouched. It is decoded here (hex, zlib, a native-encoded nvlist) only to cross-check its
//!   GUIDs against the planned step, as zrepl does, before anything is sent.

use std::io::Read;

use super::error::{ReplicationError, Result};

/// The resume point of a partial stream in a `dir:` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteToken {
    /// GUID of the snapshot being received.
    pub to_guid: u64,
    /// GUID of the incremental base, 0 for a full stream.
    pub from_guid: u64,
    /// Bytes the receiver holds.
    pub offset: u64,
    /// CRC32C of those bytes.
    pub prefix_crc: u32,
}

const BYTE_PREFIX: &str = "rdmarpc1-";

impl ByteToken {
    /// The token string.
    pub fn encode(&self) -> String {
        format!("{BYTE_PREFIX}{:x}-{:x}-{:x}-{:08x}", self.to_guid, self.from_guid, self.offset, self.prefix_crc)
    }

    /// Parses a token made by [`ByteToken::encode`]; `None` if it is another kind.
    pub fn parse(token: &str) -> Option<Result<ByteToken>> {
        let rest = token.strip_prefix(BYTE_PREFIX)?;
        let fields: Vec<&str> = rest.split('-').collect();
        let bad = || ReplicationError::Conflict(format!("malformed resume token {token:?}"));
        let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
        Some((|| {
            let [to, from, offset, crc] = fields[..] else { return Err(bad()) };
            let prefix_crc = u32::from_str_radix(crc, 16).map_err(|_| bad())?;
            Ok(ByteToken { to_guid: hex(to)?, from_guid: hex(from)?, offset: hex(offset)?, prefix_crc })
        })())
    }
}

/// What a ZFS `receive_resume_token` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZfsToken {
    /// GUID of the snapshot being received.
    pub to_guid: u64,
    /// GUID of the incremental base, 0 for a full stream.
    pub from_guid: u64,
    /// `pool/fs@snap` as the sender named it.
    pub to_name: String,
    /// Object and offset the receive stopped at.
    pub object: u64,
    /// Offset within that object.
    pub offset: u64,
    /// Stream bytes received so far.
    pub bytes: u64,
    /// Whether the interrupted send was raw (`-w`).
    pub raw: bool,
}

fn bad_zfs(token: &str, why: &str) -> ReplicationError {
    let shown: String = token.chars().take(40).collect();
    ReplicationError::Conflict(format!("cannot decode ZFS resume token {shown}…: {why}"))
}

impl ZfsToken {
    /// Decodes `1-<fletcher4 word0>-<nvlist size>-<hex zlib(nvlist)>` and checks its checksum.
    pub fn parse(token: &str) -> Result<ZfsToken> {
        let fields: Vec<&str> = token.trim().splitn(4, '-').collect();
        let [version, checksum, size, payload] = fields[..] else { return Err(bad_zfs(token, "not 4 fields")) };
        if version != "1" {
            return Err(bad_zfs(token, "unknown token version"));
        }
        let checksum = u64::from_str_radix(checksum, 16).map_err(|_| bad_zfs(token, "checksum is not hex"))?;
        let size = usize::from_str_radix(size, 16).map_err(|_| bad_zfs(token, "size is not hex"))?;
        if payload.len() % 2 != 0 || size > 1 << 20 {
            return Err(bad_zfs(token, "bad payload length"));
        }
        let hex_digit = |b: u8| char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok());
        let compressed: Vec<u8> = payload
            .as_bytes()
            .chunks_exact(2)
            .map(|pair| Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?))
            .collect::<Option<_>>()
            .ok_or_else(|| bad_zfs(token, "payload is not hex"))?;
        if fletcher4_word0(&compressed) != checksum {
            return Err(bad_zfs(token, "checksum mismatch (token damaged or truncated)"));
        }
        let mut packed = Vec::with_capacity(size);
        flate2::read::ZlibDecoder::new(&compressed[..])
            .take(size as u64 + 1)
            .read_to_end(&mut packed)
            .map_err(|err| bad_zfs(token, &format!("zlib: {err}")))?;
        if packed.len() != size {
            return Err(bad_zfs(token, "nvlist size mismatch"));
        }
        let mut out = ZfsToken::default();
        for (name, value) in parse_native_nvlist(&packed).ok_or_else(|| bad_zfs(token, "malformed nvlist"))? {
            match (name.as_str(), value) {
                ("toguid", NvValue::U64(v)) => out.to_guid = v,
                ("fromguid", NvValue::U64(v)) => out.from_guid = v,
                ("object", NvValue::U64(v)) => out.object = v,
                ("offset", NvValue::U64(v)) => out.offset = v,
                ("bytes", NvValue::U64(v)) => out.bytes = v,
                ("toname", NvValue::Str(s)) => out.to_name = s,
                ("rawok", _) => out.raw = true,
                _ => {}
            }
        }
        if out.to_guid == 0 || out.to_name.is_empty() {
            return Err(bad_zfs(token, "no toguid/toname"));
        }
        Ok(out)
    }
}

/// The first word of OpenZFS's fletcher-4 over little-endian 32-bit words: their sum mod 2^64.
fn fletcher4_word0(data: &[u8]) -> u64 {
    data.chunks_exact(4).map(|w| u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))).fold(0u64, u64::wrapping_add)
}

enum NvValue {
    U64(u64),
    Str(String),
    Other,
}

/// Parses a little-endian natively packed nvlist: a 4-byte stream header, version and flags, then
/// pairs `{size i32, name_len i16, reserved i16, elements i32, type i32, name (8-aligned), value}`
/// until a zero size.
fn parse_native_nvlist(packed: &[u8]) -> Option<Vec<(String, NvValue)>> {
    const UINT64: i32 = 8;
    const STRING: i32 = 9;
    let (&[encoding, endian, _, _], _) = packed.split_first_chunk::<4>()?;
    if encoding != 0 || endian != 1 {
        return None; // XDR or big-endian: not what OpenZFS on these hosts writes.
    }
    let i32_at = |at: usize| Some(i32::from_le_bytes(packed.get(at..at + 4)?.try_into().ok()?));
    let mut at = 4 + 8;
    let mut pairs = Vec::new();
    loop {
        let size = usize::try_from(i32_at(at)?).ok()?;
        if size == 0 {
            return Some(pairs);
        }
        let pair = packed.get(at..at.checked_add(size)?)?;
        let name_len = usize::try_from(i16::from_le_bytes(pair.get(4..6)?.try_into().ok()?)).ok()?;
        let kind = i32::from_le_bytes(pair.get(12..16)?.try_into().ok()?);
        let name_bytes = pair.get(16..16 + name_len)?;
        let name = std::str::from_utf8(name_bytes.strip_suffix(&[0])?).ok()?.to_string();
        let value_at = 16 + name_len.div_ceil(8) * 8;
        let value = match kind {
            UINT64 => NvValue::U64(u64::from_le_bytes(pair.get(value_at..value_at + 8)?.try_into().ok()?)),
            STRING => {
                let raw = pair.get(value_at..)?;
                let end = raw.iter().position(|&b| b == 0)?;
                NvValue::Str(String::from_utf8(raw[..end].to_vec()).ok()?)
            }
            _ => NvValue::Other,
        };
        pairs.push((name, value));
        at += size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real tokens left by OpenZFS (published in zrepl's tests and syncoid logs), with what
    // `zfs send -nvt` printed for the first.
    const FULL: &str = "1-9baebea70-b8-789c636064000310a500c4ec50360710e72765a52697303030419460caa7a515a79680647ce0f26c48f2499525a9c5405ac3c90fabfe92fcf4d2cc140686b30972c7850efd0cd24092e704cbe725e6a632305415e5e797e803cd2ad14f743084b805001b201795";
    const INCREMENTAL: &str = "1-11da694afc-118-789c636064000310a501c49c50360710a715e5e7a69766a63040c1e9abfec755e64d6c5200b2d991d4e52765a5269740f82080219f96569c5ac2000720793624f9a4ca92d46206547964fd25f91057bc7979e8b2eadb1ac90424794eb07c5e626e2a0343667e7c49625eb63ed0b412fd1c837863fd1cc37823fd1ca3782387e2cabce4fccc9478a01a230323135d43235d23632b430b2b53632b53735d77df105d03332b0303981b00f1f62e6e";

    #[test]
    fn decodes_a_real_full_send_token() {
        let token = ZfsToken::parse(FULL).expect("decodes");
        assert_eq!(token.to_guid, 0x52f9_c212_c71e_60cd);
        assert_eq!(token.from_guid, 0);
        assert_eq!(token.to_name, "zroot/test/a@1");
        assert_eq!((token.object, token.offset, token.bytes), (2, 0x4c_0000, 0x4e_4228));
    }

    #[test]
    fn decodes_a_real_incremental_token() {
        let token = ZfsToken::parse(INCREMENTAL).expect("decodes");
        assert_ne!(token.from_guid, 0, "incremental tokens carry the base");
        assert_ne!(token.to_guid, 0);
        assert!(token.to_name.contains('@'), "{token:?}");
    }

    #[test]
    fn damaged_tokens_are_refused() {
        let mut damaged = FULL.to_string();
        damaged.replace_range(40..41, if &FULL[40..41] == "0" { "1" } else { "0" });
        assert!(ZfsToken::parse(&damaged).expect_err("checksum").to_string().contains("checksum"));
        assert!(ZfsToken::parse(&FULL[..FULL.len() - 8]).is_err());
        assert!(ZfsToken::parse("2-aa-bb-cc").is_err());
        assert!(ZfsToken::parse("nonsense").is_err());
        assert!(ZfsToken::parse("1-0-0-a\u{e9}1").is_err(), "multibyte bytes from a peer are refused, not a panic");
    }

    #[test]
    fn byte_tokens_round_trip() {
        let token = ByteToken { to_guid: 0xdead_beef, from_guid: 0, offset: 1 << 33, prefix_crc: 0x1234 };
        let text = token.encode();
        assert_eq!(ByteToken::parse(&text).expect("ours").expect("valid"), token);
        assert!(ByteToken::parse(FULL).is_none(), "a ZFS token is not ours");
        assert!(ByteToken::parse("rdmarpc1-zz").expect("ours").is_err());
    }
}
