//! An origin as a separate process, for tests that SIGKILL or SIGSTOP a backend.
//! `test-origin ADDR [DELAY_MS]`: HTTP/1.1 and h2c on ADDR; every answer's body is
//! the port it listens on (so a client sees which origin served it) and its
//! `x-origin` header the whole `IP:PORT` (for origins sharing a port on different
//! loopback addresses), after DELAY_MS (default 0; `/healthz` waits as long, so
//! the delay can stand for distance). Prints the bound address on
//! stdout, then one line `REQ METHOD X-REQUEST-ID` per request as it arrives.
//! `test-origin ADDR DELAY_MS HEALTH_FILE`: `/healthz` answers 200 while that
//! file says `ok` (or is missing) and 503 otherwise; it is not logged as a request.
//! While the file says `fail`, every request is answered 503 (a reachable but
//! sick backend).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Answer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>,
>;

fn futures_ready(resp: Response<Full<Bytes>>) -> Answer {
    Box::pin(std::future::ready(Ok(resp)))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let delay = Duration::from_millis(args.next().map_or(Ok(0), |s| s.parse())?);
    let health_file = args.next().map(std::path::PathBuf::from);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        let local = listener.local_addr()?;
        println!("{local}");
        let body = Bytes::from(local.port().to_string());
        let origin = http::HeaderValue::try_from(local.to_string())?;
        loop {
            let (stream, _) = listener.accept().await?;
            let body = body.clone();
            let origin = origin.clone();
            let health_file = health_file.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| -> Answer {
                    let body = body.clone();
                    let origin = origin.clone();
                    if req.uri().path() == "/healthz" {
                        let healthy = health_file.as_ref().is_none_or(|f| {
                            std::fs::read_to_string(f).map_or(true, |s| s.trim() == "ok")
                        });
                        let status = if healthy {
                            http::StatusCode::OK
                        } else {
                            http::StatusCode::SERVICE_UNAVAILABLE
                        };
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = status;
                        if delay.is_zero() {
                            return futures_ready(resp);
                        }
                        // The delay stands for distance too: probes wait like requests.
                        return Box::pin(async move {
                            tokio::time::sleep(delay).await;
                            Ok(resp)
                        });
                    }
                    let failing = health_file.as_ref().is_some_and(|f| {
                        std::fs::read_to_string(f).is_ok_and(|s| s.trim() == "fail")
                    });
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    println!("REQ {} {id}", req.method());
                    Box::pin(async move {
                        if !delay.is_zero() {
                            // The origin's behaviour under test: a slow backend.
                            tokio::time::sleep(delay).await;
                        }
                        let mut resp = Response::new(Full::new(body));
                        if failing {
                            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        resp.headers_mut().insert("x-origin", origin);
                        Ok::<_, Infallible>(resp)
                    })
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
