//! The JPEG flip, through libjpeg-turbo only.
//!
//! 1. Lossless, in the DCT domain, when libjpeg-turbo can do it perfectly
//!    (no edge blocks dropped or left unflipped). The flip is of the picture
//!    *as displayed*: with EXIF orientation `D`, the stored pixels get
//!    `D⁻¹ ∘ V ∘ D` and the tag is kept (a vertical flip for orientations
//!    1–4, a horizontal one for 5–8). When that is imperfect but the file
//!    already relies on its orientation tag, the stored pixels are transposed
//!    (always perfect) and the tag rewritten to match.
//! 2. Otherwise decode → flip → encode, at the source's chroma subsampling
//!    and at the quality its quantisation tables show; upright pictures go
//!    through YUV planes (no colour conversion, no chroma resampling).
//!    EXIF (orientation set to 1 when the pixels were turned), ICC, XMP and
//!    comments are carried over.
//!
//! Both read the file under the upload limits (pixels, scans, warnings are
//! errors). Thumbnails come from the same pass (DCT coefficients on the way
//! through the transform, or the decoded planes), not from a second decode.

use turbojpeg::raw;

use super::cores;
use super::flip::{FlipError, Flipped, THUMB_LONG_SIDE, Thumbnails, thumb_size, unreadable};
use super::inspect::Limits;
use super::orient::{Turn, flip_rows, turn_pixels};
use super::thumb::{DctShrink, Plane, box_down, resize, ycc_to_rgb};
use super::tj::{TjDecoder, TjEncoder, TjTransformer, TransformError};
use super::{exif, jpeg};
use flipstack_domain::domain::ImageFormat;

/// Quality of JPEG thumbnails: small files, no visible blocks at 480 px.
const THUMB_QUALITY: u8 = 82;
/// When the tables say nothing usable.
const FALLBACK_QUALITY: u8 = 92;

fn orientation(input: &[u8]) -> u8 {
    exif::jpeg_exif(input).map(exif::orientation_lenient).unwrap_or(1)
}

fn internal(e: String) -> FlipError {
    FlipError::Internal(e)
}

/// Lossless if a perfect transform exists, else re-encoded.
pub fn flip_jpeg(input: &[u8], limits: &Limits) -> Result<Flipped, FlipError> {
    let _cpu = cores::FlipCpu::whole_flip();
    match lossless_inner(input, limits, false)? {
        Some((f, _)) => Ok(f),
        None => reencode_inner(input, limits, false).map(|(f, _)| f),
    }
}

/// The flip and the thumbnails of the original and of the flip.
pub fn flip_jpeg_with_thumbnails(
    input: &[u8],
    limits: &Limits,
) -> Result<(Flipped, Result<Thumbnails, FlipError>), FlipError> {
    let _cpu = cores::FlipCpu::whole_flip();
    let (flipped, small) = match lossless_inner(input, limits, true)? {
        Some(done) => done,
        None => reencode_inner(input, limits, true)?,
    };
    // Not every file gives a small picture on the way (CMYK, small pictures
    // where the DCT scales are too coarse): those decode once more, scaled.
    let thumbs = match small {
        Some(small) => small.encode(input),
        None => thumbnails(input, limits),
    };
    Ok((flipped, thumbs))
}

/// The lossless flip, or `None` when no perfect transform gives it.
pub fn lossless(input: &[u8], limits: &Limits) -> Result<Option<Flipped>, FlipError> {
    lossless_inner(input, limits, false).map(|r| r.map(|(f, _)| f))
}

/// Decode → flip → encode, whatever the file.
pub fn reencode(input: &[u8], limits: &Limits) -> Result<Flipped, FlipError> {
    reencode_inner(input, limits, false).map(|(f, _)| f)
}

/// A picture a little larger than the thumbnail, of the flipped picture or
/// of the original, in some orientation; `encode` finishes the thumbnails.
pub(crate) struct Small {
    pixels: Vec<u8>,
    width: usize,
    height: usize,
    /// 1 (gray) or 3 (RGB).
    channels: usize,
    /// What turns it upright as displayed.
    shown: Turn,
    /// Is it the flip (else the original)?
    flipped: bool,
    /// The full picture's displayed size, which sets the thumbnail's.
    display: (u32, u32),
}

