//! The upload body on its way to the multipart parser, through a guard that
//! holds it to the limits a stranger's request must keep. The parser
//! (multer) buffers whatever comes before the first boundary and a part's
//! headers until they end, so without this a body that never reaches a
//! boundary is held whole in memory. The guard streams, holding at most a
//! part-header block (16 KiB by default) of the body, and stops the body with a
//! [`BodyError`] when:
//!
//! - more than `max_preamble` bytes come before the first boundary;
//! - a part's headers run past `max_part_headers` bytes;
//! - the form has more than `max_parts` parts;
//! - the body passes `max_body` bytes (chunked bodies too);
//! - the client sends nothing for `idle`, or averages less than `min_rate`
//!   bytes a second after the first [`RATE_GRACE`].
//!
//! It also drops NUL bytes inside part headers: the corpus sends
//! `photo.jpg\0.php` as a file name, which the parser would refuse outright,
//! turning a harmless odd name into a failed upload. (The name is cleaned
//! again, fully, by `DisplayName`.)

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use memchr::memmem::Finder;

/// How long a body may start slowly before the minimum rate applies.
pub const RATE_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_body: u64,
    /// Bytes allowed before the first boundary (browsers send none).
    pub max_preamble: usize,
    /// Bytes of one part's headers at most.
    pub max_part_headers: usize,
    pub max_parts: usize,
    pub idle: Duration,
    pub min_rate: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the connection failed while the upload was sent: {0}")]
    Transport(#[source] warp::Error),
    #[error("the form did not start with its boundary")]
    Preamble,
    #[error("a part's headers were longer than {0} bytes")]
    PartHeaders(usize),
    #[error("the form had more than {0} parts")]
    TooManyParts(usize),
    #[error("the body passed {0} bytes")]
    TooLarge(u64),
    #[error("the client sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("the client sent fewer than {0} bytes a second")]
    TooSlow(u64),
}

enum Region {
    /// Before the first boundary.
    Preamble,
    /// Part data: pass through while looking for the delimiter.
    Data,
    /// Part headers, up to the blank line.
    Headers,
}

struct Guard<S> {
    body: S,
    pending: BytesMut,
    region: Region,
    delimiter: Vec<u8>,
    ended: bool,
    failed: bool,
    parts: usize,
    seen: u64,
    started: Instant,
    limits: BodyLimits,
}

pub fn guard<S>(body: S, boundary: &str, limits: BodyLimits) -> impl Stream<Item = Result<Bytes, BodyError>> + use<S>
where
    S: Stream<Item = Result<Bytes, warp::Error>> + Unpin,
{
    let state = Guard {
        body,
        pending: BytesMut::new(),
        region: Region::Preamble,
        delimiter: format!("--{boundary}").into_bytes(),
        ended: false,
        failed: false,
        parts: 0,
        seen: 0,
        started: Instant::now(),
        limits,
    };
    futures::stream::unfold(state, |mut g| async move {
        if g.failed {
            return None;
        }
        loop {
            let out = match g.split_ready() {
                Ok(out) => out,
                Err(e) => {
                    g.failed = true;
                    return Some((Err(e), g));
                }
            };
            if !out.is_empty() {
                return Some((Ok(out.freeze()), g));
            }
            if g.ended {
                return None;
            }
            match g.next_chunk().await {
                Ok(Some(chunk)) => g.pending.extend_from_slice(&chunk),
                Ok(None) => g.ended = true,
                Err(e) => {
                    g.failed = true;
                    return Some((Err(e), g));
                }
            }
        }
    })
}

