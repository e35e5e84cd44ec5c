//! Address-space planning for the puppet: where the trampoline goes, and
//! how the kernel's special mappings (vdso and vvar) move to where the image
//! had them.

use stasis_image::records::{Vma, VmaKind};
use stasis_sys::nix::libc;

/// A mapping of the puppet as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// The lowest address from `from` where `size` bytes fit between every
/// range of `taken` (which may overlap and come in any order).
pub fn free_gap(taken: &[(u64, u64)], size: u64, from: u64, limit: u64) -> Option<u64> {
    let mut ranges: Vec<(u64, u64)> = taken.to_vec();
    ranges.sort_unstable();
    let mut at = from;
    for (s, e) in ranges {
        if e <= at {
            continue;
        }
        if s >= at + size {
            break;
        }
        at = e;
    }
    (at + size <= limit).then_some(at)
}

/// Whether private anonymous mapping `v`, made right after `before`, is
/// one the kernel would merge into it (same protection, flags and advice,
/// writable: [`Remote::map_apart`](super) keeps those apart). The image
/// holding them as two says the process had them apart.
pub fn kept_apart(before: &Vma, v: &Vma) -> bool {
    let anonymous = |v: &Vma| {
        v.kind == VmaKind::Anonymous as i32
            && v.file.is_none()
            && v.shmem == 0
            && v.flags & libc::MAP_PRIVATE as u32 != 0
            && v.flags & libc::MAP_SHARED as u32 == 0
    };
    before.end == v.start
        && anonymous(before)
        && anonymous(v)
        && before.prot == v.prot
        && before.flags == v.flags
        && before.madvise == v.madvise
        && v.prot & libc::PROT_WRITE as u32 != 0
}

/// One special mapping to move: from where the puppet has it to where the
/// image had it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub name: String,
    pub from: u64,
    pub to: u64,
    pub len: u64,
}

/// The names of the special mappings restore moves, in a fixed order.
const SPECIAL: [(&str, VmaKind); 3] =
    [("[vvar]", VmaKind::Vvar), ("[vvar_vclock]", VmaKind::VvarVclock), ("[vdso]", VmaKind::Vdso)];

/// Which special mappings to move where. The vdso's code finds its data in
/// the vvar pages at a fixed distance, so the image's mappings must have the
/// same sizes and distances as this kernel's: that holds on the same kernel,
/// and a difference is a clear error naming both layouts.
pub fn special_moves(current: &[Current], image: &[Vma]) -> Result<Vec<Move>, String> {
    let mut moves = Vec::new();
    for (name, kind) in SPECIAL {
        let cur = current.iter().find(|c| c.name == name);
        let img = image.iter().find(|v| v.kind == kind as i32);
        match (cur, img) {
            (Some(c), Some(i)) if c.end - c.start == i.end - i.start => {
                moves.push(Move { name: name.into(), from: c.start, to: i.start, len: c.end - c.start })
            }
            // The process had unmapped it: the puppet's is unmapped too.
            (Some(_), None) | (None, None) => {}
            _ => return Err(layout_error(current, image)),
        }
    }
    // Equal distances: every move by the same amount.
    let deltas: Vec<i128> = moves.iter().map(|m| i128::from(m.to) - i128::from(m.from)).collect();
    if deltas.windows(2).any(|w| w[0] != w[1]) {
        return Err(layout_error(current, image));
    }
    Ok(moves)
}