/// Upright pixels (1 or 3 channels) and their size.
pub(crate) struct Upright {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    /// Is it the flip (else the original)?
    pub flipped: bool,
    /// The full picture's displayed size (these pixels may be a fraction of it).
    pub display: (u32, u32),
}

impl Small {
    /// Turned as displayed.
    pub(crate) fn upright(self) -> Upright {
        let (pixels, width, height) = if self.shown == Turn::IDENTITY {
            (self.pixels, self.width as u32, self.height as u32)
        } else {
            turn_pixels(&self.pixels, self.width as u32, self.height as u32, self.channels, self.shown)
        };
        Upright { pixels, width, height, channels: self.channels, flipped: self.flipped, display: self.display }
    }

    fn encode(self, input: &[u8]) -> Result<Thumbnails, FlipError> {
        let (tw, th) = thumb_size(self.display.0, self.display.1);
        let up = self.upright();
        let small = resize(&up.pixels, up.width as usize, up.height as usize, up.channels, tw as usize, th as usize)
            .map_err(internal)?;
        let (original, flipped) = encode_pair(small, tw, th, up.channels, up.flipped, THUMB_QUALITY, input)?;
        Ok(Thumbnails { original, flipped, width: tw, height: th, format: ImageFormat::Jpeg })
    }
}

/// JPEGs of `pixels` (1 or 3 channels, upright) and of their vertical flip,
/// with `source`'s ICC profile; returned as (original, flipped), where the
/// pixels are the flip's when `is_flip`.
pub(crate) fn encode_pair(
    mut pixels: Vec<u8>,
    width: u32,
    height: u32,
    channels: usize,
    is_flip: bool,
    quality: u8,
    source: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), FlipError> {
    let icc = jpeg::icc_profile(source).map(|icc| jpeg::icc_segments(&icc)).unwrap_or_default();
    let (pf, subsamp, cs) = if channels == 1 {
        (raw::TJPF_TJPF_GRAY, raw::TJSAMP_TJSAMP_GRAY, raw::TJCS_TJCS_GRAY)
    } else {
        (raw::TJPF_TJPF_RGB, raw::TJSAMP_TJSAMP_420, raw::TJCS_TJCS_YCbCr)
    };
    let mut e = TjEncoder::new(quality, subsamp, cs as i32).map_err(internal)?;
    let mut encode = |px: &[u8]| -> Result<Vec<u8>, FlipError> {
        let bytes = e.compress(px, width, height, pf, channels).map_err(internal)?;
        Ok(jpeg::insert_segments(bytes, &icc))
    };
    let first = encode(&pixels)?;
    flip_rows(&mut pixels, width as usize * channels);
    let second = encode(&pixels)?;
    Ok(if is_flip { (second, first) } else { (first, second) })
}

/// The box factor that shrinks `long` samples to at least the thumbnail size.
fn shrink_factor(long: u32) -> usize {
    (long / THUMB_LONG_SIDE).max(1) as usize
}

/// Collects a small picture from the coefficients a lossless transform
/// passes through: DC alone (1/8) or 2×2 cells (1/4), whichever is the
/// smallest still at least thumbnail-sized; `None` when neither is (small
/// pictures) or the colours are not YCbCr or gray.
struct DctThumb {
    shrinks: Vec<Option<DctShrink>>,
    /// Per component: quantisation table (natural order) and real size in
    /// samples, for the turned picture.
    comps: Vec<([u16; 64], usize, usize)>,
    /// Per component: rows of blocks in one row of MCUs, turned.
    mcu_block_rows: Vec<usize>,
    s: usize,
}

