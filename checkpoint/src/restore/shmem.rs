//! Shared memory objects, re-created once in the agent, filled with their
//! pages, and handed to every process that maps them (or holds a memfd fd
//! on them): a write by one is seen by the others, as before the dump.
//!
//! A System V segment is made with its key and id (see [`sysv_segment`]).
//! MAP_SHARED anonymous memory is made as such (a shared anonymous mapping
//! of the agent, opened through /proc/self/map_files so /proc shows
//! "/dev/zero (deleted)" in the restored processes as before); a memfd
//! with memfd_create under its name. Seals are added once every process
//! has mapped the memfd ([`seal`]): some forbid new writable mappings.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use stasis_image::records::Shmem;
use stasis_image::Image;
use stasis_sys::mman::AnonMapping;
use stasis_sys::nix::fcntl::{fcntl, FcntlArg, SealFlag};
use stasis_sys::nix::sys::memfd::{memfd_create, MFdFlags};

use super::{step, RestoreError};

const PAGE: u64 = 4096;

/// Every object of the image, by id, as an fd of the agent's.
pub fn create(image: &Image, objects: &[Shmem]) -> Result<HashMap<u64, OwnedFd>, RestoreError> {
    let mut made = HashMap::new();
    for m in objects {
        let what = format!("shared memory object {}", m.id);
        let err = |e: String| step(&what)(e);
        let regions = image.memory().iter().filter(|r| r.mm == m.mm);
        let fd: OwnedFd = if m.sysv {
            sysv_segment(image, m).map_err(err)?
        } else if m.memfd {
            let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
            let file = File::from(memfd_create(m.name.as_str(), flags).map_err(|e| err(format!("memfd_create: {e}")))?);
            file.set_len(m.size).map_err(|e| err(format!("ftruncate: {e}")))?;
            for r in regions {
                let mut data = image.read_region(r).map_err(|e| err(e.to_string()))?;
                data.truncate(m.size.saturating_sub(r.start) as usize);
                file.write_all_at(&data, r.start).map_err(|e| err(format!("writing at {}: {e}", r.start)))?;
            }
            // Its mode and owner (an image without them has mode 0).
            if m.mode != 0 {
                super::deleted::set_owner_and_mode(&file, m.uid, m.gid, m.mode).map_err(err)?;
            }
            file.into()
        } else {
            let pages = m.size.div_ceil(PAGE) as usize;
            let mut mapping = AnonMapping::shared(pages).map_err(|e| err(e.to_string()))?;
            fill(image, m, mapping.as_mut_slice()).map_err(err)?;
            open_mapped(mapping.range()).map_err(err)?
        };
        made.insert(m.id, fd);
    }
    Ok(made)
}

/// A System V segment with the key, id (when free: `kernel.shm_next_id`),
/// size, owner and contents of `m`, as its file (opened through an
/// attachment of the agent's, which goes again): processes attach the
/// segment by the file's inode number, its id ([`sysv_id`]); a mapping of
/// part of it maps the file. A segment with the same key that nobody
/// has attached and that has the recorded id is the one the dumped tree
/// left when it was killed: it is replaced. Any other is an error.
fn sysv_segment(image: &Image, m: &Shmem) -> Result<OwnedFd, String> {
    use stasis_sys::sysv;
    let key = m.sysv_key;
    if key != 0 {
        if let Some(old) = sysv::find(key).map_err(|e| format!("looking up key {key:#x}: {e}"))? {
            let info = sysv::stat(old).map_err(|e| format!("System V segment {old}: {e}"))?;
            if old != m.sysv_id || info.nattch != 0 {
                return Err(format!(
                    "System V shared memory key {key:#x} is in use (segment {old}, {} attached)",
                    info.nattch
                ));
            }
            sysv::remove(old).map_err(|e| format!("removing the dumped tree's segment {old}: {e}"))?;
        }
    }
    // kernel.shm_next_id is the IPC namespace's: a segment made at the same
    // moment by anyone else takes the id asked for, which is then asked for
    // again while it is free.
    let mut tries = 0;
    let id = loop {
        let asked = sysv::set_next_id(m.sysv_id).is_ok();
        let created = sysv::create(key, m.size, 0o600);
        if asked {
            let _ = sysv::set_next_id(-1);
        }
        let id = created.map_err(|e| format!("shmget key {key:#x}, {} bytes: {e}", m.size))?;
        tries += 1;
        if id == m.sysv_id || !asked || tries == 5 || sysv::stat(m.sysv_id).is_ok() {
            break id;
        }
        sysv::remove(id).map_err(|e| format!("removing segment {id}, made at another id than asked: {e}"))?;
    };
    let made = (|| {
        if id != m.sysv_id {
            tracing::warn!("System V segment {} is restored as segment {id} (its id was taken)", m.sysv_id);
        }
        let mut seg = sysv::Attached::new(id, true).map_err(|e| format!("shmat {id}: {e}"))?;
        fill(image, m, seg.as_mut_slice())?;
        let file = open_mapped(seg.range())?;
        sysv::set_owner(id, m.uid, m.gid, m.mode).map_err(|e| format!("IPC_SET on segment {id}: {e}"))?;
        Ok(file)
    })();
    if made.is_err() {
        let _ = sysv::remove(id);
    }
    made
}

