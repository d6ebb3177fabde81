//! Where the HTTP/2 frames edge writes begin and end, so that the GOAWAY hyper
//! sends when a connection is judged abusive can say ENHANCE_YOUR_CALM (RFC
//! 9113 7) instead of NO_ERROR: hyper does not expose h2's abrupt shutdown.
//! `h2::Wire` walks every write through [`Frames`].

/// Frame boundaries in the bytes written to the client (RFC 9113 4.1: a 9-byte
/// header whose first three bytes are the payload length). Walking skips over
/// payloads, so it costs a few operations per frame, not per byte.
#[derive(Clone, Copy, Default)]
pub(super) struct Frames {
    /// The current frame's header, as written so far.
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame written so far, and still to come.
    at: usize,
    left: usize,
}

/// GOAWAY's frame type, and where its error code sits in the payload (after
/// the last stream id).
const GOAWAY: u8 = 0x7;
const GOAWAY_CODE: std::ops::Range<usize> = 4..8;
const ENHANCE_YOUR_CALM: u8 = 0xb;

impl Frames {
    /// Moves past `bytes`, calling `code(i, k)` for each byte `bytes[i]` that is
    /// byte `k` (0..4, big-endian) of a GOAWAY frame's error code.
    pub(super) fn walk(&mut self, bytes: &[u8], mut code: impl FnMut(usize, usize)) {
        let mut i = 0;
        while i < bytes.len() {
            if self.head_len < self.head.len() {
                let take = (self.head.len() - self.head_len).min(bytes.len() - i);
                self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[i..i + take]);
                self.head_len += take;
                i += take;
                if self.head_len == self.head.len() {
                    self.at = 0;
                    self.left = usize::from(self.head[0]) << 16
                        | usize::from(self.head[1]) << 8
                        | usize::from(self.head[2]);
                    if self.left == 0 {
                        self.head_len = 0;
                    }
                }
                continue;
            }
            let take = self.left.min(bytes.len() - i);
            if self.head[3] == GOAWAY {
                let from = GOAWAY_CODE.start.max(self.at);
                let to = GOAWAY_CODE.end.min(self.at + take);
                for p in from..to {
                    code(i + p - self.at, p - GOAWAY_CODE.start);
                }
            }
            self.at += take;
            self.left -= take;
            i += take;
            if self.left == 0 {
                self.head_len = 0;
            }
        }
    }

    /// A copy of `bytes` in which a GOAWAY's NO_ERROR reads ENHANCE_YOUR_CALM,
    /// or `None` when `bytes` holds no such code. Other codes (h2's own
    /// PROTOCOL_ERROR and the like) stay: only the low byte of a code is looked
    /// at, the three above it are zero for every code RFC 9113 defines.
    pub(super) fn calmed(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut copy: Option<Vec<u8>> = None;
        let mut walk = *self;
        walk.walk(bytes, |i, k| {
            if k == 3 && bytes[i] == 0 {
                copy.get_or_insert_with(|| bytes.to_vec())[i] = ENHANCE_YOUR_CALM;
            }
        });
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::{Frames, ENHANCE_YOUR_CALM};

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = u32::try_from(len).expect("a test frame").to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn goaway(code: u32) -> Vec<u8> {
        let mut p = 7u32.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        frame(0x7, &p)
    }

    /// Writes `wire` in pieces cut at `cuts`, patching each piece as the
    /// connection does, and returns what went out.
    fn send(wire: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Frames::default();
        let mut sent = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&wire.len())) {
            let piece = &wire[from..to];
            sent.extend_from_slice(&out.calmed(piece).unwrap_or_else(|| piece.to_vec()));
            out.walk(piece, |_, _| {});
            from = to;
        }
        sent
    }

    #[test]
    fn a_no_error_goaway_reads_enhance_your_calm_wherever_the_writes_split_it() {
        // SETTINGS, a DATA frame whose payload looks like a GOAWAY, then GOAWAY.
        let mut wire = frame(0x4, &[0, 3, 0, 0, 0, 100]);
        wire.extend(frame(0x0, &goaway(0)));
        let at = wire.len();
        wire.extend(goaway(0));
        let mut want = wire.clone();
        want[wire.len() - 1] = ENHANCE_YOUR_CALM;
        for cut in 0..=wire.len() {
            assert_eq!(send(&wire, &[cut]), want, "cut at {cut}");
        }
        for cut in at..wire.len() {
            assert_eq!(send(&wire, &[cut, cut + 1]), want, "byte {cut} alone");
        }
    }

    #[test]
    fn other_error_codes_and_other_frames_are_left_alone() {
        let mut wire = goaway(0x1);
        wire.extend(frame(0x3, &0u32.to_be_bytes()));
        wire.extend(frame(0x0, &[]));
        wire.extend(goaway(0x1));
        assert_eq!(send(&wire, &[5, 17]), wire);
        assert!(Frames::default().calmed(&wire).is_none());
    }
}
