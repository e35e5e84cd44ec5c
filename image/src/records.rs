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

/// Section `processes`: the process tree and every kernel object its
/// processes hold. Memory contents are in the `memory` section, keyed by
/// each process's `mm`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessTree {
    /// Parents before children; the first is the root of the dump.
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<Process>,
    /// Pipes held by the tree, each once, with their buffered data.
    #[prost(message, repeated, tag = "2")]
    pub pipes: Vec<Pipe>,
    /// How the dump went: times and counts.
    #[prost(message, optional, tag = "3")]
    pub stats: Option<DumpStats>,
    /// The layout of the kernel's special mappings at dump time, for the
    /// same-kernel check at restore.
    #[prost(message, optional, tag = "4")]
    pub kernel: Option<KernelLayout>,
    /// Children that had exited and were not yet reaped by their parent
    /// (which is in `processes`).
    #[prost(message, repeated, tag = "5")]
    pub zombies: Vec<Zombie>,
    /// Shared memory objects (MAP_SHARED anonymous memory, memfd, SysV and
    /// POSIX shared memory) each stored once, with their pages in the
    /// memory index under their own address space.
    #[prost(message, repeated, tag = "6")]
    pub shmem: Vec<Shmem>,
    /// Unix sockets held by the tree, each once, with the data queued
    /// for reading on them.
    #[prost(message, repeated, tag = "7")]
    pub unix_sockets: Vec<UnixSocket>,
    /// The nftables table that drops the incoming packets of the tree's
    /// established TCP connections from the dump until their restore
    /// (empty: none); restore removes it.
    #[prost(string, tag = "8")]
    pub netlock: String,
    /// Sessions of the tree whose leader had exited at dump time (a daemon
    /// that forked after setsid): restore makes each again through a
    /// short-lived process at the leader's pid, which forks the roots in it.
    #[prost(int32, repeated, tag = "9")]
    pub leaderless_sessions: Vec<i32>,
    /// Process groups of the tree whose leader had exited at dump time:
    /// made again the same way, and left once every member has joined.
    #[prost(int32, repeated, tag = "10")]
    pub leaderless_groups: Vec<i32>,
    /// The volume snapshot taken while the tree was frozen (a coherent
    /// snapshot): every file of the volume the image's fds and mappings
    /// name is as it was then.
    #[prost(message, optional, tag = "11")]
    pub volume: Option<VolumeSnapshot>,
    /// The tree lived in a PID namespace of its own (below the dumping
    /// stasis's): every pid here is one of that namespace, and a restore
    /// puts the tree into a new PID namespace again.
    #[prost(bool, tag = "12")]
    pub pid_namespace: bool,
    /// The pseudo-terminal pairs whose masters the tree holds.
    #[prost(message, repeated, tag = "13")]
    pub ptys: Vec<Pty>,
}

/// A snapshot of a copy-on-write volume, by identity.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VolumeSnapshot {
    /// "btrfs" or "lvm".
    #[prost(string, tag = "1")]
    pub kind: String,
    /// The volume: its root directory or mount point.
    #[prost(string, tag = "2")]
    pub volume: String,
    /// The snapshot's name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// The backend's identity of the snapshot (btrfs subvolume UUID, LVM
    /// LV UUID): a rollback checks it.
    #[prost(string, tag = "4")]
    pub id: String,
    /// Where the snapshot could be read at dump time.
    #[prost(string, tag = "5")]
    pub location: String,
    /// How long taking it kept the tree frozen.
    #[prost(uint64, tag = "6")]
    pub snapshot_us: u64,
    /// st_dev of the volume's files at dump time (a rollback may give them
    /// another: restore maps it to the new one when checking files).
    #[prost(uint64, tag = "7")]
    pub dev: u64,
}

/// A process that had exited, kept until its parent waits for it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Zombie {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(int32, tag = "2")]
    pub ppid: i32,
    #[prost(int32, tag = "3")]
    pub pgid: i32,
    #[prost(int32, tag = "4")]
    pub sid: i32,
    /// What waitpid(2) will report: exit code or signal.
    #[prost(int32, tag = "5")]
    pub wait_status: i32,
    #[prost(string, tag = "6")]
    pub comm: String,
    /// The signal its parent gets for it (SIGCHLD, as a rule).
    #[prost(int32, tag = "7")]
    pub exit_signal: i32,
}

/// A shared memory object: the pages of one shmem inode, however many
/// mappings in however many processes refer to it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Shmem {
    /// The id mappings refer to ([`Vma::shmem`]); nonzero.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Size in bytes, as fstat reports it.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Address space of its pages in the memory index (offset = address).
    #[prost(uint32, tag = "3")]
    pub mm: u32,
    /// A memfd (memfd_create), rather than MAP_SHARED anonymous memory.
    #[prost(bool, tag = "4")]
    pub memfd: bool,
    /// The memfd's name (without the "memfd:" prefix).
    #[prost(string, tag = "5")]
    pub name: String,
    /// A memfd's seals (F_GET_SEALS).
    #[prost(uint32, tag = "6")]
    pub seals: u32,
    /// A System V shared memory segment (neither memfd nor anonymous).
    #[prost(bool, tag = "7")]
    pub sysv: bool,
    /// Its key (0: IPC_PRIVATE) and id.
    #[prost(int32, tag = "8")]
    pub sysv_key: i32,
    #[prost(int32, tag = "9")]
    pub sysv_id: i32,
    /// Permission bits, owner and group of the segment.
    #[prost(uint32, tag = "10")]
    pub mode: u32,
    #[prost(uint32, tag = "11")]
    pub uid: u32,
    #[prost(uint32, tag = "12")]
    pub gid: u32,
    /// Removed (IPC_RMID) while still attached: it goes with its last
    /// attachment.
    #[prost(bool, tag = "13")]
    pub removed: bool,
}

