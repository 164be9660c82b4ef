//! HEIC/HEIF and AVIF through the system's libheif C API (Debian bookworm's
//! libheif 1.15, built with libde265 and x265 for HEVC and dav1d and aom for
//! AV1). The safe wrapper crate (`libheif-rs`) wants libheif 1.17 or later,
//! which Debian bookworm does not have, or builds it from source with cmake;
//! the few calls flipstack needs are bound here instead, like `tj.rs` does
//! for libjpeg-turbo.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

#[repr(C)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

#[repr(C)]
struct Writer {
    writer_api_version: c_int,
    write: unsafe extern "C" fn(*mut c_void, *const c_void, usize, *mut c_void) -> HeifError,
}

/// `struct heif_encoding_options` up to version 5 (libheif 1.14+).
#[repr(C)]
struct EncodingOptions {
    version: u8,
    save_alpha_channel: u8,
    macos_compatibility_workaround: u8,
    save_two_colr_boxes: u8,
    output_nclx_profile: *mut c_void,
    macos_compatibility_workaround_no_nclx_profile: u8,
    image_orientation: c_int,
}

type Ctx = c_void;
type HandleT = c_void;
type ImageT = c_void;
type EncoderT = c_void;

const COLORSPACE_RGB: c_int = 1;
const CHROMA_RGB: c_int = 10;
const CHROMA_RGBA: c_int = 11;
const CHANNEL_INTERLEAVED: c_int = 10;
const COMPRESSION_HEVC: c_int = 1;
const COMPRESSION_AV1: c_int = 4;

/// The library's file name as the dynamic loader finds it (Debian's and
/// Fedora's soname); `FLIPSTACK_LIBHEIF` names another.
pub use flipstack_domain::config::DEFAULT_LIBHEIF as DEFAULT_LIBRARY;

// libheif is loaded when first needed, not linked: a release then starts on a
// system without it (Amazon Linux 2023's repositories do not carry libheif),
// and only HEIC/AVIF pictures are refused there, with a reason.
/// Declares libheif's functions that flipstack calls: a table of them loaded
/// from the library, and a wrapper of the same name for each, so the code
/// below reads like plain FFI.
macro_rules! libheif_api {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        #[allow(non_snake_case)]
        struct Api {
            // Kept for the life of the process: the pointers below point into it.
            _library: libloading::Library,
            $($name: unsafe extern "C" fn($($ty),*) $(-> $ret)?,)*
        }

        impl Api {
            #[allow(non_snake_case)]
            /// The error is what failed, in words, and the loader's error.
            fn load(file: &str) -> Result<Api, (String, libloading::Error)> {
                // SAFETY: loading libheif runs only its libraries' initialisers.
                let library = unsafe { libloading::Library::new(file) }.map_err(|e| (e.to_string(), e))?;
                $(
                    // SAFETY: the type is the C declaration in libheif's heif.h.
                    let $name = unsafe {
                        library.get::<unsafe extern "C" fn($($ty),*) $(-> $ret)?>(concat!(stringify!($name), "\0").as_bytes())
                    }
                    .map(|symbol| *symbol)
                    .map_err(|e| (format!("it has no {}: {e}", stringify!($name)), e))?;
                )*
                Ok(Api { _library: library, $($name,)* })
            }
        }

        $(
            #[allow(non_snake_case, dead_code)]
            unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                let api = loaded().expect("libheif is loaded before any call (Context::new, can_encode, version)");
                // SAFETY: the caller keeps libheif's contract for this function.
                unsafe { (api.$name)($($arg),*) }
            }
        )*
    };
}

/// libheif could not be loaded: HEIC and AVIF cannot be read or written here.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "libheif could not be loaded from {library} ({cause}); install it (Debian: apt-get install libheif1, Fedora: dnf install libheif) or set FLIPSTACK_LIBHEIF to its path"
)]
pub struct Unavailable {
    pub library: String,
    pub cause: String,
    /// The dynamic loader's error.
    pub source: Option<flipstack_domain::error::Cause>,
}

static LIBRARY: OnceLock<String> = OnceLock::new();
static LOADED: OnceLock<Result<Api, Unavailable>> = OnceLock::new();

/// Names the library to load instead of [`DEFAULT_LIBRARY`] (the
/// configuration's `libheif`); only the first call before the first use counts.
pub fn use_library(file: &str) {
    let _ = LIBRARY.set(file.to_owned());
}

