//! A bounded EXIF (TIFF) reader that finds the Orientation tag.
//!
//! Every offset and count is checked against the data before it is used, IFD
//! chains are followed at most a few steps with loops detected, and nothing is
//! allocated from a count in the file. [`orientation_strict`] says why EXIF is
//! unusable (the upload check refuses such files); [`orientation_lenient`]
//! treats unusable EXIF as "no rotation" (the worker's defence in depth).

/// The Orientation tag, 1 (upright) to 8.
pub type Orientation = u8;

const TAG_ORIENTATION: u16 = 0x0112;
const TAG_EXIF_IFD: u16 = 0x8769;
const TAG_GPS_IFD: u16 = 0x8825;
const MAX_IFDS: usize = 8;
const MAX_ENTRIES: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExifError {
    #[error("the EXIF block does not start with a TIFF header")]
    NoHeader,
    #[error("an EXIF directory or value lies outside the EXIF block")]
    OutOfBounds,
    #[error("the EXIF directories loop back on themselves")]
    Loop,
    #[error("the EXIF block has too many directories or entries")]
    TooBig,
    #[error("the EXIF orientation is {0}, which is not a valid value (1 to 8)")]
    BadOrientation(u32),
}

struct Tiff<'a> {
    data: &'a [u8],
    little: bool,
}

impl Tiff<'_> {
    fn u16_at(&self, off: usize) -> Result<u16, ExifError> {
        let b = self.data.get(off..off.checked_add(2).ok_or(ExifError::OutOfBounds)?).ok_or(ExifError::OutOfBounds)?;
        Ok(if self.little { u16::from_le_bytes([b[0], b[1]]) } else { u16::from_be_bytes([b[0], b[1]]) })
    }

    fn u32_at(&self, off: usize) -> Result<u32, ExifError> {
        let b = self.data.get(off..off.checked_add(4).ok_or(ExifError::OutOfBounds)?).ok_or(ExifError::OutOfBounds)?;
        let a = [b[0], b[1], b[2], b[3]];
        Ok(if self.little { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
    }
}

fn type_size(t: u16) -> Option<u64> {
    Some(match t {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 => 8,
        _ => return None,
    })
}

/// Which directory an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// The main picture's (IFD0).
    Main,
    /// The thumbnail's (IFD1).
    Thumbnail,
    /// A sub-directory IFD0 points to (EXIF, GPS).
    Sub,
}

/// One directory entry: where it sits and what it says.
struct Entry {
    at: usize,
    tag: u16,
    typ: u16,
    count: u32,
    dir: Dir,
}

fn header(tiff: &[u8]) -> Result<Tiff<'_>, ExifError> {
    let little = match tiff.get(0..4) {
        Some([b'I', b'I', 42, 0]) => true,
        Some([b'M', b'M', 0, 42]) => false,
        _ => return Err(ExifError::NoHeader),
    };
    Ok(Tiff { data: tiff, little })
}

/// Visits every entry of IFD0, IFD1 and the EXIF and GPS directories, with
/// every offset and count checked before use, loops detected and at most
/// `MAX_IFDS` directories followed.
fn walk(t: &Tiff<'_>, mut visit: impl FnMut(&Tiff<'_>, &Entry) -> Result<(), ExifError>) -> Result<(), ExifError> {
    let len = t.data.len();
    let mut visited: Vec<usize> = Vec::new();
    let mut queue = vec![(t.u32_at(4)? as usize, Dir::Main)];
    while let Some((ifd, dir)) = queue.pop() {
        if ifd == 0 {
            continue;
        }
        if visited.contains(&ifd) {
            return Err(ExifError::Loop);
        }
        if visited.len() >= MAX_IFDS {
            return Err(ExifError::TooBig);
        }
        visited.push(ifd);
        let count = t.u16_at(ifd)? as usize;
        if count > MAX_ENTRIES {
            return Err(ExifError::TooBig);
        }
        let entries_end = ifd + 2 + count * 12;
        if entries_end + 4 > len {
            return Err(ExifError::OutOfBounds);
        }
        for i in 0..count {
            let at = ifd + 2 + i * 12;
            let entry = Entry { at, tag: t.u16_at(at)?, typ: t.u16_at(at + 2)?, count: t.u32_at(at + 4)?, dir };
            if let Some(size) = type_size(entry.typ) {
                let bytes = size.checked_mul(entry.count as u64).ok_or(ExifError::OutOfBounds)?;
                if bytes > 4 {
                    let off = t.u32_at(at + 8)? as u64;
                    if off.checked_add(bytes).is_none_or(|end| end > len as u64) {
                        return Err(ExifError::OutOfBounds);
                    }
                }
            }
            if dir == Dir::Main && matches!(entry.tag, TAG_EXIF_IFD | TAG_GPS_IFD) {
                let off = t.u32_at(at + 8)? as usize;
                if off + 2 > len {
                    return Err(ExifError::OutOfBounds);
                }
                queue.push((off, Dir::Sub));
            }
            visit(t, &entry)?;
        }
        // IFD0's successor is the thumbnail's directory (IFD1).
        if dir == Dir::Main {
            queue.push((t.u32_at(entries_end)? as usize, Dir::Thumbnail));
        }
    }
    Ok(())
}