/// One process (thread group).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(int32, tag = "2")]
    pub ppid: i32,
    #[prost(int32, tag = "3")]
    pub pgid: i32,
    #[prost(int32, tag = "4")]
    pub sid: i32,
    /// Its address space in the memory index.
    #[prost(uint32, tag = "5")]
    pub mm: u32,
    /// The main thread (tid == pid) first.
    #[prost(message, repeated, tag = "6")]
    pub threads: Vec<Thread>,
    /// In address order.
    #[prost(message, repeated, tag = "7")]
    pub vmas: Vec<Vma>,
    /// In fd order.
    #[prost(message, repeated, tag = "8")]
    pub fds: Vec<Fd>,
    /// One per signal 1..=64 except SIGKILL and SIGSTOP.
    #[prost(message, repeated, tag = "9")]
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process, in queue order.
    #[prost(message, repeated, tag = "10")]
    pub shared_pending: Vec<SigInfo>,
    #[prost(message, optional, tag = "11")]
    pub mm_fields: Option<MmFields>,
    #[prost(message, optional, tag = "12")]
    pub creds: Option<Creds>,
    #[prost(string, tag = "13")]
    pub cwd: String,
    #[prost(string, tag = "14")]
    pub root: String,
    #[prost(message, optional, tag = "15")]
    pub exe: Option<FileRef>,
    #[prost(uint32, tag = "16")]
    pub umask: u32,
    #[prost(message, repeated, tag = "17")]
    pub rlimits: Vec<Rlimit>,
    #[prost(uint32, tag = "18")]
    pub personality: u32,
    #[prost(bool, tag = "19")]
    pub no_new_privs: bool,
    #[prost(int32, tag = "20")]
    pub pdeathsig: i32,
    #[prost(int32, tag = "21")]
    pub dumpable: i32,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, in that order.
    #[prost(message, repeated, tag = "22")]
    pub itimers: Vec<Itimer>,
    #[prost(bool, tag = "23")]
    pub child_subreaper: bool,
    #[prost(bool, tag = "24")]
    pub thp_disable: bool,
    /// The signal the parent gets when this process exits.
    #[prost(int32, tag = "25")]
    pub exit_signal: i32,
    /// POSIX timers (timer_create), by id.
    #[prost(message, repeated, tag = "26")]
    pub posix_timers: Vec<PosixTimer>,
    /// The cgroups it was in, one per hierarchy (/proc/PID/cgroup).
    #[prost(message, repeated, tag = "27")]
    pub cgroups: Vec<CgroupPlace>,
    /// /proc/PID/oom_score_adj.
    #[prost(int32, optional, tag = "28")]
    pub oom_score_adj: Option<i32>,
    /// Stopped by a signal (SIGSTOP, SIGTSTP): restored stopped.
    #[prost(bool, tag = "29")]
    pub stopped: bool,
    /// The audit login uid (/proc/PID/loginuid; u32::MAX: unset).
    #[prost(uint32, optional, tag = "30")]
    pub loginuid: Option<u32>,
    /// membarrier(2) registrations of its address space: the
    /// MEMBARRIER_CMD_REGISTER_* commands it had issued, OR'ed.
    #[prost(uint32, tag = "31")]
    pub membarrier: u32,
    /// Pages it still shared copy-on-write with its parent (the same
    /// physical page at the same address): start and end address of each
    /// run, in order. They are not stored for this process; a restore
    /// forks it from its parent once the parent's memory is back.
    #[prost(uint64, repeated, tag = "32")]
    pub from_parent: Vec<u64>,
    /// It shares its parent's fd table (forked with CLONE_FILES): its fds
    /// are the parent's, recorded there only.
    #[prost(bool, tag = "33")]
    pub files_of_parent: bool,
    /// With `stopped`: the signal that stopped it when not SIGSTOP
    /// (SIGTSTP, SIGTTIN, SIGTTOU: its parent's waitpid tells them apart);
    /// 0: SIGSTOP, or not known.
    #[prost(int32, tag = "34")]
    pub stop_signal: i32,
    /// Its cgroup namespace, when not the dumping agent's: the
    /// namespace's inode (processes with the same one shared it) and its
    /// root cgroup in each hierarchy, as `cgroups` names them.
    #[prost(uint64, tag = "35")]
    pub cgroup_ns: u64,
    #[prost(message, repeated, tag = "36")]
    pub cgroup_ns_roots: Vec<CgroupPlace>,
    /// Its working directory, when that was removed: its identity (device,
    /// inode: an fd on the same directory is that one directory again),
    /// owner and mode.
    #[prost(message, optional, tag = "37")]
    pub removed_cwd: Option<FileRef>,
    /// Its time namespace, when not the dumping agent's: the namespace's
    /// inode (processes with the same one share it) and its clock offsets
    /// as /proc/PID/timens_offsets gives them (and takes them back).
    #[prost(uint64, tag = "38")]
    pub time_ns: u64,
    #[prost(string, tag = "39")]
    pub time_offsets: String,
}

/// The membarrier(2) commands (include/uapi/linux/membarrier.h) that
/// [`Process::membarrier`] is made of, and those a dump probes it with.
pub mod membarrier {
    pub const REGISTER_GLOBAL_EXPEDITED: u32 = 1 << 2;
    pub const PRIVATE_EXPEDITED: u32 = 1 << 3;
    pub const REGISTER_PRIVATE_EXPEDITED: u32 = 1 << 4;
    pub const PRIVATE_EXPEDITED_SYNC_CORE: u32 = 1 << 5;
    pub const REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: u32 = 1 << 6;
    pub const PRIVATE_EXPEDITED_RSEQ: u32 = 1 << 7;
    pub const REGISTER_PRIVATE_EXPEDITED_RSEQ: u32 = 1 << 8;
    pub const GET_REGISTRATIONS: u32 = 1 << 9;
    /// Every registration, in the order a restore issues them.
    pub const REGISTRATIONS: [u32; 4] = [
        REGISTER_GLOBAL_EXPEDITED,
        REGISTER_PRIVATE_EXPEDITED,
        REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
        REGISTER_PRIVATE_EXPEDITED_RSEQ,
    ];
}

/// A process's cgroup in one hierarchy: a line of /proc/PID/cgroup.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CgroupPlace {
    /// The hierarchy's controllers ("memory", "cpu,cpuacct",
    /// "name=systemd"); empty for the cgroup v2 hierarchy.
    #[prost(string, tag = "1")]
    pub controllers: String,
    /// The cgroup's path from the hierarchy's root.
    #[prost(string, tag = "2")]
    pub path: String,
}

/// A POSIX timer (timer_create(2)).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PosixTimer {
    /// The timer id the process knows it by.
    #[prost(int32, tag = "1")]
    pub id: i32,
    #[prost(int32, tag = "2")]
    pub clockid: i32,
    /// SIGEV_SIGNAL (0), SIGEV_NONE (1), with SIGEV_THREAD_ID (4) added for
    /// a timer that signals one thread.
    #[prost(int32, tag = "3")]
    pub notify: i32,
    #[prost(int32, tag = "4")]
    pub signal: i32,
    /// sigev_value.
    #[prost(uint64, tag = "5")]
    pub value: u64,
    /// The thread signalled, with SIGEV_THREAD_ID.
    #[prost(int32, tag = "6")]
    pub tid: i32,
    /// Time to the next expiry, 0 when disarmed.
    #[prost(uint64, tag = "7")]
    pub value_ns: u64,
    #[prost(uint64, tag = "8")]
    pub interval_ns: u64,
}

/// One thread.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Thread {
    #[prost(int32, tag = "1")]
    pub tid: i32,
    /// `struct user_regs_struct` (x86_64: 27 little-endian u64).
    #[prost(bytes = "vec", tag = "2")]
    pub gpregs: Vec<u8>,
    /// The `NT_X86_XSTATE` regset as `PTRACE_GETREGSET` returned it.
    #[prost(bytes = "vec", tag = "3")]
    pub xstate: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub sigmask: u64,
    /// Signals pending for this thread only, in queue order.
    #[prost(message, repeated, tag = "5")]
    pub pending: Vec<SigInfo>,
    #[prost(message, optional, tag = "6")]
    pub altstack: Option<AltStack>,
    #[prost(message, optional, tag = "7")]
    pub rseq: Option<Rseq>,
    #[prost(uint64, tag = "8")]
    pub robust_list: u64,
    #[prost(uint64, tag = "9")]
    pub robust_list_len: u64,
    #[prost(uint64, tag = "10")]
    pub clear_child_tid: u64,
    #[prost(string, tag = "11")]
    pub comm: String,
    #[prost(uint64, tag = "12")]
    pub timer_slack_ns: u64,
    #[prost(int32, tag = "13")]
    pub nice: i32,
    /// The CPUs it may run on (sched_getaffinity); empty: not recorded.
    #[prost(uint32, repeated, tag = "14")]
    pub cpus: Vec<u32>,
    /// Scheduling policy, with SCHED_RESET_ON_FORK when set, and the
    /// real-time priority.
    #[prost(int32, tag = "15")]
    pub sched_policy: i32,
    #[prost(int32, tag = "16")]
    pub sched_priority: i32,
    /// I/O priority as ioprio_get returns it.
    #[prost(int32, tag = "17")]
    pub ioprio: i32,
    /// Its credentials: each thread has its own (setfsuid(2), and raw
    /// setuid-family or capset calls, change only the caller's). Absent in
    /// older images: the process's then.
    #[prost(message, optional, tag = "18")]
    pub creds: Option<Creds>,
    /// Its seccomp filters, oldest first (each thread has its own chain:
    /// one set without SECCOMP_FILTER_FLAG_TSYNC is one thread's).
    #[prost(message, repeated, tag = "19")]
    pub seccomp: Vec<SeccompFilter>,
    /// In seccomp strict mode (read, write, exit and sigreturn only).
    #[prost(bool, tag = "20")]
    pub seccomp_strict: bool,
    /// The cgroups it was in where those differ from its process's (a v1
    /// hierarchy's `tasks`, a v2 threaded subtree's `cgroup.threads`).
    #[prost(message, repeated, tag = "21")]
    pub cgroups: Vec<CgroupPlace>,
}

