//! Flip benchmark (issue 7, benchmark 1, and the raw throughput of 3).
//!
//! Corpus mode (default): every JPEG of `<testdata>/photos/` in rounds; in
//! each round every tool runs once on the same image, in an order rotated
//! from round to round:
//!   - `jpegtran -flip vertical -perfect` and `-trim`, as whole processes
//!     (start-up, file read and write included), the reference;
//!   - flipstack's lossless path (where a perfect transform exists), its
//!     re-encode path (forced, on every image), and what the worker runs
//!     (`flip_with_thumbnails`: the chosen path plus both thumbnails);
//!   - the `image` crate: decode → flipv → JPEG encode at quality 90.
//!
//! Ratios are medians over rounds of tool / reference *in the same round*,
//! so they hold when other work shares the cores; compare ratios, not seconds.
//!
//!   cargo bench -p flipstack-imaging --bench flip -- [--rounds N] [--testdata DIR] [--tsv FILE]
//!   cargo bench -p flipstack-imaging --bench flip -- --throughput FILE [--threads N] [--seconds S]
//!       [--second-core idle|always|never]
//!   cargo bench -p flipstack-imaging --bench flip -- --make-jpeg OUT --bytes N
//!   cargo bench -p flipstack-imaging --bench flip -- --heic [--rounds N] [--testdata DIR]
//!
//! HEIC mode: a 12 MP (4032×3024) HEIC made from the largest corpus photo
//! (scaled; a generated picture without the corpus), then in rounds, order
//! alternating: what the worker runs for a HEIC upload (decode, flip, HEIC
//! encode, two JPEG views, two thumbnails) beside `heif-convert -q 90`
//! (Debian's libheif-examples: decode and JPEG encode, as a process).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flipstack_domain::domain::ImageFormat;
use flipstack_imaging::{self as imaging, Limits, flip_jpeg};

fn limits() -> Limits {
    Limits::new(50_000_000, 1000)
}

