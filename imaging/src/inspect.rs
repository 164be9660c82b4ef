//! The upload check: a streaming inspector fed the upload's bytes as they
//! arrive. It decides the format from the magic bytes (never the name or the
//! declared type), reads width and height from the header and refuses a
//! picture over the pixel limit before anything is decoded, and walks the
//! file's structure (JPEG segments and Huffman tables, PNG chunks and their
//! checksums, GIF blocks and frames, WebP chunks) in constant memory, so a
//! truncated, malformed or hostile file is refused with a reason a person can
//! read. What only a decoder can find (damaged JPEG scan data) is left to
//! [`super::verify`].
//!
//! It is as lenient as browsers where that is safe: EXIF that is damaged,
//! loops or holds an orientation outside 1–8 is read as upright (and noted
//! in the log); a JPEG APP segment whose length is off is skipped the way
//! libjpeg resynchronises; after a JPEG's end the file may hold padding,
//! the further pictures of a Multi-Picture Format index, or the video a
//! motion photo's XMP announces ([`super::trailer`]). Anything else after
//! the picture is refused. What the worker flips and the server serves is
//! the still picture alone ([`still_picture`]): those extras cut away.

use std::borrow::Cow;
use std::ops::Range;

use crc32fast::Hasher;

use super::exif;
use super::orient::Turn;
use super::trailer::{self, MotionVideo};
use flipstack_domain::domain::ImageFormat;

/// What the inspector enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_pixels: u64,
    pub max_frames: u32,
    /// Frames × canvas area of an animation.
    pub max_total_pixels: u64,
    pub max_scans: u32,
    /// JPEG comments (COM) carried into the still picture, in all; further
    /// comments are dropped from it (not refused: the upload size bounds them).
    pub max_comment_bytes: u64,
}

impl Limits {
    pub fn new(max_pixels: u64, max_frames: u32) -> Limits {
        Limits {
            max_pixels,
            max_frames,
            max_total_pixels: max_pixels.saturating_mul(20),
            max_scans: 100,
            max_comment_bytes: 64 * 1024,
        }
    }
}

/// Why a file is refused. Each says what was wrong in words for the person
/// who uploaded it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("The file is empty. Choose a picture and try again.")]
    Empty,
    #[error("This file is not a picture flipstack can read{}. Upload a JPEG, PNG, GIF, WebP, HEIC or AVIF picture.", looks_like.map(|l| format!(" (it looks like {l})")).unwrap_or_default())]
    UnknownFormat { looks_like: Option<&'static str> },
    #[error("{0} pictures are not accepted. Upload a JPEG, PNG, GIF, WebP, HEIC or AVIF picture.")]
    Unsupported(&'static str),
    #[error(
        "Animated {0} pictures are not accepted: flipstack flips still pictures and animated GIFs. Save it as a GIF, or its first frame as a picture, and upload that."
    )]
    Animated(&'static str),
    #[error("The picture is {width}×{height} pixels ({}), over the limit of {}. Make it smaller and try again.", megapixels(*width as u64 * *height as u64), megapixels(*limit))]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("The animation has {frames} frames or more; the limit is {limit}.")]
    TooManyFrames { frames: u32, limit: u32 },
    #[error("The picture has a width or height of zero.")]
    ZeroSize,
    #[error("The file ends before the picture does: it was cut off. Upload the whole file.")]
    Truncated,
    #[error("The {format} file is damaged: {detail}.")]
    Corrupt { format: &'static str, detail: String },
    #[error(
        "The file has {0} bytes of other data after the end of the picture (for example a hidden archive or a web page). Save it as a plain picture and upload it again."
    )]
    TrailingData(u64),
    #[error(
        "This server cannot read {format} pictures at the moment (its libheif library is missing). Upload a JPEG, PNG, GIF or WebP picture."
    )]
    NoDecoder { format: &'static str },
    #[error("The file name says {name_says} but the file is a {content_is} picture. Rename it to end in .{} and try again.", content_is.to_ascii_lowercase().replace("jpeg", "jpg"))]
    NameMismatch { name_says: &'static str, content_is: &'static str },
}

fn megapixels(p: u64) -> String {
    format!("{:.1} megapixels", p as f64 / 1e6)
}

/// The file name's extension must not contradict the content: a PNG named
/// `.jpg` is refused with a clear reason rather than served under a name
/// that lies. Names without a picture extension are fine (the name is only
/// ever display text).
pub fn check_name(name: &str, format: ImageFormat) -> Result<(), Rejection> {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let says = match ext.as_str() {
        "jpg" | "jpeg" | "jpe" | "jfif" => ImageFormat::Jpeg,
        "png" => ImageFormat::Png,
        "gif" => ImageFormat::Gif,
        "webp" => ImageFormat::Webp,
        "heic" | "heif" | "hif" => ImageFormat::Heic,
        "avif" => ImageFormat::Avif,
        _ => return Ok(()),
    };
    if says == format {
        Ok(())
    } else {
        Err(Rejection::NameMismatch { name_says: says.display_name(), content_is: format.display_name() })
    }
}

impl Rejection {
    /// The HTTP status this rejection is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Empty => 400,
            Rejection::UnknownFormat { .. }
            | Rejection::Unsupported(_)
            | Rejection::Animated(_)
            | Rejection::NoDecoder { .. } => 415,
            Rejection::TooManyPixels { .. } => 413,
            _ => 422,
        }
    }

    /// A short label for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::UnknownFormat { .. } => "unknown_format",
            Rejection::Unsupported(_) => "unsupported_format",
            Rejection::Animated(_) => "animated",
            Rejection::TooManyPixels { .. } => "too_many_pixels",
            Rejection::TooManyFrames { .. } => "too_many_frames",
            Rejection::ZeroSize => "zero_size",
            Rejection::Truncated => "truncated",
            Rejection::Corrupt { .. } => "corrupt",
            Rejection::TrailingData(_) => "trailing_data",
            Rejection::NameMismatch { .. } => "name_mismatch",
            Rejection::NoDecoder { .. } => "no_decoder",
        }
    }
}

/// What the inspector learnt about an acceptable picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    /// As stored (before any EXIF orientation).
    pub width: u32,
    pub height: u32,
    pub orientation: exif::Orientation,
    pub frames: u32,
    /// The file holds more than its still picture (data after the end, a
    /// skipped segment, unusable EXIF, an MPF index): [`still_picture`]
    /// gives the picture alone.
    pub needs_repair: bool,
}

/// What to cut from an accepted file to get its still picture: the bytes
/// after the picture's end, skipped or stale segments, and an unusable EXIF
/// block (its orientation set to 1 where it can be, else dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Where the picture ends (`None`: at the end of the file).
    pub end: Option<u64>,
    /// Byte ranges (whole segments) to leave out.
    pub drop: Vec<Range<u64>>,
    /// An EXIF segment read as upright: (the whole segment, its TIFF data).
    pub bad_exif: Option<(Range<u64>, Range<u64>)>,
}

impl Repairs {
    pub fn is_empty(&self) -> bool {
        self.end.is_none() && self.drop.is_empty() && self.bad_exif.is_none()
    }

    /// The still picture of `bytes` (the file these repairs were found in).
    pub fn apply<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        if self.is_empty() {
            return Cow::Borrowed(bytes);
        }
        let end = self.end.map_or(bytes.len(), |e| (e as usize).min(bytes.len()));
        let mut out = bytes[..end].to_vec();
        let mut drop = self.drop.clone();
        if let Some((segment, tiff)) = &self.bad_exif {
            let tiff = tiff.start as usize..(tiff.end as usize).min(out.len());
            // Orientation 0 or 9999: say 1. A block that cannot be walked goes.
            if out.get_mut(tiff).is_none_or(|t| exif::rewrite_orientation(t, 1, false).is_err()) {
                drop.push(segment.clone());
            }
        }
        drop.sort_by_key(|r| r.start);
        let mut kept = Vec::with_capacity(out.len());
        let mut at = 0usize;
        for r in drop {
            let (start, stop) = ((r.start as usize).clamp(at, out.len()), (r.end as usize).min(out.len()));
            kept.extend_from_slice(&out[at..start]);
            at = at.max(stop);
        }
        kept.extend_from_slice(&out[at.min(out.len())..]);
        out = kept;
        Cow::Owned(out)
    }
}