/// A seccomp filter: its classic BPF program.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SeccompFilter {
    /// `struct sock_filter` instructions, 8 bytes each.
    #[prost(bytes = "vec", tag = "1")]
    pub program: Vec<u8>,
    /// Installed with SECCOMP_FILTER_FLAG_LOG.
    #[prost(bool, tag = "2")]
    pub log: bool,
}

/// One mapping of an address space.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Vma {
    #[prost(uint64, tag = "1")]
    pub start: u64,
    #[prost(uint64, tag = "2")]
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC.
    #[prost(uint32, tag = "3")]
    pub prot: u32,
    /// MAP_SHARED or MAP_PRIVATE, plus MAP_GROWSDOWN where it applies.
    #[prost(uint32, tag = "4")]
    pub flags: u32,
    /// File offset of `start`, in bytes.
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    /// A [`VmaKind`] value.
    #[prost(enumeration = "VmaKind", tag = "6")]
    pub kind: i32,
    /// The file behind a file mapping.
    #[prost(message, optional, tag = "7")]
    pub file: Option<FileRef>,
    /// [`madvise`] bits that change behaviour and must be set again.
    #[prost(uint32, tag = "8")]
    pub madvise: u32,
    /// Whether the memory index holds (some of) this mapping's pages.
    #[prost(bool, tag = "9")]
    pub has_pages: bool,
    /// The [`Shmem`] object this mapping shows, from byte `offset` of it;
    /// 0 for none. Its pages are the object's, not the mapping's.
    #[prost(uint64, tag = "10")]
    pub shmem: u64,
    /// Guard regions in it (MADV_GUARD_INSTALL): start and end address of
    /// each, in order.
    #[prost(uint64, repeated, tag = "11")]
    pub guards: Vec<u64>,
    /// The process gets this mapping from its parent, by fork, with the
    /// pages of [`Process::from_parent`] still shared copy-on-write: the
    /// parent's mapping is the same, and is restored first.
    #[prost(bool, tag = "12")]
    pub from_parent: bool,
    /// A shared file mapping that may be made writable though it is not
    /// (VM_MAYWRITE: its file was open for writing when mapped): the file
    /// is opened for writing to map it again, so mprotect can.
    #[prost(bool, tag = "13")]
    pub may_write: bool,
    /// A [`VmaKind::PacketRing`] mapping: the fd (in the process's table)
    /// of the packet socket whose rings it maps.
    #[prost(int32, tag = "14")]
    pub ring_fd: i32,
}

/// What a mapping is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VmaKind {
    Anonymous = 0,
    File = 1,
    Heap = 2,
    Stack = 3,
    Vdso = 4,
    Vvar = 5,
    VvarVclock = 6,
    Vsyscall = 7,
    /// System V shared memory or another kernel-internal shared object.
    SharedInternal = 8,
    /// A mapping of a memfd ([`Vma::shmem`] names it).
    Shmem = 9,
    /// An AIO ring (io_setup): its pages hold the ring's header and events.
    AioRing = 10,
    /// The rings of a packet socket (`socket:[N]`, mmap of the socket):
    /// mapped again from the restored socket ([`Vma::ring_fd`]); no pages.
    PacketRing = 11,
}

/// Bits of [`Vma::madvise`].
pub mod madvise {
    pub const DONTFORK: u32 = 1;
    pub const WIPEONFORK: u32 = 2;
    pub const HUGEPAGE: u32 = 4;
    pub const NOHUGEPAGE: u32 = 8;
    pub const DONTDUMP: u32 = 16;
    pub const MERGEABLE: u32 = 32;
    pub const LOCKED: u32 = 64;
    pub const SEQUENTIAL: u32 = 128;
    pub const RANDOM: u32 = 256;
    /// Locked with MLOCK_ONFAULT (with LOCKED).
    pub const LOCKONFAULT: u32 = 512;
    /// Charged to the commit limit (VM_ACCOUNT, "ac"): a private mapping
    /// that was writable once, though it may be read-only now.
    pub const ACCOUNT: u32 = 1024;
    /// Mapped with MAP_NORESERVE ("nr"): not charged.
    pub const NORESERVE: u32 = 2048;
}

/// A file as it was at dump time: where it was and what it was, so restore
/// can refuse a file that changed since.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileRef {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint64, tag = "2")]
    pub dev: u64,
    #[prost(uint64, tag = "3")]
    pub ino: u64,
    #[prost(uint64, tag = "4")]
    pub size: u64,
    #[prost(int64, tag = "5")]
    pub mtime_ns: i64,
    #[prost(uint32, tag = "6")]
    pub mode: u32,
    /// Unlinked while open or mapped: its contents are in the memory
    /// index, at address 0 of address space `contents_mm`, which names the
    /// file: every fd and mapping of one deleted file has the same.
    #[prost(bool, tag = "7")]
    pub deleted: bool,
    #[prost(uint32, tag = "8")]
    pub contents_mm: u32,
    /// BLAKE3 of the whole file at dump time, for files a process could
    /// change without changing their size or mtime (shared writable
    /// mappings); empty when not taken.
    #[prost(bytes = "vec", tag = "9")]
    pub content_hash: Vec<u8>,
    /// Owner and group, as fstat reports them: a deleted file is made
    /// again with them.
    #[prost(uint32, tag = "10")]
    pub uid: u32,
    #[prost(uint32, tag = "11")]
    pub gid: u32,
    /// A symbolic link's target (an O_PATH|O_NOFOLLOW fd can hold the
    /// link itself).
    #[prost(string, tag = "12")]
    pub link_target: String,
}

/// One open file descriptor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Fd {
    #[prost(int32, tag = "1")]
    pub fd: i32,
    /// Status flags and access mode, as F_GETFL reports them.
    #[prost(uint32, tag = "2")]
    pub flags: u32,
    #[prost(bool, tag = "3")]
    pub cloexec: bool,
    /// File position, where the kind has one.
    #[prost(uint64, tag = "4")]
    pub pos: u64,
    #[prost(
        oneof = "fd::Kind",
        tags = "5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 24, 25, 29, 30, 31, 32, 33"
    )]
    pub kind: Option<fd::Kind>,
    /// A lower fd of the same process that shares this fd's open file
    /// description (made by dup or inherited): restore dups that one.
    #[prost(int32, optional, tag = "10")]
    pub same_as: Option<i32>,
    /// An fd of an earlier process in the tree that shares this fd's open
    /// file description (inherited over fork, or passed): restore hands
    /// over that very description.
    #[prost(message, optional, tag = "19")]
    pub shared_with: Option<FdRef>,
    /// File locks held through it: flock and OFD locks by its open file
    /// description, POSIX locks by its process (on its file).
    #[prost(message, repeated, tag = "23")]
    pub locks: Vec<FileLock>,
    /// Who gets SIGIO/SIGURG for its description (F_SETOWN_EX), if anyone.
    #[prost(message, optional, tag = "26")]
    pub owner: Option<FdOwner>,
    /// The signal sent instead of SIGIO (F_SETSIG); 0: SIGIO.
    #[prost(int32, tag = "27")]
    pub signal: i32,
    /// A socket's classic BPF filter (SO_ATTACH_FILTER), one `struct
    /// sock_filter` a word.
    #[prost(uint64, repeated, tag = "28")]
    pub filter: Vec<u64>,
    /// Of an fd passed in flight: an fd passed earlier (in this message or
    /// an earlier one) whose open file description it is too, which the
    /// restore passes again.
    #[prost(message, optional, tag = "34")]
    pub in_flight_as: Option<PassedRef>,
}