struct Args {
    rounds: usize,
    testdata: PathBuf,
    tsv: Option<PathBuf>,
    throughput: Option<PathBuf>,
    threads: usize,
    seconds: u64,
    make_jpeg: Option<PathBuf>,
    bytes: u64,
    heic: bool,
    second_core: imaging::SecondCore,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 11,
        testdata: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
        tsv: None,
        throughput: None,
        threads: 2,
        seconds: 20,
        make_jpeg: None,
        bytes: 20_000_000,
        heic: false,
        second_core: imaging::SecondCore::WhenIdle,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("a value after the flag");
        match k.as_str() {
            "--rounds" => a.rounds = v().parse().expect("a number"),
            "--testdata" => a.testdata = v().into(),
            "--tsv" => a.tsv = Some(v().into()),
            "--throughput" => a.throughput = Some(v().into()),
            "--threads" => a.threads = v().parse().expect("a number"),
            "--seconds" => a.seconds = v().parse().expect("a number"),
            "--make-jpeg" => a.make_jpeg = Some(v().into()),
            "--bytes" => a.bytes = v().parse().expect("a number"),
            "--heic" => a.heic = true,
            // Whether lossless flips of large pictures take a second core
            // (the worker's default: when one is idle).
            "--second-core" => {
                a.second_core = match v().as_str() {
                    "idle" => imaging::SecondCore::WhenIdle,
                    "always" => imaging::SecondCore::Always,
                    "never" => imaging::SecondCore::Never,
                    other => panic!("--second-core takes idle, always or never, not {other}"),
                }
            }
            // cargo bench passes --bench; nothing else is expected.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn main() {
    let a = args();
    // As the worker does before its first flip.
    imaging::keep_memory_between_flips();
    a.second_core.set();
    if let Some(out) = &a.make_jpeg {
        return make_jpeg(out, a.bytes);
    }
    if a.heic {
        return heic(&a);
    }
    match &a.throughput {
        Some(file) => throughput(file, a.threads, a.seconds, a.second_core),
        None => corpus(&a),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    JpegtranPerfect,
    JpegtranTrim,
    Lossless,
    Reencode,
    Worker,
    ImageCrate,
}

impl Tool {
    const ALL: [Tool; 6] =
        [Tool::JpegtranPerfect, Tool::JpegtranTrim, Tool::Lossless, Tool::Reencode, Tool::Worker, Tool::ImageCrate];

    fn name(self) -> &'static str {
        match self {
            Tool::JpegtranPerfect => "jpegtran -perfect (process)",
            Tool::JpegtranTrim => "jpegtran -trim (process)",
            Tool::Lossless => "flipstack lossless",
            Tool::Reencode => "flipstack re-encode",
            Tool::Worker => "flipstack worker (flip + 2 thumbs)",
            Tool::ImageCrate => "image crate decode→flipv→encode q90",
        }
    }
}

/// Runs one tool once; `None` when it cannot do this image.
fn run(tool: Tool, path: &Path, bytes: &[u8], out: &Path) -> Option<Duration> {
    let started = Instant::now();
    match tool {
        Tool::JpegtranPerfect | Tool::JpegtranTrim => {
            let opt = if tool == Tool::JpegtranPerfect { "-perfect" } else { "-trim" };
            let status = Command::new("jpegtran")
                .args(["-flip", "vertical", opt, "-outfile"])
                .arg(out)
                .arg(path)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("jpegtran runs (apt-get install libjpeg-turbo-progs)");
            if !status.success() {
                return None;
            }
        }
        Tool::Lossless => {
            let f = flip_jpeg::lossless(bytes, &limits()).expect("lossless")?;
            std::hint::black_box(f);
        }
        Tool::Reencode => {
            std::hint::black_box(flip_jpeg::reencode(bytes, &limits()).expect("re-encode"));
        }
        Tool::Worker => {
            let p = imaging::flip_with_thumbnails(bytes, ImageFormat::Jpeg, &limits()).expect("worker path");
            assert!(p.thumbnails.is_ok());
            std::hint::black_box(p);
        }
        Tool::ImageCrate => {
            let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).expect("image crate decode");
            let img = img.flipv();
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&img)
                .expect("image crate encode");
            std::hint::black_box(out);
        }
    }
    Some(started.elapsed())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn corpus(a: &Args) {
    let photos = a.testdata.join("photos");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&photos)
        .unwrap_or_else(|e| panic!("{}: {e} (pass --testdata DIR)", photos.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.jpg");
    let mut tsv = String::from(
        "image\tmegapixels\tpath_chosen\ttool\tmedian_s\tmin_s\truns\tMP_per_s\tratio_vs_jpegtran\treference\tspeedup_vs_image_crate\n",
    );
    println!("| image | MP | path chosen | tool | median ms | MP/s | × jpegtran | faster than image crate |");
    println!("|---|---:|---|---|---:|---:|---:|---:|");
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(path).unwrap();
        let header = turbojpeg::read_header(&bytes).unwrap();
        let mp = (header.width * header.height) as f64 / 1e6;
        let chosen = imaging::flip(&bytes, ImageFormat::Jpeg, &limits()).unwrap().method;
        // Times per tool per round; None where the tool cannot do it.
        let mut times: Vec<Vec<Option<f64>>> = vec![Vec::new(); Tool::ALL.len()];
        // One warm-up round (page cache, lazy initialisation), not counted.
        for t in Tool::ALL {
            run(t, path, &bytes, &out);
        }
        for round in 0..a.rounds {
            for k in 0..Tool::ALL.len() {
                let i = (k + round) % Tool::ALL.len();
                let d = run(Tool::ALL[i], path, &bytes, &out);
                times[i].push(d.map(|d| d.as_secs_f64()));
            }
        }
        let perfect_ok = times[0].iter().all(Option::is_some);
        let reference = if perfect_ok { 0 } else { 1 };
        let image_idx = Tool::ALL.len() - 1;
        for (i, t) in Tool::ALL.iter().enumerate() {
            if times[i].iter().any(Option::is_none) {
                let reason =
                    if *t == Tool::JpegtranPerfect { "FAIL (not perfect)" } else { "n/a (no perfect transform)" };
                println!("| {name} | {mp:.2} | {chosen} | {} | {reason} | | | |", t.name());
                tsv.push_str(&format!("{name}\t{mp:.2}\t{chosen}\t{}\t{reason}\t\t\t\t\t\t\n", t.name()));
                continue;
            }
            let mut secs: Vec<f64> = times[i].iter().map(|d| d.unwrap()).collect();
            let min = secs.iter().cloned().fold(f64::MAX, f64::min);
            let med = median(&mut secs);
            let mut ratio: Vec<f64> =
                (0..a.rounds).map(|r| times[i][r].unwrap() / times[reference][r].unwrap()).collect();
            let ratio = median(&mut ratio);
            let mut speedup: Vec<f64> =
                (0..a.rounds).map(|r| times[image_idx][r].unwrap() / times[i][r].unwrap()).collect();
            let speedup = median(&mut speedup);
            let refname = Tool::ALL[reference].name();
            println!(
                "| {name} | {mp:.2} | {chosen} | {} | {:.1} | {:.0} | {ratio:.2} | {speedup:.1}× |",
                t.name(),
                med * 1e3,
                mp / med
            );
            tsv.push_str(&format!(
                "{name}\t{mp:.2}\t{chosen}\t{}\t{med:.4}\t{min:.4}\t{}\t{:.1}\t{ratio:.3}\t{refname}\t{speedup:.2}\n",
                t.name(),
                a.rounds,
                mp / med
            ));
        }
    }
    if let Some(p) = &a.tsv {
        std::fs::write(p, tsv).unwrap();
        eprintln!("wrote {}", p.display());
    }
}

