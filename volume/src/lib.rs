//! Copy-on-write volumes, independent of the backend.
//!
//! A [`Volume`] is one filesystem tree stasis can snapshot at an instant: a
//! btrfs subvolume (`stasis-btrfs`) or an LVM logical volume (`stasis-lvm`).
//! The trait is what the coherent snapshot and the `stasis volume` commands
//! are built on: make a read-only snapshot with a name, list, delete, roll
//! the volume back to a snapshot, open a snapshot read-only, export a
//! snapshot as a stream (optionally incremental against a parent) and import
//! one. [`Memory`] is an in-memory backend for testing orchestration without
//! disks. The concrete backends are chosen from a path by the binary
//! ([`Detected`] names what a path is on); nothing else names them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub mod detect;
pub mod users;

pub use detect::{detect, is_mount_point, Detected};

/// Which backend a volume uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Btrfs,
    Lvm,
    Memory,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Btrfs => "btrfs",
            Kind::Lvm => "lvm",
            Kind::Memory => "memory",
        }
    }
}

/// One snapshot of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The name it was made with (unique per volume).
    pub name: String,
    /// What makes it this snapshot and no other, for an image to name it:
    /// the btrfs subvolume UUID; the LVM LV UUID (of the first LV of that
    /// name, when a rollback made it again: see [`Volume::rollback`]).
    pub id: String,
    /// Where it can be read: a btrfs snapshot's directory, an LVM
    /// snapshot's device (`/dev/VG/LV`).
    pub location: PathBuf,
    /// When it was made, seconds since the epoch (0: unknown).
    pub created: u64,
    /// Extra facts a backend knows, shown by `stasis volume list` (e.g.
    /// "thin", "classic, 12% of its COW space used", "invalid").
    pub detail: String,
}

/// A snapshot made read-only and readable at a path until dropped (an LVM
/// snapshot mounted read-only is unmounted when this goes).
pub trait Opened: std::fmt::Debug {
    fn path(&self) -> &Path;
}

/// A snapshot that is a directory already (btrfs): nothing to undo.
#[derive(Debug)]
pub struct Directory(pub PathBuf);

impl Opened for Directory {
    fn path(&self) -> &Path {
        &self.0
    }
}

/// Why a volume operation failed. Each names the volume or snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path is on no filesystem stasis can snapshot.
    #[error("{path} is not on a btrfs subvolume or an LVM logical volume ({what})")]
    Unsupported { path: PathBuf, what: String },
    #[error("volume {volume} has no snapshot named {name:?}")]
    NoSnapshot { volume: String, name: String },
    #[error("volume {volume} already has a snapshot named {name:?}")]
    Exists { volume: String, name: String },
    /// A snapshot whose copy-on-write space filled up (LVM classic).
    #[error("snapshot {name:?} of {volume} is invalid: {why}")]
    Invalid { volume: String, name: String, why: String },
    /// No room for what the operation makes: a full volume group or thin
    /// pool, a full btrfs.
    #[error("{volume}: no space left for {what}")]
    NoSpace { volume: String, what: String },
    /// The volume is in use in a way the operation cannot go past (a
    /// mounted LV to merge into, an open file on a subvolume to replace).
    #[error("{volume}: {what}")]
    Busy { volume: String, what: String },
    /// A system call failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A tool stasis drives (`lvcreate`, `btrfs receive`) failed or is
    /// missing; its own message is kept.
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// A copy-on-write volume.
pub trait Volume: std::fmt::Debug + Send + Sync {
    fn kind(&self) -> Kind;

    /// For people: "btrfs subvolume /srv", "LVM volume vg0/data".
    fn describe(&self) -> String;

    /// Where the volume is mounted (or the directory that is its root).
    fn mount_point(&self) -> &Path;

    /// Make a read-only snapshot called `name`, now. It must be consistent
    /// as of one instant (what a power cut would leave: data written and not
    /// yet synced may or may not be in it, the backends sync first).
    fn snapshot(&self, name: &str) -> Result<Snapshot, Error>;

    /// The snapshots stasis can see of this volume, oldest first.
    fn list(&self) -> Result<Vec<Snapshot>, Error>;

    /// The snapshot called `name`.
    fn find(&self, name: &str) -> Result<Snapshot, Error> {
        self.list()?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::NoSnapshot { volume: self.describe(), name: name.to_owned() })
    }

    fn delete(&self, name: &str) -> Result<(), Error>;

    /// Make the volume's contents those of snapshot `name` again. What is
    /// written after the snapshot is lost; the snapshot itself stays, with
    /// its id (a backend whose rollback consumes it makes a new one of the
    /// same name and keeps the id: an image taken with the snapshot can be
    /// restored again).
    fn rollback(&self, name: &str) -> Result<(), Error>;

    /// The snapshot readable at a path.
    fn open(&self, name: &str) -> Result<Box<dyn Opened>, Error>;

    /// Write snapshot `name` to `out` as a stream `import` takes back; with
    /// a `parent` snapshot, only what changed since it.
    fn export(&self, name: &str, parent: Option<&str>, out: &mut dyn Write) -> Result<(), Error>;

    /// Read a stream `export` wrote and make it a snapshot of this volume.
    fn import(&self, input: &mut dyn Read) -> Result<Snapshot, Error>;
}

