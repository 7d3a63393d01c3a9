//! The client packages as partners use them: each package's example runs the
//! whole story F1–F8 against a real `ssak3 up`, with tokens from
//! `ssak3 token`. `scripts/clients install` (run by scripts/test) installs
//! the packages into .cache/clients.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use ssak3_common::server::free_consecutive_ports;

use crate::{binary::ssak3, up::Up};

fn installed(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/clients")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/clients install (scripts/test does)",
        path.display()
    );
    path
}

/// A token from `ssak3 token`, signed with the key of the `ssak3 up` whose
/// data directory is `dir/data` (the default when run in `dir`).
fn token(dir: &Path, role: &str, subject: &str) -> String {
    let output = ssak3()
        .current_dir(dir)
        .args(["token", "--role", role, "--subject", subject])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs an example (`program` and its first arguments) against a fresh
/// `ssak3 up` and returns its output.
async fn run_story(program: &Path, first_args: &[&Path], workdir: &Path) -> Output {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let base = free_consecutive_ports(4).unwrap_or_else(|e| panic!("{e}"));
    let up = Up::start(dir.path(), base).await;
    let customer = token(dir.path(), "customer", "alice");
    let cleaner = token(dir.path(), "cleaner", "acme-cleaning");
    let mut command = Command::new(program);
    command
        .args(first_args)
        .args(["--base-port", &base.to_string()])
        .args(["--customer-token", &customer, "--cleaner-token", &cleaner])
        .current_dir(workdir);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("cannot run the example: {e}"));
    if !output.status.success() {
        eprintln!("ssak3 up's log:\n{}", up.log());
    }
    up.interrupt();
    output
}

fn assert_whole_story(output: &Output) {
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for requirement in [
        "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "order", "resume",
    ] {
        assert!(
            printed.lines().any(|l| l.starts_with(requirement)),
            "{requirement} missing:\n{printed}"
        );
    }
    assert!(printed.contains("the whole story held"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_runs_the_whole_story() {
    let python = installed("python/bin/python");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/examples");
    let output = run_story(&python, &[&examples.join("story.py")], &examples).await;
    assert_whole_story(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_runs_the_whole_story() {
    let consumer = installed("typescript-consumer");
    let story = installed("typescript-consumer/story.js");
    let output = run_story(Path::new("node"), &[&story], &consumer).await;
    assert_whole_story(&output);
}