/// Inspects a whole file in memory and returns its facts and its still
/// picture: what the worker flips and [`super::verify`] decodes.
pub fn still_picture<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(ImageInfo, Cow<'a, [u8]>), Rejection> {
    let mut i = Inspector::new(*limits);
    i.feed(bytes)?;
    let (info, repairs) = i.finish_with_repairs()?;
    Ok((info, repairs.apply(bytes)))
}

impl ImageInfo {
    /// Width and height as the picture is displayed (orientations 5–8 turn it).
    pub fn displayed_size(&self) -> (u32, u32) {
        if self.orientation >= 5 { (self.height, self.width) } else { (self.width, self.height) }
    }
}

/// What a format parser wants next from the stream.
enum Want {
    /// This many bytes, handed to the parser in one piece.
    Bytes(usize),
    /// Pass over this many bytes (feeding them to the chunk checksum when asked).
    Skip(u64, bool),
    /// JPEG entropy-coded data: read until a marker.
    Entropy,
    /// The picture is over; what follows is trailing data.
    End,
}

enum Parser {
    /// Not enough bytes yet to tell the format.
    Sniffing,
    Jpeg(JpegParser),
    Png(PngParser),
    Gif(GifParser),
    Webp(WebpParser),
    Heif(HeifParser),
}

pub struct Inspector {
    limits: Limits,
    parser: Parser,
    want: Want,
    buf: Vec<u8>,
    crc: Option<Hasher>,
    total: u64,
    /// Bytes the parsers have consumed: the position of the next one.
    consumed: u64,
    trailing_other: u64,
    /// A further picture of an MPF file, being read after the first.
    nested: Option<JpegParser>,
    /// A motion photo's video, being read after the picture.
    video: Option<VideoParser>,
    /// Entropy scan: the previous byte was 0xFF.
    entropy_ff: bool,
    info: Option<(ImageFormat, u32, u32)>,
    failed: Option<Rejection>,
}

const SNIFF_BYTES: usize = 16;

impl Inspector {
    pub fn new(limits: Limits) -> Inspector {
        Inspector {
            limits,
            parser: Parser::Sniffing,
            want: Want::Bytes(SNIFF_BYTES),
            buf: Vec::with_capacity(64),
            crc: None,
            total: 0,
            consumed: 0,
            trailing_other: 0,
            nested: None,
            video: None,
            entropy_ff: false,
            info: None,
            failed: None,
        }
    }

    /// The format and stored size, as soon as the header has shown them.
    pub fn header(&self) -> Option<(ImageFormat, u32, u32)> {
        self.info
    }

    pub fn bytes_seen(&self) -> u64 {
        self.total
    }

