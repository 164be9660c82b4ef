//! The upload body on its way to the multipart parser. Part headers may
//! carry a raw NUL byte in a file name (the corpus sends `photo.jpg\0.php`);
//! the parser refuses such a header outright, which would turn a harmless
//! odd name into a failed upload. This filter drops NUL bytes inside part
//! headers only, streaming, holding no more than a boundary's length of data.
//! (The name is cleaned again, fully, by `DisplayName`.)

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use memchr::memmem::Finder;

enum Region {
    /// Part data (or the preamble): pass through while looking for the delimiter.
    Data,
    /// Part headers, up to the blank line.
    Headers,
}

const MAX_HEADER_BLOCK: usize = 16 * 1024;

pub fn strip_nul_in_part_headers<S, E>(body: S, boundary: &str) -> impl Stream<Item = Result<Bytes, E>> + use<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let delimiter = format!("--{boundary}").into_bytes();
    let state = (body, BytesMut::new(), Region::Data, delimiter, false);
    futures::stream::unfold(state, |(mut body, mut pending, mut region, delimiter, mut ended)| async move {
        loop {
            let mut out = BytesMut::new();
            loop {
                match region {
                    Region::Data => match Finder::new(&delimiter).find(&pending) {
                        Some(at) => {
                            out.extend_from_slice(&pending.split_to(at + delimiter.len()));
                            region = Region::Headers;
                        }
                        None => {
                            // Keep a tail that could be the start of a delimiter.
                            let keep = if ended { 0 } else { delimiter.len().saturating_sub(1).min(pending.len()) };
                            let pass = pending.len() - keep;
                            out.extend_from_slice(&pending.split_to(pass));
                            break;
                        }
                    },
                    Region::Headers => match Finder::new(b"\r\n\r\n").find(&pending) {
                        Some(at) => {
                            let block = pending.split_to(at + 4);
                            out.extend(block.iter().copied().filter(|b| *b != 0));
                            region = Region::Data;
                        }
                        None if ended || pending.len() > MAX_HEADER_BLOCK => {
                            // Not a header block after all: let the parser judge it.
                            out.extend_from_slice(&pending.split_to(pending.len()));
                            break;
                        }
                        None => break,
                    },
                }
            }
            if !out.is_empty() {
                return Some((Ok(out.freeze()), (body, pending, region, delimiter, ended)));
            }
            if ended {
                return None;
            }
            match body.next().await {
                Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(e), (body, pending, region, delimiter, true))),
                None => ended = true,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8], piece: usize) -> Vec<u8> {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> =
            input.chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let out: Vec<_> = strip_nul_in_part_headers(futures::stream::iter(chunks), "XyZ").collect().await;
        out.into_iter().flat_map(|c| c.unwrap().to_vec()).collect()
    }

    #[tokio::test]
    async fn drops_nul_in_headers_only() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\0.php\"\r\n\r\nda\0ta\0\r\n--XyZ--\r\n";
        let want = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg.php\"\r\n\r\nda\0ta\0\r\n--XyZ--\r\n";
        for piece in [1, 2, 3, 5, 8, 1000] {
            assert_eq!(run(body, piece).await, want.to_vec(), "pieces of {piece}");
        }
    }
}
