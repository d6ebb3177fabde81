//! `Prefer`: a request that names an endpoint by its stable id goes there while
//! it is available, and to the balancer's choice (no error) when it is not. Every
//! answer names the endpoint that served it (`ServedBy`), which is how a caller
//! learns the id to prefer next time (sticky sessions).

use std::collections::HashMap;

use bytes::Bytes;
use edge_tests::origin::Origin;
use http_body_util::Empty;
use upstream::{EndpointAddr, Pool, PoolConfig, Prefer, Protocol, ServedBy};

fn request(prefer: Option<u64>) -> http::Request<Empty<Bytes>> {
    let mut req = http::Request::new(Empty::new());
    if let Some(id) = prefer {
        req.extensions_mut().insert(Prefer(id));
    }
    req
}

async fn served_by(pool: &Pool<Empty<Bytes>>, prefer: Option<u64>) -> anyhow::Result<u64> {
    let resp = pool.send(request(prefer)).await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    resp.extensions()
        .get::<ServedBy>()
        .map(|s| s.id)
        .ok_or_else(|| anyhow::anyhow!("no ServedBy on the response"))
}

/// An address nothing listens on (bound, then released).
fn dead_endpoint() -> anyhow::Result<EndpointAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(EndpointAddr::parse(&format!("http://127.0.0.1:{port}"))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_endpoint_gets_every_request_while_it_is_available() -> anyhow::Result<()> {
    let origins = [
        Origin::start().await?,
        Origin::start().await?,
        Origin::start().await?,
    ];
    let endpoints = origins
        .iter()
        .map(|o| EndpointAddr::parse(&o.url()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = PoolConfig::new("sticky", endpoints);
    cfg.protocol = Protocol::H1;
    cfg.policy = upstream::Policy::RoundRobin;
    let pool = Pool::<Empty<Bytes>>::new(cfg)?;

    // Round robin visits all three: learn each one's id from its answers.
    let mut ids = HashMap::new();
    for _ in 0..3 {
        let before: Vec<u64> = origins.iter().map(Origin::requests).collect();
        let id = served_by(&pool, None).await?;
        let hit = (0..3)
            .find(|&i| origins[i].requests() > before[i])
            .ok_or_else(|| anyhow::anyhow!("no origin saw the request"))?;
        ids.insert(hit, id);
    }
    assert_eq!(ids.len(), 3, "three endpoints, three distinct ids: {ids:?}");

    // Preferring the second one sends all 30 requests there, past round robin.
    let before = origins[1].requests();
    for _ in 0..30 {
        assert_eq!(served_by(&pool, Some(ids[&1])).await?, ids[&1]);
    }
    assert_eq!(origins[1].requests() - before, 30);

    // An id that is no member (a removed endpoint) is ignored, not an error.
    for _ in 0..6 {
        let id = served_by(&pool, Some(0xdead_beef)).await?;
        assert!(ids.values().any(|&v| v == id));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_endpoint_that_is_down_is_passed_over_without_an_error() -> anyhow::Result<()> {
    let live = Origin::start().await?;
    let dead = dead_endpoint()?;
    let mut cfg = PoolConfig::new(
        "sticky-dead",
        vec![dead.clone(), EndpointAddr::parse(&live.url())?],
    );
    cfg.protocol = Protocol::H1;
    cfg.policy = upstream::Policy::RoundRobin;
    // No retry budget at all: the try after a pinned endpoint's failed connect
    // is free, so a burst of pinned users meeting a dead endpoint cannot drain
    // the budget (with the budget charged, the second request here failed).
    cfg.retry_budget = 0.0;
    cfg.retry_min_per_sec = 0;
    let pool = Pool::<Empty<Bytes>>::new(cfg)?;
    // Ids are the same hash of the address the pool uses.
    let id = |a: &EndpointAddr| upstream::hash_ring::key(a.to_string().as_bytes());
    let live_id = id(&EndpointAddr::parse(&live.url())?);
    let dead_id = id(&dead);
    assert_ne!(dead_id, live_id);
    assert_eq!(served_by(&pool, Some(live_id)).await?, live_id);
    for _ in 0..20 {
        assert_eq!(served_by(&pool, Some(dead_id)).await?, live_id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keys_place_requests_consistently_on_a_least_request_pool() -> anyhow::Result<()> {
    let origins = [
        Origin::start().await?,
        Origin::start().await?,
        Origin::start().await?,
    ];
    let endpoints = origins
        .iter()
        .map(|o| EndpointAddr::parse(&o.url()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = PoolConfig::new("sticky-hash", endpoints);
    cfg.protocol = Protocol::H1;
    cfg.hash_keys = true;
    let pool = Pool::<Empty<Bytes>>::new(cfg)?;
    let keyed = |k: u64| {
        let mut req = request(None);
        req.extensions_mut().insert(upstream::HashKey(k));
        req
    };
    let mut seen = std::collections::HashSet::new();
    for user in 0..40u64 {
        let key = upstream::hash_ring::key(&user.to_be_bytes());
        let first = pool.send(keyed(key)).await?;
        let first = first.extensions().get::<ServedBy>().map(|s| s.id);
        for _ in 0..5 {
            let again = pool.send(keyed(key)).await?;
            assert_eq!(
                again.extensions().get::<ServedBy>().map(|s| s.id),
                first,
                "user {user}"
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "40 keys spread over all three endpoints");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_outside_the_clients_region_holds_until_its_region_spills_over() -> anyhow::Result<()>
{
    // Region 0 (the client's): two live endpoints. Region 1: one live, two dead.
    let near = [Origin::start().await?, Origin::start().await?];
    let far = Origin::start().await?;
    let (d1, d2) = (dead_endpoint()?, dead_endpoint()?);
    let mut endpoints = near
        .iter()
        .map(|o| EndpointAddr::parse(&o.url()))
        .collect::<Result<Vec<_>, _>>()?;
    let far_addr = EndpointAddr::parse(&far.url())?;
    endpoints.extend([far_addr.clone(), d1.clone(), d2]);
    let mut cfg = PoolConfig::new("sticky-geo", endpoints);
    cfg.protocol = Protocol::H1;
    cfg.regions = vec![0, 0, 1, 1, 1];
    let pool = Pool::<Empty<Bytes>>::new(cfg)?;
    let id = |a: &EndpointAddr| upstream::hash_ring::key(a.to_string().as_bytes());
    let send = |prefer: u64| {
        let mut req = request(Some(prefer));
        req.extensions_mut().insert(upstream::Locality {
            order: std::sync::Arc::from([0, 1]),
        });
        pool.send(req)
    };
    let served = |resp: &http::Response<_>| resp.extensions().get::<ServedBy>().map(|s| s.id);

    // Region 1 has all three endpoints in rotation (breakers closed): the pin
    // on its live endpoint holds, though the client's own region is healthy.
    for _ in 0..10 {
        assert_eq!(served(&send(id(&far_addr)).await?), Some(id(&far_addr)));
    }
    // Pins on a dead endpoint open its breaker (each moves without an error)...
    for _ in 0..5 {
        let resp = send(id(&d1)).await?;
        assert_eq!(resp.status(), 200);
    }
    // ...and with 2 of 3 left region 1 is under the 0.71 threshold: spilling, so
    // the pin on its live endpoint gives way to the client's region.
    let near_ids: Vec<u64> = near
        .iter()
        .map(|o| EndpointAddr::parse(&o.url()).map(|a| id(&a)))
        .collect::<Result<_, _>>()?;
    for _ in 0..10 {
        let got = served(&send(id(&far_addr)).await?).unwrap_or_default();
        assert!(
            near_ids.contains(&got),
            "served by {got:x}, not the client's region"
        );
    }
    Ok(())
}