    /// Feeds the next piece of the file; an error means refuse it now.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Rejection> {
        if let Some(r) = &self.failed {
            return Err(r.clone());
        }
        self.total += data.len() as u64;
        let result: Result<(), Rejection> = (|| {
            while !data.is_empty() {
                match &mut self.want {
                    Want::Bytes(n) => {
                        let take = (*n - self.buf.len()).min(data.len());
                        self.buf.extend_from_slice(&data[..take]);
                        data = &data[take..];
                        self.consumed += take as u64;
                        if self.buf.len() == *n {
                            let chunk = std::mem::take(&mut self.buf);
                            self.want = self.step(&chunk)?;
                        }
                    }
                    Want::Skip(left, with_crc) => {
                        let take = (*left).min(data.len() as u64) as usize;
                        if *with_crc && let Some(h) = &mut self.crc {
                            h.update(&data[..take]);
                        }
                        *left -= take as u64;
                        data = &data[take..];
                        self.consumed += take as u64;
                        if *left == 0 {
                            self.want = self.after_skip()?;
                        }
                    }
                    Want::Entropy => {
                        // Markers inside scan data: FF 00 is a stuffed byte, FF D0–D7
                        // restart markers, FF FF fill; anything else ends the scan.
                        let mut i = 0;
                        let mut marker = None;
                        while i < data.len() {
                            if !self.entropy_ff {
                                // Scan data is mostly bytes other than 0xFF:
                                // jump to the next one.
                                match memchr::memchr(0xFF, &data[i..]) {
                                    Some(at) => i += at,
                                    None => {
                                        i = data.len();
                                        break;
                                    }
                                }
                            }
                            let b = data[i];
                            i += 1;
                            if self.entropy_ff {
                                match b {
                                    0x00 | 0xD0..=0xD7 => self.entropy_ff = false,
                                    0xFF => {}
                                    m => {
                                        self.entropy_ff = false;
                                        marker = Some(m);
                                        break;
                                    }
                                }
                            } else if b == 0xFF {
                                self.entropy_ff = true;
                            }
                        }
                        data = &data[i..];
                        self.consumed += i as u64;
                        if let Some(m) = marker {
                            let limits = self.limits;
                            // The marker's 0xFF is the byte before its code.
                            let at = self.consumed - 2;
                            let j = self.jpeg()?;
                            j.seg_start = at;
                            self.want = j.marker(m, &limits)?;
                        }
                    }
                    Want::End => {
                        let used = self.after_end(data);
                        data = &data[used..];
                        self.consumed += used as u64;
                    }
                }
            }
            Ok(())
        })();
        if let Err(r) = &result {
            self.failed = Some(r.clone());
        }
        result
    }

    /// Call after the last byte: the picture's facts, or why it is refused.
    pub fn finish(self) -> Result<ImageInfo, Rejection> {
        self.finish_with_repairs().map(|(info, _)| info)
    }

    /// What follows the picture's end: padding, an MPF index's further
    /// pictures where it says they start, a motion photo's video; anything
    /// else is counted as other data. Returns how many bytes it took before
    /// handing over to a further picture's or the video's parser.
    fn after_end(&mut self, data: &[u8]) -> usize {
        if let Some(nested) = self.nested.take() {
            // A further picture ended: its facts are not the upload's.
            drop(nested);
        }
        let Parser::Jpeg(j) = &mut self.parser else {
            // Zero or 0xFF padding after the end is common and harmless.
            self.trailing_other += data.iter().filter(|b| **b != 0 && **b != 0xFF).count() as u64;
            return data.len();
        };
        if j.repairs.end.is_none() {
            j.repairs.end = Some(self.consumed);
        }
        for (i, &b) in data.iter().enumerate() {
            let at = self.consumed + i as u64;
            if self.video.is_none() && j.mpf_starts.contains(&at) {
                self.nested = Some(JpegParser { state: JpegState::Soi, nested: true, ..JpegParser::default() });
                self.want = Want::Bytes(2);
                return i;
            }
            if b == 0 || b == 0xFF {
                j.zeros_before = if b == 0 { j.zeros_before + 1 } else { 0 };
                continue;
            }
            if let Some(motion) = j.motion
                && self.video.is_none()
                && j.zeros_before >= 3
            {
                // A video's first box is `ftyp`, a few dozen bytes: its size
                // starts with three zero bytes, already passed as padding.
                self.video = Some(VideoParser { start: at - 3, motion, ..VideoParser::default() });
                self.buf = vec![0, 0, 0];
                self.want = Want::Bytes(8);
                return i;
            }
            self.trailing_other += 1;
        }
        data.len()
    }

    /// As [`Self::finish`], with what to cut to get the still picture.
    pub fn finish_with_repairs(mut self) -> Result<(ImageInfo, Repairs), Rejection> {
        if let Some(r) = self.failed.take() {
            return Err(r);
        }
        if self.total == 0 {
            return Err(Rejection::Empty);
        }
        if matches!(self.parser, Parser::Sniffing) {
            // A file shorter than the sniffing window.
            let head = std::mem::take(&mut self.buf);
            self.want = self.sniff(&head)?;
            return Err(Rejection::Truncated);
        }
        if let Some(v) = &self.video {
            // The video must end with a whole box, and be as long as announced.
            if !matches!(self.want, Want::Bytes(8)) || !self.buf.is_empty() || v.large {
                return Err(Rejection::Truncated);
            }
            let len = self.consumed - v.start;
            if v.motion.len.is_some_and(|l| l != len) {
                return Err(corrupt(
                    "JPEG",
                    format!(
                        "its motion-photo video is {len} bytes, not the {} its XMP announces",
                        v.motion.len.unwrap_or(0)
                    ),
                ));
            }
        } else if let Parser::Heif(h) = &self.parser {
            // The file ends where a box ends.
            if !matches!(self.want, Want::Bytes(8)) || !self.buf.is_empty() {
                return Err(Rejection::Truncated);
            }
            h.finish()?;
        } else if !matches!(self.want, Want::End) {
            // (A further MPF picture cut off leaves its parser wanting more.)
            return Err(Rejection::Truncated);
        }
        if self.trailing_other > 0 {
            return Err(Rejection::TrailingData(self.trailing_other));
        }
        let (format, width, height) = self.info.ok_or(Rejection::Truncated)?;
        let mut repairs = Repairs::default();
        let (orientation, frames) = match &mut self.parser {
            Parser::Jpeg(j) => {
                if j.scans == 0 {
                    return Err(Rejection::Truncated);
                }
                repairs = std::mem::take(&mut j.repairs);
                if repairs.end == Some(self.total) {
                    repairs.end = None;
                }
                (j.orientation, 1)
            }
            Parser::Png(p) => {
                if !p.saw_idat {
                    return Err(Rejection::Corrupt { format: "PNG", detail: "it has no image data".into() });
                }
                (p.orientation, 1)
            }
            Parser::Gif(g) => {
                if g.frames == 0 {
                    return Err(Rejection::Corrupt { format: "GIF", detail: "it has no frames".into() });
                }
                (1, g.frames)
            }
            Parser::Webp(w) => {
                if !w.saw_bitstream {
                    return Err(Rejection::Corrupt { format: "WebP", detail: "it has no image data".into() });
                }
                (w.orientation, 1)
            }
            Parser::Heif(h) => (h.orientation, 1),
            Parser::Sniffing => return Err(Rejection::Truncated),
        };
        // Parsers start at 0 for "no EXIF seen": that is upright.
        let needs_repair = !repairs.is_empty();
        Ok((ImageInfo { format, width, height, orientation: orientation.max(1), frames, needs_repair }, repairs))
    }

    /// The JPEG parser reading now: a further MPF picture's, or the file's.
    fn jpeg(&mut self) -> Result<&mut JpegParser, Rejection> {
        if let Some(n) = &mut self.nested {
            return Ok(n);
        }
        match &mut self.parser {
            Parser::Jpeg(j) => Ok(j),
            _ => Err(Rejection::Corrupt { format: "JPEG", detail: "internal state".into() }),
        }
    }

    fn sniff(&mut self, head: &[u8]) -> Result<Want, Rejection> {
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            self.parser = Parser::Jpeg(JpegParser::default());
            // Re-enter with the bytes after SOI: the marker reader takes it from here.
            return self.replay(head, 2, Want::Bytes(1));
        }
        if head.starts_with(b"\x89PNG\r\n\x1a\n") {
            self.parser = Parser::Png(PngParser::default());
            return self.replay(head, 8, Want::Bytes(8));
        }
        if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
            self.parser = Parser::Gif(GifParser::default());
            return self.replay(head, 6, Want::Bytes(7));
        }
        if head.len() >= 12 && &head[4..8] == b"ftyp" {
            self.parser = Parser::Heif(HeifParser::default());
            return self.replay(head, 0, Want::Bytes(8));
        }
        if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            let riff = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
            if riff < 4 {
                return Err(Rejection::Corrupt { format: "WebP", detail: "its RIFF size is too small".into() });
            }
            self.parser = Parser::Webp(WebpParser { remaining: riff - 4, ..WebpParser::default() });
            return self.replay(head, 12, Want::Bytes(8));
        }
        Err(classify_unknown(head))
    }

    /// Feeds `head[from..]` (already counted) through the new parser.
    fn replay(&mut self, head: &[u8], from: usize, first: Want) -> Result<Want, Rejection> {
        self.want = first;
        let rest = head[from..].to_vec();
        self.total -= rest.len() as u64;
        self.consumed -= rest.len() as u64;
        self.feed(&rest)?;
        // feed() replaced self.want; hand it back to the caller's loop.
        Ok(std::mem::replace(&mut self.want, Want::Bytes(0)))
    }

    fn note_size(&mut self, format: ImageFormat, width: u32, height: u32) -> Result<(), Rejection> {
        if width == 0 || height == 0 {
            return Err(Rejection::ZeroSize);
        }
        if width as u64 * height as u64 > self.limits.max_pixels {
            return Err(Rejection::TooManyPixels { width, height, limit: self.limits.max_pixels });
        }
        self.info = Some((format, width, height));
        Ok(())
    }

    fn step(&mut self, chunk: &[u8]) -> Result<Want, Rejection> {
        let limits = self.limits;
        let at = self.consumed - chunk.len() as u64;
        if let Some(v) = &mut self.video {
            return v.header(chunk);
        }
        if let Some(n) = &mut self.nested {
            let (want, size) = n.bytes(chunk, at, &limits)?;
            if let Some((w, h)) = size
                && (w == 0 || h == 0 || w as u64 * h as u64 > limits.max_pixels)
            {
                return Err(corrupt("JPEG", format!("a further picture of its MPF index is {w}×{h} pixels")));
            }
            return Ok(want);
        }
        match &mut self.parser {
            Parser::Sniffing => self.sniff(chunk),
            Parser::Jpeg(j) => {
                let (want, size) = j.bytes(chunk, at, &limits)?;
                if let Some((w, h)) = size {
                    self.note_size(ImageFormat::Jpeg, w, h)?;
                }
                Ok(want)
            }
            Parser::Png(p) => {
                let (want, size) = p.bytes(chunk, &mut self.crc)?;
                if let Some((w, h)) = size {
                    self.note_size(ImageFormat::Png, w, h)?;
                }
                Ok(want)
            }
            Parser::Gif(g) => {
                let (want, size) = g.bytes(chunk, &limits)?;
                if let Some((w, h)) = size {
                    self.note_size(ImageFormat::Gif, w, h)?;
                }
                Ok(want)
            }
            Parser::Webp(wp) => {
                let (want, size) = wp.bytes(chunk)?;
                if let Some((w, h)) = size {
                    self.note_size(ImageFormat::Webp, w, h)?;
                }
                Ok(want)
            }
            Parser::Heif(hp) => {
                let (want, size) = hp.bytes(chunk)?;
                if let Some((format, w, h)) = size {
                    self.note_size(format, w, h)?;
                }
                Ok(want)
            }
        }
    }

    fn after_skip(&mut self) -> Result<Want, Rejection> {
        if self.video.is_some() {
            return Ok(Want::Bytes(8));
        }
        match &mut self.parser {
            Parser::Jpeg(_) => Ok(Want::Bytes(1)),
            Parser::Png(_) => Ok(Want::Bytes(4)), // the chunk's CRC
            Parser::Gif(g) => Ok(g.after_skip()),
            Parser::Webp(w) => Ok(w.next()),
            Parser::Heif(_) => Ok(Want::Bytes(8)),
            Parser::Sniffing => Ok(Want::Bytes(SNIFF_BYTES)),
        }
    }
}

