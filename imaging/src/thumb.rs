//! Small pictures for thumbnails, made from what the JPEG flip already has
//! in hand instead of decoding the file a second time:
//!
//! - the DCT coefficients libjpeg-turbo passes through during a lossless
//!   transform: each 8×8 block gives its 1×1 (DC) or 2×2 box average
//!   directly, the exact mean of its inverse DCT over each cell;
//! - decoded YUV planes or pixels, box-averaged.
//!
//! The result is a little larger than the thumbnail, which a proper filter
//! then brings to size.

use std::f32::consts::PI;

/// One plane of samples (a colour component, or interleaved pixels).
#[derive(Debug, Clone)]
pub(crate) struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Rounds and clamps to a sample. `f32::round` is a libm call on baseline
/// x86-64; adding ½ before the truncating cast is not, and rounds the same
/// once clamped to the non-negative range.
#[inline]
fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// Box-averages `channels`-interleaved samples over `fx`×`fy` cells (edge
/// cells average what they have).
pub(crate) fn box_down(data: &[u8], width: usize, height: usize, channels: usize, fx: usize, fy: usize) -> Plane {
    let (fx, fy) = (fx.max(1), fy.max(1));
    if fx == 1 && fy == 1 {
        return Plane { width, height, data: data[..width * height * channels].to_vec() };
    }
    let (ow, oh) = (width.div_ceil(fx), height.div_ceil(fy));
    let mut sums = vec![0u32; ow * channels];
    let mut out = Vec::with_capacity(ow * oh * channels);
    let cell = fx * channels;
    for oy in 0..oh {
        sums.iter_mut().for_each(|s| *s = 0);
        let rows = (oy * fy)..((oy + 1) * fy).min(height);
        let n_rows = rows.len() as u32;
        for y in rows {
            let row = &data[y * width * channels..(y + 1) * width * channels];
            if channels == 1 {
                // The common case (YUV planes): a plain sum the compiler vectorises.
                for (s, chunk) in sums.iter_mut().zip(row.chunks(fx)) {
                    *s += chunk.iter().map(|&v| v as u32).sum::<u32>();
                }
            } else {
                for (s, chunk) in sums.chunks_exact_mut(channels).zip(row.chunks(cell)) {
                    for px in chunk.chunks_exact(channels) {
                        for (acc, &v) in s.iter_mut().zip(px) {
                            *acc += v as u32;
                        }
                    }
                }
            }
        }
        for ox in 0..ow {
            let n = n_rows * ((((ox + 1) * fx).min(width) - ox * fx) as u32);
            for c in 0..channels {
                out.push(((sums[ox * channels + c] + n / 2) / n) as u8);
            }
        }
    }
    Plane { width: ow, height: oh, data: out }
}

/// JFIF YCbCr → RGB, with each chroma plane stretched to the luma plane's
/// size (nearest sample: thumbnails are shrunk further afterwards). Fixed
/// point with 16 fraction bits, as libjpeg does it.
pub(crate) fn ycc_to_rgb(y: &Plane, cb: &Plane, cr: &Plane) -> Vec<u8> {
    const ONE: i32 = 1 << 16;
    const HALF: i32 = 1 << 15;
    let fix = |v: f64| (v * ONE as f64).round() as i32;
    let (cr_r, cb_g, cr_g, cb_b) = (fix(1.402), fix(0.344_136), fix(0.714_136), fix(1.772));
    let mut out = vec![0u8; y.width * y.height * 3];
    let map = |i: usize, from: usize, to: usize| ((i * to) / from.max(1)).min(to.saturating_sub(1));
    let cols: Vec<usize> = (0..y.width).map(|x| map(x, y.width, cb.width)).collect();
    for (row, out_row) in out.chunks_exact_mut(y.width * 3).enumerate() {
        let crow = map(row, y.height, cb.height);
        let (ys, cbs, crs) = (
            &y.data[row * y.width..(row + 1) * y.width],
            &cb.data[crow * cb.width..(crow + 1) * cb.width],
            &cr.data[crow * cr.width..(crow + 1) * cr.width],
        );
        for ((px, &l), &cx) in out_row.chunks_exact_mut(3).zip(ys).zip(&cols) {
            let l = (l as i32) << 16;
            let (b, r) = (cbs[cx] as i32 - 128, crs[cx] as i32 - 128);
            px[0] = ((l + cr_r * r + HALF) >> 16).clamp(0, 255) as u8;
            px[1] = ((l - cb_g * b - cr_g * r + HALF) >> 16).clamp(0, 255) as u8;
            px[2] = ((l + cb_b * b + HALF) >> 16).clamp(0, 255) as u8;
        }
    }
    out
}

