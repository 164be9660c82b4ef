//! `flipstack db dump` and `db restore`: a plain SQL file that recreates the
//! schema (the migrations, verbatim) and every row, taken from one consistent
//! snapshot. The same format comes out of `GET /admin/api/dump`.
//!
//! Restore does not execute the file: it reads the `INSERT` statements, checks
//! each table and column against the schema, and writes the values with
//! prepared statements in one transaction. A dump without its closing line
//! (cut off in transit) is refused.
//!
//! The file is also plain SQL for the `mariadb` client, whatever the values
//! hold: a string is written quoted only when every byte is printable ASCII
//! other than `'` and `\`; any other string is a hex literal with a charset
//! introducer (`_utf8mb4 X'C3A9'`). No backslash, quote, control character or
//! line break ever sits inside a literal, so the meaning does not depend on the
//! session's `sql_mode` (`NO_BACKSLASH_ESCAPES` or not) nor on the client's
//! line handling (it turns `\r\n` into `\n` and stops at NUL bytes).

use std::collections::HashMap;
use std::path::Path;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{DumpRow, MetadataStore, SqlValue, StoreError, StoreResult, TABLES, schema_sql};

pub const HEADER: &str = "-- flipstack dump v2";
/// Dumps before strings were hex-encoded: quoted, `'` doubled, the rest raw.
const HEADER_V1: &str = "-- flipstack dump v1";
/// How a string that is not plain printable ASCII starts.
const HEX_TEXT_PREFIX: &str = "_utf8mb4 X'";
const TRAILER_PREFIX: &str = "-- end of flipstack dump: ";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpSummary {
    pub rows: u64,
    pub bytes: u64,
}

/// Writes a dump of `store` to `out`; `progress(rows_written, bytes_written)` is
/// called as it goes.
pub async fn write_dump<W: AsyncWrite + Unpin>(
    store: &dyn MetadataStore,
    out: &mut W,
    mut progress: impl FnMut(u64, u64),
) -> StoreResult<DumpSummary> {
    let io = |e: std::io::Error| StoreError::query_because("writing the dump", e);
    let mut bytes = 0u64;
    let mut head = format!(
        "{HEADER}\n-- from a {} database; restore with: flipstack db restore FILE \
         (or replay it into an empty MariaDB database with the mariadb client)\nSET NAMES utf8mb4;\n",
        store.backend()
    );
    for (name, sql) in schema_sql() {
        head.push_str(&format!("-- migration {name}\n{}\n", sql.trim_end()));
    }
    out.write_all(head.as_bytes()).await.map_err(io)?;
    bytes += head.len() as u64;

    let (tx, mut rx) = mpsc::channel::<DumpRow>(256);
    let producer = store.dump_rows(tx);
    let consumer = async {
        let mut rows = 0u64;
        let mut line = String::new();
        while let Some((table, columns, values)) = rx.recv().await {
            line.clear();
            insert_statement(&mut line, table, &columns, &values);
            out.write_all(line.as_bytes()).await.map_err(io)?;
            bytes += line.len() as u64;
            rows += 1;
            if rows.is_multiple_of(200) {
                progress(rows, bytes);
            }
        }
        Ok::<u64, StoreError>(rows)
    };
    let (produced, written) = tokio::join!(producer, consumer);
    let produced = produced?;
    let written = written?;
    if produced != written {
        return Err(StoreError::query(format!("dump wrote {written} of {produced} rows")));
    }
    let trailer = format!("{TRAILER_PREFIX}{written} rows\n");
    out.write_all(trailer.as_bytes()).await.map_err(io)?;
    out.flush().await.map_err(io)?;
    bytes += trailer.len() as u64;
    progress(written, bytes);
    Ok(DumpSummary { rows: written, bytes })
}

/// Writes a dump to `path`: into a temporary file beside it, fsynced, then
/// renamed, so a reader never sees half a dump under the final name.
pub async fn write_dump_file(
    store: &dyn MetadataStore,
    path: &Path,
    progress: impl FnMut(u64, u64),
) -> StoreResult<DumpSummary> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e: std::io::Error| StoreError::query_because(&what, e)
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".flipstack-dump-")
        .tempfile_in(dir)
        .map_err(io("creating a temporary file for the dump"))?;
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::from_std(
        tmp.reopen().map_err(io("opening the temporary file for the dump"))?,
    ));
    let summary = write_dump(store, &mut file, progress).await?;
    drop(file);
    tmp.as_file().sync_all().map_err(io("writing the dump to disk for"))?;
    tmp.persist(path).map_err(|e| io("moving the dump to")(e.error))?;
    Ok(summary)
}

/// Loads the dump at `path` into `store`. A database that already has rows is
/// refused unless `replace`: a restore is meant for an empty database.
pub async fn restore_dump_file(store: &dyn MetadataStore, path: &Path, replace: bool) -> StoreResult<u64> {
    let existing = store.row_count().await?;
    if existing > 0 && !replace {
        return Err(StoreError::Restore(format!(
            "the database is not empty ({existing} rows); restore into an empty database, or add --force to replace its rows"
        )));
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| StoreError::Restore(format!("opening {}: {e}", path.display())))?;
    let rows = read_dump(tokio::io::BufReader::new(file)).await?;
    store.restore_rows(rows, replace).await
}

