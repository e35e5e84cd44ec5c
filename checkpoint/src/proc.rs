//! Readers for the /proc files a dump needs, as plain parsers over text so
//! they are tested on recorded fixtures (proc(5) describes every format).

use std::fs;
use std::io;
use std::path::PathBuf;

use stasis_sys::Pid;

/// A path under /proc/PID.
pub fn path(pid: Pid, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// A path under /proc/PID/task/TID.
pub fn task_path(pid: Pid, tid: Pid, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/task/{tid}/{name}"))
}

pub fn read(pid: Pid, name: &str) -> io::Result<String> {
    fs::read_to_string(path(pid, name))
}

/// The thread ids of a process, ascending.
pub fn tids(pid: Pid) -> io::Result<Vec<Pid>> {
    let mut tids: Vec<Pid> = fs::read_dir(path(pid, "task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok().map(Pid::from_raw))
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The children of a process (of all its threads), ascending.
pub fn children(pid: Pid) -> io::Result<Vec<Pid>> {
    let mut children = Vec::new();
    for tid in tids(pid)? {
        match fs::read_to_string(task_path(pid, tid, "children")) {
            Ok(text) => children.extend(text.split_whitespace().filter_map(|c| c.parse().ok()).map(Pid::from_raw)),
            // The thread exited meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound && path(pid, "").exists() => {}
            Err(e) => return Err(e),
        }
    }
    children.sort_unstable();
    children.dedup();
    Ok(children)
}

/// The state letter and parent of a process, read once.
pub fn stat(pid: Pid) -> io::Result<Stat> {
    parse_stat(&read(pid, "stat")?).map_err(io::Error::other)
}

/// Every live process of /proc with its stat (those that exit while read
/// are left out).
pub fn all() -> Vec<(Pid, Stat)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((Pid::from_raw(p), stat(Pid::from_raw(p)).ok()?)))
        .collect()
}

/// One line of /proc/PID/maps, with the VmFlags of /proc/PID/smaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    /// `major:minor` as one number, as in st_dev (`makedev`).
    pub dev: u64,
    pub inode: u64,
    /// The path or pseudo-name ("[heap]", "[vdso]", ...), empty for anonymous.
    pub name: String,
    /// Two-letter flags from smaps (`rd wr mr mw me ac sd ...`).
    pub vm_flags: Vec<String>,
}

impl Mapping {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }

    /// "/path (deleted)" names a file unlinked while mapped.
    pub fn deleted(&self) -> bool {
        self.name.ends_with(" (deleted)")
    }
}

/// `makedev(major, minor)` as glibc encodes it.
pub fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

/// Parse /proc/PID/smaps (or maps, which then yields no VmFlags).
pub fn parse_smaps(text: &str) -> Result<Vec<Mapping>, String> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let last = out.last_mut().ok_or("VmFlags before any mapping")?;
            last.vm_flags = flags.split_whitespace().map(str::to_owned).collect();
            continue;
        }
        // Header lines start with a hex range; field lines with a name and ':'.
        let mut fields = line.splitn(6, ' ');
        let range = fields.next().unwrap_or_default();
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else { continue };
        let bad = || format!("malformed mapping line {line:?}");
        let perms = fields.next().ok_or_else(bad)?.as_bytes();
        if perms.len() != 4 {
            return Err(bad());
        }
        let offset = u64::from_str_radix(fields.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
        let (major, minor) = fields.next().ok_or_else(bad)?.split_once(':').ok_or_else(bad)?;
        let dev = makedev(
            u64::from_str_radix(major, 16).map_err(|_| bad())?,
            u64::from_str_radix(minor, 16).map_err(|_| bad())?,
        );
        let inode = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let name = fields.next().unwrap_or_default().trim_start().to_owned();
        out.push(Mapping {
            start,
            end,
            read: perms[0] == b'r',
            write: perms[1] == b'w',
            exec: perms[2] == b'x',
            shared: perms[3] == b's',
            offset,
            dev,
            inode,
            name,
            vm_flags: Vec::new(),
        });
    }
    Ok(out)
}

/// BLAKE3 of `pid`'s vdso, as found in `maps`: equal only for the same
/// kernel build. Empty when there is no vdso or it cannot be read.
pub fn vdso_hash(pid: Pid, maps: &[Mapping]) -> Vec<u8> {
    maps.iter()
        .find(|m| m.name == "[vdso]")
        .and_then(|m| {
            let mut buf = vec![0; (m.end - m.start) as usize];
            stasis_sys::process_vm::read_exact(pid, stasis_sys::process_vm::RemoteAddr(m.start), &mut buf).ok()?;
            Some(stasis_image::ChunkId::of(&buf).0.to_vec())
        })
        .unwrap_or_default()
}

