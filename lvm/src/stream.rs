//! The export stream of an LVM snapshot: its block device, whole.
//!
//! ```text
//! offset    size  field
//! 0         8     magic "STASISLV"
//! 8         4     format version, u32 little-endian (1)
//! 12        8     size of the data in bytes, u64 LE (a multiple of 512)
//! 20        2     length of the name, u16 LE (1 to 127)
//! 22        n     the snapshot's name (an LV name, UTF-8)
//! 22+n      size  the snapshot device's bytes
//! 22+n+size 32    BLAKE3 of everything before it (header and data)
//! ```
//!
//! The reader checks magic, version, size and name before it creates
//! anything, and the checksum after the last byte: the caller removes what
//! it wrote when [`Reader::copy_to`] fails. A newer version is refused, not
//! guessed at.

use std::io::{self, Read, Write};

use stasis_volume::Error;

pub const MAGIC: &[u8; 8] = b"STASISLV";
pub const VERSION: u32 = 1;
const HASH_LEN: usize = 32;
const BUFFER: usize = 1 << 20;

/// Writes the stream of `size` bytes read from `data`, named `name`.
pub fn write(name: &str, size: u64, data: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    let name_len =
        u16::try_from(name.len()).map_err(|_| Error::Other(format!("snapshot name {name:?} is too long")))?;
    let mut header = Vec::with_capacity(22 + name.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&size.to_le_bytes());
    header.extend_from_slice(&name_len.to_le_bytes());
    header.extend_from_slice(name.as_bytes());
    let mut hasher = blake3::Hasher::new();
    hasher.update(&header);
    out.write_all(&header).map_err(Error::io("writing the export stream"))?;
    let mut buf = vec![0; BUFFER];
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left.min(BUFFER as u64)).unwrap_or(BUFFER);
        let n = match data.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(Error::Other(format!("snapshot {name:?} ended after {} of its {size} bytes", size - left)))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("reading snapshot {name:?}"))(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(Error::io("writing the export stream"))?;
        left -= n as u64;
    }
    out.write_all(hasher.finalize().as_bytes()).map_err(Error::io("writing the export stream"))?;
    out.flush().map_err(Error::io("writing the export stream"))
}

/// A stream whose header has been read and checked.
pub struct Reader<'a> {
    pub name: String,
    pub size: u64,
    input: &'a mut dyn Read,
    hasher: blake3::Hasher,
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("name", &self.name).field("size", &self.size).finish_non_exhaustive()
    }
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Other(format!("not an LVM export stream stasis can import: {what}"))
}

fn read_exact(input: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<(), Error> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => bad(format!("it ends inside {what} (truncated?)")),
        _ => Error::io(format!("reading the import stream's {what}"))(e),
    })
}

impl<'a> Reader<'a> {
    /// Reads and checks the header.
    pub fn new(input: &'a mut dyn Read) -> Result<Reader<'a>, Error> {
        let mut fixed = [0; 22];
        read_exact(input, &mut fixed, "header")?;
        let (magic, rest) = fixed.split_at(8);
        if magic != MAGIC {
            return Err(bad(format!("it starts with {magic:02x?}, not the magic {MAGIC:02x?} (\"STASISLV\")")));
        }
        let field = |at: usize, len: usize| rest.get(at..at + len).unwrap_or_default();
        let version = u32::from_le_bytes(field(0, 4).try_into().unwrap_or_default());
        if version != VERSION {
            return Err(bad(format!("format version {version}, this stasis reads version {VERSION}")));
        }
        let size = u64::from_le_bytes(field(4, 8).try_into().unwrap_or_default());
        if size == 0 || size % 512 != 0 {
            return Err(bad(format!("a size of {size} bytes is no block device's")));
        }
        let name_len = usize::from(u16::from_le_bytes(field(12, 2).try_into().unwrap_or_default()));
        if !(1..=127).contains(&name_len) {
            return Err(bad(format!("a name of {name_len} bytes")));
        }
        let mut name = vec![0; name_len];
        read_exact(input, &mut name, "name")?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&fixed);
        hasher.update(&name);
        let name = String::from_utf8(name).map_err(|_| bad("the name is not UTF-8"))?;
        Ok(Reader { name, size, input, hasher })
    }