fn loaded() -> Result<&'static Api, &'static Unavailable> {
    LOADED
        .get_or_init(|| {
            let file = LIBRARY.get().map_or(DEFAULT_LIBRARY, String::as_str);
            let api = Api::load(file).map_err(|(cause, e)| Unavailable {
                library: file.to_owned(),
                cause,
                source: flipstack_domain::error::cause(e),
            })?;
            // SAFETY: once, before any other call; NULL means default parameters.
            let _ = unsafe { (api.heif_init)(ptr::null_mut()) };
            Ok(api)
        })
        .as_ref()
}

/// Whether HEIC and AVIF can be handled on this machine (loads libheif on first call).
pub fn available() -> Result<(), Unavailable> {
    loaded().map(|_| ()).map_err(Clone::clone)
}

libheif_api! {
    fn heif_init(params: *mut c_void) -> HeifError;
    fn heif_get_version() -> *const c_char;
    fn heif_context_alloc() -> *mut Ctx;
    fn heif_context_free(ctx: *mut Ctx);
    fn heif_context_set_maximum_image_size_limit(ctx: *mut Ctx, maximum_width: c_int);
    fn heif_context_read_from_memory_without_copy(ctx: *mut Ctx, mem: *const c_void, size: usize, options: *const c_void) -> HeifError;
    fn heif_context_get_primary_image_handle(ctx: *mut Ctx, handle: *mut *mut HandleT) -> HeifError;
    fn heif_image_handle_release(handle: *const HandleT);
    fn heif_image_handle_get_width(handle: *const HandleT) -> c_int;
    fn heif_image_handle_get_height(handle: *const HandleT) -> c_int;
    fn heif_image_handle_has_alpha_channel(handle: *const HandleT) -> c_int;
    fn heif_image_handle_get_number_of_metadata_blocks(handle: *const HandleT, filter: *const c_char) -> c_int;
    fn heif_image_handle_get_list_of_metadata_block_IDs(handle: *const HandleT, filter: *const c_char, ids: *mut u32, count: c_int) -> c_int;
    fn heif_image_handle_get_metadata_size(handle: *const HandleT, id: u32) -> usize;
    fn heif_image_handle_get_metadata(handle: *const HandleT, id: u32, out: *mut c_void) -> HeifError;
    fn heif_image_handle_get_raw_color_profile_size(handle: *const HandleT) -> usize;
    fn heif_image_handle_get_raw_color_profile(handle: *const HandleT, out: *mut c_void) -> HeifError;
    fn heif_decode_image(handle: *const HandleT, out: *mut *mut ImageT, colorspace: c_int, chroma: c_int, options: *const c_void) -> HeifError;
    fn heif_image_release(image: *const ImageT);
    fn heif_decoding_options_alloc() -> *mut u8;
    fn heif_decoding_options_free(options: *mut u8);
    fn heif_image_get_width(image: *const ImageT, channel: c_int) -> c_int;
    fn heif_image_get_height(image: *const ImageT, channel: c_int) -> c_int;
    fn heif_image_get_plane_readonly(image: *const ImageT, channel: c_int, stride: *mut c_int) -> *const u8;
    fn heif_image_get_plane(image: *mut ImageT, channel: c_int, stride: *mut c_int) -> *mut u8;
    fn heif_image_create(w: c_int, h: c_int, colorspace: c_int, chroma: c_int, out: *mut *mut ImageT) -> HeifError;
    fn heif_image_add_plane(image: *mut ImageT, channel: c_int, w: c_int, h: c_int, depth: c_int) -> HeifError;
    fn heif_image_set_raw_color_profile(image: *mut ImageT, kind: *const c_char, data: *const c_void, size: usize) -> HeifError;
    fn heif_have_encoder_for_format(format: c_int) -> c_int;
    fn heif_context_get_encoder_for_format(ctx: *mut Ctx, format: c_int, out: *mut *mut EncoderT) -> HeifError;
    fn heif_encoder_release(encoder: *mut EncoderT);
    fn heif_encoder_set_lossy_quality(encoder: *mut EncoderT, quality: c_int) -> HeifError;
    fn heif_encoder_set_parameter_string(encoder: *mut EncoderT, name: *const c_char, value: *const c_char) -> HeifError;
    fn heif_encoding_options_alloc() -> *mut EncodingOptions;
    fn heif_encoding_options_free(options: *mut EncodingOptions);
    fn heif_context_encode_image(ctx: *mut Ctx, image: *const ImageT, encoder: *mut EncoderT, options: *const EncodingOptions, out: *mut *mut HandleT) -> HeifError;
    fn heif_context_add_exif_metadata(ctx: *mut Ctx, handle: *const HandleT, data: *const c_void, size: c_int) -> HeifError;
    fn heif_context_write(ctx: *mut Ctx, writer: *mut Writer, userdata: *mut c_void) -> HeifError;
}

