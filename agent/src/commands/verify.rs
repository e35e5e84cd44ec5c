//! `stasis verify`: check every checksum of an image and its parents.

use std::path::PathBuf;

use stasis_image::Image;

use crate::output::{bytes, error_chain, json};
use crate::Outcome;

/// Check an image without restoring it: the header and every section
/// checksum, every chunk of this image and of each parent (decompressed and
/// hashed), and that every chunk the memory index needs exists.
///
/// Names the first bad file, section or chunk. Exit status: 0 when the
/// image is valid, 1 when it is not (or is not an image at all), 2 for bad
/// arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image directory.
    image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Verdict {
    image: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(flatten)]
    report: Option<stasis_image::VerifyReport>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let result = Image::open(&args.image).and_then(|image| image.verify());
    let shown = args.image.display().to_string();
    let verdict = match result {
        Ok(report) => Verdict { image: shown, valid: true, error: None, report: Some(report) },
        Err(err) => {
            Verdict { image: shown, valid: false, error: Some(error_chain(&anyhow::Error::from(err))), report: None }
        }
    };
    if args.json {
        json(&verdict)?;
    } else if let Some(r) = &verdict.report {
        println!(
            "{}: valid ({} image{}, {} chunks holding {} checked, {} chunk references resolved)",
            verdict.image,
            r.images,
            if r.images == 1 { "" } else { "s" },
            r.chunks_checked,
            bytes(r.bytes_checked),
            r.references_checked
        );
    } else {
        eprintln!("stasis: {}: invalid: {}", verdict.image, verdict.error.as_deref().unwrap_or_default());
    }
    Ok(if verdict.valid { Outcome::Success } else { Outcome::Failure })
}
