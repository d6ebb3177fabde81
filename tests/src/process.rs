//! Helper processes (curl, gtlsclient, python3), always run with a deadline.

use std::ffi::OsStr;
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

/// Output of a finished helper, with stdout and stderr decoded leniently.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Exit code, `None` when killed by a signal.
    pub code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
}

impl Finished {
    fn from_output(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Fails with both streams in the message unless the exit code was 0.
    pub fn ensure_success(&self, what: &str) -> anyhow::Result<&Self> {
        if self.code != Some(0) {
            bail!(
                "{what} exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.code,
                tail(&self.stdout),
                tail(&self.stderr)
            );
        }
        Ok(self)
    }
}

/// Runs `program args` with no standard input and kills it when `timeout` passes.
pub async fn run<I, S>(program: &str, args: I, timeout: Duration) -> anyhow::Result<Finished>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    run_command(command, timeout).await
}

/// Runs a prepared command with no standard input, killing it when `timeout` passes.
pub async fn run_command(mut command: Command, timeout: Duration) -> anyhow::Result<Finished> {
    let described = format!("{:?}", command.as_std());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("spawning {described}"))?;
    // On timeout the future is dropped, and with it the child, which kill_on_drop kills.
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => Ok(Finished::from_output(
            output.with_context(|| format!("waiting for {described}"))?,
        )),
        Err(_) => bail!("{described} did not finish within {timeout:?}"),
    }
}

/// The last 4 KiB of a possibly long log, for error messages.
/// The Python that runs the test scripts: `$EDGE_TEST_PYTHON` (the test command
/// points it at the virtualenv it fills), else `.venv/bin/python3` in the
/// workspace when it exists, else `python3` on the PATH.
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("EDGE_TEST_PYTHON") {
        return p.into();
    }
    let venv = crate::edge::workspace_root().join(".venv/bin/python3");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

pub fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(4096);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Polls `condition` every 20 ms until it holds or `deadline` passes.
pub async fn wait_until<F>(what: &str, deadline: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> bool,
{
    wait_for(what, deadline, || condition().then_some(())).await
}

/// As [`wait_until`], for a condition that must await (e.g. a `/metrics` scrape).
pub async fn poll_until<F, Fut>(
    what: &str,
    deadline: Duration,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut check = || {
        let polled = condition();
        async move { anyhow::Ok(polled.await.then_some(())) }
    };
    eventually(what, deadline, &mut check).await
}

/// As [`wait_for`], for a condition that must await and may fail (an error ends
/// the wait at once).
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let interval = Duration::from_millis(20);
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = f().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// Polls `condition` every 20 ms until it gives a value or `deadline` passes.
pub async fn wait_for<T, F>(what: &str, deadline: Duration, mut condition: F) -> anyhow::Result<T>
where
    F: FnMut() -> Option<T>,
{
    let interval = Duration::from_millis(20);
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}
