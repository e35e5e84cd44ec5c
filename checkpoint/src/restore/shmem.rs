//! Shared memory objects, re-created once in the agent, filled with their
//! pages, and handed to every process that maps them (or holds a memfd fd
//! on them): a write by one is seen by the others, as before the dump.
//!
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
        let fd: OwnedFd = if m.memfd {
            let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
            let file = File::from(memfd_create(m.name.as_str(), flags).map_err(|e| err(format!("memfd_create: {e}")))?);
            file.set_len(m.size).map_err(|e| err(format!("ftruncate: {e}")))?;
            for r in regions {
                let mut data = image.read_region(r).map_err(|e| err(e.to_string()))?;
                data.truncate(m.size.saturating_sub(r.start) as usize);
                file.write_all_at(&data, r.start).map_err(|e| err(format!("writing at {}: {e}", r.start)))?;
            }
            file.into()
        } else {
            let pages = m.size.div_ceil(PAGE) as usize;
            let mut mapping = AnonMapping::shared(pages).map_err(|e| err(e.to_string()))?;
            for r in regions {
                let data = image.read_region(r).map_err(|e| err(e.to_string()))?;
                let at = r.start as usize;
                let dst = mapping
                    .as_mut_slice()
                    .get_mut(at..at + data.len())
                    .ok_or_else(|| err(format!("{} bytes at {at} do not fit in {} bytes", data.len(), m.size)))?;
                dst.copy_from_slice(&data);
            }
            let range = mapping.range();
            let path = format!("/proc/self/map_files/{:x}-{:x}", range.start, range.end);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| err(format!("opening {path}: {e}")))?;
            file.into()
        };
        made.insert(m.id, fd);
    }
    Ok(made)
}

/// Seal the memfds as they were.
pub fn seal(objects: &[Shmem], made: &HashMap<u64, OwnedFd>) -> Result<(), RestoreError> {
    for m in objects.iter().filter(|m| m.memfd && m.seals != 0) {
        let what = format!("seals of memfd {}", m.name);
        let fd = made.get(&m.id).ok_or_else(|| step(&what)("the memfd was not made".into()))?;
        fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(m.seals as i32)))
            .map_err(|e| step(&what)(format!("F_ADD_SEALS {:#x}: {e}", m.seals)))?;
    }
    Ok(())
}
