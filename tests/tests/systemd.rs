//! Running under systemd as `ops/` ships it: the unit passes
//! `systemd-analyze verify`, edge speaks the notify protocol the unit's
//! `Type=notify` relies on (READY=1 once listening, RELOADING=1 then READY=1
//! around a SIGHUP, STOPPING=1 on SIGTERM), and every key of the sysctl file
//! names a real kernel setting.

use std::time::Duration;

use edge_tests::edge::edge_bin;
use edge_tests::process::run;
use edge_tests::{workspace_root, Edge, EdgeConfig, Origin};
use tokio::net::UnixDatagram;

#[tokio::test]
async fn the_unit_passes_systemd_analyze_verify() -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(workspace_root().join("ops/systemd/edge.service"))?;
    assert!(unit.contains("Type=notify"), "{unit}");
    // verify checks that the programs exist: point them at the built binary.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("edge.service");
    let bin = edge_bin()?;
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/edge", &bin.display().to_string()),
    )?;
    let verify = run(
        "systemd-analyze",
        ["verify", &path.display().to_string()],
        Duration::from_secs(60),
    )
    .await?;
    verify.ensure_success("systemd-analyze verify")?;
    // Unknown keys and bad values are warnings, not failures: none allowed.
    assert_eq!(verify.stderr.trim(), "", "systemd-analyze verify warned");
    Ok(())
}

/// The next notify message, within a deadline.
async fn next(socket: &UnixDatagram) -> anyhow::Result<String> {
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(15), socket.recv(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn edge_tells_systemd_ready_reloading_and_stopping() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path)?;
    let notify = path.display().to_string();
    let mut edge = Edge::start_with_env(
        &EdgeConfig::new(origin.url()),
        &[("NOTIFY_SOCKET", &notify)],
    )
    .await?;
    let ready = next(&socket).await?;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // READY comes once the listeners are bound: the data port answers now.
    let got = edge_tests::scripted::get(edge.http()?, "/", &[]).await?;
    assert_eq!(got.status, 200);

    edge.signal("HUP").await?;
    let reloading = next(&socket).await?;
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    let reloaded = next(&socket).await?;
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded}");

    edge.terminate().await?;
    let stopping = next(&socket).await?;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let status = edge.wait_exit(Duration::from_secs(20)).await?;
    assert_eq!(status.code(), Some(0), "{}", edge.log());
    Ok(())
}

#[test]
fn every_sysctl_key_names_a_kernel_setting() -> anyhow::Result<()> {
    let path = workspace_root().join("ops/sysctl.d/60-edge.conf");
    let text = std::fs::read_to_string(&path)?;
    let mut keys = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("line {}: no `=`: {line}", n + 1))?;
        let proc = std::path::Path::new("/proc/sys").join(key.trim().replace('.', "/"));
        assert!(
            proc.exists(),
            "line {}: {} is no kernel setting",
            n + 1,
            key.trim()
        );
        assert!(!value.trim().is_empty(), "line {}: no value", n + 1);
        keys += 1;
    }
    assert!(keys >= 8, "{keys} settings");
    Ok(())
}
