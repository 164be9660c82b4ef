//! Where SQLite's SQL and MariaDB's differ: the one place that knows. Every
//! statement in [`super::sql`] is written once; a piece that differs comes
//! from here, with both forms side by side.
//!
//! What is the same and needs nothing here: `?` placeholders; `LIMIT ? OFFSET ?`
//! (no UPDATE takes a LIMIT: each changes one row by id); times (always a
//! parameter, milliseconds from the caller, never the database's clock);
//! `CAST(… AS SIGNED)` (an integer on both; SQLite reads SIGNED as NUMERIC).
//! MariaDB-only statements with no SQLite counterpart (`GET_LOCK`,
//! `MASTER_GTID_WAIT`, `SHOW SLAVE STATUS`) live in its driver.

/// Which SQL a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    MariaDb,
}

/// What a transaction is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tx {
    /// Changes rows.
    Write,
    /// Reads several statements from one snapshot.
    Read,
    /// Reads every table from one snapshot, however long it takes (a dump).
    Snapshot,
}

impl Dialect {
    /// How a transaction starts. SQLite takes the write lock at the start of a
    /// write (IMMEDIATE), so two writers never deadlock upgrading a read lock;
    /// its reads are snapshots in WAL mode. MariaDB locks rows as it goes and
    /// says so for reads (READ ONLY; a dump's snapshot starts at once).
    pub fn begin(self, tx: Tx) -> &'static str {
        match (self, tx) {
            (Dialect::Sqlite, Tx::Write) => "BEGIN IMMEDIATE",
            (Dialect::Sqlite, Tx::Read | Tx::Snapshot) => "BEGIN DEFERRED",
            (Dialect::MariaDb, Tx::Write) => "START TRANSACTION",
            (Dialect::MariaDb, Tx::Read) => "START TRANSACTION READ ONLY",
            (Dialect::MariaDb, Tx::Snapshot) => "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
        }
    }

    /// Locks the rows a SELECT in a write transaction reads (SQLite's write
    /// transaction already holds the whole database).
    pub fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::MariaDb => " FOR UPDATE",
        }
    }

    /// An INSERT that updates `update` of the existing row when `key` is taken.
    pub fn upsert(self, insert: &str, key: &str, update: &[&str]) -> String {
        let set = |from: fn(&str) -> String| update.iter().map(|c| format!("{c} = {}", from(c))).collect::<Vec<_>>();
        match self {
            Dialect::Sqlite => {
                format!("{insert} ON CONFLICT ({key}) DO UPDATE SET {}", set(|c| format!("excluded.{c}")).join(", "))
            }
            Dialect::MariaDb => {
                format!("{insert} ON DUPLICATE KEY UPDATE {}", set(|c| format!("VALUES({c})")).join(", "))
            }
        }
    }

    /// An INSERT (`INSERT INTO …`) that leaves an existing row with the same
    /// `key` as it is. MariaDB's `INSERT IGNORE` would also swallow other
    /// errors, so it updates the key to itself instead.
    pub fn insert_unless_present(self, insert: &str, key: &str) -> String {
        match self {
            Dialect::Sqlite => insert.replacen("INSERT INTO", "INSERT OR IGNORE INTO", 1),
            Dialect::MariaDb => format!("{insert} ON DUPLICATE KEY UPDATE {key} = {key}"),
        }
    }

    /// The primary's replication position after this session's last write,
    /// for read-your-writes on the replicas (no replicas: no position).
    pub fn write_position(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::MariaDb => Some("SELECT @@last_gtid"),
        }
    }

    /// The primary's replication position now (after a read on it).
    pub fn read_position(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::MariaDb => Some("SELECT @@gtid_binlog_pos"),
        }
    }

    /// Whether text columns arrive as bytes (MariaDB's protocol does not say
    /// text from binary), so bytes in a dump are text; in SQLite bytes are a BLOB,
    /// which no flipstack column holds.
    pub fn text_arrives_as_bytes(self) -> bool {
        match self {
            Dialect::Sqlite => false,
            Dialect::MariaDb => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upserts_and_keeping_inserts_in_both_dialects() {
        let insert = "INSERT INTO settings (setting_key, setting_value) VALUES (?, ?)";
        assert_eq!(
            Dialect::Sqlite.upsert(insert, "setting_key", &["setting_value"]),
            format!("{insert} ON CONFLICT (setting_key) DO UPDATE SET setting_value = excluded.setting_value")
        );
        assert_eq!(
            Dialect::MariaDb.upsert(insert, "setting_key", &["setting_value"]),
            format!("{insert} ON DUPLICATE KEY UPDATE setting_value = VALUES(setting_value)")
        );
        assert_eq!(
            Dialect::Sqlite.insert_unless_present(insert, "setting_key"),
            "INSERT OR IGNORE INTO settings (setting_key, setting_value) VALUES (?, ?)"
        );
        assert_eq!(
            Dialect::MariaDb.insert_unless_present(insert, "setting_key"),
            format!("{insert} ON DUPLICATE KEY UPDATE setting_key = setting_key")
        );
    }
}
