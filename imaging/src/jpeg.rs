//! What the flip needs from a JPEG's markers, read without decoding: the
//! frame (size, sampling factors, progressive or not), the quantisation
//! tables (to match the source's quality when re-encoding), the ICC profile,
//! and the metadata segments to carry over. Every length is checked against
//! the data; the walk stops at the first scan.

use std::ops::Range;

/// One marker segment before the first scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub marker: u8,
    /// The whole segment, marker and length included.
    pub range: Range<usize>,
    /// Its payload (after the two length bytes).
    pub payload: Range<usize>,
}

/// The segments from SOI up to (not including) the first SOS; `None` when
/// the data is not a well-formed JPEG header.
pub fn segments(jpeg: &[u8]) -> Option<Vec<Segment>> {
    if jpeg.get(0..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 2usize;
    loop {
        if *jpeg.get(i)? != 0xFF {
            return None;
        }
        let marker = *jpeg.get(i + 1)?;
        if marker == 0xFF {
            // Fill byte before a marker.
            i += 1;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return Some(out);
        }
        let len = u16::from_be_bytes([*jpeg.get(i + 2)?, *jpeg.get(i + 3)?]) as usize;
        if len < 2 || i + 2 + len > jpeg.len() {
            return None;
        }
        out.push(Segment { marker, range: i..i + 2 + len, payload: i + 4..i + 2 + len });
        i += 2 + len;
    }
}

/// The frame header: size, components and how the picture is coded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub progressive: bool,
    /// (h, v) sampling factors and quantisation table id, per component.
    pub components: Vec<(u8, u8, u8)>,
}

impl Frame {
    /// The iMCU size lossless transforms work in (libjpeg-turbo's rule: a
    /// single-component picture uses 8×8 blocks whatever its factors say).
    pub fn imcu(&self) -> (u32, u32) {
        if self.components.len() == 1 {
            return (8, 8);
        }
        let h = self.components.iter().map(|c| c.0).max().unwrap_or(1) as u32;
        let v = self.components.iter().map(|c| c.1).max().unwrap_or(1) as u32;
        (8 * h, 8 * v)
    }
}

pub fn frame(jpeg: &[u8]) -> Option<Frame> {
    let segs = segments(jpeg)?;
    let sof = segs.iter().find(|s| matches!(s.marker, 0xC0..=0xCF) && !matches!(s.marker, 0xC4 | 0xC8 | 0xCC))?;
    let p = &jpeg[sof.payload.clone()];
    let height = u16::from_be_bytes([*p.get(1)?, *p.get(2)?]) as u32;
    let width = u16::from_be_bytes([*p.get(3)?, *p.get(4)?]) as u32;
    let n = *p.get(5)? as usize;
    let mut components = Vec::with_capacity(n.min(4));
    for c in 0..n {
        let at = 6 + c * 3;
        let hv = *p.get(at + 1)?;
        components.push((hv >> 4, hv & 0x0F, *p.get(at + 2)?));
    }
    Some(Frame { width, height, progressive: matches!(sof.marker, 0xC2 | 0xC6 | 0xCA | 0xCE), components })
}

/// Zigzag position → natural (row-major) position in an 8×8 block.
const NATURAL_ORDER: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// The quantisation tables by id (0–3), in natural order.
pub fn quant_tables(jpeg: &[u8]) -> Option<[Option<[u16; 64]>; 4]> {
    let mut tables = [None; 4];
    for s in segments(jpeg)?.iter().filter(|s| s.marker == 0xDB) {
        let mut p = &jpeg[s.payload.clone()];
        while let Some((&pq_tq, rest)) = p.split_first() {
            let (precision, id) = (pq_tq >> 4, (pq_tq & 0x0F) as usize);
            let size = if precision == 0 { 64 } else { 128 };
            if id > 3 || rest.len() < size {
                return None;
            }
            let mut t = [0u16; 64];
            for (k, &natural) in NATURAL_ORDER.iter().enumerate() {
                t[natural] =
                    if precision == 0 { rest[k] as u16 } else { u16::from_be_bytes([rest[2 * k], rest[2 * k + 1]]) };
            }
            tables[id] = Some(t);
            p = &rest[size..];
        }
    }
    Some(tables)
}

