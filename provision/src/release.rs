//! The release `provision up` ships: a Linux x86-64 ELF executable that the
//! instances' Amazon Linux 2023 can run. What an executable needs of the C
//! library is written in it: the `GLIBC_x.y` versions of its
//! `.gnu.version_r` section (the symbol versions the dynamic loader checks).
//! The highest of them must be at most the target's glibc (2.34); a static
//! executable needs none. The shared libraries it names (`DT_NEEDED` in its
//! `.dynamic` section) must all be in the target's base system: a library
//! that is not (libheif, say) is loaded at run time instead, where its
//! absence costs a feature, not the start.
//!
//! A small reader of the ELF64 headers, enough for that and nothing more:
//! it reads the file header, the program headers (for the interpreter) and
//! the one section, never the whole file.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A glibc version, `GLIBC_2.34` → (2, 34, 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub u32, pub u32, pub u32);

impl GlibcVersion {
    /// `GLIBC_2.2.5` → Some(2.2.5); other names (`GLIBC_PRIVATE`, `GCC_3.0`) → None.
    pub fn parse(name: &str) -> Option<GlibcVersion> {
        let rest = name.strip_prefix("GLIBC_")?;
        let mut parts = rest.split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let patch = parts.next().unwrap_or(Ok(0)).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(GlibcVersion(major, minor, patch))
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.2 {
            0 => write!(f, "{}.{}", self.0, self.1),
            p => write!(f, "{}.{}.{p}", self.0, self.1),
        }
    }
}

/// The instances' system and its C library.
pub const TARGET_SYSTEM: &str = "Amazon Linux 2023";
pub const TARGET_GLIBC: GlibcVersion = GlibcVersion(2, 34, 0);

/// What an executable is, as far as shipping it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    pub path: PathBuf,
    pub bytes: u64,
    /// The highest `GLIBC_` version it needs (None: it needs no glibc symbol versions).
    pub glibc: Option<GlibcVersion>,
    /// The dynamic loader it names (None: static).
    pub interpreter: Option<String>,
    /// The shared libraries the loader must find before `main` (`DT_NEEDED`).
    pub needed: Vec<String>,
}

impl Executable {
    /// One line for plans and logs.
    pub fn summary(&self) -> String {
        let needs = match (&self.glibc, &self.interpreter) {
            (Some(v), _) => format!("needs GLIBC_{v}"),
            (None, None) => "static, needs no glibc".into(),
            (None, Some(_)) => "needs no glibc symbol versions".into(),
        };
        let links = if self.needed.is_empty() { String::new() } else { format!(", links {}", self.needed.join(" ")) };
        format!("{}, {} MiB, Linux x86-64, {needs}{links}", self.path.display(), self.bytes.div_ceil(1 << 20))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a Linux x86-64 executable ({why}); build one with `cargo build --release` on Linux x86-64 (see docs/aws.md) and pass it with --binary"
    )]
    NotLinuxX86_64 { path: PathBuf, why: String },
    #[error(
        "{path} needs glibc {need} (GLIBC_{need} in its symbol versions), but {TARGET_SYSTEM} has {TARGET_GLIBC}: build it on a system whose glibc is at most {TARGET_GLIBC} (docs/aws.md, \"Building the release\") and pass it with --binary"
    )]
    GlibcTooNew { path: PathBuf, need: GlibcVersion },
    #[error(
        "{path} asks for the dynamic loader {interpreter}, which {TARGET_SYSTEM} does not have; build it for x86_64-unknown-linux-gnu (see docs/aws.md)"
    )]
    ForeignLoader { path: PathBuf, interpreter: String },
    #[error(
        "{path} needs the shared {} {}, which {TARGET_SYSTEM} does not have in its base system, so it would not start there: link {} statically or load {} at run time, as flipstack does libheif (docs/aws.md, \"Building the release\")",
        if missing.len() == 1 { "library" } else { "libraries" }, missing.join(", "),
        if missing.len() == 1 { "it" } else { "them" }, if missing.len() == 1 { "it" } else { "them" }
    )]
    MissingLibraries { path: PathBuf, missing: Vec<String> },
}