/// A friendlier refusal for formats people commonly try.
fn classify_unknown(head: &[u8]) -> Rejection {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let trimmed = text.trim_start_matches(['\u{feff}', ' ', '\n', '\r', '\t']);
    if trimmed.starts_with("<svg") || trimmed.starts_with("<?xml") {
        return Rejection::Unsupported("SVG");
    }
    if head.starts_with(b"BM") {
        return Rejection::Unsupported("BMP");
    }
    if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        return Rejection::Unsupported("TIFF");
    }
    if head.len() >= 4 && &head[0..4] == b"RIFF" {
        return Rejection::Corrupt { format: "WebP", detail: "it is a RIFF file but not a WebP picture".into() };
    }
    let looks_like =
        if trimmed.starts_with("<!doctype html") || trimmed.starts_with("<html") || trimmed.starts_with('<') {
            Some("a web page")
        } else if head.starts_with(b"%PDF") {
            Some("a PDF document")
        } else if head.starts_with(b"PK\x03\x04") {
            Some("a ZIP archive")
        } else if head.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
            Some("plain text")
        } else {
            None
        };
    Rejection::UnknownFormat { looks_like }
}

/// The orientation of a PNG's or WebP's EXIF; unusable EXIF is upright
/// (their flips carry no EXIF, so nothing needs repairing).
fn lenient_orientation(tiff: &[u8]) -> exif::Orientation {
    exif::orientation_strict(tiff).unwrap_or_else(|e| {
        tracing::info!(reason = %e, "unusable EXIF read as upright");
        1
    })
}

fn corrupt(format: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection::Corrupt { format, detail: detail.into() }
}

// ---------------------------------------------------------------- JPEG

#[derive(Default)]
struct JpegParser {
    state: JpegState,
    marker: u8,
    saw_sof: bool,
    scans: u32,
    comment_bytes: u64,
    orientation: exif::Orientation,
    /// A further picture of an MPF file: its metadata is not the upload's.
    nested: bool,
    /// Where the current segment's marker starts.
    seg_start: u64,
    /// Where a segment whose length was off started, while resynchronising.
    resync_from: u64,
    /// Segments whose facts were noted: EXIF, XMP, MPF (their starts).
    exif_seg: Option<u64>,
    noted_segs: Vec<(u64, Noted)>,
    /// Where the MPF index says its further pictures start.
    mpf_starts: Vec<u64>,
    motion: Option<MotionVideo>,
    /// Zero bytes seen just now after the end (a video's first box size).
    zeros_before: u32,
    repairs: Repairs,
}

/// Facts taken from a segment, forgotten if that segment is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Noted {
    Mpf,
    Motion,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum JpegState {
    /// Expecting 0xFF then a marker code.
    #[default]
    MarkerStart,
    MarkerCode,
    Length,
    Payload,
    /// A further picture's start of image (FF D8).
    Soi,
    /// After a segment whose length was off: looking for the next marker.
    Resync,
    ResyncFf,
}

fn is_app_or_comment(marker: u8) -> bool {
    matches!(marker, 0xE0..=0xEF | 0xFE)
}

impl JpegParser {
    fn bytes(&mut self, chunk: &[u8], at: u64, limits: &Limits) -> Result<(Want, Option<(u32, u32)>), Rejection> {
        match self.state {
            JpegState::Soi => {
                if chunk != [0xFF, 0xD8] {
                    return Err(corrupt("JPEG", "its MPF index points at something that is not a picture"));
                }
                self.state = JpegState::MarkerStart;
                Ok((Want::Bytes(1), None))
            }
            JpegState::MarkerStart => {
                if chunk[0] != 0xFF {
                    if is_app_or_comment(self.marker) && self.before_picture_data() {
                        // An APP or comment segment whose length is off: like
                        // libjpeg, look for the next marker; the segment is
                        // left out of the still picture.
                        self.resync_from = self.seg_start;
                        self.state = JpegState::Resync;
                        return Ok((Want::Bytes(1), None));
                    }
                    return Err(corrupt("JPEG", "a segment does not start where the previous one ended"));
                }
                self.seg_start = at;
                self.state = JpegState::MarkerCode;
                Ok((Want::Bytes(1), None))
            }
            JpegState::Resync => {
                if chunk[0] == 0xFF {
                    self.seg_start = at;
                    self.state = JpegState::ResyncFf;
                }
                Ok((Want::Bytes(1), None))
            }
            JpegState::ResyncFf => match chunk[0] {
                0xFF => Ok((Want::Bytes(1), None)),
                0x00 | 0x01 | 0xD0..=0xD7 => {
                    self.state = JpegState::Resync;
                    Ok((Want::Bytes(1), None))
                }
                m => {
                    let skipped = self.resync_from..self.seg_start;
                    tracing::info!(
                        bytes = skipped.end - skipped.start,
                        "a JPEG segment's length was off; it was skipped up to the next marker"
                    );
                    self.forget(&skipped);
                    self.repairs.drop.push(skipped);
                    Ok((self.marker(m, limits)?, None))
                }
            },
            JpegState::MarkerCode => {
                if chunk[0] == 0xFF {
                    self.seg_start = at;
                    return Ok((Want::Bytes(1), None)); // fill byte
                }
                Ok((self.marker(chunk[0], limits)?, None))
            }
            JpegState::Length => {
                let len = u16::from_be_bytes([chunk[0], chunk[1]]) as usize;
                if len < 2 {
                    return Err(corrupt("JPEG", "a segment has an impossible length"));
                }
                let body = len - 2;
                self.state = JpegState::Payload;
                match self.marker {
                    0xFE => {
                        self.comment_bytes += body as u64;
                        if self.comment_bytes > limits.max_comment_bytes && !self.nested {
                            // Kept in the original, not carried into the flip.
                            self.repairs.drop.push(self.seg_start..at + 2 + body as u64);
                        }
                        self.state = JpegState::MarkerStart;
                        Ok((Want::Skip(body as u64, false), None))
                    }
                    // Segments read whole: frame and scan headers, Huffman
                    // tables, EXIF and XMP, MPF and ICC (64 KiB at most each).
                    0xC0..=0xCF | 0xDA | 0xE1 | 0xE2 if body > 0 => Ok((Want::Bytes(body), None)),
                    _ => {
                        self.state = JpegState::MarkerStart;
                        if body == 0 { Ok((Want::Bytes(1), None)) } else { Ok((Want::Skip(body as u64, false), None)) }
                    }
                }
            }
            JpegState::Payload => self.payload(chunk, at, limits),
        }
    }

    /// Resynchronising is for the metadata before the picture data; inside
    /// the data a lost segment boundary is damage.
    fn before_picture_data(&self) -> bool {
        self.scans == 0
    }

    /// A dropped segment's facts no longer hold.
    fn forget(&mut self, dropped: &Range<u64>) {
        if self.exif_seg.is_some_and(|s| dropped.contains(&s)) {
            self.exif_seg = None;
            self.orientation = 0;
            self.repairs.bad_exif = None;
        }
        let gone: Vec<Noted> = self.noted_segs.iter().filter(|(s, _)| dropped.contains(s)).map(|(_, n)| *n).collect();
        for n in gone {
            match n {
                Noted::Mpf => self.mpf_starts.clear(),
                Noted::Motion => self.motion = None,
            }
        }
    }

    fn marker(&mut self, m: u8, limits: &Limits) -> Result<Want, Rejection> {
        self.marker = m;
        match m {
            0xD8 => Err(corrupt("JPEG", "it starts a second picture inside the first")),
            0xD9 => {
                if !self.saw_sof || self.scans == 0 {
                    return Err(corrupt("JPEG", "it ends before any picture data"));
                }
                Ok(Want::End)
            }
            0xD0..=0xD7 | 0x01 => {
                self.state = JpegState::MarkerStart;
                Ok(Want::Bytes(1))
            }
            _ => {
                let _ = limits;
                self.state = JpegState::Length;
                Ok(Want::Bytes(2))
            }
        }
    }

