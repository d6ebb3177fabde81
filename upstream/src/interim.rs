//! Interim (1xx) responses from a backend, such as 103 Early Hints: the
//! pipeline puts an [`Interim`] in the upstream request's extensions, and each
//! exchange (HTTP/1.1, HTTP/2 or HTTP/3) hands it every 1xx that arrives
//! before the final response (over HTTP/1.1 a 101 is an upgrade's final one). Which of them reach the client, and with
//! which fields, is the caller's business.

use std::fmt;
use std::sync::Arc;

use http::{Request, Response};

/// Where a request's interim responses go (a request extension).
#[derive(Clone)]
pub struct Interim(Arc<dyn Fn(Response<()>) + Send + Sync>);

impl Interim {
    pub fn new(sink: impl Fn(Response<()>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(sink))
    }

    /// Hands one interim response on.
    pub fn send(&self, res: Response<()>) {
        (self.0)(res)
    }

    /// Gives hyper's client (HTTP/1.1 and, patched, HTTP/2) the request's sink,
    /// if it has one.
    pub(crate) fn bridge<B>(req: &mut Request<B>) {
        let Some(sink) = req.extensions().get::<Interim>().cloned() else {
            return;
        };
        hyper::ext::on_informational(req, move |res| {
            let mut interim = Response::new(());
            *interim.status_mut() = res.status();
            *interim.headers_mut() = res.headers().clone();
            sink.send(interim);
        });
    }
}

impl fmt::Debug for Interim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Interim")
    }
}