/// The shared libraries every Amazon Linux 2023 instance has (glibc's, the
/// GCC runtime's and zlib, which rpm itself needs).
pub const TARGET_LIBRARIES: &[&str] = &[
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libdl.so.2",
    "libgcc_s.so.1",
    "libm.so.6",
    "libpthread.so.0",
    "librt.so.1",
    "libutil.so.1",
    "libz.so.1",
];

const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
const SHT_DYNAMIC: u32 = 6;
const DT_NEEDED: u64 = 1;
const PT_INTERP: u32 = 3;
/// The loader of x86-64 glibc, which Amazon Linux 2023 has.
pub const GLIBC_LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

struct Reader<'a> {
    file: &'a File,
    path: &'a Path,
    len: u64,
}

impl Reader<'_> {
    fn bytes(&self, offset: u64, n: u64) -> Result<Vec<u8>, ReleaseError> {
        if offset.checked_add(n).is_none_or(|end| end > self.len) || n > 64 << 20 {
            return Err(self.bad(format!("a header points outside the file (offset {offset}, {n} bytes)")));
        }
        let mut buf = vec![0u8; n as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| ReleaseError::Io { path: self.path.to_owned(), source })?;
        Ok(buf)
    }

    fn bad(&self, why: String) -> ReleaseError {
        ReleaseError::NotLinuxX86_64 { path: self.path.to_owned(), why }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// A NUL-terminated name at `at` in a string table.
fn name_at(table: &[u8], at: u32) -> Option<&str> {
    let rest = table.get(at as usize..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Reads what an executable is and needs; fails if it is not a Linux x86-64 ELF executable.
pub fn inspect(path: &Path) -> Result<Executable, ReleaseError> {
    let io = |source| ReleaseError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let r = Reader { file: &file, path, len };
    if len < 64 {
        return Err(r.bad("too short for an ELF header".into()));
    }
    let h = r.bytes(0, 64)?;
    if &h[..4] != b"\x7fELF" {
        return Err(r.bad("no ELF header".into()));
    }
    if h[4] != 2 || h[5] != 1 {
        return Err(r.bad("not 64-bit little-endian".into()));
    }
    if u16_at(&h, 18) != 0x3E {
        return Err(r.bad(format!("machine {:#x}, not x86-64", u16_at(&h, 18))));
    }
    // ET_EXEC, or ET_DYN for position-independent executables.
    if !matches!(u16_at(&h, 16), 2 | 3) {
        return Err(r.bad("not an executable".into()));
    }

    let (phoff, phentsize, phnum) = (u64_at(&h, 0x20), u64::from(u16_at(&h, 0x36)), u64::from(u16_at(&h, 0x38)));
    let mut interpreter = None;
    if phnum > 0 {
        if phentsize < 56 {
            return Err(r.bad("program headers too small".into()));
        }
        let table = r.bytes(phoff, phentsize * phnum)?;
        for i in 0..phnum as usize {
            let ph = &table[i * phentsize as usize..];
            if u32_at(ph, 0) == PT_INTERP {
                let raw = r.bytes(u64_at(ph, 8), u64_at(ph, 32))?;
                let text = raw.split(|&c| c == 0).next().unwrap_or_default();
                interpreter = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }

    let (shoff, shentsize, shnum) = (u64_at(&h, 0x28), u64::from(u16_at(&h, 0x3A)), u64::from(u16_at(&h, 0x3C)));
    let mut glibc = None;
    let mut needed = Vec::new();
    if shnum > 0 {
        if shentsize < 64 {
            return Err(r.bad("section headers too small".into()));
        }
        let sections = r.bytes(shoff, shentsize * shnum)?;
        let section = |i: u64| &sections[(i * shentsize) as usize..];
        for i in 0..shnum {
            let s = section(i);
            let kind = u32_at(s, 4);
            if kind != SHT_GNU_VERNEED && kind != SHT_DYNAMIC {
                continue;
            }
            let (offset, size, link, count) = (u64_at(s, 24), u64_at(s, 32), u64::from(u32_at(s, 40)), u32_at(s, 44));
            if link >= shnum {
                return Err(r.bad("a dynamic-linking section names no string table".into()));
            }
            let strtab = section(link);
            let strings = r.bytes(u64_at(strtab, 24), u64_at(strtab, 32))?;
            let data = r.bytes(offset, size)?;
            if kind == SHT_DYNAMIC {
                // Elf64_Dyn entries (16 bytes: tag, value) up to DT_NULL.
                for entry in data.chunks_exact(16) {
                    match u64_at(entry, 0) {
                        0 => break,
                        DT_NEEDED => {
                            let name = u32::try_from(u64_at(entry, 8)).ok().and_then(|at| name_at(&strings, at));
                            needed.push(name.ok_or_else(|| r.bad("a needed library has no name".into()))?.to_owned());
                        }
                        _ => {}
                    }
                }
                continue;
            }
            // Verneed entries (16 bytes), each with a chain of Vernaux (16 bytes).
            let mut at = 0usize;
            for _ in 0..count {
                if at + 16 > data.len() {
                    return Err(r.bad("a version entry runs past its section".into()));
                }
                let (aux_count, aux, next) = (u16_at(&data, at + 2), u32_at(&data, at + 8), u32_at(&data, at + 12));
                let mut a = at + aux as usize;
                for _ in 0..aux_count {
                    if a + 16 > data.len() {
                        return Err(r.bad("a version entry runs past its section".into()));
                    }
                    let name = name_at(&strings, u32_at(&data, a + 8)).unwrap_or("");
                    if let Some(v) = GlibcVersion::parse(name) {
                        glibc = glibc.max(Some(v));
                    }
                    let next_aux = u32_at(&data, a + 12);
                    if next_aux == 0 {
                        break;
                    }
                    a += next_aux as usize;
                }
                if next == 0 {
                    break;
                }
                at += next as usize;
            }
        }
    }
    Ok(Executable { path: path.to_owned(), bytes: len, glibc, interpreter, needed })
}

/// [`inspect`], then refuses what the instances could not run.
pub fn check_for_target(path: &Path) -> Result<Executable, ReleaseError> {
    let exe = inspect(path)?;
    if let Some(need) = exe.glibc
        && need > TARGET_GLIBC
    {
        return Err(ReleaseError::GlibcTooNew { path: exe.path, need });
    }
    if let Some(interp) = &exe.interpreter
        && interp != GLIBC_LOADER
        && interp != "/lib/ld-linux-x86-64.so.2"
    {
        return Err(ReleaseError::ForeignLoader { path: exe.path.clone(), interpreter: interp.clone() });
    }
    let missing: Vec<String> =
        exe.needed.iter().filter(|lib| !TARGET_LIBRARIES.contains(&lib.as_str())).cloned().collect();
    if !missing.is_empty() {
        return Err(ReleaseError::MissingLibraries { path: exe.path, missing });
    }
    Ok(exe)
}

/// The release `up` ships: the given file, else the running executable.
pub fn release_path(given: Option<&Path>) -> Result<PathBuf, ReleaseError> {
    match given {
        Some(p) => Ok(p.to_owned()),
        None => std::env::current_exe()
            .map_err(|source| ReleaseError::Io { path: PathBuf::from("the running flipstack executable"), source }),
    }
}

/// A minimal ELF64 x86-64 executable that needs libc.so.6 and whose
/// `.gnu.version_r` asks it for `versions`, followed by `padding` (to vary
/// its digest): the smallest file [`inspect`] reads as a real one. For tests
/// of everything that ships releases, here and in the integration suites.
#[doc(hidden)]
pub fn minimal_executable(versions: &[&str], padding: &[u8]) -> Vec<u8> {
    minimal_executable_linking(&["libc.so.6"], versions, padding)
}

/// [`minimal_executable`] that needs the shared libraries `needed` (the
/// first must be libc.so.6, which the versions are asked of).
#[doc(hidden)]
pub fn minimal_executable_linking(needed: &[&str], versions: &[&str], padding: &[u8]) -> Vec<u8> {
    let interp = format!("{GLIBC_LOADER}\0");
    // .dynstr: "\0" then the library names (libc.so.6 first, at 1), then the version names.
    let mut dynstr = b"\0".to_vec();
    let mut needed_offsets = Vec::new();
    for lib in needed {
        needed_offsets.push(dynstr.len() as u64);
        dynstr.extend_from_slice(lib.as_bytes());
        dynstr.push(0);
    }
    let mut name_offsets = Vec::new();
    for v in versions {
        name_offsets.push(dynstr.len() as u32);
        dynstr.extend_from_slice(v.as_bytes());
        dynstr.push(0);
    }
    // .dynamic: DT_NEEDED per library, then DT_NULL.
    let mut dynamic = Vec::new();
    for off in needed_offsets {
        dynamic.extend_from_slice(&DT_NEEDED.to_le_bytes());
        dynamic.extend_from_slice(&off.to_le_bytes());
    }
    dynamic.extend_from_slice(&[0u8; 16]);
    // .gnu.version_r: one Verneed (libc.so.6), one Vernaux per version.
    let mut verneed = Vec::new();
    verneed.extend_from_slice(&1u16.to_le_bytes()); // vn_version
    verneed.extend_from_slice(&(versions.len() as u16).to_le_bytes()); // vn_cnt
    verneed.extend_from_slice(&1u32.to_le_bytes()); // vn_file: "libc.so.6"
    verneed.extend_from_slice(&16u32.to_le_bytes()); // vn_aux
    verneed.extend_from_slice(&0u32.to_le_bytes()); // vn_next
    for (i, off) in name_offsets.iter().enumerate() {
        let last = i + 1 == name_offsets.len();
        verneed.extend_from_slice(&0u32.to_le_bytes()); // vna_hash (unchecked here)
        verneed.extend_from_slice(&0u16.to_le_bytes()); // vna_flags
        verneed.extend_from_slice(&(i as u16 + 2).to_le_bytes()); // vna_other
        verneed.extend_from_slice(&off.to_le_bytes()); // vna_name
        verneed.extend_from_slice(&(if last { 0u32 } else { 16 }).to_le_bytes()); // vna_next
    }
    let shstrtab = b"\0.dynstr\0.gnu.version_r\0.shstrtab\0.dynamic\0".to_vec();

    let ph_off = 64usize;
    let interp_off = ph_off + 56;
    let dynstr_off = interp_off + interp.len();
    let verneed_off = dynstr_off + dynstr.len();
    let dynamic_off = verneed_off + verneed.len();
    let shstr_off = dynamic_off + dynamic.len();
    let sh_off = (shstr_off + shstrtab.len()).next_multiple_of(8);

    let mut out = vec![0u8; sh_off];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // 64-bit
    out[5] = 1; // little-endian
    out[6] = 1; // version
    out[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN (PIE)
    out[18..20].copy_from_slice(&0x3Eu16.to_le_bytes()); // x86-64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[0x20..0x28].copy_from_slice(&(ph_off as u64).to_le_bytes());
    out[0x28..0x30].copy_from_slice(&(sh_off as u64).to_le_bytes());
    out[0x34..0x36].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    out[0x38..0x3A].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    out[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out[0x3C..0x3E].copy_from_slice(&5u16.to_le_bytes()); // e_shnum
    out[0x3E..0x40].copy_from_slice(&3u16.to_le_bytes()); // e_shstrndx
    // PT_INTERP
    let ph = &mut out[ph_off..ph_off + 56];
    ph[0..4].copy_from_slice(&PT_INTERP.to_le_bytes());
    ph[4..8].copy_from_slice(&4u32.to_le_bytes());
    ph[8..16].copy_from_slice(&(interp_off as u64).to_le_bytes());
    ph[32..40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(interp.len() as u64).to_le_bytes());
    out[interp_off..dynstr_off].copy_from_slice(interp.as_bytes());
    out[dynstr_off..verneed_off].copy_from_slice(&dynstr);
    out[verneed_off..dynamic_off].copy_from_slice(&verneed);
    out[dynamic_off..shstr_off].copy_from_slice(&dynamic);
    out[shstr_off..shstr_off + shstrtab.len()].copy_from_slice(&shstrtab);
    let section = |name: u32, kind: u32, offset: usize, size: usize, link: u32, info: u32| {
        let mut s = vec![0u8; 64];
        s[0..4].copy_from_slice(&name.to_le_bytes());
        s[4..8].copy_from_slice(&kind.to_le_bytes());
        s[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
        s[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        s[40..44].copy_from_slice(&link.to_le_bytes());
        s[44..48].copy_from_slice(&info.to_le_bytes());
        s
    };
    out.extend(vec![0u8; 64]); // the null section
    out.extend(section(1, 3, dynstr_off, dynstr.len(), 0, 0)); // .dynstr (SHT_STRTAB)
    out.extend(section(9, SHT_GNU_VERNEED, verneed_off, verneed.len(), 1, 1)); // .gnu.version_r
    out.extend(section(24, 3, shstr_off, shstrtab.len(), 0, 0)); // .shstrtab
    out.extend(section(34, SHT_DYNAMIC, dynamic_off, dynamic.len(), 1, 0)); // .dynamic
    out.extend_from_slice(padding);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(GlibcVersion::parse("GLIBC_2.2.5"), Some(GlibcVersion(2, 2, 5)));
        assert_eq!(GlibcVersion::parse("GLIBC_2.34"), Some(GlibcVersion(2, 34, 0)));
        assert_eq!(GlibcVersion::parse("GLIBC_PRIVATE"), None);
        assert_eq!(GlibcVersion::parse("GCC_3.0"), None);
        assert!(GlibcVersion(2, 34, 0) > GlibcVersion(2, 2, 5));
        assert!(GlibcVersion(2, 38, 0) > TARGET_GLIBC);
        assert_eq!(GlibcVersion(2, 2, 5).to_string(), "2.2.5");
    }

    #[test]
    fn the_highest_glibc_version_decides() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "ok", &minimal_executable(&["GLIBC_2.2.5", "GLIBC_2.34", "GLIBC_2.14"], b"x"));
        let exe = check_for_target(&ok).unwrap();
        assert_eq!(exe.glibc, Some(GlibcVersion(2, 34, 0)));
        assert_eq!(exe.interpreter.as_deref(), Some(GLIBC_LOADER));
        let new = write(dir.path(), "new", &minimal_executable(&["GLIBC_2.2.5", "GLIBC_2.38"], b""));
        let err = check_for_target(&new).unwrap_err();
        assert!(matches!(err, ReleaseError::GlibcTooNew { need: GlibcVersion(2, 38, 0), .. }), "{err}");
        assert!(err.to_string().contains("Amazon Linux 2023 has 2.34"), "{err}");
    }

    #[test]
    fn what_is_not_a_linux_x86_64_executable_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = write(dir.path(), "script", b"#!/bin/sh\necho hello\n");
        assert!(matches!(inspect(&text), Err(ReleaseError::NotLinuxX86_64 { .. })));
        let mut arm = minimal_executable(&["GLIBC_2.17"], b"");
        arm[18..20].copy_from_slice(&0xB7u16.to_le_bytes());
        let arm = write(dir.path(), "arm", &arm);
        let err = inspect(&arm).unwrap_err();
        assert!(err.to_string().contains("not x86-64"), "{err}");
        let mut cut = minimal_executable(&["GLIBC_2.17"], b"");
        cut.truncate(200);
        let cut = write(dir.path(), "cut", &cut);
        assert!(matches!(inspect(&cut), Err(ReleaseError::NotLinuxX86_64 { .. })));
    }

    #[test]
    fn a_library_outside_the_base_system_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "base",
            &minimal_executable_linking(&["libc.so.6", "libm.so.6", "libz.so.1"], &["GLIBC_2.34"], b""),
        );
        assert_eq!(check_for_target(&base).unwrap().needed, ["libc.so.6", "libm.so.6", "libz.so.1"]);
        let heif = write(
            dir.path(),
            "heif",
            &minimal_executable_linking(&["libc.so.6", "libheif.so.1"], &["GLIBC_2.34"], b""),
        );
        let err = check_for_target(&heif).unwrap_err();
        assert!(
            matches!(&err, ReleaseError::MissingLibraries { missing, .. } if missing == &["libheif.so.1"]),
            "{err}"
        );
        assert!(err.to_string().contains("libheif.so.1, which Amazon Linux 2023 does not have"), "{err}");
    }

    /// The test binary itself is a real executable built on this machine,
    /// linking only what the target has (libheif is loaded at run time).
    #[test]
    fn this_build_reads_as_a_real_executable() {
        let me = std::env::current_exe().unwrap();
        let exe = inspect(&me).unwrap();
        assert!(exe.glibc.is_some(), "a glibc build names GLIBC_ versions: {exe:?}");
        assert!(exe.needed.iter().any(|l| l == "libc.so.6"), "{exe:?}");
        eprintln!("{}", exe.summary());
    }
}