impl DctThumb {
    fn new(input: &[u8], frame: &jpeg::Frame, colorspace: i32, turn: Turn) -> Option<DctThumb> {
        let gray = colorspace == raw::TJCS_TJCS_GRAY as i32 && frame.components.len() == 1;
        let ycc = colorspace == raw::TJCS_TJCS_YCbCr as i32 && frame.components.len() == 3;
        if !(gray || ycc) {
            return None;
        }
        let long = frame.width.max(frame.height) as usize;
        let target = thumb_size(frame.width, frame.height);
        let target = target.0.max(target.1) as usize;
        let s = [1usize, 2].into_iter().find(|s| (long * s).div_ceil(8) >= target)?;
        let tables = jpeg::quant_tables(input)?;
        let t = turn.transposes();
        let (w, h) = if t { (frame.height, frame.width) } else { (frame.width, frame.height) };
        let (hmax, vmax) = (
            frame.components.iter().map(|c| c.0).max()? as usize,
            frame.components.iter().map(|c| c.1).max()? as usize,
        );
        let mut comps = Vec::with_capacity(frame.components.len());
        let mut mcu_block_rows = Vec::with_capacity(frame.components.len());
        for &(ch, cv, tq) in &frame.components {
            let q = (*tables.get(tq as usize)?)?;
            // A transposed picture has its sampling factors and tables transposed.
            let (q, hs, vs, hm, vm) = if t {
                let mut qt = [0u16; 64];
                for (i, v) in q.iter().enumerate() {
                    qt[(i % 8) * 8 + i / 8] = *v;
                }
                (qt, cv as usize, ch as usize, vmax, hmax)
            } else {
                (q, ch as usize, cv as usize, hmax, vmax)
            };
            let (hs, vs) = if gray { (1, 1) } else { (hs, vs) };
            let (hm, vm) = if gray { (1, 1) } else { (hm, vm) };
            comps.push((q, (w as usize * hs).div_ceil(hm), (h as usize * vs).div_ceil(vm)));
            mcu_block_rows.push(vs);
        }
        Some(DctThumb { shrinks: (0..comps.len()).map(|_| None).collect(), comps, mcu_block_rows, s })
    }

    /// Takes the rows from MCU row `first_mcu_row` down from `lower`, which
    /// collected that part of the same picture.
    fn take_rows_from(&mut self, lower: DctThumb, first_mcu_row: usize) {
        for ((mine, theirs), per_mcu) in self.shrinks.iter_mut().zip(lower.shrinks).zip(&self.mcu_block_rows) {
            match (mine.as_mut(), theirs) {
                (Some(m), Some(t)) if m.plane.width == t.plane.width && m.plane.height == t.plane.height => {
                    let from = (first_mcu_row * per_mcu * self.s * m.plane.width).min(m.plane.data.len());
                    m.plane.data[from..].copy_from_slice(&t.plane.data[from..]);
                }
                // A part without this component's rows: no small picture.
                _ => *mine = None,
            }
        }
    }

    /// Block row `by` of a part of the turned picture that starts at MCU
    /// row `first_mcu_row` (0 for the whole picture; see
    /// [`transform_in_halves`]), placed in the whole picture.
    fn add(&mut self, component: usize, by: usize, first_mcu_row: usize, row: &[i16]) {
        let (Some((q, _, height)), Some(&per_mcu), Some(slot)) =
            (self.comps.get(component), self.mcu_block_rows.get(component), self.shrinks.get_mut(component))
        else {
            return;
        };
        // Whole blocks, with room for the rows that pad the last iMCU (cut
        // off in `finish`).
        let (s, height_blocks) = (self.s, height.div_ceil(8));
        slot.get_or_insert_with(|| DctShrink::new(s, q, row.len() / 64, height_blocks.next_multiple_of(4)))
            .add_row(by + first_mcu_row * per_mcu, row);
    }

    fn finish(self, shown: Turn, display: (u32, u32)) -> Option<Small> {
        let mut planes: Vec<Plane> = Vec::with_capacity(self.comps.len());
        for (shrink, (_, cw, ch)) in self.shrinks.into_iter().zip(&self.comps) {
            planes.push(shrink?.finish(*cw, *ch));
        }
        let (pixels, channels) = match planes.as_slice() {
            [y] => (y.data.clone(), 1),
            [y, cb, cr] => (ycc_to_rgb(y, cb, cr), 3),
            _ => return None,
        };
        Some(Small {
            width: planes[0].width,
            height: planes[0].height,
            pixels,
            channels,
            shown,
            flipped: true,
            display,
        })
    }
}

/// A transform's output and the small picture collected on the way.
type Transformed = (Vec<u8>, Option<DctThumb>);

