//! A response body compressed as it streams: each data frame goes through the
//! encoder (async-compression's codec layer, `compression-codecs`) and comes
//! out in chunks of at most [`OUT_CHUNK`] bytes, so neither side is held whole.
//!
//! Flushing: whenever the inner body has nothing more to give right now
//! (`Pending`), what the encoder holds is flushed out, so a streamed response
//! (server-sent events, a long poll) reaches the client as the origin sends
//! it, not when a compression block fills. A body arriving faster than it is
//! sent is never flushed early: it compresses as one stream.
//!
//! Levels and windows, chosen for streaming at proxy speed: gzip 6 (nginx's
//! `gzip_comp_level` is 1, zlib's default and most CDNs' 6), zstd 3 (zstd's
//! and Caddy's default) with a 1 MiB window, brotli 4 (the usual dynamic
//! level, 4-5) with a 256 KiB window. The windows bound what each compressed
//! response holds: about 0.7 MiB for gzip, 2.7 for zstd, 3.7 for brotli,
//! whatever the body's length (RELIABILITY.md).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use compression_codecs::brotli::params::EncoderParams as BrotliParams;
use compression_codecs::core::util::{PartialBuffer, WriteBuffer};
use compression_codecs::core::Level;
use compression_codecs::zstd::params::CParameter;
use compression_codecs::{BrotliEncoder, EncodeV2, GzipEncoder, ZstdEncoder};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntCounter;
use upstream::BoxError;

use super::Body;
use crate::config::Encoding;

/// The most compressed bytes one frame carries.
pub const OUT_CHUNK: usize = 32 * 1024;

pub const GZIP_LEVEL: i32 = 6;
pub const ZSTD_LEVEL: i32 = 3;
pub const BROTLI_QUALITY: i32 = 4;
/// log2 of the zstd window (1 MiB).
pub const ZSTD_WINDOW_LOG: u32 = 20;
/// log2 of the brotli window (256 KiB). With a 1 MiB window the encoder's
/// memory grew with the body (4 MiB after 1 MiB in, 8 after 10; peak RSS +17
/// to +20 MiB over a 10 MiB body in `compression.rs`); with 256 KiB it stays
/// near 3.7 MiB. Quality 4 over 5: on this workspace's code and prose 5
/// compressed worse at this window (3.08 against 3.57) for 1.8x the CPU.
pub const BROTLI_WINDOW_LOG: i32 = 18;

/// A new encoder for `encoding` at edge's level.
pub fn encoder(encoding: Encoding) -> Box<dyn EncodeV2 + Send + Sync> {
    match encoding {
        Encoding::Gzip => Box::new(GzipEncoder::new(Level::Precise(GZIP_LEVEL).into())),
        Encoding::Zstd => Box::new(ZstdEncoder::new_with_params(
            ZSTD_LEVEL,
            &[CParameter::window_log(ZSTD_WINDOW_LOG)],
        )),
        Encoding::Br => Box::new(BrotliEncoder::new(
            BrotliParams::default()
                .quality(Level::Precise(BROTLI_QUALITY))
                .window_size(BROTLI_WINDOW_LOG),
        )),
    }
}

/// What the body counts as it goes: uncompressed bytes in, compressed out.
#[derive(Clone)]
pub struct Tally {
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the inner body.
    Reading,
    /// The inner body has nothing now: the encoder is flushing what it holds.
    Flushing,
    /// The inner body ended; the encoder's end is being written.
    Finishing,
    /// Everything written; trailers, if the inner body had any, go last.
    Done,
}

type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// `inner`, compressed.
pub struct Encoded {
    inner: Body,
    encoder: Box<dyn EncodeV2 + Send + Sync>,
    /// What is left of the inner frame being compressed.
    input: Bytes,
    /// Compressed bytes not yet sent: `out[..filled]`.
    out: Box<[u8]>,
    filled: usize,
    /// Input went into the encoder since its last flush.
    unflushed: bool,
    state: State,
    trailers: Option<http::HeaderMap>,
    tally: Option<Tally>,
}