    /// `at` is where the payload starts in the file.
    fn payload(&mut self, p: &[u8], at: u64, limits: &Limits) -> Result<(Want, Option<(u32, u32)>), Rejection> {
        self.state = JpegState::MarkerStart;
        let m = self.marker;
        let segment = self.seg_start..at + p.len() as u64;
        match m {
            0xC4 => {
                check_huffman_tables(p)?;
                Ok((Want::Bytes(1), None))
            }
            0xC8 | 0xCC => Ok((Want::Bytes(1), None)), // JPG extension, arithmetic conditioning
            0xC0..=0xCF => {
                if matches!(m, 0xC5..=0xC7 | 0xCD..=0xCF) {
                    return Err(Rejection::Unsupported("Hierarchical JPEG"));
                }
                if self.saw_sof {
                    return Err(corrupt("JPEG", "it has two frame headers"));
                }
                if p.len() < 6 {
                    return Err(corrupt("JPEG", "its frame header is too short"));
                }
                if p[0] != 8 && !matches!(m, 0xC3 | 0xC7 | 0xCB | 0xCF) {
                    return Err(Rejection::Unsupported("12-bit JPEG"));
                }
                let height = u16::from_be_bytes([p[1], p[2]]) as u32;
                let width = u16::from_be_bytes([p[3], p[4]]) as u32;
                let comps = p[5] as usize;
                if !(1..=4).contains(&comps) || p.len() < 6 + 3 * comps {
                    return Err(corrupt("JPEG", "its frame header lists an impossible number of colour components"));
                }
                self.saw_sof = true;
                Ok((Want::Bytes(1), Some((width, height))))
            }
            0xDA => {
                if !self.saw_sof {
                    return Err(corrupt("JPEG", "picture data comes before the frame header"));
                }
                self.scans += 1;
                if self.scans > limits.max_scans {
                    return Err(corrupt(
                        "JPEG",
                        format!("it has more than {} scans, far more than any real photo", limits.max_scans),
                    ));
                }
                Ok((Want::Entropy, None))
            }
            0xE1 if !self.nested => {
                if let Some(tiff) = p.strip_prefix(b"Exif\0\0")
                    && self.exif_seg.is_none()
                {
                    // The first EXIF block is the one viewers read.
                    self.exif_seg = Some(self.seg_start);
                    self.orientation = match exif::orientation_strict(tiff) {
                        Ok(o) => o,
                        Err(e) => {
                            tracing::info!(reason = %e, "unusable EXIF read as upright");
                            self.repairs.bad_exif = Some((segment, at + 6..at + p.len() as u64));
                            1
                        }
                    };
                } else if let Some(xmp) = p.strip_prefix(trailer::XMP_PREFIX)
                    && let Some(motion) = trailer::motion_photo(xmp)
                {
                    // The flip is a still picture: it must not claim a video.
                    self.motion = Some(motion);
                    self.noted_segs.push((self.seg_start, Noted::Motion));
                    self.repairs.drop.push(segment);
                }
                Ok((Want::Bytes(1), None))
            }
            0xE2 if !self.nested => {
                if let Some(index) = p.strip_prefix(b"MPF\0") {
                    // Offsets count from the index's TIFF header; the first
                    // picture is this one.
                    match exif::mpf_images(index) {
                        Ok(images) => {
                            let base = at + 4;
                            self.mpf_starts = images
                                .iter()
                                .skip(1)
                                .filter(|(_, off)| *off > 0)
                                .map(|(_, off)| base + *off as u64)
                                .collect();
                        }
                        Err(e) => tracing::info!(reason = %e, "unusable MPF index ignored"),
                    }
                    self.noted_segs.push((self.seg_start, Noted::Mpf));
                    // The flip has no further pictures: no index either.
                    self.repairs.drop.push(segment);
                }
                Ok((Want::Bytes(1), None))
            }
            _ => Ok((Want::Bytes(1), None)),
        }
    }
}

/// A motion photo's video: a run of ISO-BMFF boxes, `ftyp` first.
#[derive(Default)]
struct VideoParser {
    start: u64,
    motion: MotionVideo,
    boxes: u32,
    /// The box header said its size follows as 64 bits.
    large: bool,
}

impl VideoParser {
    fn header(&mut self, c: &[u8]) -> Result<Want, Rejection> {
        let damaged = |d: &str| corrupt("JPEG", format!("its motion-photo video is damaged ({d})"));
        let size = if self.large {
            self.large = false;
            u64::from_be_bytes(c[0..8].try_into().expect("8 bytes"))
                .checked_sub(16)
                .ok_or_else(|| damaged("a box is too short"))?
        } else {
            let kind: [u8; 4] = c[4..8].try_into().expect("4 bytes");
            if (self.boxes == 0 && &kind != b"ftyp") || !trailer::is_video_box(&kind) {
                return Err(damaged("it is not an MP4 video"));
            }
            self.boxes += 1;
            if self.boxes > 10_000 {
                return Err(damaged("it has too many boxes"));
            }
            match u32::from_be_bytes([c[0], c[1], c[2], c[3]]) {
                1 => {
                    self.large = true;
                    return Ok(Want::Bytes(8));
                }
                0 => return Err(damaged("a box runs to the end of the file")),
                n if n < 8 => return Err(damaged("a box is too short")),
                n => n as u64 - 8,
            }
        };
        Ok(if size == 0 { Want::Bytes(8) } else { Want::Skip(size, false) })
    }
}

/// The checks libjpeg makes on a DHT segment, so a table it would refuse is
/// refused at upload: symbol counts within the segment, and code lengths that
/// fit the code space (the all-ones code is reserved).
fn check_huffman_tables(mut p: &[u8]) -> Result<(), Rejection> {
    let bad = |d: &str| corrupt("JPEG", format!("it has a bad Huffman table ({d})"));
    while !p.is_empty() {
        if p.len() < 17 {
            return Err(bad("too short"));
        }
        let class = p[0] >> 4;
        let id = p[0] & 0x0F;
        if class > 1 || id > 3 {
            return Err(bad("unknown table"));
        }
        let counts = &p[1..17];
        let total: usize = counts.iter().map(|c| *c as usize).sum();
        if total > 256 || p.len() < 17 + total {
            return Err(bad("more symbols than the segment holds"));
        }
        let mut code: u32 = 0;
        for (i, count) in counts.iter().enumerate() {
            let bits = i as u32 + 1;
            code += *count as u32;
            if code >= (1u32 << bits) && *count > 0 {
                return Err(bad("more codes than fit"));
            }
            code <<= 1;
        }
        if class == 0 && p[17..17 + total].iter().any(|s| *s > 16) {
            return Err(bad("a DC symbol out of range"));
        }
        p = &p[17 + total..];
    }
    Ok(())
}

// ---------------------------------------------------------------- PNG

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum PngState {
    #[default]
    Header,
    Body,
    Crc,
}

#[derive(Default)]
struct PngParser {
    state: PngState,
    chunk: [u8; 4],
    len: u32,
    saw_ihdr: bool,
    saw_idat: bool,
    ended: bool,
    orientation: u8,
}

