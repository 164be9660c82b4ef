//! Domain types that validate at the edge: once a value of one of these types
//! exists, it is valid, so the code behind the edge does not check again.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Milliseconds since the Unix epoch: the one time unit stored in the database.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// An e-mail address that a person can actually receive mail at: lower-cased,
/// at most 254 characters, a dot-atom local part and a DNS domain with a TLD.
/// Quoted local parts and IP-literal domains are refused on purpose.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("enter an e-mail address")]
    Empty,
    #[error("that e-mail address is too long (254 characters at most)")]
    TooLong,
    #[error("an e-mail address looks like name@example.com")]
    Shape,
    #[error(
        "the part before @ may hold letters, digits and . ! # $ % & ' * + / = ? ^ _ ` {{ | }} ~ -, with no leading, trailing or double dots"
    )]
    LocalPart,
    #[error("the part after @ must be a domain name such as example.com")]
    Domain,
}

impl Email {
    pub fn parse(input: &str) -> Result<Email, EmailError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(EmailError::Shape)?;
        if local.is_empty() || domain.is_empty() {
            return Err(EmailError::Shape);
        }
        if local.len() > 64 || !valid_local_part(local) {
            return Err(EmailError::LocalPart);
        }
        if !valid_domain(domain) {
            return Err(EmailError::Domain);
        }
        Ok(Email(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A stable pseudonym for logs, metrics and cache keys: the address itself
    /// never leaves the database and the mailer.
    pub fn hashed_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex_string(&digest[..12])
    }
}

fn valid_local_part(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-";
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c)))
}

fn valid_domain(domain: &str) -> bool {
    if domain.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let tld = labels[labels.len() - 1];
    labels.iter().all(label_ok) && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email(#{})", self.hashed_id())
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Email::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Makes the ids of people, uploads and events: time-ordered 63-bit integers
/// (milliseconds since 2020 in the high bits, 20 random bits below), so that
/// the uploads table sorts newest-first by id and any process can make an id
/// before it writes anything.
pub fn new_id() -> i64 {
    const EPOCH_2020_MS: i64 = 1_577_836_800_000;
    let ms = (now_millis() - EPOCH_2020_MS).max(0);
    let random: i64 = rand::rng().random_range(0..(1 << 20));
    (ms << 20) | random
}

/// A string that is not a positive integer, where an id was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an id (ids are positive integers)")]
pub struct InvalidId;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of ", $what, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            pub fn new() -> Self {
                $name(new_id())
            }

            /// An id read back (a row, a key, a message): ids are positive.
            pub fn from_i64(n: i64) -> Result<Self, InvalidId> {
                if n > 0 { Ok($name(n)) } else { Err(InvalidId) }
            }

            /// The number the schema stores and the wire carries.
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse::<i64>().map_err(|_| InvalidId).and_then($name::from_i64)
            }
        }
    };
}

id_type!(PersonId, "a person (the owner of one gallery)");
id_type!(UploadId, "an upload");

/// An enum stored and sent by name: the schema and the wire keep the names
/// (`as_str`, `parse`, serde), code compares the variants.
macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // pad: widths and alignment (`{kind:<9}`) apply.
                f.pad(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;

named_enum! {
    /// What an event of the events table says happened to an upload.
    pub enum EventKind {
        Uploaded = "uploaded",
        Done = "done",
        Retry = "retry",
        Failed = "failed",
        /// An operator set a failed upload back to pending (`retry_upload`).
        Retried = "retried",
        Deleted = "deleted",
    }
}

impl EventKind {
    /// Whether the upload's gallery changed (what a local cache must drop).
    pub fn changes_gallery(self) -> bool {
        !matches!(self, EventKind::Uploaded)
    }
}

named_enum! {
    /// Which metadata store back end runs (`FLIPSTACK_DATABASE_URL`'s scheme).
    pub enum StoreBackend {
        Sqlite = "sqlite",
        Mysql = "mysql",
    }
}

named_enum! {
    /// Which gallery cache runs (`FLIPSTACK_CACHE_URL`).
    pub enum CacheBackend {
        Memory = "memory",
        Memcached = "memcached",
    }
}

named_enum! {
    /// Which job queue runs (`FLIPSTACK_QUEUE_URL`).
    pub enum QueueBackend {
        Db = "db",
        Sqs = "sqs",
    }
}

named_enum! {
    /// Which blob store runs (`FLIPSTACK_BLOB_URL`'s scheme).
    pub enum BlobBackend {
        File = "file",
        S3 = "s3",
    }
}

named_enum! {
    /// What a worker is doing, as its heartbeat says.
    pub enum WorkerStatus {
        Idle = "idle",
        Busy = "busy",
        /// Paused by an operator (`workers_paused`): claims nothing new.
        Paused = "paused",
        Draining = "draining",
    }
}

/// Where an upload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadState {
    Pending,
    Processing,
    Done,
    Failed,
}