/// An in-memory volume: a map of file names to contents, for testing what
/// is built on volumes without disks. Snapshots are copies of the map.
#[derive(Debug, Default)]
pub struct Memory {
    inner: Mutex<MemoryState>,
    root: PathBuf,
}

#[derive(Debug, Default)]
struct MemoryState {
    files: BTreeMap<String, Vec<u8>>,
    snapshots: Vec<(Snapshot, BTreeMap<String, Vec<u8>>)>,
    next_id: u64,
}

impl Memory {
    pub fn new() -> Memory {
        Memory { inner: Mutex::default(), root: PathBuf::from("/memory") }
    }

    pub fn write(&self, file: &str, data: &[u8]) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).files.insert(file.to_owned(), data.to_vec());
    }

    pub fn read(&self, file: &str) -> Option<Vec<u8>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).files.get(file).cloned()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Volume for Memory {
    fn kind(&self) -> Kind {
        Kind::Memory
    }

    fn describe(&self) -> String {
        "in-memory volume".into()
    }

    fn mount_point(&self) -> &Path {
        &self.root
    }

    fn snapshot(&self, name: &str) -> Result<Snapshot, Error> {
        let mut st = self.state();
        if st.snapshots.iter().any(|(s, _)| s.name == name) {
            return Err(Error::Exists { volume: self.describe(), name: name.to_owned() });
        }
        st.next_id += 1;
        let snap = Snapshot {
            name: name.to_owned(),
            id: format!("memory-{}", st.next_id),
            location: self.root.join(name),
            created: 0,
            detail: String::new(),
        };
        let files = st.files.clone();
        st.snapshots.push((snap.clone(), files));
        Ok(snap)
    }

    fn list(&self) -> Result<Vec<Snapshot>, Error> {
        Ok(self.state().snapshots.iter().map(|(s, _)| s.clone()).collect())
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        let mut st = self.state();
        let before = st.snapshots.len();
        st.snapshots.retain(|(s, _)| s.name != name);
        if st.snapshots.len() == before {
            return Err(Error::NoSnapshot { volume: self.describe(), name: name.to_owned() });
        }
        Ok(())
    }

    fn rollback(&self, name: &str) -> Result<(), Error> {
        let mut st = self.state();
        let files = st.snapshots.iter().find(|(s, _)| s.name == name).map(|(_, f)| f.clone());
        let files = files.ok_or_else(|| Error::NoSnapshot { volume: self.describe(), name: name.to_owned() })?;
        st.files = files;
        Ok(())
    }

    fn open(&self, name: &str) -> Result<Box<dyn Opened>, Error> {
        let snap = self.find(name)?;
        Ok(Box::new(Directory(snap.location)))
    }

    fn export(&self, name: &str, _parent: Option<&str>, out: &mut dyn Write) -> Result<(), Error> {
        let st = self.state();
        let (_, files) = st
            .snapshots
            .iter()
            .find(|(s, _)| s.name == name)
            .ok_or_else(|| Error::NoSnapshot { volume: self.describe(), name: name.to_owned() })?;
        let mut text = format!("{name}\n");
        for (f, data) in files {
            text.push_str(&format!("{f} {}\n", data.iter().map(|b| format!("{b:02x}")).collect::<String>()));
        }
        out.write_all(text.as_bytes()).map_err(Error::io("writing the export"))
    }

    fn import(&self, input: &mut dyn Read) -> Result<Snapshot, Error> {
        let mut text = String::new();
        input.read_to_string(&mut text).map_err(Error::io("reading the import"))?;
        let mut lines = text.lines();
        let name = lines.next().ok_or_else(|| Error::Other("empty import stream".into()))?.to_owned();
        let mut files = BTreeMap::new();
        for line in lines {
            let (f, hex) = line.split_once(' ').ok_or_else(|| Error::Other(format!("bad import line {line:?}")))?;
            let data = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| Error::Other(format!("bad import data for {f}")))?;
            files.insert(f.to_owned(), data);
        }
        let mut st = self.state();
        if st.snapshots.iter().any(|(s, _)| s.name == name) {
            return Err(Error::Exists { volume: self.describe(), name });
        }
        st.next_id += 1;
        let snap = Snapshot {
            name: name.clone(),
            id: format!("memory-{}", st.next_id),
            location: self.root.join(&name),
            created: 0,
            detail: "imported".into(),
        };
        st.snapshots.push((snap.clone(), files));
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_snapshot_rollback_export_import() {
        let v = Memory::new();
        v.write("log", b"1\n");
        let s = v.snapshot("one").unwrap();
        assert_eq!(s.name, "one");
        assert!(matches!(v.snapshot("one"), Err(Error::Exists { .. })));
        v.write("log", b"1\n2\n");
        v.rollback("one").unwrap();
        assert_eq!(v.read("log").unwrap(), b"1\n");
        let mut stream = Vec::new();
        v.export("one", None, &mut stream).unwrap();
        let other = Memory::new();
        let imported = other.import(&mut stream.as_slice()).unwrap();
        assert_eq!(imported.name, "one");
        other.rollback("one").unwrap();
        assert_eq!(other.read("log").unwrap(), b"1\n");
        v.delete("one").unwrap();
        assert!(matches!(v.find("one"), Err(Error::NoSnapshot { .. })));
    }
}