/// The System V segments a restore made: removed again if it fails (the
/// image still holds them), unless [`Segments::keep`].
pub struct Segments(Vec<i32>);

impl Segments {
    pub fn made(objects: &[Shmem], made: &HashMap<u64, OwnedFd>) -> Segments {
        let ids = objects.iter().filter(|m| m.sysv).filter_map(|m| made.get(&m.id).and_then(|fd| sysv_id(fd).ok()));
        Segments(ids.collect())
    }

    /// The restore succeeded: they belong to the restored tree.
    pub fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        for &id in &self.0 {
            let _ = stasis_sys::sysv::remove(id);
        }
    }
}

/// The id of the System V segment whose file is `fd` (its inode number).
pub fn sysv_id(fd: &OwnedFd) -> Result<i32, stasis_sys::Errno> {
    stasis_sys::nix::sys::stat::fstat(fd).map(|st| st.st_ino as i32)
}

/// Copy the object's pages from the image into `dst` (its memory, mapped
/// in the agent); bytes past its size are dropped.
fn fill(image: &Image, m: &Shmem, dst: &mut [u8]) -> Result<(), String> {
    for r in image.memory().iter().filter(|r| r.mm == m.mm) {
        let mut data = image.read_region(r).map_err(|e| e.to_string())?;
        data.truncate(m.size.saturating_sub(r.start) as usize);
        let at = r.start as usize;
        let to = dst
            .get_mut(at..at + data.len())
            .ok_or_else(|| format!("{} bytes at {at} do not fit in {} bytes", data.len(), m.size))?;
        to.copy_from_slice(&data);
    }
    Ok(())
}

/// The object mapped at `range` in the agent, opened through
/// /proc/self/map_files for the processes to map.
fn open_mapped(range: std::ops::Range<u64>) -> Result<OwnedFd, String> {
    let path = format!("/proc/self/map_files/{:x}-{:x}", range.start, range.end);
    let file =
        std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    Ok(file.into())
}

/// Seal the memfds as they were, and remove the System V segments that
/// had been removed while attached (they go with their last attachment).
pub fn seal(objects: &[Shmem], made: &HashMap<u64, OwnedFd>) -> Result<(), RestoreError> {
    for m in objects.iter().filter(|m| m.sysv && m.removed) {
        let what = format!("System V segment {}", m.sysv_id);
        let fd = made.get(&m.id).ok_or_else(|| step(&what)("it was not made".into()))?;
        let id = sysv_id(fd).map_err(|e| step(&what)(e.to_string()))?;
        stasis_sys::sysv::remove(id).map_err(|e| step(&what)(format!("IPC_RMID: {e}")))?;
    }
    for m in objects.iter().filter(|m| m.memfd && m.seals != 0) {
        let what = format!("seals of memfd {}", m.name);
        let fd = made.get(&m.id).ok_or_else(|| step(&what)("the memfd was not made".into()))?;
        fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(m.seals as i32)))
            .map_err(|e| step(&what)(format!("F_ADD_SEALS {:#x}: {e}", m.seals)))?;
    }
    Ok(())
}