fn check(e: HeifError, what: &str) -> Result<(), String> {
    if e.code == 0 {
        return Ok(());
    }
    let msg = if e.message.is_null() {
        String::new()
    } else {
        // SAFETY: libheif's messages are NUL-terminated static or context-owned strings.
        unsafe { CStr::from_ptr(e.message) }.to_string_lossy().into_owned()
    };
    Err(format!("{what}: {msg} (libheif error {}.{})", e.code, e.subcode))
}

/// libheif's version, for logs and the benchmark (None: not loaded).
pub fn version() -> Option<String> {
    loaded().ok()?;
    // SAFETY: a static string.
    Some(unsafe { CStr::from_ptr(heif_get_version()) }.to_string_lossy().into_owned())
}

/// Which codec a HEIF file's pictures are coded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HEIC.
    Hevc,
    /// AVIF.
    Av1,
}

impl Codec {
    fn id(self) -> c_int {
        match self {
            Codec::Hevc => COMPRESSION_HEVC,
            Codec::Av1 => COMPRESSION_AV1,
        }
    }
}

/// Can this build write pictures in this codec?
pub fn can_encode(codec: Codec) -> bool {
    if loaded().is_err() {
        return false;
    }
    // SAFETY: a query without side effects.
    unsafe { heif_have_encoder_for_format(codec.id()) != 0 }
}

struct Context(*mut Ctx);

impl Context {
    fn new() -> Result<Context, String> {
        available().map_err(|e| e.to_string())?;
        // SAFETY: allocation; NULL is checked.
        let ctx = unsafe { heif_context_alloc() };
        if ctx.is_null() { Err("libheif could not allocate a context".into()) } else { Ok(Context(ctx)) }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: allocated by heif_context_alloc, freed once.
        unsafe { heif_context_free(self.0) }
    }
}

struct Handle(*mut HandleT);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a handle libheif gave us, released once.
        unsafe { heif_image_handle_release(self.0) }
    }
}

struct Image(*mut ImageT);

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: an image libheif gave us, released once.
        unsafe { heif_image_release(self.0) }
    }
}

/// A decoded primary picture with the container's rotation and mirroring
/// applied (EXIF orientation not: see [`super::flip`]).
pub struct Decoded {
    /// Interleaved RGB or RGBA, 8 bits.
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    pub icc: Option<Vec<u8>>,
    /// The EXIF block's TIFF data.
    pub exif: Option<Vec<u8>>,
}

/// Decodes the primary picture, refusing one over `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, String> {
    decode_with(bytes, max_pixels, false)
}

/// The primary picture as stored: without the container's rotation and
/// mirroring (for tests that check how those are read).
pub fn decode_stored(bytes: &[u8], max_pixels: u64) -> Result<Decoded, String> {
    decode_with(bytes, max_pixels, true)
}