/// The fields of /proc/PID/status a dump uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub umask: u32,
    pub state: char,
    pub tracer_pid: i32,
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    pub seccomp: u32,
    pub thp_enabled: bool,
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
}

pub fn parse_status(text: &str) -> Status {
    let mut s = Status { thp_enabled: true, ..Status::default() };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        let nums = |v: &str| v.split_whitespace().filter_map(|n| n.parse().ok()).collect::<Vec<u32>>();
        let hex = |v: &str| u64::from_str_radix(v, 16).unwrap_or(0);
        match key {
            "Name" => s.name = value.to_owned(),
            "Umask" => s.umask = u32::from_str_radix(value, 8).unwrap_or(0o22),
            "State" => s.state = value.chars().next().unwrap_or('?'),
            "TracerPid" => s.tracer_pid = value.parse().unwrap_or(0),
            "Uid" => s.uids = nums(value),
            "Gid" => s.gids = nums(value),
            "Groups" => s.groups = nums(value),
            "CapInh" => s.cap_inh = hex(value),
            "CapPrm" => s.cap_prm = hex(value),
            "CapEff" => s.cap_eff = hex(value),
            "CapBnd" => s.cap_bnd = hex(value),
            "CapAmb" => s.cap_amb = hex(value),
            "NoNewPrivs" => s.no_new_privs = value == "1",
            "Seccomp" => s.seccomp = value.parse().unwrap_or(0),
            "THP_enabled" => s.thp_enabled = value == "1",
            "SigPnd" => s.sig_pnd = hex(value),
            "ShdPnd" => s.shd_pnd = hex(value),
            "SigBlk" => s.sig_blk = hex(value),
            _ => {}
        }
    }
    s
}

/// The fields of /proc/PID/stat a dump uses (proc(5) numbering, from 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: i32,
    /// The foreground group of the controlling terminal, -1 without one.
    pub tpgid: i32,
    pub flags: u32,
    pub nice: i32,
    pub num_threads: i64,
    pub exit_signal: i32,
    /// When it started, in clock ticks after boot (field 22).
    pub start_time: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// For a zombie, what waitpid(2) will report (field 52).
    pub exit_code: i32,
}

/// PF_KTHREAD in `flags`.
pub const PF_KTHREAD: u32 = 0x0020_0000;

pub fn parse_stat(text: &str) -> Result<Stat, String> {
    // comm may hold spaces and parentheses: it runs to the last ')'.
    let open = text.find('(').ok_or("no '(' in stat")?;
    let close = text.rfind(')').ok_or("no ')' in stat")?;
    let comm = text[open + 1..close].to_owned();
    // Field 3 (state) is the first after the ')'.
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let f = |n: usize| rest.get(n - 3).copied().ok_or(format!("stat has no field {n}"));
    let num = |n: usize| f(n)?.parse::<i64>().map_err(|_| format!("stat field {n} is not a number"));
    let unum = |n: usize| f(n)?.parse::<u64>().map_err(|_| format!("stat field {n} is not a number"));
    Ok(Stat {
        comm,
        state: f(3)?.chars().next().unwrap_or('?'),
        ppid: num(4)? as i32,
        pgrp: num(5)? as i32,
        session: num(6)? as i32,
        tty_nr: num(7)? as i32,
        tpgid: num(8)? as i32,
        flags: unum(9)? as u32,
        nice: num(19)? as i32,
        num_threads: num(20)?,
        exit_signal: num(38)? as i32,
        start_time: unum(22)?,
        start_code: unum(26)?,
        end_code: unum(27)?,
        start_stack: unum(28)?,
        start_data: unum(45)?,
        end_data: unum(46)?,
        start_brk: unum(47)?,
        arg_start: unum(48)?,
        arg_end: unum(49)?,
        env_start: unum(50)?,
        env_end: unum(51)?,
        exit_code: num(52).unwrap_or(0) as i32,
    })
}