/// Resizes `channels`-interleaved samples (1, 3 or 4; RGBA with its alpha
/// weighed in) with a triangle filter as wide as the scale (an area average
/// when shrinking, bilinear when enlarging), through `fast_image_resize`'s
/// SIMD convolution.
pub(crate) fn resize(
    data: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    nw: usize,
    nh: usize,
) -> Result<Vec<u8>, String> {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let pixels = &data[..width * height * channels];
    if (width, height) == (nw, nh) {
        return Ok(pixels.to_vec());
    }
    let pixel_type = match channels {
        1 => PixelType::U8,
        3 => PixelType::U8x3,
        4 => PixelType::U8x4,
        n => return Err(format!("cannot resize pictures of {n} channels")),
    };
    let src = ImageRef::new(width as u32, height as u32, pixels, pixel_type)
        .map_err(|e| format!("resizing a {width}×{height} picture: {e}"))?;
    let mut dst = Image::new(nw as u32, nh as u32, pixel_type);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| format!("resizing a {width}×{height} picture to {nw}×{nh}: {e}"))?;
    Ok(dst.into_vec())
}

/// Collects, block row by block row, the `s`×`s` box averages (s = 1 or 2)
/// of every block of one component from its quantised DCT coefficients.
pub(crate) struct DctShrink {
    s: usize,
    /// DC's dequantisation step.
    dc: f32,
    /// For s = 2: each coefficient that has a mean over half a block (DC
    /// and odd frequencies, both ways) and what it adds to each of the four
    /// cells, dequantisation included.
    cells: Vec<(usize, [f32; 4])>,
    pub plane: Plane,
}

impl DctShrink {
    /// For a component plane `width_blocks`×`height_blocks` blocks.
    pub fn new(s: usize, quant: &[u16; 64], width_blocks: usize, height_blocks: usize) -> DctShrink {
        assert!(s == 1 || s == 2);
        // Mean over half a block of C(k)/2 · cos((2x+1)kπ/16), per half.
        let half = |k: usize, h: usize| -> f32 {
            let c = if k == 0 { 0.5 / 2f32.sqrt() } else { 0.5 };
            let sum: f32 = (h * 4..h * 4 + 4).map(|x| (((2 * x + 1) * k) as f32 * PI / 16.0).cos()).sum();
            c * sum / 4.0
        };
        // Even frequencies other than DC average to nothing over a half.
        const K: [usize; 5] = [0, 1, 3, 5, 7];
        let mut cells = Vec::with_capacity(25);
        if s == 2 {
            for v in K {
                for u in K {
                    let q = quant[v * 8 + u] as f32;
                    let w = [
                        q * half(v, 0) * half(u, 0),
                        q * half(v, 0) * half(u, 1),
                        q * half(v, 1) * half(u, 0),
                        q * half(v, 1) * half(u, 1),
                    ];
                    cells.push((v * 8 + u, w));
                }
            }
        }
        DctShrink {
            s,
            dc: quant[0] as f32 / 8.0,
            cells,
            plane: Plane {
                width: width_blocks * s,
                height: height_blocks * s,
                data: vec![0; width_blocks * s * height_blocks * s],
            },
        }
    }

