//! What may follow a JPEG's end-of-image marker, besides padding: the
//! further pictures of a Multi-Picture Format file (read from its APP2
//! index, see [`super::exif::mpf_images`]) and the video of a motion photo,
//! which the picture's XMP announces (Google's `Camera:MotionPhoto` with a
//! `Container:Directory`, or the older `MicroVideo`/`MicroVideoOffset` that
//! Google and Samsung cameras write). Anything else there is refused.

/// The XMP packet's APP1 prefix.
pub const XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// A motion photo's video, as its XMP announces it: the last `len` bytes of
/// the file (when the XMP says how long it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MotionVideo {
    pub len: Option<u64>,
}

/// The values of XMP properties named `local` (any namespace prefix), as
/// attributes (`p:Name="v"`) or elements (`<p:Name>v</p:Name>`), in order.
fn values<'a>(xmp: &'a str, local: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let attr = format!(":{local}=\"");
    let mut rest = xmp;
    while let Some(i) = rest.find(&attr) {
        rest = &rest[i + attr.len()..];
        if let Some(end) = rest.find('"') {
            out.push(&rest[..end]);
        }
    }
    let open = format!(":{local}>");
    let mut rest = xmp;
    while let Some(i) = rest.find(&open) {
        // Not a closing tag (`</p:Name>`).
        let before = &rest[..i];
        rest = &rest[i + open.len()..];
        if before.rfind('<').is_some_and(|lt| before[lt..].starts_with("</")) {
            continue;
        }
        if let Some(end) = rest.find('<') {
            out.push(rest[..end].trim());
        }
    }
    out
}

/// Does this XMP packet announce a motion photo's video after the picture?
pub fn motion_photo(xmp: &[u8]) -> Option<MotionVideo> {
    let xmp = std::str::from_utf8(xmp).ok()?;
    let flagged = |name: &str| values(xmp, name).iter().any(|v| v.trim() == "1");
    // Google's container format: a directory of items, the video one
    // with its length.
    if flagged("MotionPhoto") {
        let len = xmp
            .split("<rdf:li")
            .find(|item| values(item, "Semantic").contains(&"MotionPhoto"))
            .and_then(|item| values(item, "Length").first().and_then(|l| l.trim().parse().ok()));
        return Some(MotionVideo { len });
    }
    if flagged("MicroVideo") {
        let len = values(xmp, "MicroVideoOffset").first().and_then(|l| l.trim().parse().ok());
        return Some(MotionVideo { len });
    }
    None
}

/// Top-level ISO-BMFF (MP4) boxes a camera's video is made of.
pub fn is_video_box(kind: &[u8; 4]) -> bool {
    matches!(
        kind,
        b"ftyp"
            | b"moov"
            | b"mdat"
            | b"free"
            | b"skip"
            | b"wide"
            | b"uuid"
            | b"meta"
            | b"udta"
            | b"moof"
            | b"mfra"
            | b"sidx"
            | b"styp"
            | b"pnot"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_google_and_micro_video_announcements() {
        let google = br#"<x:xmpmeta><rdf:RDF><rdf:Description GCamera:MotionPhoto="1" GCamera:MotionPhotoVersion="1">
<Container:Directory><rdf:Seq>
<rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="Primary" Item:Mime="image/jpeg"/></rdf:li>
<rdf:li rdf:parseType="Resource"><Container:Item Item:Semantic="MotionPhoto" Item:Mime="video/mp4" Item:Length="4242"/></rdf:li>
</rdf:Seq></Container:Directory></rdf:Description></rdf:RDF></x:xmpmeta>"#;
        assert_eq!(motion_photo(google), Some(MotionVideo { len: Some(4242) }));
        let micro = br#"<rdf:Description><GCamera:MicroVideo>1</GCamera:MicroVideo><GCamera:MicroVideoOffset>99</GCamera:MicroVideoOffset></rdf:Description>"#;
        assert_eq!(motion_photo(micro), Some(MotionVideo { len: Some(99) }));
        assert_eq!(motion_photo(br#"<rdf:Description GCamera:MotionPhoto="0"/>"#), None);
        assert_eq!(motion_photo(b"<x:xmpmeta/>"), None);
    }
}