/// Fd `index` of those passed with message `message` of unix socket
/// `socket`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PassedRef {
    #[prost(uint64, tag = "1")]
    pub socket: u64,
    #[prost(uint32, tag = "2")]
    pub message: u32,
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

/// The owner of an fd's signals (`struct f_owner_ex`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FdOwner {
    /// F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(int32, tag = "2")]
    pub pid: i32,
}

/// A file lock (flock(2), fcntl(2) POSIX or OFD record lock).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileLock {
    #[prost(enumeration = "LockKind", tag = "1")]
    pub kind: i32,
    /// Exclusive (write) rather than shared (read).
    #[prost(bool, tag = "2")]
    pub write: bool,
    /// First byte; a record lock's range.
    #[prost(uint64, tag = "3")]
    pub start: u64,
    /// Last byte; absent: to the end of the file, however long it grows.
    #[prost(uint64, optional, tag = "4")]
    pub end: Option<u64>,
    /// A lease being broken (another process tried to open the file): to
    /// a read lease (`breaking_to_read`) or to none. `write` is the lease
    /// it was before.
    #[prost(bool, tag = "5")]
    pub breaking: bool,
    #[prost(bool, tag = "6")]
    pub breaking_to_read: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LockKind {
    /// flock(2): the whole file, held by the open file description.
    Flock = 0,
    /// fcntl F_SETLK: a byte range, held by the process.
    Posix = 1,
    /// fcntl F_OFD_SETLK: a byte range, held by the open file description.
    Ofd = 2,
    /// fcntl F_SETLEASE: a read or write lease, held by the open file
    /// description (`start` and `end` unused).
    Lease = 3,
}

/// One fd of one process.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FdRef {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(int32, tag = "2")]
    pub fd: i32,
}

pub mod fd {
    /// What an fd refers to.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A regular file or a directory.
        #[prost(message, tag = "5")]
        File(super::FileRef),
        /// One end of a pipe in [`super::ProcessTree::pipes`].
        #[prost(uint64, tag = "6")]
        Pipe(u64),
        /// A FIFO opened by path; its buffered data is in the pipe with
        /// this id.
        #[prost(message, tag = "7")]
        Fifo(super::Fifo),
        /// A character device other than a terminal (/dev/null, ...).
        #[prost(message, tag = "8")]
        Device(super::Device),
        /// A terminal.
        #[prost(message, tag = "9")]
        Tty(super::Tty),
        /// An epoll instance and what it watches.
        #[prost(message, tag = "11")]
        Epoll(super::Epoll),
        /// An eventfd.
        #[prost(message, tag = "12")]
        Eventfd(super::Eventfd),
        /// A timerfd.
        #[prost(message, tag = "13")]
        Timerfd(super::Timerfd),
        /// A signalfd.
        #[prost(message, tag = "14")]
        Signalfd(super::Signalfd),
        /// A listening TCP socket (connections waiting to be accepted are
        /// not kept).
        #[prost(message, tag = "15")]
        TcpListen(super::InetSocket),
        /// A UDP socket (queued datagrams are not kept).
        #[prost(message, tag = "16")]
        Udp(super::InetSocket),
        /// A TCP socket neither listening nor connected (made, perhaps
        /// bound, with its options).
        #[prost(message, tag = "29")]
        TcpUnconnected(super::InetSocket),
        /// A pidfd, by the pid it names.
        #[prost(message, tag = "17")]
        Pidfd(super::Pidfd),
        /// An inotify instance and its watches.
        #[prost(message, tag = "18")]
        Inotify(super::Inotify),
        /// A memfd: the [`super::Shmem`] object with this id.
        #[prost(uint64, tag = "20")]
        Memfd(u64),
        /// A unix socket: the [`super::UnixSocket`] with this id.
        #[prost(uint64, tag = "21")]
        Unix(u64),
        /// An established TCP connection.
        #[prost(message, tag = "22")]
        Tcp(super::TcpConn),
        /// The master of the tree's pseudo-terminal pair with this index
        /// ([`super::Pty`]).
        #[prost(uint32, tag = "24")]
        PtyMaster(u32),
        /// The slave of the tree's pseudo-terminal pair with this index.
        #[prost(uint32, tag = "25")]
        PtySlave(u32),
        /// A fanotify group and its marks.
        #[prost(message, tag = "30")]
        Fanotify(super::Fanotify),
        /// A file or directory of a process's /proc directory.
        #[prost(message, tag = "31")]
        ProcEntry(super::ProcEntry),
        /// A netlink socket.
        #[prost(message, tag = "32")]
        Netlink(super::NetlinkSocket),
        /// A packet socket (AF_PACKET).
        #[prost(message, tag = "33")]
        Packet(super::PacketSocket),
    }
}

/// A packet socket (AF_PACKET: a DHCP client's, a capture tool's without
/// a memory-mapped ring): type, protocol, the interface it is bound to, its
/// SOL_PACKET settings, memberships and fanout group. Frames queued on it
/// are not kept.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PacketSocket {
    /// SOCK_RAW, SOCK_DGRAM, or the obsolete SOCK_PACKET (10), which is
    /// bound to a device by name and has no SOL_PACKET settings.
    #[prost(int32, tag = "1")]
    pub sock_type: i32,
    /// The protocol, in network byte order as socket(2) and bind take it.
    #[prost(uint32, tag = "2")]
    pub protocol: u32,
    /// The interface it is bound to, by name (its index may differ on
    /// another host); empty: every interface.
    #[prost(string, tag = "3")]
    pub interface: String,
    /// PACKET_VERSION, PACKET_RESERVE, PACKET_COPY_THRESH, PACKET_TIMESTAMP.
    #[prost(uint32, tag = "4")]
    pub version: u32,
    #[prost(uint32, tag = "5")]
    pub reserve: u32,
    #[prost(uint32, tag = "6")]
    pub copy_thresh: u32,
    #[prost(uint32, tag = "7")]
    pub tstamp: u32,
    /// PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VNET_HDR, PACKET_LOSS.
    #[prost(bool, tag = "8")]
    pub auxdata: bool,
    #[prost(bool, tag = "9")]
    pub origdev: bool,
    #[prost(bool, tag = "10")]
    pub vnet_hdr: bool,
    #[prost(bool, tag = "11")]
    pub loss: bool,
    #[prost(message, repeated, tag = "12")]
    pub memberships: Vec<PacketMembership>,
    /// Its fanout group as PACKET_FANOUT takes it (id | (type | flags) <<
    /// 16); none when `fanout_set` is false.
    #[prost(uint32, tag = "13")]
    pub fanout: u32,
    #[prost(bool, tag = "14")]
    pub fanout_set: bool,
    /// Socket-level options that differ from a new socket's.
    #[prost(message, repeated, tag = "15")]
    pub options: Vec<SockOption>,
    /// Buffer sizes set explicitly (as the kernel reports them), else 0.
    #[prost(uint32, tag = "16")]
    pub rcvbuf: u32,
    #[prost(uint32, tag = "17")]
    pub sndbuf: u32,
    /// Its memory-mapped rings (PACKET_RX_RING, PACKET_TX_RING), if set
    /// up; their frames are not kept (the rings are new and empty).
    #[prost(message, optional, tag = "18")]
    pub rx_ring: Option<PacketRing>,
    #[prost(message, optional, tag = "19")]
    pub tx_ring: Option<PacketRing>,
}

/// A packet socket's ring as PACKET_RX_RING or PACKET_TX_RING set it up
/// (struct tpacket_req3; the last three are TPACKET_V3's).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PacketRing {
    #[prost(uint32, tag = "1")]
    pub block_size: u32,
    #[prost(uint32, tag = "2")]
    pub block_nr: u32,
    #[prost(uint32, tag = "3")]
    pub frame_size: u32,
    #[prost(uint32, tag = "4")]
    pub frame_nr: u32,
    #[prost(uint32, tag = "5")]
    pub retire_blk_tov: u32,
    #[prost(uint32, tag = "6")]
    pub sizeof_priv: u32,
    #[prost(uint32, tag = "7")]
    pub feature_req_word: u32,
}

