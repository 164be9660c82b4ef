//! Fixtures the core test crates share.

#![allow(dead_code)]

/// TIFF data (big-endian) whose IFD0 holds only an Orientation entry,
/// followed by the given next-IFD pointer (0: none).
pub fn orientation_tiff(orientation: u16, next_ifd: u32) -> Vec<u8> {
    let mut t = b"MM\0*".to_vec();
    t.extend_from_slice(&8u32.to_be_bytes());
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&0x0112u16.to_be_bytes());
    t.extend_from_slice(&3u16.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&orientation.to_be_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&next_ifd.to_be_bytes());
    t
}

/// An APP1 EXIF segment around [`orientation_tiff`].
pub fn exif_segment(orientation: u16, next_ifd: u32) -> Vec<u8> {
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&orientation_tiff(orientation, next_ifd));
    let mut s = vec![0xFF, 0xE1];
    s.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    s.extend_from_slice(&payload);
    s
}