fn decode_with(bytes: &[u8], max_pixels: u64, ignore_transformations: bool) -> Result<Decoded, String> {
    let ctx = Context::new()?;
    // Each side at most 65535 (what the inspector allows), the area checked below.
    // SAFETY: `ctx` is live; `bytes` outlives it (the context is dropped first).
    unsafe { heif_context_set_maximum_image_size_limit(ctx.0, 65_535) };
    check(
        unsafe { heif_context_read_from_memory_without_copy(ctx.0, bytes.as_ptr().cast(), bytes.len(), ptr::null()) },
        "reading the HEIF container",
    )?;
    let mut h = ptr::null_mut();
    check(unsafe { heif_context_get_primary_image_handle(ctx.0, &mut h) }, "finding the primary picture")?;
    let handle = Handle(h);
    // SAFETY (this block): queries on a live handle.
    let (w, h, alpha) = unsafe {
        (
            heif_image_handle_get_width(handle.0),
            heif_image_handle_get_height(handle.0),
            heif_image_handle_has_alpha_channel(handle.0) != 0,
        )
    };
    if w <= 0 || h <= 0 || w as u64 * h as u64 > max_pixels {
        return Err(format!("the picture is {w}×{h}, over the pixel limit"));
    }
    let icc = {
        let n = unsafe { heif_image_handle_get_raw_color_profile_size(handle.0) };
        if n == 0 || n > 16 * 1024 * 1024 {
            None
        } else {
            let mut buf = vec![0u8; n];
            check(unsafe { heif_image_handle_get_raw_color_profile(handle.0, buf.as_mut_ptr().cast()) }, "ICC")
                .ok()
                .map(|_| buf)
        }
    };
    let exif = read_exif(&handle);
    let (chroma, channels) = if alpha { (CHROMA_RGBA, 4) } else { (CHROMA_RGB, 3) };
    let mut img = ptr::null_mut();
    // SAFETY: options from libheif's allocator; its first two bytes are the
    // version and `ignore_transformations` in every version.
    let options = if ignore_transformations {
        let o = unsafe { heif_decoding_options_alloc() };
        if o.is_null() {
            return Err("libheif could not allocate decoding options".into());
        }
        unsafe { *o.add(1) = 1 };
        o
    } else {
        ptr::null_mut()
    };
    let decoded = unsafe { heif_decode_image(handle.0, &mut img, COLORSPACE_RGB, chroma, options as *const c_void) };
    if !options.is_null() {
        unsafe { heif_decoding_options_free(options) };
    }
    check(decoded, "decoding the picture")?;
    let img = Image(img);
    let (iw, ih) = unsafe {
        (heif_image_get_width(img.0, CHANNEL_INTERLEAVED), heif_image_get_height(img.0, CHANNEL_INTERLEAVED))
    };
    let mut stride: c_int = 0;
    let plane = unsafe { heif_image_get_plane_readonly(img.0, CHANNEL_INTERLEAVED, &mut stride) };
    if plane.is_null() || iw <= 0 || ih <= 0 || (stride as usize) < iw as usize * channels {
        return Err("the decoded picture has no pixels".into());
    }
    let row = iw as usize * channels;
    let mut pixels = Vec::with_capacity(row * ih as usize);
    for y in 0..ih as usize {
        // SAFETY: the plane holds `ih` rows of `stride` bytes.
        let src = unsafe { std::slice::from_raw_parts(plane.add(y * stride as usize), row) };
        pixels.extend_from_slice(src);
    }
    Ok(Decoded { pixels, width: iw as u32, height: ih as u32, channels, icc, exif })
}

/// The first EXIF block's TIFF data (the item starts with the offset of the
/// TIFF header, usually after `Exif\0\0`).
fn read_exif(handle: &Handle) -> Option<Vec<u8>> {
    let filter = CString::new("Exif").expect("no NUL");
    // SAFETY (this function): queries on a live handle into buffers of the sizes libheif reports.
    let n = unsafe { heif_image_handle_get_number_of_metadata_blocks(handle.0, filter.as_ptr()) };
    if n <= 0 {
        return None;
    }
    let mut id = 0u32;
    if unsafe { heif_image_handle_get_list_of_metadata_block_IDs(handle.0, filter.as_ptr(), &mut id, 1) } != 1 {
        return None;
    }
    let size = unsafe { heif_image_handle_get_metadata_size(handle.0, id) };
    if !(4..=1024 * 1024).contains(&size) {
        return None;
    }
    let mut buf = vec![0u8; size];
    check(unsafe { heif_image_handle_get_metadata(handle.0, id, buf.as_mut_ptr().cast()) }, "EXIF").ok()?;
    let offset = u32::from_be_bytes(buf[0..4].try_into().ok()?) as usize;
    let tiff = buf.get(4 + offset..)?;
    Some(tiff.strip_prefix(b"Exif\0\0").unwrap_or(tiff).to_vec())
}

/// What to write.
pub struct Encode<'a> {
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// 3 (RGB) or 4 (RGBA).
    pub channels: usize,
    pub codec: Codec,
    /// libheif's lossy quality, 0–100.
    pub quality: u8,
    pub icc: Option<&'a [u8]>,
    /// TIFF data, written with an `Exif\0\0` header.
    pub exif: Option<&'a [u8]>,
    /// An EXIF orientation for libheif to write as irot/imir (1: none).
    pub orientation: u8,
}

unsafe extern "C" fn write_to_vec(_ctx: *mut c_void, data: *const c_void, size: usize, out: *mut c_void) -> HeifError {
    // SAFETY: `out` is the `Vec<u8>` that `encode` lent; `data` holds `size` bytes.
    unsafe {
        let out = &mut *(out as *mut Vec<u8>);
        out.extend_from_slice(std::slice::from_raw_parts(data as *const u8, size));
    }
    HeifError { code: 0, subcode: 0, message: c"ok".as_ptr() }
}

