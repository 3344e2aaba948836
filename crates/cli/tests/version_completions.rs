//! `switchyard --version` names the commit built, and `switchyard completions
//! SHELL` prints a script for that shell that knows the subcommands.

use std::process::Command;

fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("cannot run the switchyard binary")
}

#[test]
fn version_names_the_git_revision() {
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git is needed to build and test from a checkout");
    let head = String::from_utf8(head.stdout).unwrap();
    let out = switchyard(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "switchyard {} ({})",
        env!("CARGO_PKG_VERSION"),
        &head.trim()[..12]
    );
    assert_eq!(version.trim(), want);
}

#[test]
fn completions_for_each_shell_know_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F _switchyard"),
        ("zsh", "#compdef switchyard"),
        ("fish", "complete -c switchyard"),
    ] {
        let out = switchyard(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for sub in [
            "serve",
            "connect",
            "doctor",
            "monitor",
            "bench",
            "completions",
        ] {
            assert!(script.contains(sub), "{shell}: no {sub}");
        }
    }
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error() {
    let out = switchyard(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: bash"), "{err}");
    assert!(out.stdout.is_empty());
}