impl PacketRing {
    /// Bytes it takes in a mapping: each block is a whole number of pages.
    pub fn mapped_len(&self) -> u64 {
        u64::from(self.block_nr) * u64::from(self.block_size).next_multiple_of(4096)
    }
}

/// A PACKET_ADD_MEMBERSHIP of a packet socket, added `count` times.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PacketMembership {
    #[prost(string, tag = "1")]
    pub interface: String,
    /// PACKET_MR_MULTICAST (0), PROMISC (1), ALLMULTI (2), UNICAST (3).
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(uint32, tag = "3")]
    pub count: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub address: Vec<u8>,
}

/// A netlink socket (rtnetlink, a uevent monitor, audit...): its protocol,
/// type, port id, the multicast groups it joined, where it is connected,
/// and its options. Messages queued on it are not kept.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetlinkSocket {
    /// NETLINK_ROUTE (0), NETLINK_KOBJECT_UEVENT (15)...
    #[prost(int32, tag = "1")]
    pub protocol: i32,
    /// SOCK_RAW or SOCK_DGRAM.
    #[prost(int32, tag = "2")]
    pub sock_type: i32,
    /// Its port id (nl_pid); 0: not bound yet.
    #[prost(uint32, tag = "3")]
    pub portid: u32,
    /// The multicast groups it is in, by number (from 1).
    #[prost(uint32, repeated, tag = "4")]
    pub groups: Vec<u32>,
    /// The port id and group it is connected to; both 0: not connected.
    #[prost(uint32, tag = "5")]
    pub dst_portid: u32,
    #[prost(uint32, tag = "6")]
    pub dst_group: u32,
    /// Options that differ from a new socket's (NETLINK_* and socket level).
    #[prost(message, repeated, tag = "7")]
    pub options: Vec<SockOption>,
    /// Buffer sizes set explicitly (as the kernel reports them), else 0.
    #[prost(uint32, tag = "8")]
    pub rcvbuf: u32,
    #[prost(uint32, tag = "9")]
    pub sndbuf: u32,
}

/// A file or directory of a process's /proc directory (`/proc/PID/...`),
/// opened again by its path at restore: that of the same process, of the
/// tree or not.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcEntry {
    /// The process whose directory it is.
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// Its path inside that directory ("status", "task/12/stat"); empty for
    /// the directory itself.
    #[prost(string, tag = "2")]
    pub path: String,
    /// When the process started (`starttime` of /proc/PID/stat, clock
    /// ticks after boot): a process outside the tree must be the same one
    /// at restore, not another given its pid since.
    #[prost(uint64, tag = "3")]
    pub start_time: u64,
}

/// A pseudo-terminal pair whose master the tree holds (a terminal
/// multiplexer's pane, an ssh session): its settings and the bytes queued
/// in it, each way.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pty {
    /// N of /dev/pts/N.
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// The slave's `struct termios2`, as bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub termios: Vec<u8>,
    /// Rows, columns, x and y pixels.
    #[prost(uint32, repeated, tag = "3")]
    pub winsize: Vec<u32>,
    /// TIOCPKT on the master.
    #[prost(bool, tag = "4")]
    pub packet_mode: bool,
    /// The slave locked (TIOCSPTLCK): it cannot be opened.
    #[prost(bool, tag = "5")]
    pub locked: bool,
    /// TIOCEXCL on the slave.
    #[prost(bool, tag = "6")]
    pub exclusive: bool,
    /// The session it is the controlling terminal of (0: none).
    #[prost(int32, tag = "7")]
    pub session: i32,
    /// Its foreground process group (0: none).
    #[prost(int32, tag = "8")]
    pub foreground: i32,
    /// Written on the slave, not yet read from the master.
    #[prost(bytes = "vec", tag = "9")]
    pub to_master: Vec<u8>,
    /// Written on the master (typed), not yet read from the slave.
    #[prost(bytes = "vec", tag = "10")]
    pub to_slave: Vec<u8>,
    /// The permission bits of the slave's node /dev/pts/N (0: not
    /// recorded, left as a new pair has them).
    #[prost(uint32, tag = "11")]
    pub mode: u32,
    /// The owner and group of the slave's node.
    #[prost(uint32, tag = "12")]
    pub uid: u32,
    #[prost(uint32, tag = "13")]
    pub gid: u32,
}

/// An epoll instance: its registrations, by the process's own fd numbers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Epoll {
    #[prost(message, repeated, tag = "1")]
    pub targets: Vec<EpollTarget>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EpollTarget {
    #[prost(int32, tag = "1")]
    pub fd: i32,
    /// EPOLLIN, EPOLLET, EPOLLONESHOT, ... as registered.
    #[prost(uint32, tag = "2")]
    pub events: u32,
    #[prost(uint64, tag = "3")]
    pub data: u64,
    /// The watched file's inode, as fdinfo shows it.
    #[prost(uint64, tag = "4")]
    pub ino: u64,
    /// The registration's fd number was closed (or reused for another
    /// file) after it was added: the process's fd that holds the watched
    /// file now. Restore registers it under `fd` through a dup, for the
    /// moment, of this one.
    #[prost(int32, optional, tag = "5")]
    pub via: Option<i32>,
    /// Of an epoll passed in flight (held by no process): the fd of a
    /// process of the tree that holds the watched file, from which the
    /// restore takes it to register it under `fd`.
    #[prost(message, optional, tag = "6")]
    pub holder: Option<FdRef>,
}

/// An inotify instance: its watches, by watch descriptor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Inotify {
    #[prost(message, repeated, tag = "1")]
    pub watches: Vec<InotifyWatch>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InotifyWatch {
    /// The watch descriptor the process knows it by.
    #[prost(int32, tag = "1")]
    pub wd: i32,
    /// IN_* event bits and IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK,
    /// IN_ONESHOT.
    #[prost(uint32, tag = "2")]
    pub mask: u32,
    /// The watched file or directory.
    #[prost(string, tag = "3")]
    pub path: String,
    /// A watched file that was deleted (and is still open somewhere): made
    /// again from its contents, as the tree's deleted files are.
    #[prost(message, optional, tag = "4")]
    pub deleted: Option<FileRef>,
}

/// A fanotify group (fanotify_init(2)) and its marks; queued events are
/// not kept.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Fanotify {
    /// fanotify_init's flags (FAN_CLASS_*, FAN_REPORT_*, FAN_UNLIMITED_*, ...).
    #[prost(uint32, tag = "1")]
    pub flags: u32,
    /// The open flags of the fds it hands out with events (event_f_flags).
    #[prost(uint32, tag = "2")]
    pub event_flags: u32,
    #[prost(message, repeated, tag = "3")]
    pub marks: Vec<FanotifyMark>,
}

/// One mark of a fanotify group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FanotifyMark {
    /// What it marks: 0 the inode at `path`, FAN_MARK_MOUNT (0x10) the
    /// mount there, FAN_MARK_FILESYSTEM (0x100) its filesystem.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(string, tag = "2")]
    pub path: String,
    /// FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE, FAN_MARK_IGNORE.
    #[prost(uint32, tag = "3")]
    pub flags: u32,
    #[prost(uint64, tag = "4")]
    pub mask: u64,
    #[prost(uint64, tag = "5")]
    pub ignored_mask: u64,
}

/// A pidfd (pidfd_open(2)).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pidfd {
    /// The process it names; -1: one that has exited.
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// Of one that has exited: its pidfs inode number, the same for every
    /// pidfd of that process (Linux 6.9), so they name one process again.
    #[prost(uint64, tag = "2")]
    pub dead_ino: u64,
}

