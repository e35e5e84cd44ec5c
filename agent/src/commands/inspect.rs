//! `stasis inspect`: show what an image holds, without restoring anything.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use stasis_image::{Image, Inspection};

use crate::output::{bytes, json};
use crate::Outcome;

/// Show what an image holds: header, sections, memory regions, chunks
/// stored and referenced, and its parent.
///
/// Reading an image checks its header and section checksums; it does not
/// check chunk contents (that is `stasis verify`). Exit status: 0 when the
/// image could be read, 1 when it could not (not an image, corrupt
/// metadata, missing parent), 2 for bad arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image directory.
    image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    stasis_sys::fdtable::die_on_sigpipe();
    let image = Image::open(&args.image).with_context(|| format!("cannot read image {}", args.image.display()))?;
    let i = image.inspect();
    let restores = stasis_checkpoint::restore::history(&args.image);
    if args.json {
        let mut v = serde_json::to_value(&i)?;
        v["restores"] = serde_json::Value::Array(restores);
        json(&v)?;
    } else {
        print_text(&i);
        for r in &restores {
            let r = &r["report"];
            println!(
                "restored   at pid {} in {:.1} ms ({} pages written)",
                r["pid"],
                r["total_us"].as_f64().unwrap_or(0.0) / 1000.0,
                r["pages_written"]
            );
        }
    }
    Ok(Outcome::Success)
}

fn print_text(i: &Inspection) {
    let written = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(i.created_unix_ms));
    println!("image      {}", i.path);
    println!(
        "format     version {} (features: incompatible {:#x}, compatible {:#x})",
        i.format_version, i.incompat_features, i.compat_features
    );
    println!("id         {}", i.image_id);
    println!("written    {written} by stasis {} on {} (kernel {})", i.tool_version, i.hostname, i.kernel_release);
    match &i.parent {
        Some(p) => println!("parent     {} (manifest {})", p.path, &p.manifest_hash[..16]),
        None => println!("parent     none"),
    }
    let sections: Vec<String> = i
        .sections
        .iter()
        .map(|s| format!("{} {}{}", s.kind, bytes(s.length), if s.required { "" } else { " (optional)" }))
        .collect();
    println!("sections   {}", sections.join(", "));
    println!(
        "memory     {} in {} regions of {} address spaces",
        bytes(i.memory.logical_bytes),
        i.memory.regions.len(),
        i.memory.address_spaces
    );
    println!(
        "chunks     {} stored here ({} raw, {} packed), {} referenced, {} from parents; chunk size {}",
        i.chunks.stored,
        bytes(i.chunks.stored_raw_bytes),
        bytes(i.chunks.stored_bytes),
        i.chunks.referenced,
        i.chunks.from_parent,
        bytes(u64::from(i.chunk_size))
    );
    println!("manifest   {} (blake3 {})", bytes(i.chunks.manifest_bytes), &i.manifest_hash[..16]);
    if let Some(d) = &i.dump {
        let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
        println!(
            "dump       frozen {} of {} in all; {} of {} pages written ({} stored)",
            ms(d.frozen_us),
            ms(d.total_us),
            d.pages_written,
            d.pages_scanned,
            bytes(d.bytes_stored)
        );
        let phases: Vec<String> = d.phases.iter().map(|(n, us)| format!("{n} {}", ms(*us))).collect();
        println!("phases     {}", phases.join(", "));
    }
    for p in &i.processes {
        println!();
        println!("process    {} (parent {}, group {}, session {}), {}", p.pid, p.ppid, p.pgid, p.sid, p.exe);
        println!("  cwd      {}", p.cwd);
        println!("  threads  {}", p.threads.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" "));
        if p.files_of_parent {
            println!("  fds      its parent's (one fd table, CLONE_FILES)");
        } else {
            println!("  fds");
        }
        for f in &p.fds {
            let shares = if f.shares.is_empty() { String::new() } else { format!(", shares {}", f.shares) };
            println!("    {:>4}  {:<6} {} (pos {}, flags {:#o}{shares})", f.fd, f.kind, f.target, f.pos, f.flags);
        }
        match p.bytes_from_parent {
            0 => println!("  mappings"),
            n => println!("  mappings ({} still shared with the parent, stored with it)", bytes(n)),
        }
        for v in &p.vmas {
            let from = if v.from_parent { " (from the parent)" } else { "" };
            println!("    {:016x}-{:016x} {} {:<8} {}{from}", v.start, v.end, v.perms, v.kind, v.path);
        }
    }
    for z in &i.zombies {
        println!();
        let status = match (z.wait_status & 0x7f, (z.wait_status >> 8) & 0xff) {
            (0, code) => format!("exited with {code}"),
            (sig, _) => format!("killed by signal {sig}"),
        };
        println!("zombie     {} (parent {}, group {}, session {}), {}, {status}", z.pid, z.ppid, z.pgid, z.sid, z.comm);
    }
    if let Some(v) = &i.volume {
        println!();
        println!(
            "volume     {} {}: snapshot {} ({}) at {}, taken in {:.1} ms while the tree was frozen",
            v.kind,
            v.volume,
            v.name,
            v.id,
            v.location,
            v.snapshot_us as f64 / 1000.0
        );
    }
    if !i.leaderless_sessions.is_empty() || !i.leaderless_groups.is_empty() {
        println!();
        let list = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
        if !i.leaderless_sessions.is_empty() {
            println!(
                "leaderless sessions {} (their leader had exited; made again at restore)",
                list(&i.leaderless_sessions)
            );
        }
        if !i.leaderless_groups.is_empty() {
            println!(
                "leaderless groups   {} (their leader had exited; made again at restore)",
                list(&i.leaderless_groups)
            );
        }
    }
    if !i.shmem.is_empty() {
        println!();
        for m in &i.shmem {
            let seals = if m.seals != 0 { format!(", seals {:#x}", m.seals) } else { String::new() };
            println!("shared     object {}: {}, {}{seals}", m.id, m.kind, bytes(m.size));
        }
    }
    if !i.memory.regions.is_empty() {
        println!();
        println!("  {:>4}  {:>33}  {:>10}  {:>6}", "mm", "range", "size", "chunks");
        for r in &i.memory.regions {
            println!(
                "  {:>4}  {:#016x}-{:#016x}  {:>10}  {:>6}",
                r.mm,
                r.start,
                r.start + r.length,
                bytes(r.length),
                r.chunks
            );
        }
    }
}