fn lossless_inner(
    input: &[u8],
    limits: &Limits,
    want_small: bool,
) -> Result<Option<(Flipped, Option<Small>)>, FlipError> {
    let frame = jpeg::frame(input).ok_or_else(|| unreadable("JPEG", "its frame header could not be read"))?;
    let o = orientation(input);
    let shown = Turn::from_exif(o);
    let (mw, mh) = frame.imcu();
    let (w, h) = (frame.width, frame.height);
    let (dw, dh) = if shown.transposes() { (h, w) } else { (w, h) };
    let mut t = TjTransformer::new(limits.max_scans, limits.max_pixels).map_err(internal)?;
    let colorspace = if want_small {
        let mut d = TjDecoder::new(limits.max_scans, limits.max_pixels).map_err(internal)?;
        d.header(input).map_err(|e| unreadable("JPEG", e))?.colorspace
    } else {
        -1
    };

    // Runs one transform (on two cores when it can), with a small picture
    // collected on the way when asked.
    let mut run = |turn: Turn| -> Result<Option<Transformed>, FlipError> {
        if let Some(done) = transform_in_halves(input, &frame, turn, limits, want_small, colorspace) {
            return Ok(Some(done));
        }
        match transform_collecting(&mut t, input, &frame, turn, want_small, colorspace, None) {
            Ok(done) => Ok(Some(done)),
            Err(TransformError::NotPerfect) => Ok(None),
            Err(TransformError::Failed(e)) => Err(unreadable("JPEG", e)),
        }
    };

    // The stored-pixel turn that flips the displayed picture, tag kept.
    let keep = shown.inverse().after(Turn::VFLIP).after(shown);
    if keep.is_perfect(w, h, mw, mh)
        && let Some((bytes, small)) = run(keep)?
    {
        let method = if keep == Turn::VFLIP { "jpeg-lossless-vflip" } else { "jpeg-lossless-hflip" };
        let small = small.and_then(|s| s.finish(shown, (dw, dh)));
        return Ok(Some((Flipped { bytes, width: dw, height: dh, method }, small)));
    }
    // The file already depends on viewers honouring its tag, so a new tag
    // asks nothing more of them: transpose (always perfect) and retag so
    // that `new ∘ transpose = V ∘ shown`.
    if o != 1 {
        let new_tag = Turn::VFLIP.after(shown).after(Turn::TRANSPOSE.inverse());
        if let Some((mut bytes, small)) = run(Turn::TRANSPOSE)? {
            let rewritten = jpeg::exif_tiff_mut(&mut bytes)
                .map(|tiff| exif::rewrite_orientation(tiff, new_tag.exif(), true).is_ok())
                .unwrap_or(false);
            if rewritten {
                let small = small.and_then(|s| s.finish(new_tag, (dw, dh)));
                let flipped = Flipped { bytes, width: dw, height: dh, method: "jpeg-lossless-transpose" };
                return Ok(Some((flipped, small)));
            }
        }
    }
    Ok(None)
}

/// One lossless transform `turn` of the turned picture's `rows` (first,
/// count; all when `None`, see [`TjTransformer::transform_rows`]), with the
/// small picture collected on the way when asked.
fn transform_collecting(
    t: &mut TjTransformer,
    input: &[u8],
    frame: &jpeg::Frame,
    turn: Turn,
    want_small: bool,
    colorspace: i32,
    rows: Option<(u32, u32)>,
) -> Result<Transformed, TransformError> {
    let mut small = if want_small { DctThumb::new(input, frame, colorspace, turn) } else { None };
    let (mw, mh) = frame.imcu();
    let mcu_height = if turn.transposes() { mw } else { mh };
    let first_mcu_row = rows.map_or(0, |(first, _)| (first / mcu_height) as usize);
    let bytes = match small.as_mut() {
        Some(s) => {
            let mut sink = |c: usize, by: usize, _: usize, row: &[i16]| s.add(c, by, first_mcu_row, row);
            t.transform_rows(input, turn.tjxop(), frame.progressive, rows, Some(&mut sink))
        }
        None => t.transform_rows(input, turn.tjxop(), frame.progressive, rows, None),
    }?;
    Ok((bytes, small))
}

/// Lossless transforms of pictures this large and up are split in two
/// halves, one per core.
const SPLIT_FROM_PIXELS: u64 = 2_000_000;
/// ... and up to this size: each half decodes the whole picture, so a
/// split holds its coefficients twice.
const SPLIT_UP_TO_PIXELS: u64 = 32_000_000;