/// An eventfd's counter.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Eventfd {
    #[prost(uint64, tag = "1")]
    pub count: u64,
    /// EFD_SEMAPHORE.
    #[prost(bool, tag = "2")]
    pub semaphore: bool,
}

/// A timerfd: its clock and the time left, as at dump time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timerfd {
    /// CLOCK_REALTIME (0), CLOCK_MONOTONIC (1), CLOCK_BOOTTIME (7), ...
    #[prost(int32, tag = "1")]
    pub clockid: i32,
    /// Expirations not yet read.
    #[prost(uint64, tag = "2")]
    pub ticks: u64,
    /// Time to the next expiry, 0 when disarmed.
    #[prost(uint64, tag = "3")]
    pub value_ns: u64,
    #[prost(uint64, tag = "4")]
    pub interval_ns: u64,
    /// The flags of the last timerfd_settime (TFD_TIMER_ABSTIME, ...).
    #[prost(uint32, tag = "5")]
    pub settime_flags: u32,
}

/// A signalfd: the signals it reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Signalfd {
    #[prost(uint64, tag = "1")]
    pub mask: u64,
}

/// An IPv4 or IPv6 socket: a listening TCP socket or a UDP socket.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InetSocket {
    /// AF_INET (2) or AF_INET6 (10).
    #[prost(int32, tag = "1")]
    pub family: i32,
    /// The bound address (getsockname); port 0 means not bound.
    #[prost(message, optional, tag = "2")]
    pub local: Option<InetAddr>,
    /// The peer of a connected UDP socket (getpeername); none when not
    /// connected.
    #[prost(message, optional, tag = "3")]
    pub peer: Option<InetAddr>,
    /// listen(2) backlog of a TCP socket (sk_max_ack_backlog).
    #[prost(uint32, tag = "4")]
    pub backlog: u32,
    #[prost(bool, tag = "5")]
    pub reuseaddr: bool,
    #[prost(bool, tag = "6")]
    pub reuseport: bool,
    /// IPV6_V6ONLY (AF_INET6 only).
    #[prost(bool, tag = "7")]
    pub v6only: bool,
    /// TCP_NODELAY (TCP only; accepted connections inherit it).
    #[prost(bool, tag = "8")]
    pub nodelay: bool,
    /// SO_BROADCAST.
    #[prost(bool, tag = "9")]
    pub broadcast: bool,
    /// SO_KEEPALIVE (accepted connections inherit it).
    #[prost(bool, tag = "10")]
    pub keepalive: bool,
    /// SO_RCVBUF as getsockopt reports it (the kernel's doubled value),
    /// when it was set explicitly (SO_BUF_LOCK); 0 when left to the kernel.
    #[prost(uint32, tag = "11")]
    pub rcvbuf: u32,
    /// SO_SNDBUF, as `rcvbuf`.
    #[prost(uint32, tag = "12")]
    pub sndbuf: u32,
    /// IP_FREEBIND / IPV6_FREEBIND: bound to an address the host need not
    /// have (set again before the bind).
    #[prost(bool, tag = "13")]
    pub freebind: bool,
    /// IP_TRANSPARENT / IPV6_TRANSPARENT (a transparent proxy's socket).
    #[prost(bool, tag = "14")]
    pub transparent: bool,
    /// How it was shut down (UDP): bit 0 reading, bit 1 writing.
    #[prost(uint32, tag = "15")]
    pub shutdown: u32,
    /// Other options whose values differ from a new socket's (priority,
    /// mark, keepalive timing, TOS, TTL, linger, timeouts...).
    #[prost(message, repeated, tag = "16")]
    pub options: Vec<SockOption>,
    /// The network device it is bound to (SO_BINDTODEVICE), by name;
    /// empty: none.
    #[prost(string, tag = "17")]
    pub device: String,
    /// A listener's connections that were waiting to be accepted, left
    /// out of the image (`--skip-in-flight`).
    #[prost(uint32, tag = "18")]
    pub skipped_connections: u32,
    /// A datagram socket's protocol when not UDP's: UDP-Lite
    /// (IPPROTO_UDPLITE), an ICMP ping socket (IPPROTO_ICMP,
    /// IPPROTO_ICMPV6); 0 for TCP and UDP.
    #[prost(int32, tag = "19")]
    pub protocol: i32,
    /// A raw IP socket (SOCK_RAW) of `protocol` (0 included): its bound
    /// address's port is that protocol, and it is bound whenever its
    /// address is not the wildcard.
    #[prost(bool, tag = "20")]
    pub raw: bool,
}

/// One socket option set to a value other than a new socket's: an int
/// (`level`, `name` as setsockopt takes them), or, for SO_LINGER, on/off
/// and seconds packed as `value` = on << 31 | seconds, for SO_RCVTIMEO and
/// SO_SNDTIMEO microseconds in `micros`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SockOption {
    #[prost(int32, tag = "1")]
    pub level: i32,
    #[prost(int32, tag = "2")]
    pub name: i32,
    #[prost(int32, tag = "3")]
    pub value: i32,
    #[prost(uint64, tag = "4")]
    pub micros: u64,
    /// An option that is a struct (ICMPV6_FILTER): its bytes.
    #[prost(bytes = "vec", tag = "5")]
    pub bytes: Vec<u8>,
}

/// A unix domain socket (stream, datagram or seqpacket).
#[derive(Clone, PartialEq, prost::Message)]
pub struct UnixSocket {
    /// The socket's inode number at dump time: its identity in the image.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// SOCK_STREAM (1), SOCK_DGRAM (2) or SOCK_SEQPACKET (5).
    #[prost(int32, tag = "2")]
    pub ty: i32,
    /// Listening (stream and seqpacket).
    #[prost(bool, tag = "3")]
    pub listening: bool,
    /// The address it is bound to, as sun_path bytes: a path, or an
    /// abstract name starting with a zero byte. Empty: unnamed. A socket
    /// accepted from a named listener carries the listener's name (and is
    /// made again by connecting to that listener).
    #[prost(bytes = "vec", tag = "4")]
    pub name: Vec<u8>,
    /// The socket it is connected to (its id); 0: not connected.
    #[prost(uint64, tag = "5")]
    pub peer: u64,
    /// The address of the peer, when the peer is not in the image (a
    /// datagram socket connected to a socket outside the tree, such as
    /// /dev/log): restore connects to it by name.
    #[prost(bytes = "vec", tag = "6")]
    pub peer_name: Vec<u8>,
    /// listen(2) backlog of a listening socket.
    #[prost(uint32, tag = "7")]
    pub backlog: u32,
    /// Data received and not yet read: one entry per datagram or record
    /// (datagram, seqpacket), or one entry holding the byte stream.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub queue: Vec<Vec<u8>>,
    /// RCV_SHUTDOWN (1) and SEND_SHUTDOWN (2) of the socket itself.
    #[prost(uint32, tag = "9")]
    pub shutdown: u32,
    /// SO_PASSCRED.
    #[prost(bool, tag = "10")]
    pub passcred: bool,
    /// SO_PEEK_OFF; -1: off.
    #[prost(int32, tag = "11")]
    pub peek_off: i32,
    /// SO_RCVBUF and SO_SNDBUF as getsockopt reports them, when set
    /// explicitly (SO_BUF_LOCK); 0 when left to the kernel.
    #[prost(uint32, tag = "12")]
    pub rcvbuf: u32,
    #[prost(uint32, tag = "13")]
    pub sndbuf: u32,
    /// Mode, owner and group of the socket file of a path name.
    #[prost(uint32, tag = "14")]
    pub mode: u32,
    #[prost(uint32, tag = "15")]
    pub uid: u32,
    #[prost(uint32, tag = "16")]
    pub gid: u32,
    /// Was connected (a stream whose peer has closed keeps this, with
    /// `peer` 0).
    #[prost(bool, tag = "17")]
    pub connected: bool,
    /// File descriptors sent with queued messages (SCM_RIGHTS) and not yet
    /// received, by message (a stream's queue is then cut into segments,
    /// each sent alone).
    #[prost(message, repeated, tag = "18")]
    pub passed: Vec<PassedFds>,
    /// For a name that is a relative path: the directory it was bound in
    /// (the process's working directory at the dump, where its file is).
    #[prost(string, tag = "19")]
    pub dir: String,
    /// Its file was removed after the bind: bound again, then removed.
    #[prost(bool, tag = "20")]
    pub unlinked: bool,
    /// Listening: the sockets of the tree whose connections wait in its
    /// accept queue (connected, not accepted yet), oldest first. Restore
    /// connects them again, in this order, and leaves them waiting.
    #[prost(uint64, repeated, tag = "21")]
    pub waiting: Vec<u64>,
    /// Other options whose values differ from a new socket's, as for
    /// [`InetSocket::options`].
    #[prost(message, repeated, tag = "22")]
    pub options: Vec<SockOption>,
}

