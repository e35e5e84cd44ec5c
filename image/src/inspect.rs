//! A summary of an image, for people (`stasis inspect`) and for programs
//! (`stasis inspect --json`).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::chunk::ChunkId;
use crate::reader::Image;
use crate::records::{fd, Pipe, PipeEnds, Process, UnixSocket, VmaKind};

/// What `stasis inspect` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub format_version: u32,
    pub incompat_features: u32,
    pub compat_features: u32,
    /// Hex of the 16-byte image id.
    pub image_id: String,
    /// Hex of the BLAKE3 of the manifest.
    pub manifest_hash: String,
    pub tool_version: String,
    pub created_unix_ms: u64,
    pub hostname: String,
    pub kernel_release: String,
    pub chunk_size: u32,
    pub parent: Option<ParentSummary>,
    pub sections: Vec<SectionSummary>,
    pub memory: MemorySummary,
    pub chunks: ChunkSummary,
    /// The processes, for an image of processes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessSummary>,
    /// Exited children awaiting their parent's wait.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zombies: Vec<ZombieSummary>,
    /// The volume snapshot taken with the processes (a coherent snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSummary>,
    /// Sessions whose leader had exited at dump time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leaderless_sessions: Vec<i32>,
    /// Process groups whose leader had exited at dump time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leaderless_groups: Vec<i32>,
    /// Shared memory objects, each stored once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shmem: Vec<ShmemSummary>,
    /// How the dump went, for an image of processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpSummary>,
}

/// The volume snapshot of a coherent snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeSummary {
    pub kind: String,
    pub volume: String,
    pub name: String,
    pub id: String,
    pub location: String,
    /// How long taking it kept the tree frozen.
    pub snapshot_us: u64,
}

/// One process of the image.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessSummary {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub mm: u32,
    pub exe: String,
    pub cwd: String,
    pub threads: Vec<i32>,
    pub vmas: Vec<VmaSummary>,
    pub fds: Vec<FdSummary>,
    /// Its fds are its parent's (one table, CLONE_FILES).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub files_of_parent: bool,
    /// Bytes of memory it still shared copy-on-write with its parent,
    /// stored with the parent.
    #[serde(skip_serializing_if = "is_zero")]
    pub bytes_from_parent: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A zombie of the image.
#[derive(Clone, Debug, Serialize)]
pub struct ZombieSummary {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    /// As waitpid(2) reports it.
    pub wait_status: i32,
}