impl<S> Guard<S>
where
    S: Stream<Item = Result<Bytes, warp::Error>> + Unpin,
{
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        let chunk = match tokio::time::timeout(self.limits.idle, self.body.next()).await {
            Err(_) => return Err(BodyError::Stalled(self.limits.idle)),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(BodyError::Transport(e)),
            Ok(Some(Ok(c))) => c,
        };
        self.seen += chunk.len() as u64;
        if self.seen > self.limits.max_body {
            return Err(BodyError::TooLarge(self.limits.max_body));
        }
        let elapsed = self.started.elapsed();
        if elapsed > RATE_GRACE && (self.seen as f64) < self.limits.min_rate as f64 * elapsed.as_secs_f64() {
            return Err(BodyError::TooSlow(self.limits.min_rate));
        }
        Ok(Some(chunk))
    }

    fn found_delimiter(&mut self) -> Result<(), BodyError> {
        self.parts += 1;
        // The closing delimiter counts too.
        if self.parts > self.limits.max_parts + 1 {
            return Err(BodyError::TooManyParts(self.limits.max_parts));
        }
        self.region = Region::Headers;
        Ok(())
    }

    /// What of the pending bytes can go to the parser now.
    fn split_ready(&mut self) -> Result<BytesMut, BodyError> {
        let mut out = BytesMut::new();
        loop {
            match self.region {
                Region::Preamble | Region::Data => match Finder::new(&self.delimiter).find(&self.pending) {
                    Some(at) => {
                        if matches!(self.region, Region::Preamble) && at > self.limits.max_preamble {
                            return Err(BodyError::Preamble);
                        }
                        out.extend_from_slice(&self.pending.split_to(at + self.delimiter.len()));
                        self.found_delimiter()?;
                    }
                    None => {
                        if matches!(self.region, Region::Preamble) {
                            if self.pending.len() > self.limits.max_preamble + self.delimiter.len() {
                                return Err(BodyError::Preamble);
                            }
                            if !self.ended {
                                break;
                            }
                        }
                        // Keep a tail that could be the start of a delimiter.
                        let keep =
                            if self.ended { 0 } else { self.delimiter.len().saturating_sub(1).min(self.pending.len()) };
                        let pass = self.pending.len() - keep;
                        out.extend_from_slice(&self.pending.split_to(pass));
                        break;
                    }
                },
                Region::Headers => match Finder::new(b"\r\n\r\n").find(&self.pending) {
                    Some(at) => {
                        if at > self.limits.max_part_headers {
                            return Err(BodyError::PartHeaders(self.limits.max_part_headers));
                        }
                        let block = self.pending.split_to(at + 4);
                        out.extend(block.iter().copied().filter(|b| *b != 0));
                        self.region = Region::Data;
                    }
                    None if self.pending.len() > self.limits.max_part_headers => {
                        return Err(BodyError::PartHeaders(self.limits.max_part_headers));
                    }
                    None if self.ended => {
                        // The closing delimiter's `--` and CRLF, or a cut-off form: the parser judges.
                        out.extend_from_slice(&self.pending.split_to(self.pending.len()));
                        break;
                    }
                    None => break,
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BodyLimits = BodyLimits {
        max_body: 1 << 20,
        max_preamble: 4096,
        max_part_headers: 16 * 1024,
        max_parts: 4,
        idle: Duration::from_secs(5),
        min_rate: 0,
    };

    async fn run(input: &[u8], piece: usize, limits: BodyLimits) -> Result<Vec<u8>, BodyError> {
        // warp::Error cannot be made outside warp; a body that never fails is enough here.
        let chunks: Vec<Result<Bytes, warp::Error>> =
            input.chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut out = Vec::new();
        let mut s = Box::pin(guard(futures::stream::iter(chunks), "XyZ", limits));
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn drops_nul_in_headers_only() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\0.php\"\r\n\r\nda\0ta\0\r\n--XyZ--\r\n";
        let want = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg.php\"\r\n\r\nda\0ta\0\r\n--XyZ--\r\n";
        for piece in [1, 2, 3, 5, 8, 1000] {
            assert_eq!(run(body, piece, LIMITS).await.unwrap(), want.to_vec(), "pieces of {piece}");
        }
    }

    #[tokio::test]
    async fn refuses_a_body_that_never_reaches_a_boundary() {
        let body = vec![b'a'; 64 * 1024];
        assert!(matches!(run(&body, 1000, LIMITS).await, Err(BodyError::Preamble)));
    }

    #[tokio::test]
    async fn refuses_part_headers_that_never_end() {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"".to_vec();
        body.extend(std::iter::repeat_n(b'a', 64 * 1024));
        assert!(matches!(run(&body, 1000, LIMITS).await, Err(BodyError::PartHeaders(_))));
    }

    #[tokio::test]
    async fn refuses_too_many_parts_and_too_large_bodies() {
        let part = b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n";
        let body: Vec<u8> = part.iter().copied().cycle().take(part.len() * 10).collect();
        assert!(matches!(run(&body, 100, LIMITS).await, Err(BodyError::TooManyParts(4))));
        let mut big = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2 << 20));
        assert!(matches!(run(&big, 64 * 1024, LIMITS).await, Err(BodyError::TooLarge(_))));
    }
}