impl PngParser {
    fn bytes(&mut self, c: &[u8], crc: &mut Option<Hasher>) -> Result<(Want, Option<(u32, u32)>), Rejection> {
        match self.state {
            PngState::Header => {
                self.len = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                self.chunk.copy_from_slice(&c[4..8]);
                if self.len > 0x7FFF_FFFF || !self.chunk.iter().all(u8::is_ascii_alphabetic) {
                    return Err(corrupt("PNG", "a chunk header is damaged"));
                }
                if !self.saw_ihdr && &self.chunk != b"IHDR" {
                    return Err(corrupt("PNG", "it does not start with a header chunk"));
                }
                let mut h = Hasher::new();
                h.update(&self.chunk);
                *crc = Some(h);
                match &self.chunk {
                    b"IEND" => self.ended = true,
                    b"IDAT" => self.saw_idat = true,
                    b"acTL" => return Err(Rejection::Animated("PNG")),
                    _ => {}
                }
                let whole = &self.chunk == b"IHDR" || (&self.chunk == b"eXIf" && self.len <= 64 * 1024);
                if self.len == 0 {
                    self.state = PngState::Crc;
                    Ok((Want::Bytes(4), None))
                } else if whole {
                    self.state = PngState::Body;
                    Ok((Want::Bytes(self.len as usize), None))
                } else {
                    self.state = PngState::Crc;
                    Ok((Want::Skip(self.len as u64, true), None))
                }
            }
            PngState::Body => {
                if let Some(h) = crc {
                    h.update(c);
                }
                self.state = PngState::Crc;
                let mut size = None;
                if &self.chunk == b"IHDR" {
                    if c.len() != 13 {
                        return Err(corrupt("PNG", "its header chunk has the wrong size"));
                    }
                    let w = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                    let h = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
                    let (depth, colour) = (c[8], c[9]);
                    let ok = match colour {
                        0 => matches!(depth, 1 | 2 | 4 | 8 | 16),
                        3 => matches!(depth, 1 | 2 | 4 | 8),
                        2 | 4 | 6 => matches!(depth, 8 | 16),
                        _ => false,
                    };
                    if !ok || c[10] != 0 || c[11] != 0 || c[12] > 1 {
                        return Err(corrupt("PNG", "its header describes an impossible pixel format"));
                    }
                    self.saw_ihdr = true;
                    size = Some((w, h));
                } else if &self.chunk == b"eXIf" {
                    self.orientation = lenient_orientation(c);
                }
                Ok((Want::Bytes(4), size))
            }
            PngState::Crc => {
                let expected = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                let actual = crc.take().map(|h| h.finalize()).unwrap_or(0);
                if expected != actual {
                    return Err(corrupt(
                        "PNG",
                        format!("the checksum of its {} chunk is wrong", String::from_utf8_lossy(&self.chunk)),
                    ));
                }
                self.state = PngState::Header;
                Ok((if self.ended { Want::End } else { Want::Bytes(8) }, None))
            }
        }
    }
}

// ---------------------------------------------------------------- GIF

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum GifState {
    #[default]
    Screen,
    ColourTable,
    Block,
    ExtensionLabel,
    SubBlockSize,
    SubBlockData,
    ImageDescriptor,
    LocalColourTable,
    LzwMinimum,
}

#[derive(Default)]
struct GifParser {
    state: GifState,
    area: u64,
    frames: u32,
}

impl GifParser {
    fn bytes(&mut self, c: &[u8], limits: &Limits) -> Result<(Want, Option<(u32, u32)>), Rejection> {
        match self.state {
            GifState::Screen => {
                let w = u16::from_le_bytes([c[0], c[1]]) as u32;
                let h = u16::from_le_bytes([c[2], c[3]]) as u32;
                self.area = w as u64 * h as u64;
                let flags = c[4];
                if flags & 0x80 != 0 {
                    self.state = GifState::ColourTable;
                    Ok((Want::Skip(3 << ((flags & 7) + 1), false), Some((w, h))))
                } else {
                    self.state = GifState::Block;
                    Ok((Want::Bytes(1), Some((w, h))))
                }
            }
            GifState::Block => match c[0] {
                0x21 => {
                    self.state = GifState::ExtensionLabel;
                    Ok((Want::Bytes(1), None))
                }
                0x2C => {
                    self.state = GifState::ImageDescriptor;
                    Ok((Want::Bytes(9), None))
                }
                0x3B => {
                    if self.frames == 0 {
                        return Err(corrupt("GIF", "it has no frames"));
                    }
                    Ok((Want::End, None))
                }
                b => Err(corrupt("GIF", format!("an unknown block type 0x{b:02x}"))),
            },
            GifState::ExtensionLabel => {
                self.state = GifState::SubBlockSize;
                Ok((Want::Bytes(1), None))
            }
            GifState::SubBlockSize => {
                if c[0] == 0 {
                    self.state = GifState::Block;
                    Ok((Want::Bytes(1), None))
                } else {
                    self.state = GifState::SubBlockData;
                    Ok((Want::Skip(c[0] as u64, false), None))
                }
            }
            GifState::ImageDescriptor => {
                self.frames += 1;
                let by_area =
                    limits.max_total_pixels.checked_div(self.area.max(1)).unwrap_or(0).min(u32::MAX as u64) as u32;
                let limit = limits.max_frames.min(by_area.max(1));
                if self.frames > limit {
                    return Err(Rejection::TooManyFrames { frames: self.frames, limit });
                }
                let fw = u16::from_le_bytes([c[4], c[5]]);
                let fh = u16::from_le_bytes([c[6], c[7]]);
                if fw == 0 || fh == 0 {
                    return Err(corrupt("GIF", "a frame has a width or height of zero"));
                }
                let flags = c[8];
                if flags & 0x80 != 0 {
                    self.state = GifState::LocalColourTable;
                    Ok((Want::Skip(3 << ((flags & 7) + 1), false), None))
                } else {
                    self.state = GifState::LzwMinimum;
                    Ok((Want::Bytes(1), None))
                }
            }
            GifState::LzwMinimum => {
                if !(1..=12).contains(&c[0]) {
                    return Err(corrupt("GIF", "a frame's compression header is invalid"));
                }
                self.state = GifState::SubBlockSize;
                Ok((Want::Bytes(1), None))
            }
            GifState::ColourTable | GifState::SubBlockData | GifState::LocalColourTable => {
                Err(corrupt("GIF", "internal state"))
            }
        }
    }

    fn after_skip(&mut self) -> Want {
        self.state = match self.state {
            GifState::ColourTable => GifState::Block,
            GifState::LocalColourTable => GifState::LzwMinimum,
            _ => GifState::SubBlockSize,
        };
        Want::Bytes(1)
    }
}

// ---------------------------------------------------------------- WebP

#[derive(Default)]
struct WebpParser {
    /// Bytes of the RIFF payload still to come.
    remaining: u64,
    in_body: bool,
    chunk: [u8; 4],
    /// Padding and unread body bytes to pass over after a body read.
    after_body: u64,
    saw_bitstream: bool,
    orientation: u8,
}

impl WebpParser {
    fn next(&mut self) -> Want {
        self.in_body = false;
        if self.remaining == 0 { Want::End } else { Want::Bytes(8) }
    }

