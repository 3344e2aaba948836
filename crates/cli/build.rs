//! Sets `SWITCHYARD_GIT_REVISION` for `switchyard --version`: the commit the
//! binary was built from, by `git` in a checkout, or from the
//! `.cargo_vcs_info.json` that `cargo package` writes (a crates.io build).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// `"sha1": "<40 hex>"` from `.cargo_vcs_info.json`, without a JSON parser.
fn packaged_revision(manifest_dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string(manifest_dir.join(".cargo_vcs_info.json")).ok()?;
    let after = info.split("\"sha1\"").nth(1)?;
    let sha: String = after
        .chars()
        .skip_while(|c| !c.is_ascii_hexdigit())
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (sha.len() >= 12).then(|| sha[..12].to_owned())
}

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let manifest_dir = Path::new(&manifest_dir);
    let revision = packaged_revision(manifest_dir)
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown revision".to_owned());
    println!("cargo:rustc-env=SWITCHYARD_GIT_REVISION={revision}");
    // Build again when HEAD moves: HEAD itself (a branch switch), the file
    // of the branch it points to (a commit) and packed-refs. Only files that
    // exist: cargo reruns the script on every build for a missing one.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", branch.as_deref().unwrap_or("HEAD"), "packed-refs"];
    for name in watched {
        if let Some(file) = git(&["rev-parse", "--git-path", name]) {
            if Path::new(&file).exists() {
                println!("cargo:rerun-if-changed={file}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