fn insert_statement(out: &mut String, table: &str, columns: &[String], values: &[SqlValue]) {
    out.push_str("INSERT INTO ");
    out.push_str(table);
    out.push_str(" (");
    out.push_str(&columns.join(", "));
    out.push_str(") VALUES (");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match v {
            SqlValue::Null => out.push_str("NULL"),
            SqlValue::Int(n) => out.push_str(&n.to_string()),
            SqlValue::Text(s) => push_text(out, s),
        }
    }
    out.push_str(");\n");
}

/// A string literal that reads back the same in every `sql_mode` (see the module comment).
fn push_text(out: &mut String, s: &str) {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\'' && b != b'\\') {
        out.push('\'');
        out.push_str(s);
        out.push('\'');
    } else {
        out.push_str(HEX_TEXT_PREFIX);
        for b in s.bytes() {
            out.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
            out.push(char::from(HEX_DIGITS[usize::from(b & 0xf)]));
        }
        out.push('\'');
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = hex.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err("a hex string has an odd number of digits".into());
    }
    b.chunks(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
            _ => Err(format!("a hex string holds {:?}", String::from_utf8_lossy(pair))),
        })
        .collect()
}

/// Reads a dump written by [`write_dump`] back into rows.
pub async fn read_dump<R: AsyncBufRead + Unpin>(input: R) -> StoreResult<Vec<DumpRow>> {
    let bad = |msg: String| StoreError::Restore(msg);
    let mut lines = input.lines();
    let first = lines.next_line().await.map_err(|e| bad(format!("reading the dump: {e}")))?;
    if first.as_deref() != Some(HEADER) && first.as_deref() != Some(HEADER_V1) {
        return Err(bad(format!("this is not a flipstack dump (its first line should be {HEADER:?})")));
    }
    let mut rows = Vec::new();
    let mut pending = String::new();
    let mut trailer: Option<u64> = None;
    let mut line_no = 1u64;
    while let Some(line) = lines.next_line().await.map_err(|e| bad(format!("reading the dump: {e}")))? {
        line_no += 1;
        if pending.is_empty() {
            if let Some(rest) = line.strip_prefix(TRAILER_PREFIX) {
                let n = rest
                    .trim_end_matches(" rows")
                    .parse()
                    .map_err(|_| bad(format!("line {line_no}: bad closing line")))?;
                trailer = Some(n);
                continue;
            }
            if !line.starts_with("INSERT INTO ") {
                // Schema and comments: the migrations recreate the schema.
                continue;
            }
        }
        pending.push_str(&line);
        match parse_insert(&pending) {
            Ok(Some(row)) => {
                rows.push(row);
                pending.clear();
            }
            // A string value holding a line break continues on the next line.
            Ok(None) => pending.push('\n'),
            Err(msg) => return Err(bad(format!("line {line_no}: {msg}"))),
        }
    }
    if !pending.is_empty() {
        return Err(bad("the dump ends inside a statement: it was cut off".into()));
    }
    match trailer {
        Some(n) if n == rows.len() as u64 => Ok(rows),
        Some(n) => Err(bad(format!("the dump says it holds {n} rows but {} were read", rows.len()))),
        None => Err(bad("the dump has no closing line: it was cut off, take it again".into())),
    }
}