/// Jobs per second with `threads` threads each flipping `file` over and
/// over: once with the flip alone, once with the worker's flip + thumbnails.
fn throughput(file: &Path, threads: usize, seconds: u64, second_core: imaging::SecondCore) {
    let bytes = std::fs::read(file).unwrap();
    let format = match file.extension().and_then(|e| e.to_str()) {
        Some("png") => ImageFormat::Png,
        Some("gif") => ImageFormat::Gif,
        Some("webp") => ImageFormat::Webp,
        _ => ImageFormat::Jpeg,
    };
    for with_thumbs in [false, true] {
        let done = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        if with_thumbs {
                            let p = imaging::flip_with_thumbnails(&bytes, format, &limits());
                            std::hint::black_box(p.unwrap());
                        } else {
                            std::hint::black_box(imaging::flip(&bytes, format, &limits()).unwrap());
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            std::thread::sleep(Duration::from_secs(seconds));
            stop.store(true, Ordering::Relaxed);
        });
        let elapsed = started.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        println!(
            "throughput\t{}\t{}\tthreads={threads}\tsecond_core={second_core:?}\tjobs={n}\tseconds={elapsed:.2}\tjobs_per_s={:.2}",
            file.file_name().unwrap().to_string_lossy(),
            if with_thumbs { "flip+thumbnails" } else { "flip" },
            n as f64 / elapsed
        );
    }
}

/// A JPEG of about `bytes` bytes (noise at quality 100, 4:4:4: the most
/// bytes per pixel, so the most scan data per upload), for the upload
/// memory benchmark.
fn make_jpeg(out: &Path, bytes: u64) {
    let encode = |w: usize, h: usize| {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let px: Vec<u8> = (0..w * h * 3)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        turbojpeg::compress(
            turbojpeg::Image {
                pixels: px.as_slice(),
                width: w,
                pitch: w * 3,
                height: h,
                format: turbojpeg::PixelFormat::RGB,
            },
            100,
            turbojpeg::Subsamp::None,
        )
        .unwrap()
        .to_vec()
    };
    let probe = encode(1000, 1000);
    let per_px = probe.len() as f64 / 1e6;
    let side = ((bytes as f64 / per_px).sqrt() as usize).max(16);
    let jpeg = encode(side, side);
    std::fs::write(out, &jpeg).unwrap();
    println!("{}: {side}x{side}, {} bytes", out.display(), jpeg.len());
}