/// /proc/PID/limits: (resource number, soft, hard), u64::MAX for unlimited.
pub fn parse_limits(text: &str) -> Vec<(u32, u64, u64)> {
    // The row names of fs/proc/base.c `lnames`, in RLIMIT_* order.
    const NAMES: [&str; 16] = [
        "Max cpu time",
        "Max file size",
        "Max data size",
        "Max stack size",
        "Max core file size",
        "Max resident set",
        "Max processes",
        "Max open files",
        "Max locked memory",
        "Max address space",
        "Max file locks",
        "Max pending signals",
        "Max msgqueue size",
        "Max nice priority",
        "Max realtime priority",
        "Max realtime timeout",
    ];
    let value = |s: &str| if s == "unlimited" { Some(u64::MAX) } else { s.parse().ok() };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some(i) = NAMES.iter().position(|n| line.starts_with(n)) else { continue };
        let mut cols = line[NAMES[i].len()..].split_whitespace();
        if let (Some(soft), Some(hard)) = (cols.next().and_then(value), cols.next().and_then(value)) {
            out.push((i as u32, soft, hard));
        }
    }
    out
}

/// The common lines of /proc/PID/fdinfo/FD.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// Octal in the file; includes O_CLOEXEC (0o2000000) when set.
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: u64,
    /// The file locks this fd's description (flock, OFD) or process
    /// (POSIX) holds on its file: its `lock:` lines.
    pub locks: Vec<LockLine>,
}

/// One `lock:` line of /proc/PID/fdinfo/FD, as /proc/locks writes it:
/// `1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 100 199`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockLine {
    /// FLOCK, POSIX, OFDLCK, LEASE, DELEG...
    pub kind: String,
    /// ADVISORY, MANDATORY; for a lease ACTIVE, BREAKING or BREAKER.
    pub state: String,
    /// READ, WRITE; a lease being broken shows what it is broken to
    /// (READ, UNLCK).
    pub access: String,
    pub write: bool,
    /// The process that took it (-1 for OFD locks).
    pub pid: i32,
    pub start: u64,
    /// Last byte, None: to the end of the file.
    pub end: Option<u64>,
}

impl LockLine {
    fn parse(text: &str) -> Option<LockLine> {
        let f: Vec<&str> = text.split_whitespace().collect();
        // id: KIND ADVISORY|MANDATORY|ACTIVE|... READ|WRITE|... PID DEV:INO START END
        let [_, kind, state, access, pid, _, start, end] = f.as_slice() else { return None };
        Some(LockLine {
            kind: (*kind).to_owned(),
            state: (*state).to_owned(),
            access: (*access).to_owned(),
            write: *access == "WRITE",
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
            end: if *end == "EOF" { None } else { Some(end.parse().ok()?) },
        })
    }
}

pub fn parse_fdinfo(text: &str) -> FdInfo {
    let mut info = FdInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match key {
            "pos" => info.pos = value.parse().unwrap_or(0),
            "flags" => info.flags = u32::from_str_radix(value, 8).unwrap_or(0),
            "mnt_id" => info.mnt_id = value.parse().unwrap_or(0),
            "ino" => info.ino = value.parse().unwrap_or(0),
            // A line not understood stays, as a kind of lock the dump refuses.
            "lock" => info.locks.push(LockLine::parse(value).unwrap_or_else(|| LockLine {
                kind: format!("lock stasis cannot read ({value})"),
                state: String::new(),
                access: String::new(),
                write: false,
                pid: 0,
                start: 0,
                end: None,
            })),
            _ => {}
        }
    }
    info
}

