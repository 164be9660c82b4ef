//! A small safe wrapper over libjpeg-turbo 3's C API, for the settings the
//! `turbojpeg` crate does not expose: stop on the first warning (damaged scan
//! data is an error, never a half-grey picture), a scan limit and a pixel
//! limit, bottom-up decoding, YUV planes, and lossless transforms under the
//! same limits.

use std::ffi::CStr;

use turbojpeg::raw;

/// One libjpeg-turbo instance.
struct Handle(raw::tjhandle);

// The handle is used by one thread at a time (the wrappers are not Sync).
unsafe impl Send for Handle {}

impl Handle {
    fn new(init: u32) -> Result<Handle, String> {
        // SAFETY: tj3Init has no preconditions; a null handle is checked.
        let h = unsafe { raw::tj3Init(init as i32) };
        if h.is_null() {
            return Err("libjpeg-turbo could not start".into());
        }
        Ok(Handle(h))
    }

    /// A handle that reads JPEG data under the upload limits.
    fn limited(init: u32, max_scans: u32, max_pixels: u64) -> Result<Handle, String> {
        let h = Handle::new(init)?;
        h.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        h.set(raw::TJPARAM_TJPARAM_SCANLIMIT, max_scans.min(i32::MAX as u32) as i32)?;
        h.set(raw::TJPARAM_TJPARAM_MAXPIXELS, max_pixels.min(i32::MAX as u64) as i32)?;
        Ok(h)
    }

    fn set(&self, param: raw::TJPARAM, value: i32) -> Result<(), String> {
        // SAFETY: the handle is valid for self's lifetime.
        if unsafe { raw::tj3Set(self.0, param as i32, value) } != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    fn get(&self, param: raw::TJPARAM) -> i32 {
        // SAFETY: as above.
        unsafe { raw::tj3Get(self.0, param as i32) }
    }

    fn error(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
        unsafe {
            let p = raw::tj3GetErrorStr(self.0);
            if p.is_null() {
                "unknown libjpeg-turbo error".into()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }

    fn header(&self, jpeg: &[u8]) -> Result<TjHeader, String> {
        // SAFETY: the buffer and its length describe valid memory.
        if unsafe { raw::tj3DecompressHeader(self.0, jpeg.as_ptr(), jpeg.len() as _) } != 0 {
            return Err(self.error());
        }
        Ok(TjHeader {
            width: self.get(raw::TJPARAM_TJPARAM_JPEGWIDTH).max(0) as u32,
            height: self.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT).max(0) as u32,
            subsamp: self.get(raw::TJPARAM_TJPARAM_SUBSAMP),
            colorspace: self.get(raw::TJPARAM_TJPARAM_COLORSPACE),
        })
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.0) }
    }
}

/// A buffer libjpeg-turbo allocated; freed on drop, also after an error.
struct TjBuf {
    ptr: *mut u8,
    len: usize,
}

impl TjBuf {
    fn new() -> TjBuf {
        TjBuf { ptr: std::ptr::null_mut(), len: 0 }
    }

    fn to_vec(&self) -> Vec<u8> {
        if self.ptr.is_null() {
            return Vec::new();
        }
        // SAFETY: libjpeg-turbo wrote `len` bytes at `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }.to_vec()
    }
}

