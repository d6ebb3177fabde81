//! CPU cost of edge's response compression, per MiB of the origin's bytes, for
//! each encoding at edge's levels (`edge/src/body/encode.rs`): the real
//! `Encoded` body polled frame by frame, as a listener would.
//!
//! Measured as this thread's CPU time (`/proc/thread-self/schedstat`, in ns),
//! not wall time, so other work on a shared machine does not count.
//!
//! `compress-cpu [MIB] [FILE...]`: MIB (default 64) of input per encoding, cut
//! into 64 KiB frames from the FILEs concatenated (default: this workspace's
//! Rust sources and Markdown, ~1.5 MiB of code and prose, larger than every
//! window, so repeats of the corpus are not free matches).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use edge::body::encode::Encoded;
use edge::body::Body;
use edge::config::Encoding;
use http_body::{Body as _, Frame, SizeHint};

const FRAME: usize = 64 * 1024;

/// The corpus, repeated, in 64 KiB frames: `total` bytes in all.
struct Corpus {
    data: Bytes,
    at: usize,
    left: usize,
}

impl http_body::Body for Corpus {
    type Data = Bytes;
    type Error = upstream::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if self.at >= self.data.len() {
            self.at = 0;
        }
        let n = FRAME.min(self.left).min(self.data.len() - self.at);
        let chunk = self.data.slice(self.at..self.at + n);
        self.at += n;
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() && !name.starts_with('.') && name != "target" && name != "vendor" {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs" || e == "md") {
            out.push(p);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let mut files: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if files.is_empty() {
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            &mut files,
        );
    }
    let mut data = Vec::new();
    for f in &files {
        data.extend(std::fs::read(f)?);
    }
    anyhow::ensure!(!data.is_empty(), "empty corpus");
    let data = Bytes::from(data);
    let total = mib << 20;
    println!(
        "corpus {:.2} MiB from {} files; {mib} MiB per encoding in {} KiB frames",
        data.len() as f64 / (1 << 20) as f64,
        files.len(),
        FRAME / 1024
    );
    println!("| encoding | level | CPU µs per MiB in | MiB/s of CPU | ratio (in/out) |");
    println!("|---|---|---|---|---|");
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for (encoding, level) in [
        (Encoding::Gzip, "6"),
        (Encoding::Zstd, "3 (1 MiB window)"),
        (Encoding::Br, "4 (256 KiB window)"),
    ] {
        let corpus = Corpus {
            data: data.clone(),
            at: 0,
            left: total,
        };
        let mut body = Encoded::new(Body::boxed(corpus), encoding, None);
        let started = thread_cpu_ns();
        let mut out = 0usize;
        while let Poll::Ready(Some(frame)) = Pin::new(&mut body).poll_frame(&mut cx) {
            let frame = frame.map_err(|e| anyhow::anyhow!("{e}"))?;
            out += frame.data_ref().map_or(0, |d| d.len());
        }
        let ns = thread_cpu_ns() - started;
        let us_per_mib = ns as f64 / 1e3 / mib as f64;
        println!(
            "| {} | {level} | {us_per_mib:.0} | {:.0} | {:.2} |",
            encoding.token(),
            1e6 / us_per_mib,
            total as f64 / out as f64
        );
    }
    Ok(())
}
