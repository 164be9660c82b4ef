//! A small safe wrapper over libjpeg-turbo 3's C API, for the settings the
//! `turbojpeg` crate does not expose: stop on the first warning (damaged scan
//! data is an error, never a half-grey picture), a scan limit and a pixel limit.

use std::ffi::CStr;

use turbojpeg::raw;

pub(crate) struct TjDecoder(raw::tjhandle);

// The handle is used by one thread at a time (the struct is not Sync).
unsafe impl Send for TjDecoder {}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TjHeader {
    pub width: u32,
    pub height: u32,
    /// TJSAMP_* (-1 when unknown).
    pub subsamp: i32,
    /// TJCS_*.
    pub colorspace: i32,
}

impl TjDecoder {
    pub fn new(max_scans: u32, max_pixels: u64) -> Result<TjDecoder, String> {
        // SAFETY: tj3Init has no preconditions; a null handle is checked.
        let h = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as i32) };
        if h.is_null() {
            return Err("libjpeg-turbo could not start a decoder".into());
        }
        let d = TjDecoder(h);
        d.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        d.set(raw::TJPARAM_TJPARAM_SCANLIMIT, max_scans.min(i32::MAX as u32) as i32)?;
        d.set(raw::TJPARAM_TJPARAM_MAXPIXELS, max_pixels.min(i32::MAX as u64) as i32)?;
        Ok(d)
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

    pub fn error(&self) -> String {
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

    pub fn header(&mut self, jpeg: &[u8]) -> Result<TjHeader, String> {
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
        let factor = raw::tjscalingfactor { num, denom };
        // SAFETY: valid handle; the factor is one libjpeg-turbo supports (1/8 … 1).
        if unsafe { raw::tj3SetScalingFactor(self.0, factor) } != 0 {
            return Err(self.error());
        }
        let scale = |d: u32| ((d as i64 * num as i64 + denom as i64 - 1) / denom as i64) as usize;
        let (w, h) = (scale(header.width), scale(header.height));
        let pitch = w * channels;
        let mut out = vec![0u8; pitch * h];
        // SAFETY: `out` holds pitch × h bytes, the size libjpeg-turbo writes for
        // this scaling factor and pixel format.
        let rc = unsafe {
            raw::tj3Decompress8(self.0, jpeg.as_ptr(), jpeg.len() as _, out.as_mut_ptr(), pitch as i32, pixel_format)
        };
        if rc != 0 {
            return Err(self.error());
        }
        Ok((out, w as u32, h as u32))
    }
}

impl Drop for TjDecoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.0) }
    }
}