    /// One row of blocks (64 coefficients each, natural order) at block row `by`.
    pub fn add_row(&mut self, by: usize, coeffs: &[i16]) {
        let s = self.s;
        let w = self.plane.width;
        if (by + 1) * s > self.plane.height {
            return;
        }
        for (bx, block) in coeffs.chunks_exact(64).enumerate().take(w / s) {
            if s == 1 {
                self.plane.data[by * w + bx] = to_u8(block[0] as f32 * self.dc + 128.0);
                continue;
            }
            // Branch-free: which coefficients are zero is data-dependent and
            // mispredicted often; 25 × 4 multiply-adds vectorise instead.
            let mut acc = [128f32; 4];
            for (i, wt) in &self.cells {
                let c = block[*i] as f32;
                for (a, w) in acc.iter_mut().zip(wt) {
                    *a += c * w;
                }
            }
            let top = (by * 2) * w + bx * 2;
            self.plane.data[top] = to_u8(acc[0]);
            self.plane.data[top + 1] = to_u8(acc[1]);
            self.plane.data[top + w] = to_u8(acc[2]);
            self.plane.data[top + w + 1] = to_u8(acc[3]);
        }
    }

    /// The plane cut to the component's real size (`width`×`height` samples
    /// at full scale), without the padding blocks.
    pub fn finish(self, width: usize, height: usize) -> Plane {
        let (w, h) =
            ((width * self.s).div_ceil(8).min(self.plane.width), (height * self.s).div_ceil(8).min(self.plane.height));
        let mut data = Vec::with_capacity(w * h);
        for row in self.plane.data.chunks_exact(self.plane.width).take(h) {
            data.extend_from_slice(&row[..w]);
        }
        Plane { width: w, height: h, data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_down_averages_and_keeps_edges() {
        // 3×2, one channel: 0 10 20 / 30 40 50, cells of 2×2.
        let p = box_down(&[0, 10, 20, 30, 40, 50], 3, 2, 1, 2, 2);
        assert_eq!((p.width, p.height), (2, 1));
        assert_eq!(p.data, vec![20, 35]);
    }

    #[test]
    fn resize_averages_when_shrinking_and_keeps_flat_areas() {
        let flat = vec![77u8; 30 * 20 * 3];
        assert!(resize(&flat, 30, 20, 3, 7, 5).unwrap().iter().all(|&v| v == 77));
        // A left-dark, right-bright edge stays one after halving.
        let edge: Vec<u8> = (0..8 * 2).map(|i| if i % 8 < 4 { 0 } else { 200 }).collect();
        let small = resize(&edge, 8, 2, 1, 4, 1).unwrap();
        assert!(small[0] < 20 && small[3] > 180, "{small:?}");
    }

    #[test]
    fn ycc_matches_jfif() {
        let p = |v: u8| Plane { width: 1, height: 1, data: vec![v] };
        // Mid-grey, and a saturated red (Y 76, Cb 85, Cr 255 in JFIF).
        assert_eq!(ycc_to_rgb(&p(128), &p(128), &p(128)), vec![128, 128, 128]);
        let red = ycc_to_rgb(&p(76), &p(85), &p(255));
        assert!(red[0] > 250 && red[1] < 5 && red[2] < 5, "{red:?}");
    }

    #[test]
    fn dct_cells_are_the_means_of_the_inverse_dct() {
        // A block with DC and a first horizontal frequency: the left half is
        // brighter than the right, symmetrically about the DC level.
        let quant = [2u16; 64];
        let mut block = [0i16; 64];
        block[0] = 40; // DC: 40 × 2 / 8 = 10 above mid-grey
        block[1] = 30;
        let mut d = DctShrink::new(2, &quant, 1, 1);
        d.add_row(0, &block);
        let p = d.finish(8, 8);
        let (l, r) = (p.data[0] as i32, p.data[1] as i32);
        assert_eq!(p.data[0], p.data[2], "no vertical change");
        assert_eq!(l + r, 2 * 138, "mean is the DC level");
        assert!(l - r > 10, "left brighter: {l} {r}");
        let mut d = DctShrink::new(1, &quant, 1, 1);
        d.add_row(0, &block);
        assert_eq!(d.finish(8, 8).data, vec![138]);
    }
}
