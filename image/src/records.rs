//! Metadata records as stored, in protobuf (prost derive, no code generation
//! step). These are persisted types, kept apart from the live types that
//! produce them so that the format changes only on purpose.
//!
//! Compatibility rules (see `docs/versioning.md`): a tag is never reused or
//! retyped; a new field gets a new tag and a default that means "as before";
//! a record an old reader must not ignore goes into a new section marked
//! required. Protobuf skips unknown fields, so an older stasis reads a newer
//! image's known fields, and a newer stasis reads an older image with the new
//! fields at their defaults.

/// Section `info`: what the image is and how to read its chunks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageInfo {
    /// 16 random bytes chosen when the image was written.
    #[prost(bytes = "vec", tag = "1")]
    pub image_id: Vec<u8>,
    /// The stasis version that wrote the image.
    #[prost(string, tag = "2")]
    pub tool_version: String,
    /// Milliseconds since the Unix epoch when writing finished.
    #[prost(uint64, tag = "3")]
    pub created_unix_ms: u64,
    /// Memory is cut into chunks at multiples of this many bytes of address.
    #[prost(uint32, tag = "4")]
    pub chunk_size: u32,
    /// The image whose chunks this one references instead of copying.
    #[prost(message, optional, tag = "5")]
    pub parent: Option<ParentRef>,
    /// Length of `chunks.pack`, to catch truncation without reading it.
    #[prost(uint64, tag = "6")]
    pub pack_len: u64,
    /// Host the image was written on (for `inspect`; restore does not trust it).
    #[prost(string, tag = "7")]
    pub hostname: String,
    /// `uname -r` of that host.
    #[prost(string, tag = "8")]
    pub kernel_release: String,
}

/// A reference from an incremental image to the image it extends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ParentRef {
    /// Path of the parent directory, relative to this image's directory when
    /// it is not absolute.
    #[prost(string, tag = "1")]
    pub path: String,
    /// BLAKE3 of the parent's whole manifest: pins the exact parent, so a
    /// parent rewritten in place is detected.
    #[prost(bytes = "vec", tag = "2")]
    pub manifest_hash: Vec<u8>,
}

/// Section `memory`: which chunks hold which bytes of which address space.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemoryIndex {
    #[prost(message, repeated, tag = "1")]
    pub regions: Vec<MemoryRegion>,
}

/// A run of present pages of one address space. The run is cut at every
/// multiple of the image's chunk size (in absolute address), so the same
/// memory yields the same chunks from one dump to the next.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemoryRegion {
    /// Which address space (a task record names the one it uses).
    #[prost(uint32, tag = "1")]
    pub mm: u32,
    /// First byte; a multiple of 4096.
    #[prost(uint64, tag = "2")]
    pub start: u64,
    /// Length in bytes; a multiple of 4096, not zero.
    #[prost(uint64, tag = "3")]
    pub len: u64,
    /// The 32-byte ids of the chunks, concatenated, in address order.
    #[prost(bytes = "vec", tag = "4")]
    pub chunk_ids: Vec<u8>,
}