/// Parses one `INSERT INTO t (cols) VALUES (vals);`; `Ok(None)` when the
/// statement is not complete yet.
fn parse_insert(s: &str) -> Result<Option<DumpRow>, String> {
    let rest = s.strip_prefix("INSERT INTO ").ok_or("expected INSERT INTO")?;
    let (table, rest) = rest.split_once(" (").ok_or("expected a column list")?;
    let table: &'static str = TABLES.iter().find(|t| **t == table).ok_or_else(|| format!("unknown table {table:?}"))?;
    let (cols, rest) = rest.split_once(") VALUES (").ok_or("expected VALUES")?;
    let columns: Vec<String> = cols.split(", ").map(str::to_owned).collect();
    let mut values = Vec::new();
    // Every structural character is ASCII, so byte offsets found here are
    // always char boundaries of `rest`.
    let b = rest.as_bytes();
    let mut i = 0;
    loop {
        if i >= b.len() {
            return Ok(None);
        }
        if b[i] == b'\'' {
            // Quoted; `''` is a quote (and, in v1 dumps, anything else is raw).
            let mut text = String::new();
            let mut j = i + 1;
            loop {
                let Some(k) = rest[j..].find('\'') else { return Ok(None) };
                text.push_str(&rest[j..j + k]);
                j += k + 1;
                if b.get(j) == Some(&b'\'') {
                    text.push('\'');
                    j += 1;
                } else {
                    break;
                }
            }
            values.push(SqlValue::Text(text));
            i = j;
        } else if rest[i..].starts_with(HEX_TEXT_PREFIX) {
            let start = i + HEX_TEXT_PREFIX.len();
            let Some(len) = rest[start..].find('\'') else { return Ok(None) };
            let bytes = decode_hex(&rest[start..start + len])?;
            let text = String::from_utf8(bytes).map_err(|_| "a hex string is not UTF-8 text".to_owned())?;
            values.push(SqlValue::Text(text));
            i = start + len + 1;
        } else {
            let Some(k) = rest[i..].find([',', ')']) else { return Ok(None) };
            let token = &rest[i..i + k];
            values.push(if token == "NULL" {
                SqlValue::Null
            } else {
                SqlValue::Int(token.parse().map_err(|_| format!("bad value {token:?}"))?)
            });
            i += k;
        }
        match b.get(i) {
            Some(b',') => {
                i += 1;
                if b.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
            Some(b')') => {
                if &rest[i..] != ");" {
                    return Err("unexpected text after the values".into());
                }
                break;
            }
            None => return Ok(None),
            Some(_) => return Err(format!("unexpected {:?}", rest[i..].chars().next().unwrap_or(' '))),
        }
    }
    if values.len() != columns.len() {
        return Err(format!("{} columns but {} values", columns.len(), values.len()));
    }
    Ok(Some((table, columns, values)))
}

/// The prepared INSERT for a dumped row, after checking its table and columns
/// against the live schema (`known`: table → columns).
pub(crate) fn checked_insert(
    table: &str,
    columns: &[String],
    known: &HashMap<&str, Vec<String>>,
) -> StoreResult<String> {
    let Some(cols) = known.get(table) else {
        return Err(StoreError::Restore(format!("the dump names an unknown table {table:?}")));
    };
    for c in columns {
        if !cols.iter().any(|k| k.eq_ignore_ascii_case(c)) {
            return Err(StoreError::Restore(format!(
                "the dump's {table}.{c} is not in this schema; restore it with the flipstack version that took it"
            )));
        }
    }
    let marks = vec!["?"; columns.len()].join(", ");
    Ok(format!("INSERT INTO {table} ({}) VALUES ({marks})", columns.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings that broke out of (or were mangled in) a literal that only doubled `'`.
    const HOSTILE: &[&str] = &[
        "ends in a backslash quote \\'",
        "x\\'); DROP TABLE people; -- ",
        "nul\0byte",
        "back\\slash\\\\ and \\0 \\n \\Z",
        "line\nbreak\r\nand a lone cr\r",
        "tab\t bell\x07 esc\x1b del\x7f ctrl-z\x1a",
        "\u{fc}n\u{ef}c\u{f8}d\u{e9} \u{2713} \u{1f39e} \u{202e}bidi",
        "'",
        "''",
        "",
        "-- not a comment /* nor this */ ; nor a statement end",
        "it's a 'name', with (parens), ok",
    ];

    #[test]
    fn insert_lines_round_trip() {
        let mut values = vec![SqlValue::Int(-3), SqlValue::Null];
        values.extend(HOSTILE.iter().map(|s| SqlValue::Text((*s).into())));
        let cols: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
        let mut line = String::new();
        insert_statement(&mut line, "uploads", &cols, &values);
        let body = line.strip_suffix('\n').unwrap();
        assert!(
            body.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\'),
            "one line of printable ASCII without backslashes: {body}"
        );
        let row = parse_insert(body).unwrap().unwrap();
        assert_eq!(row, ("uploads", cols, values));
    }

    #[tokio::test]
    async fn version_1_dumps_still_read() {
        let text = format!(
            "{HEADER_V1}\nINSERT INTO settings (a, b) VALUES ('it''s \\', 'two\nlines');\n{TRAILER_PREFIX}1 rows\n"
        );
        let rows = read_dump(text.as_bytes()).await.unwrap();
        assert_eq!(rows[0].2, vec![SqlValue::Text("it's \\".into()), SqlValue::Text("two\nlines".into())]);
    }

    #[test]
    fn refuses_bad_hex() {
        assert!(parse_insert("INSERT INTO people (a) VALUES (_utf8mb4 X'4');").is_err());
        assert!(parse_insert("INSERT INTO people (a) VALUES (_utf8mb4 X'ZZ');").is_err());
        assert!(parse_insert("INSERT INTO people (a) VALUES (_utf8mb4 X'FF');").is_err());
    }

    #[test]
    fn refuses_unknown_tables_and_junk() {
        assert!(parse_insert("INSERT INTO secrets (a) VALUES (1);").is_err());
        assert!(parse_insert("INSERT INTO people (a) VALUES (1); DROP TABLE people;").is_err());
        assert!(parse_insert("INSERT INTO people (a) VALUES (1 OR 1);").is_err());
    }

    #[tokio::test]
    async fn a_cut_off_dump_is_refused() {
        let text = format!("{HEADER}\nINSERT INTO people (id) VALUES (1);\n");
        let err = read_dump(text.as_bytes()).await.unwrap_err();
        assert!(err.to_string().contains("cut off"), "{err}");
        let whole = format!("{text}{TRAILER_PREFIX}1 rows\n");
        assert_eq!(read_dump(whole.as_bytes()).await.unwrap().len(), 1);
    }
}