/// How a picture's turned rows are cut in two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Halves {
    /// Rows of MCUs per restart interval.
    restart_rows: usize,
    /// Restart intervals in the top half.
    top_intervals: usize,
    /// Pixel rows of one row of MCUs.
    mcu_height: u32,
}

impl Halves {
    fn top_mcu_rows(self) -> usize {
        self.top_intervals * self.restart_rows
    }

    fn top_rows(self) -> u32 {
        self.top_mcu_rows() as u32 * self.mcu_height
    }
}

/// Where a baseline picture `frame`, turned by `turn` without transposing,
/// is cut: near its middle, at a whole number of restart intervals of whole
/// MCU rows, each at most the 65 535 MCUs a restart interval may hold.
fn halves(frame: &jpeg::Frame, turn: Turn) -> Option<Halves> {
    let pixels = frame.width as u64 * frame.height as u64;
    if frame.progressive || turn.transposes() || !(SPLIT_FROM_PIXELS..=SPLIT_UP_TO_PIXELS).contains(&pixels) {
        return None;
    }
    let (mw, mh) = frame.imcu();
    let mcus_per_row = frame.width.div_ceil(mw) as usize;
    let half = frame.height.div_ceil(mh) as usize / 2;
    let restart_rows = (65_535 / mcus_per_row.max(1)).min(half);
    if restart_rows == 0 {
        return None;
    }
    Some(Halves { restart_rows, top_intervals: half / restart_rows, mcu_height: mh })
}

/// The lossless transform `turn` on two cores: each thread reads the whole
/// picture (the entropy-coded data has to be read in order) and writes half
/// of the turned rows with restart markers at the cut, and the halves are
/// joined into one file ([`jpeg::join_restart_halves`]) holding the same
/// coefficients the whole transform writes. About a third of a lossless
/// flip is writing its output and collecting the thumbnail's coefficients;
/// those are what the halves share. `None` (the caller transforms the whole
/// picture) when the picture is not one to split, there is one core, or
/// anything about the split fails: the whole transform then says why.
fn transform_in_halves(
    input: &[u8],
    frame: &jpeg::Frame,
    turn: Turn,
    limits: &Limits,
    want_small: bool,
    colorspace: i32,
) -> Option<Transformed> {
    let cut = halves(frame, turn)?;
    if !cores::take_second_core() {
        return None;
    }
    let part = |rows: (u32, u32)| -> Option<Transformed> {
        let mut t = TjTransformer::new(limits.max_scans, limits.max_pixels).ok()?;
        t.set_restart_rows(cut.restart_rows as u32).ok()?;
        transform_collecting(&mut t, input, frame, turn, want_small, colorspace, Some(rows)).ok()
    };
    let (top, bottom) = std::thread::scope(|scope| {
        let bottom = std::thread::Builder::new()
            .name("flip-lower-half".into())
            .spawn_scoped(scope, || {
                let _cpu = cores::FlipCpu::helper();
                part((cut.top_rows(), 0))
            })
            .ok()?;
        let top = part((0, cut.top_rows()));
        Some((top, bottom.join().ok()?))
    })?;
    let ((top, top_small), (bottom, bottom_small)) = (top?, bottom?);
    let bytes = jpeg::join_restart_halves(&top, &bottom, frame.height, cut.top_intervals, input)?;
    let small = match (top_small, bottom_small) {
        (Some(mut upper), Some(lower)) => {
            upper.take_rows_from(lower, cut.top_mcu_rows());
            Some(upper)
        }
        _ => None,
    };
    Some((bytes, small))
}

/// TJSAMP_* → how many luma rows share a chroma row.
fn vertical_subsampling(subsamp: i32) -> u32 {
    match subsamp {
        2 | 4 => 2,
        6 => 4,
        _ => 1,
    }
}

/// The source's subsampling, turned with the picture when it was transposed.
fn turned_subsamp(subsamp: i32, transposed: bool) -> i32 {
    let s = if subsamp < 0 { raw::TJSAMP_TJSAMP_420 } else { subsamp };
    if !transposed {
        return s;
    }
    match s {
        1 => 4, // 4:2:2 ↔ 4:4:0
        4 => 1,
        5 => 6, // 4:1:1 ↔ 4:4:1
        6 => 5,
        other => other,
    }
}