/// The file descriptors passed with one queued message of a unix socket.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PassedFds {
    /// Index of the message in the socket's `queue`.
    #[prost(uint32, tag = "1")]
    pub message: u32,
    /// In the order they were sent; `fd` is the position. An fd whose open
    /// file description a process of the tree holds too names it in
    /// `shared_with`.
    #[prost(message, repeated, tag = "2")]
    pub fds: Vec<Fd>,
}

impl UnixSocket {
    /// "stream", "datagram", "seqpacket".
    pub fn type_name(&self) -> &'static str {
        match self.ty {
            1 => "stream",
            2 => "datagram",
            5 => "seqpacket",
            _ => "unknown-type",
        }
    }

    /// The name for people: a path, "@abstract", or "unnamed".
    pub fn describe_name(name: &[u8]) -> String {
        match name.split_first() {
            None => "unnamed".into(),
            Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
            Some(_) => String::from_utf8_lossy(name).into_owned(),
        }
    }

    /// "unix stream socket /run/x.sock, listening", "unix datagram socket unnamed, connected to @log".
    pub fn describe(&self) -> String {
        let mut s = format!("unix {} socket {}", self.type_name(), Self::describe_name(&self.name));
        if self.listening {
            s.push_str(", listening");
        } else if !self.peer_name.is_empty() {
            s.push_str(&format!(", connected to {}", Self::describe_name(&self.peer_name)));
        } else if self.peer != 0 {
            s.push_str(", connected");
        }
        s
    }
}