/// The example tables of the JPEG standard (Annex K), natural order: what
/// libjpeg scales by its quality setting.
const STD_LUMA: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51,
    87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
];
const STD_CHROMA: [u16; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99,
];

fn scaled(std: &[u16; 64], quality: u32) -> impl Iterator<Item = u32> + '_ {
    let scale = if quality < 50 { 5000 / quality } else { 200 - 2 * quality };
    std.iter().map(move |&v| ((v as u32 * scale + 50) / 100).clamp(1, 255))
}

/// The libjpeg quality (1–100) whose tables are closest to the source's:
/// exact for files libjpeg wrote, the nearest match for others. `None`
/// when the file has no usable tables.
pub fn estimate_quality(jpeg: &[u8]) -> Option<u8> {
    let tables = quant_tables(jpeg)?;
    let f = frame(jpeg)?;
    let luma = tables.get(f.components.first()?.2 as usize)?.as_ref()?;
    let chroma = f.components.get(1).and_then(|c| tables.get(c.2 as usize)).and_then(|t| t.as_ref());
    // Relative error, so the large high-frequency steps do not drown the
    // small low-frequency ones that matter most to the eye.
    let distance = |actual: &[u16; 64], std: &[u16; 64], q: u32| -> f64 {
        actual.iter().zip(scaled(std, q)).map(|(&a, e)| ((a.max(1) as f64) / e as f64).ln().abs()).sum()
    };
    (1..=100u32)
        .map(|q| {
            let d = distance(luma, &STD_LUMA, q) + chroma.map_or(0.0, |c| distance(c, &STD_CHROMA, q));
            (q, d)
        })
        // On a tie the higher quality wins: never make it worse than needed.
        .fold(None, |best: Option<(u32, f64)>, (q, d)| match best {
            Some((_, bd)) if bd < d => best,
            _ => Some((q, d)),
        })
        .map(|(q, _)| q as u8)
}

/// The ICC profile, reassembled from its APP2 `ICC_PROFILE` chunks in order.
pub fn icc_profile(jpeg: &[u8]) -> Option<Vec<u8>> {
    const TAG: &[u8] = b"ICC_PROFILE\0";
    let mut chunks: Vec<(u8, &[u8])> = segments(jpeg)?
        .iter()
        .filter(|s| s.marker == 0xE2)
        .map(|s| &jpeg[s.payload.clone()])
        .filter(|p| p.len() > TAG.len() + 2 && p.starts_with(TAG))
        .map(|p| (p[TAG.len()], &p[TAG.len() + 2..]))
        .collect();
    if chunks.is_empty() {
        return None;
    }
    chunks.sort_by_key(|c| c.0);
    Some(chunks.into_iter().flat_map(|c| c.1).copied().collect())
}

/// The segments a re-encoded copy carries over: APP1–APP15 (EXIF, XMP, ICC,
/// IPTC …) and comments. Left out: JFIF (APP0) and Adobe (APP14), which the
/// encoder writes for what it made, and MPF, whose offsets point into the
/// old file.
pub fn metadata_segments(jpeg: &[u8]) -> Vec<Vec<u8>> {
    let Some(segs) = segments(jpeg) else {
        return Vec::new();
    };
    segs.iter()
        .filter(|s| matches!(s.marker, 0xE1..=0xEF | 0xFE) && s.marker != 0xEE)
        .filter(|s| !(s.marker == 0xE2 && jpeg[s.payload.clone()].starts_with(b"MPF\0")))
        .map(|s| jpeg[s.range.clone()].to_vec())
        .collect()
}

/// Builds ICC APP2 segments (split in chunks as the ICC spec says).
pub fn icc_segments(icc: &[u8]) -> Vec<Vec<u8>> {
    const TAG: &[u8] = b"ICC_PROFILE\0";
    const MAX: usize = 65_533 - 14;
    let chunks: Vec<&[u8]> = icc.chunks(MAX).collect();
    let count = chunks.len().min(255);
    chunks
        .iter()
        .take(count)
        .enumerate()
        .map(|(i, c)| {
            let len = 2 + TAG.len() + 2 + c.len();
            let mut s = vec![0xFF, 0xE2];
            s.extend_from_slice(&(len as u16).to_be_bytes());
            s.extend_from_slice(TAG);
            s.push(i as u8 + 1);
            s.push(count as u8);
            s.extend_from_slice(c);
            s
        })
        .collect()
}