/// Decode → flip → encode with libjpeg-turbo.
fn reencode_inner(input: &[u8], limits: &Limits, want_small: bool) -> Result<(Flipped, Option<Small>), FlipError> {
    let o = orientation(input);
    let turn = Turn::VFLIP.after(Turn::from_exif(o));
    let quality = jpeg::estimate_quality(input).unwrap_or(FALLBACK_QUALITY);
    let mut d = TjDecoder::new(limits.max_scans, limits.max_pixels).map_err(internal)?;
    let header = d.header(input).map_err(|e| unreadable("JPEG", e))?;
    let gray = header.colorspace == raw::TJCS_TJCS_GRAY as i32;
    let cmyk = header.colorspace == raw::TJCS_TJCS_CMYK as i32 || header.colorspace == raw::TJCS_TJCS_YCCK as i32;
    let ycc = header.colorspace == raw::TJCS_TJCS_YCbCr as i32;
    let mut small = None;

    let (bytes, width, height, method) = if o == 1
        && (gray || ycc)
        && header.subsamp >= 0
        && header.height % vertical_subsampling(header.subsamp) == 0
    {
        // Rows of every plane line up with whole chroma rows: flipping the
        // planes is exact.
        let mut yuv = d.decode_yuv(input).map_err(|e| unreadable("JPEG", e))?;
        if want_small {
            // The original, upright (orientation 1 on this path).
            let f = shrink_factor(yuv.width.max(yuv.height));
            let planes: Vec<Plane> = yuv
                .planes
                .iter()
                .zip(&yuv.widths)
                .map(|(p, &pw)| {
                    let ph = p.len() / pw.max(1);
                    let fx = (f * pw / yuv.width as usize).max(1);
                    let fy = (f * ph / yuv.height as usize).max(1);
                    box_down(p, pw, ph, 1, fx, fy)
                })
                .collect();
            small = match planes.as_slice() {
                [y] => Some((y.data.clone(), y.width, y.height, 1)),
                [y, cb, cr] => Some((ycc_to_rgb(y, cb, cr), y.width, y.height, 3)),
                _ => None,
            }
            .map(|(pixels, width, height, channels)| Small {
                pixels,
                width,
                height,
                channels,
                shown: Turn::IDENTITY,
                flipped: false,
                display: (yuv.width, yuv.height),
            });
        }
        for (plane, &w) in yuv.planes.iter_mut().zip(&yuv.widths) {
            flip_rows(plane, w);
        }
        let cs = if gray { raw::TJCS_TJCS_GRAY } else { raw::TJCS_TJCS_YCbCr };
        let mut e = TjEncoder::new(quality, header.subsamp, cs as i32).map_err(internal)?;
        set_density(&mut e, input, false)?;
        let bytes = e.compress_yuv(&yuv).map_err(internal)?;
        (bytes, yuv.width, yuv.height, "jpeg-reencode-yuv")
    } else {
        let (pf, channels, cs) = if gray {
            (raw::TJPF_TJPF_GRAY, 1, raw::TJCS_TJCS_GRAY as i32)
        } else if cmyk {
            (raw::TJPF_TJPF_CMYK, 4, header.colorspace)
        } else {
            (raw::TJPF_TJPF_RGB, 3, raw::TJCS_TJCS_YCbCr as i32)
        };
        // Upright: the decoder writes the rows last first, which is the flip.
        d.set_bottom_up(o == 1).map_err(internal)?;
        let (pixels, w, h) = d.decode(input, 1, 1, pf, channels).map_err(|e| unreadable("JPEG", e))?;
        let (pixels, w, h) = if o == 1 { (pixels, w, h) } else { turn_pixels(&pixels, w, h, channels, turn) };
        if want_small && !cmyk {
            // The flip, as displayed.
            let f = shrink_factor(w.max(h));
            let p = box_down(&pixels, w as usize, h as usize, channels, f, f);
            small = Some(Small {
                pixels: p.data,
                width: p.width,
                height: p.height,
                channels,
                shown: Turn::IDENTITY,
                flipped: true,
                display: (w, h),
            });
        }
        let subsamp = if gray { raw::TJSAMP_TJSAMP_GRAY } else { turned_subsamp(header.subsamp, turn.transposes()) };
        let mut e = TjEncoder::new(quality, subsamp, cs).map_err(internal)?;
        set_density(&mut e, input, turn.transposes())?;
        let bytes = e.compress(&pixels, w, h, pf, channels).map_err(internal)?;
        (bytes, w, h, "jpeg-reencode")
    };

    let mut extra = jpeg::metadata_segments(input);
    if o != 1 {
        // The pixels are upright now: say so.
        for seg in extra.iter_mut() {
            // marker (2), length (2), "Exif\0\0" (6), then the TIFF data.
            if seg.get(1) == Some(&0xE1) && seg.get(4..10) == Some(b"Exif\0\0") {
                // An unusable block is carried as it is: the worker read it
                // as upright too.
                let _ = exif::rewrite_orientation(&mut seg[10..], 1, turn.transposes());
            }
        }
    }
    let flipped = Flipped { bytes: jpeg::insert_segments(bytes, &extra), width, height, method };
    Ok((flipped, small))
}