/// /proc/PID/auxv as u64 words, up to and including the AT_NULL pair.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let words: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
    let mut out = Vec::new();
    for pair in words.chunks_exact(2) {
        out.extend_from_slice(pair);
        if pair[0] == 0 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn fdinfo_lock_lines() {
        let info = parse_fdinfo(
            "pos:\t400\nflags:\t02100002\nmnt_id:\t27\nino:\t10\n\
             lock:\t1: POSIX  ADVISORY  WRITE 21359 fe:00:10 100 199\n\
             lock:\t2: OFDLCK ADVISORY  READ -1 fe:00:10 300 EOF\n\
             lock:\t3: LEASE  ACTIVE    WRITE 21359 fe:00:10 0 EOF\n\
             lock:\t4: something new\n\
             lock:\t5: LEASE  BREAKING  UNLCK 21359 fe:00:10 0 EOF\n",
        );
        let line = |kind: &str, state: &str, write, pid, start, end| LockLine {
            kind: kind.into(),
            state: state.into(),
            access: if write { "WRITE" } else { "READ" }.into(),
            write,
            pid,
            start,
            end,
        };
        assert_eq!(
            info.locks[..3],
            [
                line("POSIX", "ADVISORY", true, 21359, 100, Some(199)),
                line("OFDLCK", "ADVISORY", false, -1, 300, None),
                line("LEASE", "ACTIVE", true, 21359, 0, None),
            ]
        );
        assert!(info.locks[3].kind.contains("cannot read (4: something new)"), "{:?}", info.locks[3]);
        // A lease being broken shows what it is broken to.
        assert_eq!((info.locks[4].state.as_str(), info.locks[4].access.as_str()), ("BREAKING", "UNLCK"));
    }

    use super::*;

    const SMAPS: &str = "\
55d0c8a00000-55d0c8a02000 r--p 00000000 fe:00 1835106                    /usr/bin/cat
Size:                  8 kB
VmFlags: rd mr mw me sd
7f2a4c000000-7f2a4c021000 rw-s 00000000 00:01 2049                       /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms sd
7ffd3a9e5000-7ffd3aa06000 rw-p 00000000 00:00 0                          [stack]
VmFlags: rd wr mr mw me gd ac
7ffd3aa4a000-7ffd3aa4c000 r-xp 00000000 00:00 0                          [vdso]
7f2a4c100000-7f2a4c200000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac dc wf
";

    #[test]
    fn smaps_fixture() {
        let m = parse_smaps(SMAPS).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!((m[0].start, m[0].end), (0x55d0_c8a0_0000, 0x55d0_c8a0_2000));
        assert!(m[0].read && !m[0].write && !m[0].exec && !m[0].shared);
        assert_eq!(m[0].dev, makedev(0xfe, 0));
        assert_eq!(m[0].inode, 1_835_106);
        assert_eq!(m[0].name, "/usr/bin/cat");
        assert!(m[1].shared && m[1].deleted() && m[1].has_flag("sh"));
        assert_eq!(m[2].name, "[stack]");
        assert!(m[2].has_flag("gd"));
        assert!(m[3].vm_flags.is_empty());
        assert_eq!(m[4].name, "");
        assert!(m[4].has_flag("dc") && m[4].has_flag("wf"));
    }

    #[test]
    fn stat_with_a_hostile_comm() {
        let text = "42 (a) b) (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 5 3 0 123 4096 10 18446744073709551615 4194304 4198400 140736000000000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 6295552 6296000 6299648 140736000001000 140736000001100 140736000001100 140736000002000 0\n";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.comm, "a) b) (c");
        assert_eq!((s.state, s.ppid, s.pgrp, s.session), ('S', 1, 42, 42));
        assert_eq!(s.nice, 5);
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.exit_signal, 17);
        assert_eq!((s.start_code, s.end_code), (4_194_304, 4_198_400));
        assert_eq!((s.start_data, s.end_data, s.start_brk), (6_295_552, 6_296_000, 6_299_648));
        assert_eq!(s.env_end, 140_736_000_002_000);
    }

    #[test]
    fn own_stat_parses() {
        let s = parse_stat(&fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert_eq!(s.ppid, std::os::unix::process::parent_id() as i32);
        assert!(s.start_code > 0 && s.env_end > s.env_start);
    }

    #[test]
    fn status_fixture() {
        let text = "Name:\tcat\nUmask:\t0027\nState:\tS (sleeping)\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t5\t5\t5\t5\nGroups:\t1 2 \nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000800\nSigBlk:\t0000000000000800\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t0\nTHP_enabled:\t0\n";
        let s = parse_status(text);
        assert_eq!(s.umask, 0o27);
        assert_eq!(s.state, 'S');
        assert_eq!(s.gids, [5, 5, 5, 5]);
        assert_eq!(s.groups, [1, 2]);
        assert_eq!(s.shd_pnd, 0x800);
        assert_eq!(s.cap_eff, 0x1ff_feff_ffff);
        assert!(s.no_new_privs && !s.thp_enabled);
    }

    #[test]
    fn limits_fixture() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax stack size            8388608              unlimited            bytes     \nMax open files            500                  1048576              files     \nMax realtime timeout      unlimited            unlimited            us        \n";
        assert_eq!(
            parse_limits(text),
            [(0, u64::MAX, u64::MAX), (3, 8_388_608, u64::MAX), (7, 500, 1_048_576), (15, u64::MAX, u64::MAX)]
        );
    }

    #[test]
    fn fdinfo_fixture() {
        let i = parse_fdinfo("pos:\t12345\nflags:\t02102002\nmnt_id:\t29\nino:\t77\n");
        assert_eq!(i, FdInfo { pos: 12345, flags: 0o2102002, mnt_id: 29, ino: 77, locks: vec![] });
    }

    #[test]
    fn auxv_stops_at_null() {
        let words: Vec<u8> = [6u64, 4096, 0, 0, 99, 99].iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(parse_auxv(&words), [6, 4096, 0, 0]);
    }
}