/// A 12 MP picture with a photo's detail: the largest corpus JPEG scaled to
/// 4032×3024, or a generated one.
fn twelve_megapixels(testdata: &Path) -> (Vec<u8>, &'static str) {
    let (w, h) = (4032u32, 3024u32);
    let largest = std::fs::read_dir(testdata.join("photos")).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
    });
    if let Some(path) = largest {
        let img = image::open(&path).expect("a corpus photo").resize_exact(w, h, image::imageops::FilterType::Triangle);
        return (img.into_rgb8().into_raw(), "the largest corpus photo, scaled");
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let px = (0..w * h)
        .flat_map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (x, y) = (i % w, i / w);
            let n = (state >> 58) as u32;
            [((x / 16 + y / 9) % 256) as u8, (y * 255 / h) as u8 ^ n as u8, ((x * 255 / w) + n) as u8]
        })
        .collect();
    (px, "a generated picture")
}

fn heic(a: &Args) {
    use flipstack_imaging::heif::{self, Codec, Encode};
    let (px, source) = twelve_megapixels(&a.testdata);
    let file = heif::encode(&Encode {
        pixels: &px,
        width: 4032,
        height: 3024,
        channels: 3,
        codec: Codec::Hevc,
        quality: 80,
        icc: None,
        exif: None,
        orientation: 1,
    })
    .expect("libheif encodes the test picture");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("photo.heic");
    std::fs::write(&path, &file).unwrap();
    let out = tmp.path().join("out.jpg");
    println!(
        "libheif {}; 4032×3024 HEIC from {source}, {} bytes",
        heif::version().unwrap_or_else(|| "(not loaded)".into()),
        file.len()
    );
    let worker = || {
        let started = Instant::now();
        let p = imaging::flip_with_thumbnails(&file, ImageFormat::Heic, &limits()).expect("the worker's HEIC flip");
        assert!(p.thumbnails.is_ok() && p.display.is_some());
        std::hint::black_box(p);
        started.elapsed().as_secs_f64()
    };
    let convert = || {
        let started = Instant::now();
        let status = Command::new("heif-convert")
            .args(["-q", "90"])
            .arg(&path)
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("heif-convert runs (apt-get install libheif-examples)");
        assert!(status.success());
        started.elapsed().as_secs_f64()
    };
    // Where the worker's time goes: libheif's decode alone, and the HEVC encode alone.
    let decode = || {
        let started = Instant::now();
        std::hint::black_box(heif::decode(&file, u64::MAX).expect("decode"));
        started.elapsed().as_secs_f64()
    };
    let decoded = heif::decode(&file, u64::MAX).expect("decode");
    let encode = || {
        let started = Instant::now();
        let e = Encode {
            pixels: &decoded.pixels,
            width: decoded.width,
            height: decoded.height,
            channels: 3,
            codec: Codec::Hevc,
            quality: 80,
            icc: None,
            exif: None,
            orientation: 1,
        };
        std::hint::black_box(heif::encode(&e).expect("encode"));
        started.elapsed().as_secs_f64()
    };
    // A warm-up of each, not counted.
    worker();
    convert();
    let (mut ours, mut theirs, mut ratio, mut dec, mut enc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let (o, t) = if round % 2 == 0 {
            let o = worker();
            (o, convert())
        } else {
            let t = convert();
            (worker(), t)
        };
        ours.push(o);
        theirs.push(t);
        ratio.push(o / t);
        dec.push(decode());
        enc.push(encode());
    }
    let method = imaging::flip(&file, ImageFormat::Heic, &limits()).unwrap().method;
    println!("| tool | median ms | min ms | runs |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        (format!("flipstack worker ({method}: decode, flip, HEIC encode, 2 JPEG views, 2 thumbs)"), &mut ours),
        ("heif-convert -q 90 (process: decode, JPEG encode)".to_owned(), &mut theirs),
        ("of which in flipstack: libheif decode to RGB".to_owned(), &mut dec),
        ("of which in flipstack: HEVC encode (x265, preset fast, q80)".to_owned(), &mut enc),
    ] {
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        println!("| {name} | {:.0} | {:.0} | {} |", median(v) * 1e3, min * 1e3, a.rounds);
    }
    println!("median ratio flipstack / heif-convert (same round): {:.2}", median(&mut ratio));
}