/// Encodes a picture as a one-picture HEIF file (HEIC or AVIF).
pub fn encode(e: &Encode<'_>) -> Result<Vec<u8>, String> {
    let (w, h) = (e.width as c_int, e.height as c_int);
    let row = e.width as usize * e.channels;
    if e.pixels.len() < row * e.height as usize || !(e.channels == 3 || e.channels == 4) {
        return Err("the pixels do not fill the picture".into());
    }
    let ctx = Context::new()?;
    let chroma = if e.channels == 4 { CHROMA_RGBA } else { CHROMA_RGB };
    let mut img = ptr::null_mut();
    check(unsafe { heif_image_create(w, h, COLORSPACE_RGB, chroma, &mut img) }, "creating the picture")?;
    let img = Image(img);
    check(unsafe { heif_image_add_plane(img.0, CHANNEL_INTERLEAVED, w, h, 8) }, "adding its pixels")?;
    let mut stride: c_int = 0;
    let plane = unsafe { heif_image_get_plane(img.0, CHANNEL_INTERLEAVED, &mut stride) };
    if plane.is_null() || (stride as usize) < row {
        return Err("libheif gave no room for the pixels".into());
    }
    for y in 0..e.height as usize {
        // SAFETY: the plane has `height` rows of `stride` bytes; the source row is in bounds (checked above).
        unsafe { ptr::copy_nonoverlapping(e.pixels[y * row..].as_ptr(), plane.add(y * stride as usize), row) };
    }
    if let Some(icc) = e.icc {
        let prof = CString::new("prof").expect("no NUL");
        check(
            unsafe { heif_image_set_raw_color_profile(img.0, prof.as_ptr(), icc.as_ptr().cast(), icc.len()) },
            "setting the ICC profile",
        )?;
    }
    let mut enc = ptr::null_mut();
    check(unsafe { heif_context_get_encoder_for_format(ctx.0, e.codec.id(), &mut enc) }, "finding an encoder")?;
    struct Encoder(*mut EncoderT);
    impl Drop for Encoder {
        fn drop(&mut self) {
            // SAFETY: released once.
            unsafe { heif_encoder_release(self.0) }
        }
    }
    let enc = Encoder(enc);
    check(unsafe { heif_encoder_set_lossy_quality(enc.0, e.quality as c_int) }, "setting the quality")?;
    // Faster than libheif's defaults (x265 "slow", aom speed 5), at little cost in size.
    let (name, value) = match e.codec {
        Codec::Hevc => ("preset", "fast"),
        Codec::Av1 => ("speed", "7"),
    };
    let (name, value) = (CString::new(name).expect("no NUL"), CString::new(value).expect("no NUL"));
    // An encoder without the parameter keeps its default.
    let _ = check(unsafe { heif_encoder_set_parameter_string(enc.0, name.as_ptr(), value.as_ptr()) }, "speed");
    let options = unsafe { heif_encoding_options_alloc() };
    if options.is_null() {
        return Err("libheif could not allocate encoding options".into());
    }
    struct Options(*mut EncodingOptions);
    impl Drop for Options {
        fn drop(&mut self) {
            // SAFETY: freed once.
            unsafe { heif_encoding_options_free(self.0) }
        }
    }
    let options = Options(options);
    // SAFETY: version 5 and later have these fields at these places.
    unsafe {
        if (*options.0).version >= 5 {
            (*options.0).image_orientation = e.orientation.clamp(1, 8) as c_int;
        } else if e.orientation != 1 {
            return Err("this libheif cannot write orientations".into());
        }
    }
    let mut handle = ptr::null_mut();
    check(unsafe { heif_context_encode_image(ctx.0, img.0, enc.0, options.0, &mut handle) }, "encoding")?;
    let handle = Handle(handle);
    if let Some(tiff) = e.exif {
        let mut block = b"Exif\0\0".to_vec();
        block.extend_from_slice(tiff);
        check(
            unsafe { heif_context_add_exif_metadata(ctx.0, handle.0, block.as_ptr().cast(), block.len() as c_int) },
            "adding EXIF",
        )?;
    }
    let mut out: Vec<u8> = Vec::new();
    let mut writer = Writer { writer_api_version: 1, write: write_to_vec };
    check(unsafe { heif_context_write(ctx.0, &mut writer, (&mut out as *mut Vec<u8>).cast()) }, "writing the file")?;
    Ok(out)
}
