//! Scheduled database backups: how often (`backup_every`, a [`Period`]) and
//! what a backup is called in the blob store ([`BackupName`]). The names sort
//! by the time they were taken, so the oldest are found without reading them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The blob store's folder of backups. The orphan sweep never looks inside
/// it (its keys are no upload's), and on AWS its versions have a lifecycle
/// rule of their own.
pub const BACKUP_FOLDER: &str = "backups";

/// The blob store's top-level folders of pictures (originals, flips and the
/// copies made of them): every other folder holds something else.
pub const PICTURE_FOLDERS: &[&str] = &["originals", "flipped", "thumbs", "display", "screen"];

/// A whole number of seconds, at least one: `30s`, `15m`, `6h`, `1d`, or a
/// plain number of seconds. Shown (and handed to child processes) in the
/// largest unit that divides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a period: write a whole number with s, m, h or d (30s, 15m, 6h, 1d), or seconds alone{why}")]
pub struct PeriodError {
    given: String,
    why: &'static str,
}

impl Period {
    pub fn from_secs(secs: i64) -> Result<Period, PeriodError> {
        match u64::try_from(secs) {
            Ok(secs) if secs > 0 => Ok(Period { secs }),
            _ => Err(PeriodError {
                given: secs.to_string(),
                why: " (at least 1 second; leave it unset or write off for none)",
            }),
        }
    }