    /// Copies the data into `out` and checks the checksum after it.
    pub fn copy_to(mut self, out: &mut dyn Write) -> Result<(), Error> {
        let mut buf = vec![0; BUFFER];
        let mut left = self.size;
        while left > 0 {
            let want = usize::try_from(left.min(BUFFER as u64)).unwrap_or(BUFFER);
            let n = match self.input.read(&mut buf[..want]) {
                Ok(0) => return Err(bad(format!("it ends after {} of its {} bytes", self.size - left, self.size))),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("reading the import stream")(e)),
            };
            self.hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(Error::io(format!("writing snapshot {:?}", self.name)))?;
            left -= n as u64;
        }
        let mut sum = [0; HASH_LEN];
        read_exact(self.input, &mut sum, "checksum")?;
        if blake3::Hash::from(sum) != self.hasher.finalize() {
            return Err(Error::Other(format!(
                "the import stream of snapshot {:?} is corrupted: its BLAKE3 checksum does not match its contents",
                self.name
            )));
        }
        out.flush().map_err(Error::io(format!("writing snapshot {:?}", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write("snap1", data.len() as u64, &mut &data[..], &mut out).unwrap();
        out
    }

    fn import(bytes: &[u8]) -> Result<(String, Vec<u8>), Error> {
        let mut input = bytes;
        let reader = Reader::new(&mut input)?;
        let name = reader.name.clone();
        let mut out = Vec::new();
        reader.copy_to(&mut out)?;
        Ok((name, out))
    }

    #[test]
    fn a_stream_round_trips() {
        let data: Vec<u8> = (0..3 * 512).map(|i| (i * 7 % 251) as u8).collect();
        let bytes = stream(&data);
        assert_eq!(bytes.len(), 22 + 5 + data.len() + 32);
        assert_eq!(&bytes[..8], b"STASISLV");
        assert_eq!(import(&bytes).unwrap(), ("snap1".to_owned(), data));
    }

    #[test]
    fn every_damaged_field_is_refused() {
        let data = vec![0x5a; 1024];
        let good = stream(&data);
        let damaged = |at: usize| {
            let mut b = good.clone();
            b[at] ^= if at < 20 { 0x81 } else { 0x01 };
            import(&b).unwrap_err().to_string()
        };
        assert!(damaged(0).contains("not the magic"), "{}", damaged(0));
        assert!(damaged(8).contains("format version"), "{}", damaged(8));
        assert!(damaged(12).contains("no block device's"), "{}", damaged(12));
        let mut no_name = good.clone();
        no_name[20] = 0;
        assert!(import(&no_name).unwrap_err().to_string().contains("a name of 0 bytes"));
        // The name, its length made shorter, a data byte, the checksum.
        let mut shorter = good.clone();
        shorter[20] = 4;
        assert!(import(&shorter).unwrap_err().to_string().contains("is corrupted"));
        for at in [23, 22 + 5 + 600, good.len() - 1] {
            assert!(damaged(at).contains("is corrupted"), "{at}: {}", damaged(at));
        }
        let truncated = import(&good[..good.len() - 40]).unwrap_err().to_string();
        assert!(truncated.contains("ends after"), "{truncated}");
        let no_sum = import(&good[..good.len() - 32]).unwrap_err().to_string();
        assert!(no_sum.contains("ends inside checksum"), "{no_sum}");
        assert!(import(&good[..10]).unwrap_err().to_string().contains("ends inside header"));
    }

    #[test]
    fn a_short_device_is_an_error() {
        let mut out = Vec::new();
        let err = write("snap1", 4096, &mut &[0u8; 1024][..], &mut out).unwrap_err().to_string();
        assert!(err.contains("ended after 1024 of its 4096 bytes"), "{err}");
    }
}