impl Encoded {
    pub fn new(inner: Body, encoding: Encoding, tally: Option<Tally>) -> Self {
        Self {
            inner,
            encoder: encoder(encoding),
            input: Bytes::new(),
            out: vec![0; OUT_CHUNK].into_boxed_slice(),
            filled: 0,
            unflushed: false,
            state: State::Reading,
            trailers: None,
            tally,
        }
    }

    /// The compressed bytes so far as one frame, counted.
    fn emit(&mut self) -> Polled {
        let chunk = Bytes::copy_from_slice(&self.out[..self.filled]);
        self.filled = 0;
        if let Some(t) = &self.tally {
            t.bytes_out.inc_by(chunk.len() as u64);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    /// Compresses what it can of `input` into the room left in `out`.
    fn encode(&mut self) -> std::io::Result<()> {
        let mut input = PartialBuffer::new(&self.input[..]);
        let mut out = WriteBuffer::new_initialized(&mut self.out[self.filled..]);
        self.encoder.encode(&mut input, &mut out)?;
        let (used, wrote) = (input.written_len(), out.written_len());
        self.filled += wrote;
        bytes::Buf::advance(&mut self.input, used);
        self.unflushed = true;
        if used == 0 && wrote == 0 {
            return Err(std::io::Error::other("the encoder took no input"));
        }
        Ok(())
    }

    /// Flushes (`finish` false) or ends the stream into `out`; true when done.
    fn drain(&mut self, finish: bool) -> std::io::Result<bool> {
        let mut out = WriteBuffer::new_initialized(&mut self.out[self.filled..]);
        let done = if finish {
            self.encoder.finish(&mut out)?
        } else {
            self.encoder.flush(&mut out)?
        };
        let wrote = out.written_len();
        self.filled += wrote;
        if !done && wrote == 0 && self.filled < OUT_CHUNK {
            return Err(std::io::Error::other("the encoder wrote nothing"));
        }
        Ok(done)
    }

    fn step(&mut self, cx: &mut Context<'_>) -> std::io::Result<Option<Polled>> {
        if self.filled == OUT_CHUNK {
            return Ok(Some(self.emit()));
        }
        match self.state {
            State::Reading if !self.input.is_empty() => self.encode()?,
            State::Reading => match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(t) = &self.tally {
                            t.bytes_in.inc_by(data.len() as u64);
                        }
                        self.input = data;
                    }
                    Err(frame) => self.trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(e))) => {
                    self.state = State::Done;
                    return Ok(Some(Poll::Ready(Some(Err(e)))));
                }
                Poll::Ready(None) => self.state = State::Finishing,
                Poll::Pending if self.unflushed => self.state = State::Flushing,
                Poll::Pending if self.filled > 0 => return Ok(Some(self.emit())),
                Poll::Pending => return Ok(Some(Poll::Pending)),
            },
            State::Flushing => {
                if self.drain(false)? {
                    self.unflushed = false;
                    self.state = State::Reading;
                    if self.filled > 0 {
                        return Ok(Some(self.emit()));
                    }
                }
            }
            State::Finishing => {
                if self.drain(true)? {
                    self.state = State::Done;
                }
            }
            State::Done if self.filled > 0 => return Ok(Some(self.emit())),
            State::Done => {
                let trailers = self.trailers.take().map(|t| Ok(Frame::trailers(t)));
                return Ok(Some(Poll::Ready(trailers)));
            }
        }
        Ok(None)
    }
}

impl HttpBody for Encoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        loop {
            match this.step(cx) {
                Ok(Some(polled)) => return polled,
                Ok(None) => {}
                Err(e) => {
                    this.state = State::Done;
                    this.filled = 0;
                    this.trailers = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.filled == 0 && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