/// Reads a TIFF-structured EXIF block (after the `Exif\0\0` prefix) and
/// returns its orientation (1 when the tag is absent), or why it is unusable.
pub fn orientation_strict(tiff: &[u8]) -> Result<Orientation, ExifError> {
    let t = header(tiff)?;
    let mut orientation: Option<Orientation> = None;
    walk(&t, |t, e| {
        // Only IFD0's orientation describes the main picture.
        if e.tag == TAG_ORIENTATION && e.dir == Dir::Main {
            if e.typ != 3 || e.count != 1 {
                return Err(ExifError::OutOfBounds);
            }
            let v = t.u16_at(e.at + 8)? as u32;
            if !(1..=8).contains(&v) {
                return Err(ExifError::BadOrientation(v));
            }
            orientation = Some(v as u8);
        }
        Ok(())
    })?;
    Ok(orientation.unwrap_or(1))
}

/// Where IFD0's Orientation entry and the EXIF IFD's pixel dimensions sit.
struct Entries {
    little: bool,
    orientation: Option<usize>,
    /// (entry offset, type) of PixelXDimension and PixelYDimension.
    dims: [Option<(usize, u16)>; 2],
}

const TAG_PIXEL_X: u16 = 0xA002;
const TAG_PIXEL_Y: u16 = 0xA003;