impl UploadState {
    pub const ALL: [UploadState; 4] = [Self::Pending, Self::Processing, Self::Done, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<UploadState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

impl fmt::Display for UploadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The picture formats flipstack accepts, decided from the file's magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Gif,
    Webp,
    /// HEIF with HEVC pictures (iPhones and many Android phones).
    Heic,
    /// HEIF with AV1 pictures.
    Avif,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 6] = [Self::Jpeg, Self::Png, Self::Gif, Self::Webp, Self::Heic, Self::Avif];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Gif => "gif",
            Self::Webp => "webp",
            Self::Heic => "heic",
            Self::Avif => "avif",
        }
    }

    pub fn parse(s: &str) -> Option<ImageFormat> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
            Self::Heic => "image/heic",
            Self::Avif => "image/avif",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Gif => "gif",
            Self::Webp => "webp",
            Self::Heic => "heic",
            Self::Avif => "avif",
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Gif => "GIF",
            Self::Webp => "WebP",
            Self::Heic => "HEIC",
            Self::Avif => "AVIF",
        }
    }
}

/// The name a browser gave an uploaded file, kept only as display text: control
/// characters (NUL, CR, LF, …) and bidirectional overrides are dropped, and it is
/// cut to 200 characters. It is never used in a path, a key or a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_CHARS: usize = 200;

    pub fn from_client(raw: Option<&str>) -> DisplayName {
        let cleaned: String = raw
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control() && !is_bidi_control(*c))
            .take(Self::MAX_CHARS)
            .collect();
        let trimmed = cleaned.trim();
        if trimmed.is_empty() { DisplayName("picture".to_owned()) } else { DisplayName(trimmed.to_owned()) }
    }

    /// For rows read back from the database, which only ever holds cleaned names.
    pub fn from_stored(s: String) -> DisplayName {
        DisplayName(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// A secret handed to a browser (session cookie) or mailed (sign-in link).
/// Only its SHA-256 is stored, so a database leak does not leak sessions.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

/// The stored form of a [`SecretToken`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(pub String);

impl SecretToken {
    pub fn generate() -> SecretToken {
        let bytes: [u8; 32] = rand::rng().random();
        SecretToken(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts only strings shaped like a generated token, so a cookie or a
    /// link can never smuggle arbitrary text into a query or a log line.
    pub fn parse(s: &str) -> Option<SecretToken> {
        let ok = s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| SecretToken(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(hex_string(&Sha256::digest(self.0.as_bytes())))
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(…)")
    }
}

/// Lower-case hex, table-driven (`hex::encode` goes char by char through an
/// iterator; these run on every request that carries a session).
fn hex_string(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("twice the length");
    String::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_validated_and_lowercased() {
        assert_eq!(Email::parse(" Ann.Lee+x@Example.ORG ").unwrap().as_str(), "ann.lee+x@example.org");
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@localhost",
            "a..b@example.com",
            ".a@example.com",
            "a.@example.com",
            "a b@example.com",
            "a@exa mple.com",
            "a@-example.com",
            "a@example.c0m",
            "a@[127.0.0.1]",
            "\"quoted\"@example.com",
            "<script>@example.com",
            "a@example.com\r\nBcc: x@y.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(Email::parse(&long_local), Err(EmailError::LocalPart));
        let long = format!("a@{}.com", "b".repeat(260));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong));
    }

    #[test]
    fn email_debug_does_not_print_the_address() {
        let e = Email::parse("someone@example.com").unwrap();
        assert!(!format!("{e:?}").contains("someone"));
    }

    #[test]
    fn display_names_drop_control_and_bidi_characters() {
        let n = DisplayName::from_client(Some("a\r\nSet-Cookie: x=1.jpg"));
        assert_eq!(n.as_str(), "aSet-Cookie: x=1.jpg");
        assert_eq!(DisplayName::from_client(Some("photo.jpg\0.php")).as_str(), "photo.jpg.php");
        assert_eq!(DisplayName::from_client(Some("\u{202E}gpj.exe")).as_str(), "gpj.exe");
        assert_eq!(DisplayName::from_client(Some(&"x".repeat(304))).as_str().len(), 200);
        assert_eq!(DisplayName::from_client(None).as_str(), "picture");
    }

    #[test]
    fn ids_are_positive_and_time_ordered() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        assert!(a > 0 && b > a);
        assert!("0".parse::<UploadId>().is_err());
        assert!("-5".parse::<UploadId>().is_err());
        assert_eq!("42".parse::<UploadId>().unwrap(), UploadId(42));
    }

    #[test]
    fn tokens_round_trip_and_reject_junk() {
        let t = SecretToken::generate();
        assert_eq!(SecretToken::parse(t.as_str()).unwrap().hash(), t.hash());
        assert!(SecretToken::parse("short").is_none());
        assert!(SecretToken::parse(&"a".repeat(42).replace('a', "'")).is_none());
    }
}