/// Inserts whole segments after SOI and the encoder's own JFIF/Adobe
/// segment, where readers look for EXIF.
pub fn insert_segments(encoded: Vec<u8>, extra: &[Vec<u8>]) -> Vec<u8> {
    if extra.is_empty() {
        return encoded;
    }
    let at = segments(&encoded)
        .and_then(|s| s.iter().take_while(|s| matches!(s.marker, 0xE0 | 0xEE)).last().map(|s| s.range.end))
        .unwrap_or(2)
        .min(encoded.len());
    let mut out = Vec::with_capacity(encoded.len() + extra.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&encoded[..at]);
    for s in extra {
        out.extend_from_slice(s);
    }
    out.extend_from_slice(&encoded[at..]);
    out
}

/// The TIFF data of the EXIF segment, writable in place.
pub fn exif_tiff_mut(jpeg: &mut [u8]) -> Option<&mut [u8]> {
    let payload = exif_payload(jpeg, &segments(jpeg)?)?;
    Some(&mut jpeg[payload.start + 6..payload.end])
}

/// JFIF pixel density (units, x, y), to carry over to a re-encoded copy.
pub fn jfif_density(jpeg: &[u8]) -> Option<(u8, u16, u16)> {
    let segs = segments(jpeg)?;
    let s = segs.iter().find(|s| s.marker == 0xE0)?;
    let p = &jpeg[s.payload.clone()];
    if p.len() < 12 || !p.starts_with(b"JFIF\0") {
        return None;
    }
    Some((p[7], u16::from_be_bytes([p[8], p[9]]), u16::from_be_bytes([p[10], p[11]])))
}

/// The EXIF segment's payload range (`Exif\0\0` and its TIFF data).
fn exif_payload(jpeg: &[u8], segs: &[Segment]) -> Option<Range<usize>> {
    segs.iter()
        .find(|s| s.marker == 0xE1 && jpeg[s.payload.clone()].starts_with(b"Exif\0\0"))
        .map(|s| s.payload.clone())
}