/// A shared memory object.
#[derive(Clone, Debug, Serialize)]
pub struct ShmemSummary {
    pub id: u64,
    pub size: u64,
    /// "memfd:NAME", or "anonymous" for MAP_SHARED anonymous memory.
    pub kind: String,
    pub seals: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct VmaSummary {
    pub start: u64,
    pub end: u64,
    /// Like /proc/PID/maps: "rw-p".
    pub perms: String,
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Got from the parent by fork, with pages still shared.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_parent: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct FdSummary {
    pub fd: i32,
    pub kind: String,
    pub target: String,
    /// "fd N" or "process P fd N" whose open file description this shares.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub shares: String,
    pub pos: u64,
    pub flags: u32,
}

/// Times and counts of the dump that wrote the image.
#[derive(Clone, Debug, Serialize)]
pub struct DumpSummary {
    pub frozen_us: u64,
    pub total_us: u64,
    pub phases: Vec<(String, u64)>,
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub pages_skipped: u64,
    pub bytes_logical: u64,
    pub bytes_stored: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ParentSummary {
    /// As recorded (relative to this image).
    pub path: String,
    pub manifest_hash: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SectionSummary {
    pub kind: String,
    pub required: bool,
    pub offset: u64,
    pub length: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemorySummary {
    pub address_spaces: usize,
    pub regions: Vec<RegionSummary>,
    /// Bytes of memory the image describes.
    pub logical_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegionSummary {
    pub mm: u32,
    pub start: u64,
    pub length: u64,
    pub chunks: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChunkSummary {
    /// Chunks stored in this image's pack.
    pub stored: usize,
    /// Their bytes before compression.
    pub stored_raw_bytes: u64,
    /// Their bytes as stored: the frames in `chunks.pack`.
    pub stored_bytes: u64,
    /// Length of `chunks.pack`: more than `stored_bytes` where chunks
    /// copied ahead and replaced were punched out (holes, no space taken).
    pub pack_bytes: u64,
    /// Distinct chunks the memory index references.
    pub referenced: usize,
    /// Of those, how many a parent image holds.
    pub from_parent: usize,
    /// Bytes of the manifest.
    pub manifest_bytes: u64,
}

pub(crate) fn inspect(image: &Image) -> Inspection {
    let info = image.info();
    let mut referenced = BTreeSet::new();
    let regions = image
        .memory()
        .iter()
        .map(|r| {
            referenced.extend(r.chunk_ids.chunks_exact(32).map(|c| ChunkId(c.try_into().expect("32 bytes"))));
            RegionSummary { mm: r.mm, start: r.start, length: r.len, chunks: r.chunk_ids.len() / 32 }
        })
        .collect::<Vec<_>>();
    let from_parent = referenced.iter().filter(|id| image.chunks().get(id).is_none()).count();
    Inspection {
        path: image.dir().display().to_string(),
        format_version: image.header().version,
        incompat_features: image.header().incompat,
        compat_features: image.header().compat,
        image_id: hex(&info.image_id),
        manifest_hash: hex(image.manifest_hash()),
        tool_version: info.tool_version.clone(),
        created_unix_ms: info.created_unix_ms,
        hostname: info.hostname.clone(),
        kernel_release: info.kernel_release.clone(),
        chunk_size: info.chunk_size,
        parent: info
            .parent
            .as_ref()
            .map(|p| ParentSummary { path: p.path.clone(), manifest_hash: hex(&p.manifest_hash) }),
        sections: image
            .sections()
            .iter()
            .map(|s| SectionSummary {
                kind: s.kind.to_string(),
                required: s.flags & crate::format::SECTION_REQUIRED != 0,
                offset: s.offset,
                length: s.len,
            })
            .collect(),
        memory: MemorySummary {
            address_spaces: regions.iter().map(|r| r.mm).collect::<BTreeSet<_>>().len(),
            logical_bytes: regions.iter().map(|r| r.length).sum(),
            regions,
        },
        chunks: ChunkSummary {
            stored: image.chunks().len(),
            stored_raw_bytes: image.chunks().entries().iter().map(|e| u64::from(e.raw_len)).sum(),
            stored_bytes: image.chunks().entries().iter().map(|e| u64::from(e.stored_len)).sum(),
            pack_bytes: info.pack_len,
            referenced: referenced.len(),
            from_parent,
            manifest_bytes: image.manifest_len(),
        },
        processes: image
            .processes()
            .map(|t| t.processes.iter().map(|p| process_summary(p, &t.unix_sockets, &t.pipes)).collect())
            .unwrap_or_default(),
        zombies: image
            .processes()
            .map(|t| {
                t.zombies
                    .iter()
                    .map(|z| ZombieSummary {
                        pid: z.pid,
                        ppid: z.ppid,
                        pgid: z.pgid,
                        sid: z.sid,
                        comm: z.comm.clone(),
                        wait_status: z.wait_status,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        volume: image.processes().and_then(|t| t.volume.as_ref()).map(|v| VolumeSummary {
            kind: v.kind.clone(),
            volume: v.volume.clone(),
            name: v.name.clone(),
            id: v.id.clone(),
            location: v.location.clone(),
            snapshot_us: v.snapshot_us,
        }),
        leaderless_sessions: image.processes().map(|t| t.leaderless_sessions.clone()).unwrap_or_default(),
        leaderless_groups: image.processes().map(|t| t.leaderless_groups.clone()).unwrap_or_default(),
        shmem: image
            .processes()
            .map(|t| {
                t.shmem
                    .iter()
                    .map(|m| ShmemSummary {
                        id: m.id,
                        size: m.size,
                        kind: if m.memfd { format!("memfd:{}", m.name) } else { "anonymous".into() },
                        seals: m.seals,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        dump: image.processes().and_then(|t| t.stats.as_ref()).map(|s| DumpSummary {
            frozen_us: s.frozen_us,
            total_us: s.total_us,
            phases: s.phases.iter().map(|p| (p.name.clone(), p.us)).collect(),
            pages_scanned: s.pages_scanned,
            pages_written: s.pages_written,
            pages_skipped: s.pages_skipped,
            bytes_logical: s.bytes_logical,
            bytes_stored: s.bytes_stored,
        }),
    }
}

fn process_summary(p: &Process, unix: &[UnixSocket], pipes: &[Pipe]) -> ProcessSummary {
    ProcessSummary {
        pid: p.pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        mm: p.mm,
        exe: p.exe.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
        cwd: p.cwd.clone(),
        files_of_parent: p.files_of_parent,
        bytes_from_parent: p.from_parent.chunks_exact(2).map(|r| r[1].saturating_sub(r[0])).sum(),
        threads: p.threads.iter().map(|t| t.tid).collect(),
        vmas: p
            .vmas
            .iter()
            .map(|v| {
                let bit = |b: u32, c: char| if v.prot & b != 0 { c } else { '-' };
                let shared = if v.flags & 1 != 0 { 's' } else { 'p' };
                VmaSummary {
                    start: v.start,
                    end: v.end,
                    perms: [bit(1, 'r'), bit(2, 'w'), bit(4, 'x'), shared].iter().collect(),
                    kind: VmaKind::try_from(v.kind)
                        .map_or_else(|_| v.kind.to_string(), |k| format!("{k:?}").to_lowercase()),
                    path: v.file.as_ref().map(|f| f.path.clone()).unwrap_or_default(),
                    from_parent: v.from_parent,
                }
            })
            .collect(),
        fds: p
            .fds
            .iter()
            .map(|f| {
                let (kind, target) = match &f.kind {
                    Some(fd::Kind::File(r)) if r.deleted => ("file", format!("{} (deleted)", r.path)),
                    Some(fd::Kind::File(r)) => ("file", r.path.clone()),
                    Some(fd::Kind::Pipe(id)) => (
                        "pipe",
                        match pipes.iter().find(|p| p.id == *id).map(|p| p.ends()) {
                            Some(PipeEnds::ReadOnly) => format!("pipe:[{id}] (external: its writer was outside)"),
                            Some(PipeEnds::WriteOnly) => format!("pipe:[{id}] (external: its reader was outside)"),
                            _ => format!("pipe:[{id}]"),
                        },
                    ),
                    Some(fd::Kind::Fifo(fifo)) => {
                        ("fifo", fifo.file.as_ref().map(|r| r.path.clone()).unwrap_or_default())
                    }
                    Some(fd::Kind::Device(d)) => ("device", d.path.clone()),
                    Some(fd::Kind::PtyMaster(n)) => ("pty master", format!("/dev/ptmx (pair /dev/pts/{n})")),
                    Some(fd::Kind::PtySlave(n)) => ("pty slave", format!("/dev/pts/{n} (its master is in the image)")),
                    Some(fd::Kind::Tty(t)) => (
                        "tty",
                        format!(
                            "{} (external terminal tty:[{}:{}]{}: restore needs --shell-job or --inherit-fd)",
                            t.path,
                            ((t.rdev >> 32) & 0xffff_f000) | ((t.rdev >> 8) & 0xfff),
                            ((t.rdev >> 12) & 0xffff_ff00) | (t.rdev & 0xff),
                            match t.session {
                                0 => String::new(),
                                s => format!(", controlling session {s}"),
                            }
                        ),
                    ),
                    Some(fd::Kind::Inotify(n)) => (
                        "inotify",
                        n.watches.iter().map(|w| format!("{} {}", w.wd, w.path)).collect::<Vec<_>>().join(", "),
                    ),
                    Some(fd::Kind::Fanotify(n)) => (
                        "fanotify",
                        n.marks.iter().map(|m| format!("{} mask {:#x}", m.path, m.mask)).collect::<Vec<_>>().join(", "),
                    ),
                    Some(fd::Kind::ProcEntry(e)) => ("proc", format!("/proc/{}/{}", e.pid, e.path)),
                    Some(fd::Kind::Pidfd(p)) => ("pidfd", format!("process {}", p.pid)),
                    Some(fd::Kind::Memfd(id)) => ("memfd", format!("shared memory object {id}")),
                    Some(fd::Kind::Eventfd(e)) => ("eventfd", format!("count {}", e.count)),
                    Some(fd::Kind::Timerfd(t)) => (
                        "timerfd",
                        format!("clock {}, next in {} ns, every {} ns", t.clockid, t.value_ns, t.interval_ns),
                    ),
                    Some(fd::Kind::Signalfd(sg)) => ("signalfd", format!("mask {:#x}", sg.mask)),
                    Some(fd::Kind::TcpListen(s)) => ("tcp-listen", s.describe()),
                    Some(fd::Kind::TcpUnconnected(s)) => ("tcp", format!("{} (not connected)", s.describe())),
                    Some(fd::Kind::Udp(s)) => ("udp", s.describe()),
                    Some(fd::Kind::Packet(pk)) => (
                        "packet",
                        format!(
                            "type {}, protocol {:#06x}, on {:?}",
                            pk.sock_type,
                            u16::from_be(pk.protocol as u16),
                            pk.interface
                        ),
                    ),
                    Some(fd::Kind::Netlink(n)) => (
                        "netlink",
                        format!(
                            "protocol {}, port {}, groups {:?}, connected to {}:{}",
                            n.protocol, n.portid, n.groups, n.dst_portid, n.dst_group
                        ),
                    ),
                    Some(fd::Kind::Tcp(c)) => (
                        "tcp",
                        format!(
                            "{}, {} bytes to send, {} received",
                            c.socket.as_ref().map(|s| s.describe()).unwrap_or_default(),
                            c.send_queue.len(),
                            c.recv_queue.len()
                        ),
                    ),
                    Some(fd::Kind::Unix(id)) => (
                        "unix",
                        match unix.iter().find(|u| u.id == *id) {
                            Some(u) => {
                                let queued: usize = u.queue.iter().map(Vec::len).sum();
                                let peer = match unix.iter().find(|p| p.id == u.peer && u.peer != 0) {
                                    Some(_) => format!(" (to socket {})", u.peer),
                                    None => String::new(),
                                };
                                format!("{}{peer}, {queued} bytes queued", u.describe())
                            }
                            None => format!("unix socket {id} (missing)"),
                        },
                    ),
                    Some(fd::Kind::Epoll(e)) => {
                        ("epoll", format!("watching {:?}", e.targets.iter().map(|t| t.fd).collect::<Vec<_>>()))
                    }
                    None => ("unknown", String::new()),
                };
                let shares = match (&f.same_as, &f.shared_with) {
                    (Some(of), _) => format!("fd {of}"),
                    (None, Some(r)) => format!("process {} fd {}", r.pid, r.fd),
                    (None, None) => String::new(),
                };
                FdSummary { fd: f.fd, kind: kind.into(), target, shares, pos: f.pos, flags: f.flags }
            })
            .collect(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