fn set_density(e: &mut TjEncoder, input: &[u8], transposed: bool) -> Result<(), FlipError> {
    if let Some((units, x, y)) = jpeg::jfif_density(input) {
        let (x, y) = if transposed { (y, x) } else { (x, y) };
        e.set_density(units, x, y).map_err(internal)?;
    }
    Ok(())
}

/// Thumbnails of the displayed picture and of its flip, from one scaled
/// decode (libjpeg-turbo's DCT scaling does most of the shrinking).
pub fn thumbnails(input: &[u8], limits: &Limits) -> Result<Thumbnails, FlipError> {
    decode_at_least(input, limits, thumb_size)?.encode(input)
}

/// The picture decoded at the smallest of 1/8, 1/4, 1/2 and full scale
/// whose long side is still at least that of `target(displayed width,
/// height)`, in its stored orientation (`shown` turns it upright).
pub(crate) fn decode_at_least(
    input: &[u8],
    limits: &Limits,
    target: impl Fn(u32, u32) -> (u32, u32),
) -> Result<Small, FlipError> {
    let o = orientation(input);
    let shown = Turn::from_exif(o);
    let mut d = TjDecoder::new(limits.max_scans, limits.max_pixels).map_err(internal)?;
    let header = d.header(input).map_err(|e| unreadable("JPEG", e))?;
    let (dw, dh) = if shown.transposes() { (header.height, header.width) } else { (header.width, header.height) };
    let (tw, th) = target(dw, dh);
    let long = header.width.max(header.height) as u64;
    let target = tw.max(th) as u64;
    let k = [1u64, 2, 4, 8].into_iter().find(|k| (long * k).div_ceil(8) >= target).unwrap_or(8);
    // libjpeg-turbo wants the fraction in lowest terms: 1/8, 1/4, 1/2, 1/1.
    let (num, denom) = (1, 8 / k as i32);
    let gray = header.colorspace == raw::TJCS_TJCS_GRAY as i32;
    let cmyk = header.colorspace == raw::TJCS_TJCS_CMYK as i32 || header.colorspace == raw::TJCS_TJCS_YCCK as i32;
    let (pixels, w, h, channels) = if gray {
        let (p, w, h) = d.decode(input, num, denom, raw::TJPF_TJPF_GRAY, 1).map_err(|e| unreadable("JPEG", e))?;
        (p, w, h, 1)
    } else if cmyk {
        let (p, w, h) = d.decode(input, num, denom, raw::TJPF_TJPF_CMYK, 4).map_err(|e| unreadable("JPEG", e))?;
        // Adobe's inverted CMYK, roughly: enough for a preview.
        let rgb = p
            .chunks_exact(4)
            .flat_map(|c| {
                let k = c[3] as u32;
                [c[0], c[1], c[2]].map(|v| (v as u32 * k / 255) as u8)
            })
            .collect();
        (rgb, w, h, 3)
    } else {
        let (p, w, h) = d.decode(input, num, denom, raw::TJPF_TJPF_RGB, 3).map_err(|e| unreadable("JPEG", e))?;
        (p, w, h, 3)
    };
    Ok(Small { pixels, width: w as usize, height: h as usize, channels, shown, flipped: false, display: (dw, dh) })
}