    pub fn parse(text: &str) -> Result<Period, PeriodError> {
        let t = text.trim();
        let bad = |why| PeriodError { given: text.to_owned(), why };
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad(""))?;
        let scale = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad("")),
        };
        let secs = n.checked_mul(scale).and_then(|s| i64::try_from(s).ok()).ok_or_else(|| bad(" (too long)"))?;
        Period::from_secs(secs).map_err(|e| PeriodError { given: text.to_owned(), ..e })
    }

    pub fn secs(self) -> u64 {
        self.secs
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_secs(self.secs)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.secs;
        match () {
            _ if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A number (seconds: what an environment variable of digits becomes) or text.
#[derive(Deserialize)]
#[serde(untagged)]
enum PeriodText {
    Secs(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Period, D::Error> {
        match PeriodText::deserialize(d)? {
            PeriodText::Secs(n) => Period::from_secs(n),
            PeriodText::Text(t) => Period::parse(&t),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// For an optional period: `off` (or nothing) is none.
pub fn optional_period<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Period>, D::Error> {
    match Option::<PeriodText>::deserialize(d)? {
        None => Ok(None),
        Some(PeriodText::Text(t)) if t.trim().is_empty() || t.trim().eq_ignore_ascii_case("off") => Ok(None),
        Some(PeriodText::Text(t)) => Period::parse(&t).map(Some).map_err(serde::de::Error::custom),
        Some(PeriodText::Secs(n)) => Period::from_secs(n).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A backup's name, `flipstack-YYYYMMDDTHHMMSSZ.sql` (UTC, the time it was
/// taken): what the admin API takes, never a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupName {
    name: String,
    /// Seconds since the epoch.
    at_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a backup's name (they look like flipstack-20261207T181500Z.sql)")]
pub struct NotABackupName(pub String);

const NAME_PREFIX: &str = "flipstack-";
const NAME_SUFFIX: &str = "Z.sql";

impl BackupName {
    /// The name of a backup taken at `millis` (since the epoch).
    pub fn at(millis: i64) -> BackupName {
        let at_secs = millis.div_euclid(1000);
        let (days, rest) = (at_secs.div_euclid(86_400), at_secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        let name = format!(
            "{NAME_PREFIX}{y:04}{m:02}{d:02}T{:02}{:02}{:02}{NAME_SUFFIX}",
            rest / 3600,
            rest % 3600 / 60,
            rest % 60
        );
        BackupName { name, at_secs }
    }

    pub fn parse(text: &str) -> Result<BackupName, NotABackupName> {
        let bad = || NotABackupName(text.chars().take(80).collect());
        let stamp = text.strip_prefix(NAME_PREFIX).and_then(|t| t.strip_suffix(NAME_SUFFIX)).ok_or_else(bad)?;
        let b = stamp.as_bytes();
        if b.len() != 15 || b[8] != b'T' || !b.iter().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit()) {
            return Err(bad());
        }
        let num = |from: usize, to: usize| stamp[from..to].parse::<i64>().unwrap_or(-1);
        let (y, m, d) = (num(0, 4), num(4, 6), num(6, 8));
        let (hh, mm, ss) = (num(9, 11), num(11, 13), num(13, 15));
        if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) || hh > 23 || mm > 59 || ss > 59 {
            return Err(bad());
        }
        let at_secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
        Ok(BackupName { name: text.to_owned(), at_secs })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// When it was taken, in milliseconds since the epoch (to the second).
    pub fn taken_at(&self) -> i64 {
        self.at_secs * 1000
    }
}

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, UTC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_their_units_and_show_the_largest() {
        for (text, secs, shown) in
            [("30s", 30, "30s"), ("15m", 900, "15m"), ("6h", 21_600, "6h"), ("1d", 86_400, "1d"), ("90", 90, "90s")]
        {
            let p = Period::parse(text).unwrap();
            assert_eq!((p.secs(), p.to_string().as_str()), (secs, shown), "{text}");
            assert_eq!(Period::parse(&p.to_string()).unwrap(), p, "{text} round-trips");
        }
        assert_eq!(Period::parse("120m").unwrap().to_string(), "2h");
        for bad in ["", "0", "0s", "-5", "5x", "1.5h", "h", "5 minutes", "99999999999999999999d"] {
            let e = Period::parse(bad).unwrap_err().to_string();
            assert!(e.contains("30s, 15m, 6h, 1d"), "{bad}: {e}");
        }
    }

    #[test]
    fn backup_names_sort_by_time_and_round_trip() {
        let at = 1_796_667_300_000; // 2026-12-07 18:15:00 UTC
        let name = BackupName::at(at + 999);
        assert_eq!(name.as_str(), "flipstack-20261207T181500Z.sql");
        assert_eq!(name.taken_at(), at);
        assert_eq!(BackupName::parse(name.as_str()).unwrap(), name);
        assert!(BackupName::at(at) < BackupName::at(at + 1000));
        assert!(BackupName::at(at - 86_400_000 * 400).as_str() < name.as_str());
        for day in [0i64, 59, 60, 365, 10_957, 20_000, 25_000] {
            let n = BackupName::at(day * 86_400_000 + 3_723_000);
            assert_eq!(BackupName::parse(n.as_str()).unwrap().taken_at(), day * 86_400_000 + 3_723_000, "{n}");
        }
        assert_eq!(BackupName::at(951_782_400_000).as_str(), "flipstack-20000229T000000Z.sql");
    }

    #[test]
    fn anything_else_is_not_a_backup_name() {
        for bad in [
            "",
            "flipstack-20261207T181500Z.sql.gz",
            "../flipstack-20261207T181500Z.sql",
            "backups/flipstack-20261207T181500Z.sql",
            "flipstack-20261307T181500Z.sql",
            "flipstack-20260230T181500Z.sql",
            "flipstack-20261207T241500Z.sql",
            "flipstack-2026120T7181500Z.sql",
            "flipstack-+0261207T181500Z.sql",
            "flipstack-20261207181500Z.sql",
            "flipstack-20261207T181500.sql",
        ] {
            assert!(BackupName::parse(bad).is_err(), "{bad}");
        }
    }

    // figment's Jail returns its own (large) error type from test closures.
    #[allow(clippy::result_large_err)]
    #[test]
    fn the_configuration_reads_backup_every_and_keep() {
        use crate::Config;
        use std::collections::BTreeMap;
        let load = || Config::load(None, BTreeMap::<String, String>::new());
        figment::Jail::expect_with(|jail| {
            assert_eq!(load().unwrap().backup_every, None, "off by default");
            assert_eq!(load().unwrap().backup_keep, 7);
            for (text, secs) in [("15m", Some(900)), ("90", Some(90)), ("1d", Some(86_400)), ("off", None)] {
                jail.set_env("FLIPSTACK_BACKUP_EVERY", text);
                assert_eq!(load().unwrap().backup_every.map(Period::secs), secs, "{text}");
            }
            jail.set_env("FLIPSTACK_BACKUP_EVERY", "6h");
            jail.set_env("FLIPSTACK_BACKUP_KEEP", "3");
            let c = load().unwrap();
            let env = c.to_env();
            assert!(env.contains(&("FLIPSTACK_BACKUP_EVERY".into(), "6h".into())), "{env:?}");
            assert!(env.contains(&("FLIPSTACK_BACKUP_KEEP".into(), "3".into())));
            for (bad, says) in [("5x", "30s, 15m, 6h, 1d"), ("0", "at least 1 second"), ("-3", "at least 1 second")] {
                jail.set_env("FLIPSTACK_BACKUP_EVERY", bad);
                let e = load().unwrap_err().to_string();
                assert!(e.to_lowercase().contains("backup_every") && e.contains(says), "{bad}: {e}");
            }
            jail.set_env("FLIPSTACK_BACKUP_EVERY", "1h");
            jail.set_env("FLIPSTACK_BACKUP_KEEP", "0");
            let e = load().unwrap_err().to_string();
            assert!(e.contains("backup_keep must be at least 1"), "{e}");
            Ok(())
        });
    }
}