impl Drop for TjBuf {
    fn drop(&mut self) {
        // SAFETY: tj3Free takes null or a buffer from tj3Alloc (what the
        // compress and transform functions allocate with).
        unsafe { raw::tj3Free(self.ptr.cast()) }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TjHeader {
    pub width: u32,
    pub height: u32,
    /// TJSAMP_* (-1 when unknown).
    pub subsamp: i32,
    /// TJCS_*.
    pub colorspace: i32,
}

/// Decoded YUV planes (Y, then Cb and Cr unless grayscale), each packed.
pub(crate) struct YuvPlanes {
    pub planes: Vec<Vec<u8>>,
    pub widths: Vec<usize>,
    pub width: u32,
    pub height: u32,
}

pub(crate) struct TjDecoder(Handle);

impl TjDecoder {
    pub fn new(max_scans: u32, max_pixels: u64) -> Result<TjDecoder, String> {
        Handle::limited(raw::TJINIT_TJINIT_DECOMPRESS, max_scans, max_pixels).map(TjDecoder)
    }

    pub fn error(&self) -> String {
        self.0.error()
    }

    pub fn header(&mut self, jpeg: &[u8]) -> Result<TjHeader, String> {
        self.0.header(jpeg)
    }

    /// Rows come out last first: the decode is the vertical flip, for free.
    pub fn set_bottom_up(&mut self, on: bool) -> Result<(), String> {
        self.0.set(raw::TJPARAM_TJPARAM_BOTTOMUP, on as i32)
    }

    fn set_scale(&mut self, num: i32, denom: i32) -> Result<(), String> {
        let factor = raw::tjscalingfactor { num, denom };
        // SAFETY: valid handle; the factor is one libjpeg-turbo supports (1/8 … 1).
        if unsafe { raw::tj3SetScalingFactor(self.0.0, factor) } != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    /// Decodes at `num/denom` scale into `pixel_format` (TJPF_*); returns the
    /// pixels and the scaled width and height.
    pub fn decode(
        &mut self,
        jpeg: &[u8],
        num: i32,
        denom: i32,
        pixel_format: i32,
        channels: usize,
    ) -> Result<(Vec<u8>, u32, u32), String> {
        let header = self.header(jpeg)?;
        self.set_scale(num, denom)?;
        let scale = |d: u32| ((d as i64 * num as i64 + denom as i64 - 1) / denom as i64) as usize;
        let (w, h) = (scale(header.width), scale(header.height));
        let pitch = w * channels;
        let mut out = vec![0u8; pitch * h];
        // SAFETY: `out` holds pitch × h bytes, the size libjpeg-turbo writes for
        // this scaling factor and pixel format.
        let rc = unsafe {
            raw::tj3Decompress8(self.0.0, jpeg.as_ptr(), jpeg.len() as _, out.as_mut_ptr(), pitch as i32, pixel_format)
        };
        if rc != 0 {
            return Err(self.error());
        }
        Ok((out, w as u32, h as u32))
    }

    /// Decodes to YUV planes at full size, skipping colour conversion and
    /// chroma upsampling. Needs a known subsampling.
    pub fn decode_yuv(&mut self, jpeg: &[u8]) -> Result<YuvPlanes, String> {
        let header = self.header(jpeg)?;
        if header.subsamp < 0 {
            return Err("the JPEG's chroma subsampling has no YUV layout".into());
        }
        self.set_scale(1, 1)?;
        let n = if header.subsamp == raw::TJSAMP_TJSAMP_GRAY { 1 } else { 3 };
        let mut planes = Vec::with_capacity(n);
        let mut widths = Vec::with_capacity(n);
        for c in 0..n as i32 {
            // SAFETY: pure functions of their arguments.
            let (pw, ph) = unsafe {
                (
                    raw::tj3YUVPlaneWidth(c, header.width as i32, header.subsamp),
                    raw::tj3YUVPlaneHeight(c, header.height as i32, header.subsamp),
                )
            };
            if pw <= 0 || ph <= 0 {
                return Err("libjpeg-turbo gave no plane size".into());
            }
            planes.push(vec![0u8; pw as usize * ph as usize]);
            widths.push(pw as usize);
        }
        let mut ptrs: Vec<*mut u8> = planes.iter_mut().map(|p| p.as_mut_ptr()).collect();
        let mut strides: Vec<i32> = widths.iter().map(|&w| w as i32).collect();
        // SAFETY: each plane holds stride × plane height bytes, as sized by
        // libjpeg-turbo's own plane functions for this header.
        let rc = unsafe {
            raw::tj3DecompressToYUVPlanes8(
                self.0.0,
                jpeg.as_ptr(),
                jpeg.len() as _,
                ptrs.as_mut_ptr(),
                strides.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(self.error());
        }
        Ok(YuvPlanes { planes, widths, width: header.width, height: header.height })
    }
}

pub(crate) struct TjEncoder(Handle);

impl TjEncoder {
    /// `subsamp` is a TJSAMP_*; `colorspace` a TJCS_* (YCbCr, gray, YCCK …).
    pub fn new(quality: u8, subsamp: i32, colorspace: i32) -> Result<TjEncoder, String> {
        let h = Handle::new(raw::TJINIT_TJINIT_COMPRESS)?;
        h.set(raw::TJPARAM_TJPARAM_QUALITY, quality.clamp(1, 100) as i32)?;
        h.set(raw::TJPARAM_TJPARAM_SUBSAMP, subsamp)?;
        h.set(raw::TJPARAM_TJPARAM_COLORSPACE, colorspace)?;
        Ok(TjEncoder(h))
    }

    /// JFIF pixel density (units 0 = aspect ratio only, 1 = dpi, 2 = dpcm).
    pub fn set_density(&mut self, units: u8, x: u16, y: u16) -> Result<(), String> {
        self.0.set(raw::TJPARAM_TJPARAM_DENSITYUNITS, units as i32)?;
        self.0.set(raw::TJPARAM_TJPARAM_XDENSITY, x.max(1) as i32)?;
        self.0.set(raw::TJPARAM_TJPARAM_YDENSITY, y.max(1) as i32)
    }

    pub fn compress(
        &mut self,
        pixels: &[u8],
        width: u32,
        height: u32,
        pixel_format: i32,
        channels: usize,
    ) -> Result<Vec<u8>, String> {
        let pitch = width as usize * channels;
        if pixels.len() < pitch * height as usize {
            return Err("pixel buffer smaller than the picture".into());
        }
        let mut buf = TjBuf::new();
        let mut size: raw::size_t = 0;
        // SAFETY: `pixels` holds pitch × height bytes; libjpeg-turbo allocates
        // the output buffer (freed by TjBuf).
        let rc = unsafe {
            raw::tj3Compress8(
                self.0.0,
                pixels.as_ptr(),
                width as i32,
                pitch as i32,
                height as i32,
                pixel_format,
                &mut buf.ptr,
                &mut size,
            )
        };
        buf.len = size as usize;
        if rc != 0 {
            return Err(self.0.error());
        }
        Ok(buf.to_vec())
    }

    /// Encodes planes laid out as [`TjDecoder::decode_yuv`] returns them;
    /// the encoder's subsampling must be the planes'.
    pub fn compress_yuv(&mut self, yuv: &YuvPlanes) -> Result<Vec<u8>, String> {
        let ptrs: Vec<*const u8> = yuv.planes.iter().map(|p| p.as_ptr()).collect();
        let strides: Vec<i32> = yuv.widths.iter().map(|&w| w as i32).collect();
        let mut buf = TjBuf::new();
        let mut size: raw::size_t = 0;
        // SAFETY: the planes are the sizes libjpeg-turbo's plane functions gave
        // for this width, height and subsampling.
        let rc = unsafe {
            raw::tj3CompressFromYUVPlanes8(
                self.0.0,
                ptrs.as_ptr(),
                yuv.width as i32,
                strides.as_ptr(),
                yuv.height as i32,
                &mut buf.ptr,
                &mut size,
            )
        };
        buf.len = size as usize;
        if rc != 0 {
            return Err(self.0.error());
        }
        Ok(buf.to_vec())
    }
}

/// Why a lossless transform did not happen.
#[derive(Debug)]
pub(crate) enum TransformError {
    /// libjpeg-turbo cannot do it without dropping or smearing edge blocks.
    NotPerfect,
    /// The data could not be read (or a limit was hit).
    Failed(String),
}

pub(crate) struct TjTransformer(Handle);

/// Receives (component, block row, the component's height in blocks,
/// coefficients of that row).
pub(crate) type CoefSink<'a> = dyn FnMut(usize, usize, usize, &[i16]) + 'a;

/// libjpeg-turbo's custom filter, forwarding to the Rust sink in `data`.
unsafe extern "C" fn coef_trampoline(
    coeffs: *mut std::ffi::c_short,
    array: raw::tjregion,
    plane: raw::tjregion,
    component: std::ffi::c_int,
    _transform: std::ffi::c_int,
    t: *mut raw::tjtransform,
) -> std::ffi::c_int {
    // SAFETY: `data` is the `&mut CoefSink` that transform_rows lent for
    // this call; `coeffs` holds w × h coefficients (one row of blocks).
    let (sink, row) = unsafe {
        let sink = &mut *((*t).data as *mut &mut CoefSink<'_>);
        let n = (array.w.max(0) as usize) * (array.h.max(0) as usize);
        (sink, std::slice::from_raw_parts(coeffs, n))
    };
    let (by, height) = ((array.y.max(0) / 8) as usize, (plane.h.max(0) / 8) as usize);
    // A panic must not unwind into C: report it as the filter's failure.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(component as usize, by, height, row))) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

impl TjTransformer {
    pub fn new(max_scans: u32, max_pixels: u64) -> Result<TjTransformer, String> {
        Handle::limited(raw::TJINIT_TJINIT_TRANSFORM, max_scans, max_pixels).map(TjTransformer)
    }

    /// Restart markers every `rows` rows of MCUs in what this handle writes
    /// (0: none).
    pub fn set_restart_rows(&mut self, rows: u32) -> Result<(), String> {
        self.0.set(raw::TJPARAM_TJPARAM_RESTARTROWS, rows.min(65_535) as i32)
    }

    /// Turns the DCT coefficients (`op` a TJXOP_*), refusing an imperfect
    /// transform; every marker (EXIF, ICC, comments) is copied. With `rows`
    /// (first, count; count 0: to the bottom), only those rows of the
    /// turned picture are written; `first` must be a multiple of the
    /// output's MCU height. `sink` is shown every row of the written
    /// blocks (component, block row from the written part's top, component
    /// height in blocks, that row's coefficients in natural order, 64 per
    /// block) before they are written. Rows may run past the height
    /// (padding to a whole iMCU).
    pub fn transform_rows(
        &mut self,
        jpeg: &[u8],
        op: i32,
        progressive: bool,
        rows: Option<(u32, u32)>,
        mut sink: Option<&mut CoefSink<'_>>,
    ) -> Result<Vec<u8>, TransformError> {
        let t_has_sink = sink.is_some();
        let mut options = raw::TJXOPT_PERFECT as i32;
        if progressive {
            options |= raw::TJXOPT_PROGRESSIVE as i32;
        }
        let mut r = raw::tjregion { x: 0, y: 0, w: 0, h: 0 };
        if let Some((first, count)) = rows {
            options |= raw::TJXOPT_CROP as i32;
            r.y = i32::try_from(first).map_err(|_| TransformError::Failed("rows out of range".into()))?;
            r.h = i32::try_from(count).map_err(|_| TransformError::Failed("rows out of range".into()))?;
        }
        let t = raw::tjtransform {
            r,
            op,
            options,
            // Points at `sink`, which outlives the call below.
            data: match sink.as_mut() {
                Some(s) => (s as *mut &mut CoefSink<'_>).cast(),
                None => std::ptr::null_mut(),
            },
            customFilter: if t_has_sink { Some(coef_trampoline) } else { None },
        };
        let mut buf = TjBuf::new();
        let mut size: raw::size_t = 0;
        // SAFETY: one transform, one output slot; libjpeg-turbo allocates the
        // output (freed by TjBuf).
        let rc = unsafe { raw::tj3Transform(self.0.0, jpeg.as_ptr(), jpeg.len() as _, 1, &mut buf.ptr, &mut size, &t) };
        buf.len = size as usize;
        if rc != 0 {
            let e = self.0.error();
            return Err(if e.contains("not perfect") { TransformError::NotPerfect } else { TransformError::Failed(e) });
        }
        Ok(buf.to_vec())
    }
}