fn entries(tiff: &[u8]) -> Result<Entries, ExifError> {
    let t = header(tiff)?;
    let mut found = Entries { little: t.little, orientation: None, dims: [None, None] };
    walk(&t, |_, e| {
        match e.tag {
            TAG_ORIENTATION if e.dir == Dir::Main && e.typ == 3 && e.count == 1 => found.orientation = Some(e.at),
            TAG_PIXEL_X | TAG_PIXEL_Y if e.dir == Dir::Sub && (e.typ == 3 || e.typ == 4) && e.count == 1 => {
                found.dims[(e.tag - TAG_PIXEL_X) as usize] = Some((e.at, e.typ));
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(found)
}

/// Rewrites, in place, IFD0's Orientation tag and (when the picture was
/// turned a quarter) swaps the EXIF IFD's pixel dimensions. Nothing moves,
/// so every other offset in the block stays right. Fails when there is no
/// Orientation entry to rewrite and `orientation` is not 1.
pub fn rewrite_orientation(tiff: &mut [u8], orientation: Orientation, swap_dims: bool) -> Result<(), ExifError> {
    let found = entries(tiff)?;
    let put16 = |buf: &mut [u8], at: usize, v: u16| {
        let b = if found.little { v.to_le_bytes() } else { v.to_be_bytes() };
        buf[at..at + 2].copy_from_slice(&b);
    };
    match found.orientation {
        Some(e) => put16(tiff, e + 8, orientation as u16),
        None if orientation == 1 => {}
        None => return Err(ExifError::OutOfBounds),
    }
    if let (true, [Some((ex, tx)), Some((ey, ty))]) = (swap_dims, found.dims) {
        // Each value sits in its entry's 4-byte field: swap the fields.
        if tx == ty {
            let x: [u8; 4] = tiff[ex + 8..ex + 12].try_into().expect("4 bytes");
            tiff.copy_within(ey + 8..ey + 12, ex + 8);
            tiff[ey + 8..ey + 12].copy_from_slice(&x);
        }
    }
    Ok(())
}

/// The worker's reading: anything unusable means "no rotation".
pub fn orientation_lenient(tiff: &[u8]) -> Orientation {
    orientation_strict(tiff).unwrap_or(1)
}

/// The images a Multi-Picture Format index (CIPA DC-007, the APP2 `MPF\0`
/// segment, given here after that prefix) lists: (size, offset) of each,
/// the offset counted from the start of `tiff`, the first being the
/// picture that holds the index (offset 0). At most 16 are read.
pub fn mpf_images(tiff: &[u8]) -> Result<Vec<(u32, u32)>, ExifError> {
    const TAG_MP_ENTRY: u16 = 0xB002;
    const MAX_IMAGES: usize = 16;
    let t = header(tiff)?;
    let ifd = t.u32_at(4)? as usize;
    let count = t.u16_at(ifd)? as usize;
    if count > MAX_ENTRIES {
        return Err(ExifError::TooBig);
    }
    for i in 0..count {
        let at = ifd + 2 + i * 12;
        if t.u16_at(at)? != TAG_MP_ENTRY {
            continue;
        }
        let bytes = t.u32_at(at + 4)? as usize;
        let n = bytes / 16;
        if n > MAX_IMAGES || !bytes.is_multiple_of(16) {
            return Err(ExifError::TooBig);
        }
        let off = t.u32_at(at + 8)? as usize;
        if off.checked_add(bytes).is_none_or(|end| end > tiff.len()) {
            return Err(ExifError::OutOfBounds);
        }
        return (0..n).map(|k| Ok((t.u32_at(off + k * 16 + 4)?, t.u32_at(off + k * 16 + 8)?))).collect();
    }
    Ok(Vec::new())
}

/// Finds the EXIF block of a JPEG (APP1 `Exif\0\0`) by walking its segments,
/// and returns the TIFF data inside it.
pub fn jpeg_exif(jpeg: &[u8]) -> Option<&[u8]> {
    let mut i = 2usize;
    if jpeg.get(0..2)? != [0xFF, 0xD8] {
        return None;
    }
    while i + 4 <= jpeg.len() {
        if jpeg[i] != 0xFF {
            return None;
        }
        let marker = jpeg[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            return None;
        }
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if len < 2 {
            return None;
        }
        let payload = jpeg.get(i + 4..i + 2 + len)?;
        if marker == 0xE1 && payload.starts_with(b"Exif\0\0") {
            return Some(&payload[6..]);
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiff_with(orientation: u16, next_ifd: u32) -> Vec<u8> {
        let mut t = b"MM\0*".to_vec();
        t.extend_from_slice(&8u32.to_be_bytes());
        t.extend_from_slice(&1u16.to_be_bytes());
        t.extend_from_slice(&TAG_ORIENTATION.to_be_bytes());
        t.extend_from_slice(&3u16.to_be_bytes());
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&orientation.to_be_bytes());
        t.extend_from_slice(&[0, 0]);
        t.extend_from_slice(&next_ifd.to_be_bytes());
        t
    }

    #[test]
    fn reads_orientation() {
        assert_eq!(orientation_strict(&tiff_with(6, 0)), Ok(6));
        assert_eq!(orientation_strict(&tiff_with(9999, 0)), Err(ExifError::BadOrientation(9999)));
        assert_eq!(orientation_lenient(&tiff_with(0, 0)), 1);
    }

    #[test]
    fn rewrites_orientation_in_place() {
        let mut t = tiff_with(6, 0);
        rewrite_orientation(&mut t, 3, true).unwrap();
        assert_eq!(orientation_strict(&t), Ok(3));
        assert_eq!(t.len(), tiff_with(6, 0).len());
        assert_eq!(rewrite_orientation(&mut b"junk".to_vec(), 1, false), Err(ExifError::NoHeader));
    }

    #[test]
    fn loops_and_bad_offsets_terminate() {
        assert_eq!(orientation_strict(&tiff_with(6, 8)), Err(ExifError::Loop));
        assert_eq!(orientation_strict(&tiff_with(6, 0x7fff_0000)), Err(ExifError::OutOfBounds));
        assert_eq!(orientation_lenient(&tiff_with(6, 8)), 1);
        assert_eq!(orientation_strict(b"II*\0\xff\xff\xff\x7f"), Err(ExifError::OutOfBounds));
        assert_eq!(orientation_strict(b"junk"), Err(ExifError::NoHeader));
    }
}
