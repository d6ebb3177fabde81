//! `edge check` and `edge run` failing before they serve anything.

use std::time::Duration;

use edge_tests::edge::toml_path;
use edge_tests::{assert_one_line_naming, run_edge, workspace_root, Pki};

const RUN_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_unknown_key_bad_duration_and_missing_cert_with_lines_and_exits_2(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let missing = dir.path().join("missing-leaf.pem");
    // Line numbers below are asserted: keep them in step with this text.
    let toml = [
        "listen = \"127.0.0.1:0\"".to_owned(),             // 1
        "colour = \"blue\"".to_owned(),                    // 2: unknown key
        String::new(),                                     // 3
        "[client]".to_owned(),                             // 4
        "idle_timeout = \"ten minutes\"".to_owned(),       // 5: bad duration
        String::new(),                                     // 6
        "[[tls.certificates]]".to_owned(),                 // 7
        format!("cert = {}", toml_path(&missing)),         // 8: missing file
        format!("key = {}", toml_path(&pki.leaf_key)),     // 9
        String::new(),                                     // 10
        "[[routes]]".to_owned(),                           // 11
        "pool = \"default\"".to_owned(),                   // 12
        String::new(),                                     // 13
        "[pools.default]".to_owned(),                      // 14
        "endpoints = [\"http://127.0.0.1:9\"]".to_owned(), // 15
    ]
    .join("\n")
        + "\n";
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, toml)?;
    let out = run_edge(
        ["check".as_ref(), "-c".as_ref(), file.as_os_str()],
        RUN_TIMEOUT,
    )
    .await?;
    assert_eq!(
        out.code,
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    let printed = format!("{}{}", out.stdout, out.stderr);
    let file = file.display().to_string();
    let expected: [(u32, &[&str]); 3] = [
        (2, &["colour"]),
        (5, &["client.idle_timeout"]),
        (8, &["tls.certificates[0].cert", "tls.certificates.0.cert"]),
    ];
    for (line, paths) in expected {
        let found = paths.iter().any(|path| {
            printed
                .lines()
                .any(|l| l.starts_with(&format!("{file}:{line}: {path}: ")))
        });
        assert!(
            found,
            "no `{file}:{line}: {}: reason` line in:\n{printed}",
            paths[0]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_every_example_config_in_ops() -> anyhow::Result<()> {
    let ops = workspace_root().join("ops");
    // ops/*.toml and ops/*/*.toml (e.g. ops/geo/edge.toml).
    let mut dirs = vec![ops.clone()];
    dirs.extend(
        std::fs::read_dir(&ops)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.is_dir()),
    );
    let mut examples = Vec::new();
    for dir in dirs {
        examples.extend(
            std::fs::read_dir(&dir)?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "toml")),
        );
    }
    examples.sort();
    assert!(
        examples.iter().any(|p| p.ends_with("geo/edge.toml")),
        "ops/geo/edge.toml is checked too: {examples:?}"
    );
    assert!(
        examples.iter().any(|p| p.ends_with("examples/acme.toml")),
        "ops/examples/acme.toml is checked too: {examples:?}"
    );
    for example in examples {
        let out = run_edge(
            ["check".as_ref(), "-c".as_ref(), example.as_os_str()],
            RUN_TIMEOUT,
        )
        .await?;
        assert_eq!(
            out.code,
            Some(0),
            "edge check -c {}:\n{}{}",
            example.display(),
            out.stdout,
            out.stderr
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_listen_port_in_use_exits_with_one_line_naming_address() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = format!(
        "listen = \"{addr}\"\n\n[[tls.certificates]]\ncert = {}\nkey = {}\n\n\
         [[routes]]\npool = \"default\"\n\n[pools.default]\nendpoints = [\"http://127.0.0.1:9\"]\n",
        toml_path(&pki.leaf_cert),
        toml_path(&pki.leaf_key),
    );
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, toml)?;
    let out = run_edge(
        ["run".as_ref(), "-c".as_ref(), file.as_os_str()],
        RUN_TIMEOUT,
    )
    .await?;
    assert_one_line_naming(&out, &addr);
    drop(taken);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_admin_flag_port_in_use_exits_with_one_line_naming_address() -> anyhow::Result<()>
{
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let args = [
        "run",
        "--upstream",
        "http://127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &addr,
    ];
    let out = run_edge(args, RUN_TIMEOUT).await?;
    assert_one_line_naming(&out, &addr);
    drop(taken);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_the_commit_and_check_names_both_colliding_listeners() -> anyhow::Result<()> {
    let head = edge_tests::process::run(
        "git",
        [
            "-C",
            &workspace_root().display().to_string(),
            "rev-parse",
            "--short=12",
            "HEAD",
        ],
        Duration::from_secs(10),
    )
    .await?;
    let out = run_edge(["--version"], Duration::from_secs(10)).await?;
    out.ensure_success("edge --version")?;
    assert_eq!(
        out.stdout.trim(),
        format!(
            "edge {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            head.stdout.trim()
        ),
        "a stale binary? cargo build -p edge --bin edge"
    );

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8443\"\nadmin = \"127.0.0.1:8443\"\nworkers = 0\n\
         [pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\n",
    )?;
    let out = run_edge(
        ["check", "-c", &file.display().to_string()],
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let shown = format!("{}{}", out.stdout, out.stderr);
    assert!(
        shown
            .contains("edge.toml:2: admin: `listen` (127.0.0.1:8443) and `admin` (127.0.0.1:8443)"),
        "{shown}"
    );
    assert!(
        shown.contains("edge.toml:3: workers: must be at least 1"),
        "{shown}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_name_the_argument_and_suggest_a_similar_one_and_check_help_describes_c(
) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(10);
    // (arguments, what stderr must hold): the argument named, and clap's tip.
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["check", "--confg", "edge.toml"],
            &[
                "unexpected argument '--confg'",
                "similar argument exists: '--config'",
            ],
        ),
        (
            &["chek", "-c", "edge.toml"],
            &[
                "unrecognized subcommand 'chek'",
                "similar subcommand exists: 'check'",
            ],
        ),
        (
            &["check", "-c"],
            &["a value is required for '--config <FILE>'"],
        ),
        (
            &["run", "--upstream-protocol", "h3"],
            &["invalid value 'h3'", "possible values: h1, h2"],
        ),
    ];
    for (args, expected) in cases {
        let out = run_edge(args, deadline).await?;
        assert_eq!(out.code, Some(2), "edge {args:?}:\n{}", out.stderr);
        for text in expected {
            assert!(
                out.stderr.contains(text),
                "edge {args:?} does not say {text:?}:\n{}",
                out.stderr
            );
        }
        assert!(out.stderr.contains("try '--help'"), "{}", out.stderr);
    }

    let out = run_edge(["check", "--help"], deadline).await?;
    out.ensure_success("edge check --help")?;
    let option = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("-c, --config <FILE>"))
        .unwrap_or_default();
    assert!(
        option.contains("Config file (TOML) to validate"),
        "edge check --help:\n{}",
        out.stdout
    );
    Ok(())
}