fn layout_error(current: &[Current], image: &[Vma]) -> String {
    let here: Vec<String> = SPECIAL
        .iter()
        .filter_map(|(n, _)| current.iter().find(|c| c.name == *n))
        .map(|c| format!("{} {:#x}+{:#x}", c.name, c.start, c.end - c.start))
        .collect();
    let there: Vec<String> = SPECIAL
        .iter()
        .filter_map(|(n, k)| image.iter().find(|v| v.kind == *k as i32).map(|v| (n, v)))
        .map(|(n, v)| format!("{n} {:#x}+{:#x}", v.start, v.end - v.start))
        .collect();
    format!(
        "the image was made on a kernel with another vdso layout ({}) than this one ({}); restore needs the same kernel",
        there.join(", "),
        here.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, kind: VmaKind) -> Vma {
        Vma { start, end, kind: kind as i32, ..Vma::default() }
    }

    fn cur(start: u64, end: u64, name: &str) -> Current {
        Current { start, end, name: name.into() }
    }

    #[test]
    fn alike_adjacent_anonymous_mappings_are_kept_apart() {
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        let anon = |start, end| Vma {
            start,
            end,
            prot: rw,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            ..Vma::default()
        };
        assert!(kept_apart(&anon(0x1000, 0x2000), &anon(0x2000, 0x4000)));
        // Apart anyway: a gap, another protection, advice, a file, shared.
        assert!(!kept_apart(&anon(0x1000, 0x2000), &anon(0x3000, 0x4000)));
        assert!(!kept_apart(&anon(0x1000, 0x2000), &Vma { prot: libc::PROT_READ as u32, ..anon(0x2000, 0x4000) }));
        assert!(!kept_apart(&anon(0x1000, 0x2000), &Vma { madvise: 1, ..anon(0x2000, 0x4000) }));
        assert!(!kept_apart(&anon(0x1000, 0x2000), &Vma { kind: VmaKind::File as i32, ..anon(0x2000, 0x4000) }));
        let shared = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32;
        assert!(!kept_apart(
            &Vma { flags: shared, ..anon(0x1000, 0x2000) },
            &Vma { flags: shared, ..anon(0x2000, 0x4000) }
        ));
        // Read-only: no page of its own can be faulted in to keep it apart.
        let ro = |v: Vma| Vma { prot: libc::PROT_READ as u32, ..v };
        assert!(!kept_apart(&ro(anon(0x1000, 0x2000)), &ro(anon(0x2000, 0x4000))));
    }

    #[test]
    fn gaps() {
        let taken = [(0x1000, 0x3000), (0x5000, 0x6000), (0x2000, 0x4000)];
        assert_eq!(free_gap(&taken, 0x1000, 0x1000, 0x10000), Some(0x4000));
        assert_eq!(free_gap(&taken, 0x2000, 0x1000, 0x10000), Some(0x6000));
        assert_eq!(free_gap(&taken, 0x1000, 0, 0x10000), Some(0));
        assert_eq!(free_gap(&taken, 0x20000, 0, 0x10000), None);
    }

    #[test]
    fn same_kernel_moves_together() {
        let current =
            [cur(0x7000, 0x9000, "[vvar]"), cur(0x9000, 0xa000, "[vvar_vclock]"), cur(0xa000, 0xc000, "[vdso]")];
        let image = [
            vma(0x17000, 0x19000, VmaKind::Vvar),
            vma(0x19000, 0x1a000, VmaKind::VvarVclock),
            vma(0x1a000, 0x1c000, VmaKind::Vdso),
        ];
        let moves = special_moves(&current, &image).unwrap();
        assert_eq!(moves.len(), 3);
        assert!(moves.iter().all(|m| m.to - m.from == 0x10000));
    }

    #[test]
    fn another_kernel_is_refused_with_both_layouts() {
        let current = [cur(0x7000, 0x9000, "[vvar]"), cur(0xa000, 0xc000, "[vdso]")];
        let image = [vma(0x17000, 0x19000, VmaKind::Vvar), vma(0x1b000, 0x1d000, VmaKind::Vdso)];
        let err = special_moves(&current, &image).unwrap_err();
        assert!(err.contains("[vdso] 0x1b000+0x2000") && err.contains("[vdso] 0xa000+0x2000"), "{err}");
        let image = [vma(0x17000, 0x18000, VmaKind::Vvar), vma(0x1a000, 0x1c000, VmaKind::Vdso)];
        assert!(special_moves(&current, &image).is_err());
    }
}