    fn bytes(&mut self, c: &[u8]) -> Result<(Want, Option<(u32, u32)>), Rejection> {
        if !self.in_body {
            self.chunk.copy_from_slice(&c[0..4]);
            let size = u32::from_le_bytes([c[4], c[5], c[6], c[7]]) as u64;
            let padded = size + (size & 1);
            if self.remaining < 8 + padded {
                // The chunk claims more than the RIFF header said the file holds.
                return Err(if self.remaining < 8 {
                    corrupt("WebP", "its chunks overrun the file")
                } else {
                    Rejection::Truncated
                });
            }
            self.remaining -= 8 + padded;
            let read = match &self.chunk {
                b"ANIM" | b"ANMF" => return Err(Rejection::Animated("WebP")),
                b"VP8X" => 10,
                b"VP8 " => 10,
                b"VP8L" => 5,
                b"EXIF" if size <= 64 * 1024 => size,
                _ => 0,
            };
            if read == 0 || size < read {
                if matches!(&self.chunk, b"VP8X" | b"VP8 " | b"VP8L") {
                    return Err(corrupt("WebP", "a header chunk is too short"));
                }
                return Ok((if padded == 0 { self.next() } else { Want::Skip(padded, false) }, None));
            }
            self.in_body = true;
            self.after_body = padded - read;
            return Ok((Want::Bytes(read as usize), None));
        }
        self.in_body = false;
        let size = match &self.chunk {
            b"VP8X" => {
                if c[0] & 0x02 != 0 {
                    return Err(Rejection::Animated("WebP"));
                }
                let w = u32::from_le_bytes([c[4], c[5], c[6], 0]) + 1;
                let h = u32::from_le_bytes([c[7], c[8], c[9], 0]) + 1;
                Some((w, h))
            }
            b"VP8 " => {
                if c[3..6] != [0x9d, 0x01, 0x2a] {
                    return Err(corrupt("WebP", "its lossy bitstream header is damaged"));
                }
                self.saw_bitstream = true;
                let w = (u16::from_le_bytes([c[6], c[7]]) & 0x3FFF) as u32;
                let h = (u16::from_le_bytes([c[8], c[9]]) & 0x3FFF) as u32;
                Some((w, h))
            }
            b"VP8L" => {
                if c[0] != 0x2f {
                    return Err(corrupt("WebP", "its lossless bitstream header is damaged"));
                }
                self.saw_bitstream = true;
                let bits = u32::from_le_bytes([c[1], c[2], c[3], c[4]]);
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            b"EXIF" => {
                let tiff = c.strip_prefix(b"Exif\0\0").unwrap_or(c);
                self.orientation = lenient_orientation(tiff);
                None
            }
            _ => None,
        };
        let want = if self.after_body > 0 { Want::Skip(self.after_body, false) } else { self.next() };
        Ok((want, size))
    }
}

// ---------------------------------------------------------------- HEIF (HEIC, AVIF)

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum HeifState {
    #[default]
    Header,
    LargeSize,
    Body,
}

/// HEIF is ISO-BMFF: top-level boxes, `ftyp` first. `ftyp` says HEIC or
/// AVIF; `meta` (read whole, at most [`MAX_HEIF_META`]) says which item is
/// the picture, its size (`ispe`) and its rotation and mirroring (`irot`,
/// `imir`); `mdat` and the rest are passed over.
#[derive(Default)]
struct HeifParser {
    state: HeifState,
    kind: [u8; 4],
    boxes: u32,
    format: Option<ImageFormat>,
    saw_meta: bool,
    /// The container's turn of the stored picture, as an EXIF orientation.
    orientation: u8,
}

const MAX_HEIF_META: u64 = 4 * 1024 * 1024;

fn heif_name(format: Option<ImageFormat>) -> &'static str {
    if format == Some(ImageFormat::Avif) { "AVIF" } else { "HEIC" }
}

/// What the HEIF parser wants next, and the format and size once it knows them.
type HeifStep = Result<(Want, Option<(ImageFormat, u32, u32)>), Rejection>;

/// The child boxes of a box: each one's type and body.
type ChildBoxes<'a> = Result<Vec<([u8; 4], &'a [u8])>, &'static str>;

impl HeifParser {
    fn bytes(&mut self, c: &[u8]) -> HeifStep {
        let name = heif_name(self.format);
        match self.state {
            HeifState::Header => {
                self.kind.copy_from_slice(&c[4..8]);
                self.boxes += 1;
                if self.boxes > 100_000 {
                    return Err(corrupt(name, "it has far too many boxes"));
                }
                if self.boxes == 1 && &self.kind != b"ftyp" {
                    return Err(corrupt(name, "it does not start with a file type box"));
                }
                if !self.kind.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                    return Err(corrupt(name, "a box header is damaged"));
                }
                match u32::from_be_bytes([c[0], c[1], c[2], c[3]]) {
                    1 => {
                        self.state = HeifState::LargeSize;
                        Ok((Want::Bytes(8), None))
                    }
                    0 => Err(corrupt(name, "a box runs to the end of the file without saying its size")),
                    n if n < 8 => Err(corrupt(name, "a box is too short")),
                    n => self.body(n as u64 - 8),
                }
            }
            HeifState::LargeSize => {
                let size = u64::from_be_bytes(c[0..8].try_into().expect("8 bytes"));
                let body = size.checked_sub(16).ok_or_else(|| corrupt(name, "a box is too short"))?;
                self.body(body)
            }
            HeifState::Body => {
                self.state = HeifState::Header;
                let mut size = None;
                if &self.kind == b"ftyp" {
                    self.format = Some(heif_brand(c)?);
                } else if &self.kind == b"meta" {
                    if self.saw_meta {
                        return Err(corrupt(name, "it has two metadata boxes"));
                    }
                    self.saw_meta = true;
                    let (w, h, turn) = heif_primary(c).map_err(|d| corrupt(name, d))?;
                    self.orientation = turn.exif();
                    let format = self.format.ok_or_else(|| corrupt(name, "its file type box is missing"))?;
                    size = Some((format, w, h));
                }
                Ok((Want::Bytes(8), size))
            }
        }
    }

    fn body(&mut self, len: u64) -> HeifStep {
        let name = heif_name(self.format);
        let read_whole = match &self.kind {
            b"ftyp" => {
                if !(8..=4096).contains(&len) {
                    return Err(corrupt(name, "its file type box has an impossible size"));
                }
                true
            }
            b"meta" => {
                if len > MAX_HEIF_META {
                    return Err(corrupt(name, "its metadata box is far larger than any photo's"));
                }
                true
            }
            _ => false,
        };
        if read_whole && len > 0 {
            self.state = HeifState::Body;
            return Ok((Want::Bytes(len as usize), None));
        }
        self.state = HeifState::Header;
        Ok((if len == 0 { Want::Bytes(8) } else { Want::Skip(len, false) }, None))
    }

    fn finish(&self) -> Result<(), Rejection> {
        let name = heif_name(self.format);
        if self.state != HeifState::Header {
            return Err(Rejection::Truncated);
        }
        if !self.saw_meta {
            return Err(corrupt(name, "it has no metadata box, so no picture"));
        }
        Ok(())
    }
}

/// HEIC or AVIF, from the `ftyp` box's brands; image sequences refused.
fn heif_brand(c: &[u8]) -> Result<ImageFormat, Rejection> {
    let major: [u8; 4] = c[0..4].try_into().expect("4 bytes");
    let brands: Vec<[u8; 4]> =
        std::iter::once(major).chain(c[8..].chunks_exact(4).map(|b| b.try_into().expect("4 bytes"))).collect();
    let has = |set: &[&[u8; 4]]| brands.iter().any(|b| set.contains(&b));
    match &major {
        b"avis" => return Err(Rejection::Animated("AVIF")),
        b"msf1" | b"hevc" | b"hevx" | b"hevs" => return Err(Rejection::Unsupported("HEIF image sequence")),
        _ => {}
    }
    if has(&[b"heic", b"heix", b"heim", b"heis"]) {
        Ok(ImageFormat::Heic)
    } else if has(&[b"avif"]) {
        Ok(ImageFormat::Avif)
    } else if has(&[b"mif1", b"mif2"]) {
        Err(Rejection::Unsupported("HEIF (other than HEIC and AVIF)"))
    } else if has(&[b"isom", b"mp41", b"mp42", b"qt  ", b"M4V ", b"3gp4", b"avc1"]) {
        Err(Rejection::UnknownFormat { looks_like: Some("a video") })
    } else {
        Err(Rejection::UnknownFormat { looks_like: None })
    }
}

/// The boxes inside a box's payload: (type, payload).
fn child_boxes(mut p: &[u8]) -> ChildBoxes<'_> {
    let mut out = Vec::new();
    while !p.is_empty() {
        if p.len() < 8 || out.len() > 10_000 {
            return Err("a metadata box is damaged");
        }
        let kind: [u8; 4] = p[4..8].try_into().expect("4 bytes");
        let (size, header) = match u32::from_be_bytes([p[0], p[1], p[2], p[3]]) {
            0 => (p.len() as u64, 8),
            1 => {
                let large = p.get(8..16).ok_or("a metadata box is damaged")?;
                (u64::from_be_bytes(large.try_into().expect("8 bytes")), 16)
            }
            n => (n as u64, 8),
        };
        if size < header as u64 || size > p.len() as u64 {
            return Err("a metadata box overruns its parent");
        }
        out.push((kind, &p[header..size as usize]));
        p = &p[size as usize..];
    }
    Ok(out)
}

