//! System V shared memory segments (shmget(2), shmat(2), shmctl(2)): what a
//! dump reads of a segment the tree has attached, and how restore makes it
//! again with the same key and (through `kernel.shm_next_id`) the same id.

use std::ptr::NonNull;

use nix::errno::Errno;

/// What IPC_STAT tells of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub key: i32,
    pub size: u64,
    /// Permission bits, with SHM_DEST (0o1000) when removed while attached.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nattch: u64,
}

/// SHM_DEST in [`Info::mode`]: IPC_RMID was called; the segment goes when
/// its last attachment does.
pub const SHM_DEST: u32 = 0o1000;

fn stat_raw(id: i32) -> Result<libc::shmid_ds, Errno> {
    // SAFETY: shmid_ds is plain old data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is valid for writes of a shmid_ds for the call.
    let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &raw mut ds) };
    Errno::result(r).map(|_| ds)
}

/// IPC_STAT of segment `id`.
pub fn stat(id: i32) -> Result<Info, Errno> {
    let ds = stat_raw(id)?;
    Ok(Info {
        key: ds.shm_perm.__key,
        size: ds.shm_segsz as u64,
        mode: u32::from(ds.shm_perm.mode),
        uid: ds.shm_perm.uid,
        gid: ds.shm_perm.gid,
        nattch: ds.shm_nattch,
    })
}

/// Set owner, group and permission bits (IPC_SET).
pub fn set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> Result<(), Errno> {
    let mut ds = stat_raw(id)?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as u16;
    // SAFETY: ds is a valid shmid_ds for reads for the call.
    let r = unsafe { libc::shmctl(id, libc::IPC_SET, &raw mut ds) };
    Errno::result(r).map(drop)
}

/// Mark the segment for removal (IPC_RMID).
pub fn remove(id: i32) -> Result<(), Errno> {
    // SAFETY: IPC_RMID takes no buffer.
    let r = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    Errno::result(r).map(drop)
}

/// The id of the segment with `key`, if there is one.
pub fn find(key: i32) -> Result<Option<i32>, Errno> {
    // SAFETY: shmget takes no pointers.
    match Errno::result(unsafe { libc::shmget(key, 0, 0) }) {
        Ok(id) => Ok(Some(id)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Create a new segment (IPC_CREAT | IPC_EXCL) with `key` (IPC_PRIVATE: 0)
/// and permission bits `mode`; returns its id.
pub fn create(key: i32, size: u64, mode: u32) -> Result<i32, Errno> {
    let flags = libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32;
    // SAFETY: shmget takes no pointers.
    Errno::result(unsafe { libc::shmget(key, size as usize, flags) })
}

/// A segment attached to the agent; detached on drop.
#[derive(Debug)]
pub struct Attached {
    ptr: NonNull<u8>,
    len: usize,
}

impl Attached {
    /// Attach segment `id` (read-only or read-write) where the kernel likes.
    pub fn new(id: i32, writable: bool) -> Result<Attached, Errno> {
        let len = stat(id)?.size as usize;
        let flags = if writable { 0 } else { libc::SHM_RDONLY };
        // SAFETY: attaching at an address the kernel chooses aliases no Rust
        // object; the result is checked below.
        let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
        if p as isize == -1 {
            return Err(Errno::last());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(Errno::EFAULT)?;
        Ok(Attached { ptr, len })
    }

    /// The address range of the attachment, `[start, end)` (whole pages).
    pub fn range(&self) -> std::ops::Range<u64> {
        let start = self.ptr.as_ptr() as u64;
        start..start + (self.len as u64).next_multiple_of(crate::mman::page_size() as u64)
    }

    /// The segment's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is the live attachment owned by self (the
        // kernel zero-fills new segments, so it is initialised); other
        // processes may write it concurrently, which for plain bytes only
        // means reading a value that is changing (the dump reads a frozen
        // tree's segments).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The segment's bytes, writable (attached read-write).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, through the exclusive borrow of self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: ptr is what shmat returned; no slice outlives self.
        let _ = unsafe { libc::shmdt(self.ptr.as_ptr().cast()) };
    }
}

/// Ask for `id` as the next segment id (`kernel.shm_next_id`, a
/// checkpoint/restore sysctl), or -1 to let the kernel choose again.
pub fn set_next_id(id: i32) -> std::io::Result<()> {
    std::fs::write("/proc/sys/kernel/shm_next_id", id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_attach_write_and_remove() {
        let key = 0x5717_0000 | (std::process::id() as i32 & 0xffff);
        let id = create(key, 10_000, 0o600).unwrap();
        assert_eq!(find(key), Ok(Some(id)));
        {
            let mut a = Attached::new(id, true).unwrap();
            a.as_mut_slice()[9_999] = 7;
            assert_eq!(stat(id).unwrap().nattch, 1);
            let b = Attached::new(id, false).unwrap();
            assert_eq!(b.as_slice()[9_999], 7);
        }
        let info = stat(id).unwrap();
        assert_eq!((info.key, info.size, info.mode & 0o777, info.nattch), (key, 10_000, 0o600, 0));
        set_owner(id, 1, 2, 0o640).unwrap();
        let info = stat(id).unwrap();
        assert_eq!((info.uid, info.gid, info.mode & 0o777), (1, 2, 0o640));
        remove(id).unwrap();
        assert_eq!(find(key), Ok(None));
    }
}
