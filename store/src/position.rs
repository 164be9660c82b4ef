//! MariaDB GTID positions (`domain-server-seq`, comma-separated per domain).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A replication position: per replication domain, the newest sequence number
/// (with the server that wrote it). Two positions merge by taking the newer
/// sequence in each domain, so a watermark only ever moves forward.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationPos(BTreeMap<u32, (u32, u64)>);

impl ReplicationPos {
    pub fn parse(s: &str) -> Option<ReplicationPos> {
        let mut map = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut it = part.splitn(3, '-');
            let domain: u32 = it.next()?.parse().ok()?;
            let server: u32 = it.next()?.parse().ok()?;
            let seq: u64 = it.next()?.parse().ok()?;
            map.insert(domain, (server, seq));
        }
        (!map.is_empty()).then_some(ReplicationPos(map))
    }

    pub fn merge(&self, other: &ReplicationPos) -> ReplicationPos {
        let mut out = self.0.clone();
        for (domain, (server, seq)) in &other.0 {
            match out.get(domain) {
                Some((_, mine)) if mine >= seq => {}
                _ => {
                    out.insert(*domain, (*server, *seq));
                }
            }
        }
        ReplicationPos(out)
    }

    /// True when `self` has everything `other` has.
    pub fn covers(&self, other: &ReplicationPos) -> bool {
        other.0.iter().all(|(d, (_, seq))| self.0.get(d).is_some_and(|(_, mine)| mine >= seq))
    }
}

impl fmt::Display for ReplicationPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(d, (s, q))| format!("{d}-{s}-{q}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for ReplicationPos {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ReplicationPos {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ReplicationPos::parse(&s).ok_or_else(|| serde::de::Error::custom("not a GTID position"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_positions() {
        let p = ReplicationPos::parse("0-1-100,1-2-5").unwrap();
        assert_eq!(p.to_string(), "0-1-100,1-2-5");
        assert!(ReplicationPos::parse("").is_none());
        assert!(ReplicationPos::parse("0-1").is_none());
        assert!(ReplicationPos::parse("a-b-c").is_none());
    }

    #[test]
    fn merge_only_moves_forward() {
        let a = ReplicationPos::parse("0-1-100").unwrap();
        let b = ReplicationPos::parse("0-1-90,2-1-3").unwrap();
        let m = a.merge(&b);
        assert_eq!(m.to_string(), "0-1-100,2-1-3");
        assert!(m.covers(&a) && m.covers(&b));
        assert!(!a.covers(&b));
    }
}
