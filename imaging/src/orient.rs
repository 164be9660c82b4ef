//! The eight ways to turn or mirror a picture (the dihedral group of the
//! square), as EXIF orientations and as libjpeg-turbo's lossless transforms.
//!
//! An element is a signed permutation matrix acting on centred pixel
//! coordinates (x to the right, y down): `p' = M p`. EXIF orientation `o`
//! says that the picture is *displayed* as `D_o(stored)`; libjpeg-turbo's
//! operations are the same matrices applied to the stored pixels.

use turbojpeg::raw;

/// A turn or mirror: `[[a, b], [c, d]]` with entries in {-1, 0, 1}.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Turn([[i8; 2]; 2]);

impl Turn {
    pub const IDENTITY: Turn = Turn([[1, 0], [0, 1]]);
    pub const HFLIP: Turn = Turn([[-1, 0], [0, 1]]);
    pub const VFLIP: Turn = Turn([[1, 0], [0, -1]]);
    pub const ROT180: Turn = Turn([[-1, 0], [0, -1]]);
    pub const TRANSPOSE: Turn = Turn([[0, 1], [1, 0]]);
    /// Clockwise, as displayed (y points down).
    pub const ROT90: Turn = Turn([[0, -1], [1, 0]]);
    pub const TRANSVERSE: Turn = Turn([[0, -1], [-1, 0]]);
    pub const ROT270: Turn = Turn([[0, 1], [-1, 0]]);

    /// In EXIF order: index 0 is orientation 1.
    const EXIF: [Turn; 8] = [
        Self::IDENTITY,
        Self::HFLIP,
        Self::ROT180,
        Self::VFLIP,
        Self::TRANSPOSE,
        Self::ROT90,
        Self::TRANSVERSE,
        Self::ROT270,
    ];

    /// What EXIF orientation `o` (1–8) does to the stored picture to display
    /// it; anything else is upright.
    pub fn from_exif(o: u8) -> Turn {
        Self::EXIF.get((o as usize).wrapping_sub(1)).copied().unwrap_or(Self::IDENTITY)
    }

    pub fn exif(self) -> u8 {
        Self::EXIF
            .iter()
            .position(|t| *t == self)
            .map(|i| i as u8 + 1)
            .expect("the eight turns are all EXIF orientations")
    }

    /// `self ∘ other`: first `other`, then `self`.
    pub fn after(self, other: Turn) -> Turn {
        let (a, b) = (self.0, other.0);
        let mut m = [[0i8; 2]; 2];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, cell) in row.iter_mut().enumerate() {
                *cell = a[i][0] * b[0][j] + a[i][1] * b[1][j];
            }
        }
        Turn(m)
    }

    /// The inverse: these matrices are orthogonal, so it is the transpose.
    pub fn inverse(self) -> Turn {
        let m = self.0;
        Turn([[m[0][0], m[1][0]], [m[0][1], m[1][1]]])
    }

    /// Does it swap width and height?
    pub fn transposes(self) -> bool {
        self.0[0][0] == 0
    }

    /// libjpeg-turbo's lossless operation for this turn (TJXOP_*).
    pub(crate) fn tjxop(self) -> i32 {
        let op = match self {
            t if t == Self::IDENTITY => raw::TJXOP_TJXOP_NONE,
            t if t == Self::HFLIP => raw::TJXOP_TJXOP_HFLIP,
            t if t == Self::VFLIP => raw::TJXOP_TJXOP_VFLIP,
            t if t == Self::ROT180 => raw::TJXOP_TJXOP_ROT180,
            t if t == Self::TRANSPOSE => raw::TJXOP_TJXOP_TRANSPOSE,
            t if t == Self::ROT90 => raw::TJXOP_TJXOP_ROT90,
            t if t == Self::TRANSVERSE => raw::TJXOP_TJXOP_TRANSVERSE,
            _ => raw::TJXOP_TJXOP_ROT270,
        };
        op as i32
    }

    /// Would libjpeg-turbo do this losslessly on a `width`×`height` picture
    /// made of `mcu_w`×`mcu_h` iMCUs? Only edges that move to the top or left
    /// must be whole iMCUs (libjpeg-turbo's `jtransform_perfect_transform`).
    pub fn is_perfect(self, width: u32, height: u32, mcu_w: u32, mcu_h: u32) -> bool {
        let whole_w = width.is_multiple_of(mcu_w.max(1));
        let whole_h = height.is_multiple_of(mcu_h.max(1));
        match self {
            t if t == Self::HFLIP || t == Self::ROT270 => whole_w,
            t if t == Self::VFLIP || t == Self::ROT90 => whole_h,
            t if t == Self::ROT180 || t == Self::TRANSVERSE => whole_w && whole_h,
            _ => true,
        }
    }

    /// Where the output pixel `(x, y)` of a turned `width`×`height` picture
    /// comes from in the source: for remapping pixel buffers.
    pub fn source_of(self, x: u32, y: u32, width: u32, height: u32) -> (u32, u32) {
        let (ow, oh) = if self.transposes() { (height, width) } else { (width, height) };
        // Work in doubled centred coordinates so half pixels stay integers.
        let cx = 2 * x as i64 + 1 - ow as i64;
        let cy = 2 * y as i64 + 1 - oh as i64;
        let inv = self.inverse().0;
        let sx = inv[0][0] as i64 * cx + inv[0][1] as i64 * cy;
        let sy = inv[1][0] as i64 * cx + inv[1][1] as i64 * cy;
        (((sx + width as i64 - 1) / 2) as u32, ((sy + height as i64 - 1) / 2) as u32)
    }
}