fn is_frame_header(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// A single-scan JPEG split where its header ends: the header with its SOS,
/// and the entropy-coded data (without the closing EOI).
fn header_and_scan(jpeg: &[u8]) -> Option<(Vec<Segment>, usize, &[u8])> {
    let segs = segments(jpeg)?;
    let sos = segs.last().map_or(2, |s| s.range.end);
    if jpeg.get(sos..sos + 2)? != [0xFF, 0xDA] {
        return None;
    }
    let len = u16::from_be_bytes([*jpeg.get(sos + 2)?, *jpeg.get(sos + 3)?]) as usize;
    let data_start = sos + 2 + len;
    let data = jpeg.get(data_start..jpeg.len().checked_sub(2)?)?;
    (jpeg.get(jpeg.len() - 2..)? == [0xFF, 0xD9] && data_start <= jpeg.len() - 2).then_some((segs, data_start, data))
}

/// Renumbers the restart markers of entropy-coded `data` by `shift`
/// (RSTn → RST(n+shift mod 8)); `None` if it holds any other marker (a
/// second scan, say), so only single-scan data is ever joined.
fn shift_restart_markers(data: &mut [u8], shift: usize) -> Option<()> {
    let mut i = 0;
    while let Some(at) = memchr::memchr(0xFF, &data[i..]) {
        let m = i + at + 1;
        match *data.get(m)? {
            0x00 => {}
            n @ 0xD0..=0xD7 => data[m] = 0xD0 + ((n - 0xD0) as usize + shift) as u8 % 8,
            _ => return None,
        }
        i = m + 1;
    }
    Some(())
}

/// Joins the two halves of one picture, each encoded by itself with the
/// same tables and a restart interval of whole rows (`top` made of
/// `top_intervals` intervals), into one JPEG `full_height` rows high:
/// the top's header (frame height set to the whole, EXIF taken from
/// `exif_from`, since cropping rewrote its sizes), the top's scan, the
/// restart marker that ends its last interval, and the bottom's scan with
/// its markers renumbered to follow. A restart resets the DC predictions and
/// byte-aligns the data, which is exactly how each half's scan starts and
/// ends, so the result decodes to the same coefficients as one encode.
/// `None` when the halves do not fit together that way.
pub fn join_restart_halves(
    top: &[u8],
    bottom: &[u8],
    full_height: u32,
    top_intervals: usize,
    exif_from: &[u8],
) -> Option<Vec<u8>> {
    let full_height = u16::try_from(full_height).ok()?;
    let (top_segs, top_data_start, top_data) = header_and_scan(top)?;
    let (bottom_segs, bottom_data_start, bottom_data) = header_and_scan(bottom)?;
    // Same segments, byte for byte, but for the frame's height and EXIF.
    if top_segs.len() != bottom_segs.len() || !top_segs.iter().any(|s| s.marker == 0xDD) {
        return None;
    }
    let sos_top = &top[top_segs.last()?.range.end..top_data_start];
    let sos_bottom = &bottom[bottom_segs.last()?.range.end..bottom_data_start];
    if sos_top != sos_bottom {
        return None;
    }
    for (a, b) in top_segs.iter().zip(&bottom_segs) {
        let (pa, pb) = (&top[a.payload.clone()], &bottom[b.payload.clone()]);
        let same = a.marker == b.marker
            && pa.len() == pb.len()
            && if is_frame_header(a.marker) {
                pa.len() >= 3 && pa[0] == pb[0] && pa[3..] == pb[3..]
            } else {
                a.marker == 0xE1 || pa == pb
            };
        if !same {
            return None;
        }
    }
    let mut out = Vec::with_capacity(top.len() + bottom.len());
    out.extend_from_slice(&top[..top_data_start]);
    let sof = top_segs.iter().find(|s| is_frame_header(s.marker))?;
    out[sof.payload.start + 1..sof.payload.start + 3].copy_from_slice(&full_height.to_be_bytes());
    if let Some(here) = exif_payload(top, &top_segs) {
        let source = exif_payload(exif_from, &segments(exif_from)?)?;
        if source.len() != here.len() {
            return None;
        }
        out[here].copy_from_slice(&exif_from[source]);
    }
    let at = out.len();
    out.extend_from_slice(top_data);
    // Checks that the top's own markers are restarts only (shifted by none).
    shift_restart_markers(&mut out[at..], 0)?;
    out.extend_from_slice(&[0xFF, 0xD0 + (top_intervals.checked_sub(1)? % 8) as u8]);
    let at = out.len();
    out.extend_from_slice(bottom_data);
    shift_restart_markers(&mut out[at..], top_intervals % 8)?;
    out.extend_from_slice(&[0xFF, 0xD9]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(quality: i32, subsamp: turbojpeg::Subsamp) -> Vec<u8> {
        let pixels: Vec<u8> = (0..48 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
        turbojpeg::compress(
            turbojpeg::Image {
                pixels: pixels.as_slice(),
                width: 48,
                pitch: 48 * 3,
                height: 32,
                format: turbojpeg::PixelFormat::RGB,
            },
            quality,
            subsamp,
        )
        .unwrap()
        .to_vec()
    }

    #[test]
    fn quality_of_libjpeg_files_is_recovered_exactly() {
        for q in [10, 35, 50, 75, 85, 92, 98, 100] {
            let jpeg = encode(q, turbojpeg::Subsamp::Sub2x2);
            assert_eq!(estimate_quality(&jpeg), Some(q as u8), "quality {q}");
        }
    }

    #[test]
    fn frame_and_segments() {
        let jpeg = encode(80, turbojpeg::Subsamp::Sub2x1);
        let f = frame(&jpeg).unwrap();
        assert_eq!((f.width, f.height, f.progressive), (48, 32, false));
        assert_eq!(f.imcu(), (16, 8));
        assert!(segments(b"not a jpeg").is_none());
        // A length that runs past the end is refused, not read.
        assert!(segments(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, 0]).is_none());
    }

    #[test]
    fn icc_round_trips_through_segments() {
        let icc: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
        let segs = icc_segments(&icc);
        assert_eq!(segs.len(), 3);
        let jpeg = insert_segments(encode(80, turbojpeg::Subsamp::Sub2x2), &segs);
        assert_eq!(icc_profile(&jpeg).as_deref(), Some(&icc[..]));
        assert_eq!(metadata_segments(&jpeg), segs);
        // Still a JPEG a decoder reads.
        turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::RGB).unwrap();
    }
}
