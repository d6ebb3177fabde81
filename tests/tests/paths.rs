//! Route-prefix ACL bypass attempts against `client.normalize_path`: the path
//! a route matches on is the path its pool is sent. `/public` goes to one
//! origin, `/admin` to another; no spelling of `/admin` may reach the public
//! origin, and what each origin receives is already normalised.

use edge_tests::scripted::{Reply, Scripted};
use edge_tests::{raw_http, Edge, EdgeConfig, PoolConfig, RouteConfig};

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn edge(
    public: &Scripted,
    admin: &Scripted,
    client: &[(&str, &str)],
) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(public.url()).protocol("h1");
    config.pools.push(PoolConfig {
        name: "admin".to_owned(),
        endpoints: vec![admin.url()],
        settings: vec![("protocol".to_owned(), "\"h1\"".to_owned())],
    });
    let route = |prefix: &str, pool: &str| RouteConfig {
        host: None,
        path_prefix: prefix.to_owned(),
        pool: pool.to_owned(),
    };
    config.routes = vec![route("/public", "default"), route("/admin", "admin")];
    for (k, v) in client {
        config = config.client_setting(k, v);
    }
    Edge::start(&config).await
}

async fn get(edge: &Edge, target: &str) -> anyhow::Result<u16> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n");
    Ok(status_of(&raw_http(edge.http()?, &request).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_admin_reaches_the_public_pool() -> anyhow::Result<()> {
    let public = Scripted::start(|_| Reply::ok(&[], "public")).await?;
    let admin = Scripted::start(|_| Reply::ok(&[], "admin")).await?;
    let edge = edge(&public, &admin, &[]).await?;
    let attempts = [
        "/public/../admin",
        "/%2e%2e/admin",
        "//admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/./../admin",
        "/public//../../admin",
    ];
    for target in attempts {
        assert_eq!(get(&edge, target).await?, 200, "{target}");
    }
    let to_public: Vec<String> = public.seen().into_iter().map(|s| s.target).collect();
    assert!(
        to_public.is_empty(),
        "the public pool was sent {to_public:?}"
    );
    let to_admin: Vec<String> = admin.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        to_admin,
        vec!["/admin"; attempts.len()],
        "each judged as /admin"
    );

    // Encoded separators and NUL are refused before any routing.
    for target in ["/public/..%2Fadmin", "/public/..%5Cadmin", "/public/%00/x"] {
        assert_eq!(get(&edge, target).await?, 400, "{target}");
    }
    assert_eq!(public.seen().len(), 0);
    assert_eq!(admin.seen().len(), attempts.len());
    // A clean public path is untouched, query included.
    assert_eq!(get(&edge, "/public/a/b?x=/../y").await?, 200);
    let last = public.seen().pop().map(|s| s.target);
    assert_eq!(last.as_deref(), Some("/public/a/b?x=/../y"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalisation_off_forwards_the_path_byte_for_byte() -> anyhow::Result<()> {
    let public = Scripted::start(|_| Reply::ok(&[], "public")).await?;
    let admin = Scripted::start(|_| Reply::ok(&[], "admin")).await?;
    let edge = edge(&public, &admin, &[("normalize_path", "false")]).await?;
    for target in ["/public/%2e%2e/x", "/public//x", "/public/a%2Fb"] {
        assert_eq!(get(&edge, target).await?, 200, "{target}");
    }
    let seen: Vec<String> = public.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, ["/public/%2e%2e/x", "/public//x", "/public/a%2Fb"]);
    Ok(())
}