/// An established TCP connection, as TCP_REPAIR reads it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TcpConn {
    /// Family, local and peer addresses, and socket options.
    #[prost(message, optional, tag = "1")]
    pub socket: Option<InetSocket>,
    /// The sequence number after the last byte written (write_seq; after
    /// the FIN, once the socket was shut down for writing).
    #[prost(uint32, tag = "2")]
    pub snd_seq: u32,
    /// The sequence number after the last byte received (rcv_nxt; after
    /// the peer's FIN, once it came).
    #[prost(uint32, tag = "3")]
    pub rcv_seq: u32,
    /// Bytes written and not yet acknowledged by the peer, sent or not
    /// (the FIN, which is no byte, not counted).
    #[prost(bytes = "vec", tag = "4")]
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` were never sent.
    #[prost(uint32, tag = "5")]
    pub unsent: u32,
    /// Bytes received and not yet read.
    #[prost(bytes = "vec", tag = "6")]
    pub recv_queue: Vec<u8>,
    /// Maximum segment size (TCP_MAXSEG).
    #[prost(uint32, tag = "7")]
    pub mss: u32,
    /// Options negotiated at the handshake: TCPI_OPT_TIMESTAMPS (1),
    /// TCPI_OPT_SACK (2), TCPI_OPT_WSCALE (4).
    #[prost(uint32, tag = "8")]
    pub options: u32,
    #[prost(uint32, tag = "9")]
    pub snd_wscale: u32,
    #[prost(uint32, tag = "10")]
    pub rcv_wscale: u32,
    /// The socket's timestamp clock (TCP_TIMESTAMP).
    #[prost(uint32, tag = "11")]
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW.
    #[prost(uint32, tag = "12")]
    pub snd_wl1: u32,
    #[prost(uint32, tag = "13")]
    pub snd_wnd: u32,
    #[prost(uint32, tag = "14")]
    pub max_window: u32,
    #[prost(uint32, tag = "15")]
    pub rcv_wnd: u32,
    #[prost(uint32, tag = "16")]
    pub rcv_wup: u32,
    /// Unused (always false); [`TcpConn::state`] tells a shut-down socket.
    #[prost(bool, tag = "17")]
    pub send_shutdown: bool,
    /// The TCP state (include/net/tcp_states.h): ESTABLISHED (1; 0 in
    /// images made before this field), or a closing one: FIN_WAIT1 (4) and
    /// FIN_WAIT2 (5) after this side's FIN, CLOSE_WAIT (8) after the peer's,
    /// LAST_ACK (9) after both, the peer's first.
    #[prost(uint32, tag = "18")]
    pub state: u32,
}

/// An IP address and port.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InetAddr {
    /// 4 bytes (IPv4) or 16 (IPv6), in network order.
    #[prost(bytes = "vec", tag = "1")]
    pub addr: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub port: u32,
    /// sin6_scope_id of a link-local IPv6 address.
    #[prost(uint32, tag = "3")]
    pub scope_id: u32,
}

impl InetSocket {
    /// "127.0.0.1:8080", "[::1]:53 -> [::1]:5353", "unbound".
    pub fn describe(&self) -> String {
        let show = |a: &Option<InetAddr>| match a.as_ref().map(|a| (a, a.to_socket_addr())) {
            Some((_, Some(sa))) => sa.to_string(),
            Some((a, None)) => format!("<{} address bytes, port {}>", a.addr.len(), a.port),
            None => "unbound".into(),
        };
        let local = if self.local.as_ref().is_some_and(|l| l.port != 0) { show(&self.local) } else { "unbound".into() };
        match &self.peer {
            Some(_) => format!("{local} -> {}", show(&self.peer)),
            None => local,
        }
    }
}

impl InetAddr {
    /// As a standard socket address; `None` when the address has neither
    /// 4 nor 16 bytes or the port does not fit 16 bits.
    pub fn to_socket_addr(&self) -> Option<std::net::SocketAddr> {
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
        let port = u16::try_from(self.port).ok()?;
        Some(match self.addr.len() {
            4 => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(<[u8; 4]>::try_from(&self.addr[..]).ok()?), port)),
            16 => SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(<[u8; 16]>::try_from(&self.addr[..]).ok()?),
                port,
                0,
                self.scope_id,
            )),
            _ => return None,
        })
    }

    pub fn from_socket_addr(a: &std::net::SocketAddr) -> InetAddr {
        match a {
            std::net::SocketAddr::V4(v4) => {
                InetAddr { addr: v4.ip().octets().to_vec(), port: v4.port().into(), scope_id: 0 }
            }
            std::net::SocketAddr::V6(v6) => {
                InetAddr { addr: v6.ip().octets().to_vec(), port: v6.port().into(), scope_id: v6.scope_id() }
            }
        }
    }
}

/// A pipe's buffer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pipe {
    /// The pipe's inode number at dump time: its identity within the image.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// F_GETPIPE_SZ.
    #[prost(uint32, tag = "2")]
    pub capacity: u32,
    /// Bytes that were buffered, read without consuming them. Empty when
    /// only the write end was in the tree: those bytes are the outside
    /// reader's, and stay with it in the original pipe.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
    /// Which ends the tree held ([`PipeEnds`]); the others belonged to
    /// processes outside it.
    #[prost(enumeration = "PipeEnds", tag = "4")]
    pub ends: i32,
}

/// The ends of a pipe its tree held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PipeEnds {
    /// Both: the pipe is the tree's own.
    Both = 0,
    /// Only the read end: the writer was outside; after restore the tree
    /// reads the bytes that were queued, then end of file.
    ReadOnly = 1,
    /// Only the write end: the reader was outside; after restore a write
    /// fails with EPIPE (and SIGPIPE), as when that reader exits.
    WriteOnly = 2,
}

impl Pipe {
    /// Whether one end of the pipe belonged to a process outside the tree.
    pub fn external(&self) -> bool {
        self.ends() != PipeEnds::Both
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Fifo {
    #[prost(message, optional, tag = "1")]
    pub file: Option<FileRef>,
    #[prost(uint64, tag = "2")]
    pub pipe: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Device {
    #[prost(string, tag = "1")]
    pub path: String,
    /// Device number (major and minor, as in st_rdev).
    #[prost(uint64, tag = "2")]
    pub rdev: u64,
    /// Its node was unlinked while open: made again for the restore, then
    /// unlinked.
    #[prost(bool, tag = "3")]
    pub deleted: bool,
    /// Permission bits, owner and group of the node (an unlinked one is
    /// made again with them; 0 in older images: 0600, root's).
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Tty {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint64, tag = "2")]
    pub rdev: u64,
    /// The terminal stasis itself ran on when dumping.
    #[prost(bool, tag = "3")]
    pub dumper_terminal: bool,
    /// The session whose controlling terminal it was, when it was that of
    /// the process holding it; 0 when not known.
    #[prost(int32, tag = "4")]
    pub session: i32,
    /// That controlling terminal's foreground group; 0 when not known.
    #[prost(int32, tag = "5")]
    pub foreground: i32,
    /// A pseudo-terminal slave whose master was closed: hung up (reads end,
    /// writes fail), its node gone.
    #[prost(bool, tag = "6")]
    pub hung_up: bool,
}

/// A signal's disposition, as `rt_sigaction` reports it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SigAction {
    #[prost(int32, tag = "1")]
    pub signal: i32,
    /// Handler address, or SIG_DFL (0) / SIG_IGN (1).
    #[prost(uint64, tag = "2")]
    pub handler: u64,
    #[prost(uint64, tag = "3")]
    pub flags: u64,
    #[prost(uint64, tag = "4")]
    pub restorer: u64,
    #[prost(uint64, tag = "5")]
    pub mask: u64,
}

/// A queued signal: the raw `siginfo_t` (128 bytes) as the kernel gave it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SigInfo {
    #[prost(bytes = "vec", tag = "1")]
    pub raw: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AltStack {
    #[prost(uint64, tag = "1")]
    pub sp: u64,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    #[prost(int32, tag = "3")]
    pub flags: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Rseq {
    #[prost(uint64, tag = "1")]
    pub abi: u64,
    #[prost(uint32, tag = "2")]
    pub len: u32,
    #[prost(uint32, tag = "3")]
    pub signature: u32,
    #[prost(uint32, tag = "4")]
    pub flags: u32,
}

/// The fields of `struct prctl_mm_map` and the auxiliary vector.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MmFields {
    #[prost(uint64, tag = "1")]
    pub start_code: u64,
    #[prost(uint64, tag = "2")]
    pub end_code: u64,
    #[prost(uint64, tag = "3")]
    pub start_data: u64,
    #[prost(uint64, tag = "4")]
    pub end_data: u64,
    #[prost(uint64, tag = "5")]
    pub start_brk: u64,
    #[prost(uint64, tag = "6")]
    pub brk: u64,
    #[prost(uint64, tag = "7")]
    pub start_stack: u64,
    #[prost(uint64, tag = "8")]
    pub arg_start: u64,
    #[prost(uint64, tag = "9")]
    pub arg_end: u64,
    #[prost(uint64, tag = "10")]
    pub env_start: u64,
    #[prost(uint64, tag = "11")]
    pub env_end: u64,
    /// The auxiliary vector as u64 words (type, value pairs).
    #[prost(uint64, repeated, tag = "12")]
    pub auxv: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Creds {
    /// real, effective, saved, filesystem
    #[prost(uint32, repeated, tag = "1")]
    pub uids: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    pub gids: Vec<u32>,
    #[prost(uint32, repeated, tag = "3")]
    pub groups: Vec<u32>,
    #[prost(uint64, tag = "4")]
    pub cap_inheritable: u64,
    #[prost(uint64, tag = "5")]
    pub cap_permitted: u64,
    #[prost(uint64, tag = "6")]
    pub cap_effective: u64,
    #[prost(uint64, tag = "7")]
    pub cap_bounding: u64,
    #[prost(uint64, tag = "8")]
    pub cap_ambient: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Rlimit {
    /// RLIMIT_* number.
    #[prost(uint32, tag = "1")]
    pub resource: u32,
    /// u64::MAX is RLIM_INFINITY.
    #[prost(uint64, tag = "2")]
    pub soft: u64,
    #[prost(uint64, tag = "3")]
    pub hard: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Itimer {
    #[prost(uint64, tag = "1")]
    pub interval_us: u64,
    #[prost(uint64, tag = "2")]
    pub value_us: u64,
}

/// The kernel's special mappings at dump time.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KernelLayout {
    #[prost(string, tag = "1")]
    pub release: String,
    /// BLAKE3 of the vdso's bytes: equal only on the same kernel build.
    #[prost(bytes = "vec", tag = "2")]
    pub vdso_hash: Vec<u8>,
    /// Names and sizes of the special mappings, e.g. "[vvar] 16384".
    #[prost(string, repeated, tag = "3")]
    pub special_mappings: Vec<String>,
}

/// Times and counts of one dump.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DumpStats {
    /// From the first task stopped to the last one let go (or killed).
    #[prost(uint64, tag = "1")]
    pub frozen_us: u64,
    #[prost(uint64, tag = "2")]
    pub total_us: u64,
    #[prost(message, repeated, tag = "3")]
    pub phases: Vec<Phase>,
    #[prost(uint64, tag = "4")]
    pub pages_scanned: u64,
    #[prost(uint64, tag = "5")]
    pub pages_written: u64,
    /// Pages left out: not present, or clean file pages referenced by file.
    #[prost(uint64, tag = "6")]
    pub pages_skipped: u64,
    #[prost(uint64, tag = "7")]
    pub bytes_logical: u64,
    #[prost(uint64, tag = "8")]
    pub bytes_stored: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Phase {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub us: u64,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn inet_socket_round_trip() {
        let local = InetAddr::from_socket_addr(&"[fe80::1%3]:8080".parse().unwrap());
        assert_eq!((local.addr.len(), local.port, local.scope_id), (16, 8080, 3));
        let s = InetSocket {
            family: 10,
            local: Some(local),
            peer: Some(InetAddr::from_socket_addr(&"127.0.0.1:53".parse().unwrap())),
            backlog: 7,
            reuseaddr: true,
            v6only: true,
            nodelay: true,
            rcvbuf: 65536,
            ..Default::default()
        };
        for kind in [fd::Kind::TcpListen(s.clone()), fd::Kind::Udp(s.clone())] {
            let f = Fd { fd: 5, flags: 0o4002, kind: Some(kind), ..Default::default() };
            assert_eq!(Fd::decode(&f.encode_to_vec()[..]).unwrap(), f);
        }
        assert_eq!(s.describe(), "[fe80::1%3]:8080 -> 127.0.0.1:53");
        let unbound = InetSocket {
            family: 2,
            local: Some(InetAddr { addr: vec![0; 4], port: 0, scope_id: 0 }),
            ..Default::default()
        };
        assert_eq!(unbound.describe(), "unbound");
        let bad = InetAddr { addr: vec![1, 2, 3], port: 1, scope_id: 0 };
        assert_eq!(bad.to_socket_addr(), None);
    }
}