fn be32(p: &[u8], at: usize) -> Result<u32, &'static str> {
    p.get(at..at + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))).ok_or("a metadata box is too short")
}

fn be16(p: &[u8], at: usize) -> Result<u16, &'static str> {
    p.get(at..at + 2).map(|b| u16::from_be_bytes(b.try_into().expect("2 bytes"))).ok_or("a metadata box is too short")
}

/// The primary item's stored size and the container's turn of it, from a
/// `meta` box's payload (a full box: version and flags first).
fn heif_primary(meta: &[u8]) -> Result<(u32, u32, Turn), &'static str> {
    let children = child_boxes(meta.get(4..).ok_or("the metadata box is too short")?)?;
    let mut primary = None;
    let mut props: Vec<([u8; 4], &[u8])> = Vec::new();
    let mut assoc: Option<Vec<u16>> = None;
    for (kind, p) in &children {
        if kind == b"pitm" {
            primary = Some(if p.first() == Some(&0) { be16(p, 4)? as u32 } else { be32(p, 4)? });
        }
    }
    let primary = primary.ok_or("it names no primary picture")?;
    for (kind, p) in &children {
        if kind != b"iprp" {
            continue;
        }
        for (k, q) in child_boxes(p)? {
            if &k == b"ipco" {
                props = child_boxes(q)?;
            } else if &k == b"ipma" {
                let version = *q.first().ok_or("its property associations are damaged")?;
                let wide = q.get(3).is_some_and(|f| f & 1 == 1);
                let count = be32(q, 4)?;
                let mut at = 8usize;
                for _ in 0..count.min(100_000) {
                    let item = if version < 1 {
                        at += 2;
                        be16(q, at - 2)? as u32
                    } else {
                        at += 4;
                        be32(q, at - 4)?
                    };
                    let n = *q.get(at).ok_or("its property associations are damaged")? as usize;
                    at += 1;
                    let mut list = Vec::with_capacity(n);
                    for _ in 0..n {
                        let index = if wide {
                            at += 2;
                            be16(q, at - 2)? & 0x7FFF
                        } else {
                            at += 1;
                            (*q.get(at - 1).ok_or("its property associations are damaged")? & 0x7F) as u16
                        };
                        list.push(index);
                    }
                    if item == primary {
                        assoc = Some(list);
                    }
                }
            }
        }
    }
    let assoc = assoc.ok_or("its primary picture has no properties")?;
    let mut size = None;
    let mut turn = Turn::IDENTITY;
    for index in assoc {
        let Some((kind, p)) = (index as usize).checked_sub(1).and_then(|i| props.get(i)) else {
            continue;
        };
        match kind {
            b"ispe" => size = Some((be32(p, 4)?, be32(p, 8)?)),
            // Turned anticlockwise by quarter turns.
            b"irot" => {
                let step = match p.first().ok_or("a rotation is damaged")? & 3 {
                    1 => Turn::ROT270,
                    2 => Turn::ROT180,
                    3 => Turn::ROT90,
                    _ => Turn::IDENTITY,
                };
                turn = step.after(turn);
            }
            // Axis 0: top and bottom swap; 1: left and right (as libheif
            // and libavif read it).
            b"imir" => {
                let step = if p.first().ok_or("a mirroring is damaged")? & 1 == 0 { Turn::VFLIP } else { Turn::HFLIP };
                turn = step.after(turn);
            }
            _ => {}
        }
    }
    let (w, h) = size.ok_or("its primary picture has no size")?;
    Ok((w, h, turn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(bytes: &[u8], piece: usize) -> Result<ImageInfo, Rejection> {
        let mut i = Inspector::new(Limits::new(50_000_000, 1000));
        for chunk in bytes.chunks(piece.max(1)) {
            i.feed(chunk)?;
        }
        i.finish()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([10, 20, 30, 128]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn gif(w: u16, h: u16, frames: usize) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = ::gif::Encoder::new(&mut out, w, h, &[0, 0, 0, 255, 255, 255]).unwrap();
            for _ in 0..frames {
                let f = ::gif::Frame {
                    width: w,
                    height: h,
                    buffer: vec![1; w as usize * h as usize].into(),
                    ..Default::default()
                };
                enc.write_frame(&f).unwrap();
            }
        }
        out
    }

    fn jpeg(w: usize, h: usize) -> Vec<u8> {
        let img = turbojpeg::Image {
            pixels: vec![128u8; w * h * 3],
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(img.as_deref(), 80, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
    }

    #[test]
    fn reads_each_format_in_any_chunking() {
        for piece in [1, 3, 7, 4096] {
            let i = inspect(&png(30, 20), piece).unwrap();
            assert_eq!((i.format, i.width, i.height), (ImageFormat::Png, 30, 20));
            let i = inspect(&gif(12, 9, 3), piece).unwrap();
            assert_eq!((i.format, i.width, i.height, i.frames), (ImageFormat::Gif, 12, 9, 3));
            let i = inspect(&jpeg(40, 24), piece).unwrap();
            assert_eq!((i.format, i.width, i.height, i.orientation), (ImageFormat::Jpeg, 40, 24, 1));
        }
    }

    #[test]
    fn refuses_by_content_not_name() {
        assert_eq!(inspect(b"", 10), Err(Rejection::Empty));
        assert!(matches!(
            inspect(b"hello, this is text\n", 10),
            Err(Rejection::UnknownFormat { looks_like: Some("plain text") })
        ));
        assert_eq!(inspect(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", 10), Err(Rejection::Unsupported("SVG")));
        assert_eq!(inspect(b"\xff\xd8\xff", 10), Err(Rejection::Truncated));
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        let mut i = Inspector::new(Limits::new(500, 1000));
        let bytes = png(30, 20);
        // IHDR ends at byte 33: the refusal comes before any pixel data.
        let r = i.feed(&bytes[..33]);
        assert_eq!(r, Err(Rejection::TooManyPixels { width: 30, height: 20, limit: 500 }));
        assert_eq!(r.unwrap_err().status(), 413);
    }

    #[test]
    fn truncation_checksums_and_trailing_data_are_refused() {
        let p = png(8, 8);
        assert_eq!(inspect(&p[..p.len() - 5], 64), Err(Rejection::Truncated));
        let mut bad = p.clone();
        bad[29] ^= 0xFF; // a byte of IHDR's CRC
        assert!(matches!(inspect(&bad, 64), Err(Rejection::Corrupt { format: "PNG", .. })));
        let mut trailing = jpeg(16, 16);
        trailing.extend_from_slice(b"<html><script>alert(1)</script>");
        assert!(matches!(inspect(&trailing, 64), Err(Rejection::TrailingData(_))));
        let mut padded = jpeg(16, 16);
        padded.extend_from_slice(&[0, 0, 0, 0]);
        assert!(inspect(&padded, 64).is_ok(), "zero padding after EOI is harmless");
    }

    #[test]
    fn frame_limits_apply_to_animations() {
        let mut i = Inspector::new(Limits::new(50_000_000, 4));
        let g = gif(4, 4, 6);
        let mut r = Ok(());
        for c in g.chunks(16) {
            r = i.feed(c);
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r, Err(Rejection::TooManyFrames { frames: 5, limit: 4 }));
    }

    #[test]
    fn huffman_table_overflow_is_refused() {
        let mut t = vec![0x00];
        let mut counts = [0u8; 16];
        counts[0] = 2; // two codes of length 1: the all-ones code would be used
        t.extend_from_slice(&counts);
        t.extend_from_slice(&[0, 1]);
        assert!(check_huffman_tables(&t).is_err());
        counts[0] = 1;
        counts[1] = 1;
        let mut ok = vec![0x00];
        ok.extend_from_slice(&counts);
        ok.extend_from_slice(&[0, 1]);
        assert!(check_huffman_tables(&ok).is_ok());
    }
}