/// Applies `turn` to a packed pixel buffer of `channels` bytes per pixel;
/// returns the new buffer and its width and height.
pub fn turn_pixels(pixels: &[u8], width: u32, height: u32, channels: usize, turn: Turn) -> (Vec<u8>, u32, u32) {
    let (ow, oh) = if turn.transposes() { (height, width) } else { (width, height) };
    let mut out = vec![0u8; pixels.len()];
    for y in 0..oh {
        let row = &mut out[(y as usize * ow as usize) * channels..][..ow as usize * channels];
        for (x, px) in row.chunks_exact_mut(channels).enumerate() {
            let (sx, sy) = turn.source_of(x as u32, y, width, height);
            let at = (sy as usize * width as usize + sx as usize) * channels;
            px.copy_from_slice(&pixels[at..at + channels]);
        }
    }
    (out, ow, oh)
}

/// Flips rows in place: the last row becomes the first.
pub fn flip_rows(buf: &mut [u8], row_len: usize) {
    if row_len == 0 {
        return;
    }
    let rows = buf.len() / row_len;
    for y in 0..rows / 2 {
        let (top, bottom) = buf.split_at_mut((rows - 1 - y) * row_len);
        top[y * row_len..(y + 1) * row_len].swap_with_slice(&mut bottom[..row_len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_round_trips_and_group_laws() {
        for o in 1..=8 {
            let t = Turn::from_exif(o);
            assert_eq!(t.exif(), o);
            assert_eq!(t.after(t.inverse()), Turn::IDENTITY);
        }
        // Turning a quarter twice is a half turn; a vertical flip of a
        // transposed picture is a horizontal flip of the stored one.
        assert_eq!(Turn::ROT90.after(Turn::ROT90), Turn::ROT180);
        let d6 = Turn::from_exif(6);
        assert_eq!(d6.inverse().after(Turn::VFLIP).after(d6), Turn::HFLIP);
        let d3 = Turn::from_exif(3);
        assert_eq!(d3.inverse().after(Turn::VFLIP).after(d3), Turn::VFLIP);
    }

    #[test]
    fn turn_pixels_matches_the_exif_meaning() {
        // 3×2 picture, one byte per pixel:  a b c / d e f
        let px = b"abcdef";
        let (out, w, h) = turn_pixels(px, 3, 2, 1, Turn::ROT90);
        // Clockwise: d a / e b / f c
        assert_eq!((w, h, &out[..]), (2, 3, &b"daebfc"[..]));
        let (out, _, _) = turn_pixels(px, 3, 2, 1, Turn::VFLIP);
        assert_eq!(&out[..], b"defabc");
        let (out, _, _) = turn_pixels(px, 3, 2, 1, Turn::TRANSPOSE);
        assert_eq!(&out[..], b"adbecf");
        let (out, _, _) = turn_pixels(px, 3, 2, 1, Turn::ROT270);
        assert_eq!(&out[..], b"cfbead");
        let mut rows = px.to_vec();
        flip_rows(&mut rows, 3);
        assert_eq!(&rows[..], b"defabc");
    }

    #[test]
    fn perfect_transforms() {
        // 4:2:0 (16×16 iMCUs), 2056×3088: whole iMCU rows, a partial column.
        assert!(Turn::VFLIP.is_perfect(2056, 3088, 16, 16));
        assert!(!Turn::HFLIP.is_perfect(2056, 3088, 16, 16));
        assert!(Turn::TRANSPOSE.is_perfect(2056, 3087, 16, 16));
        assert!(!Turn::ROT180.is_perfect(2056, 3088, 16, 16));
    }
}
