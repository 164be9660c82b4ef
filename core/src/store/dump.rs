//! `flipstack db dump` and `db restore`: a plain SQL file that recreates the
//! schema (the migrations, verbatim) and every row, taken from one consistent
//! snapshot. The same format comes out of `GET /admin/api/dump`.
//!
//! Restore does not execute the file: it reads the `INSERT` statements, checks
//! each table and column against the schema, and writes the values with
//! prepared statements in one transaction. A dump without its closing line
//! (cut off in transit) is refused.

use std::collections::HashMap;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{DumpRow, MetadataStore, SqlValue, StoreError, StoreResult, TABLES, schema_sql};

pub const HEADER: &str = "-- flipstack dump v1";
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
    let io = |e: std::io::Error| StoreError::Query(format!("writing the dump: {e}"));
    let mut bytes = 0u64;
    let mut head =
        format!("{HEADER}\n-- from a {} database; restore with: flipstack db restore FILE\n", store.backend());
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
        return Err(StoreError::Query(format!("dump wrote {written} of {produced} rows")));
    }
    let trailer = format!("{TRAILER_PREFIX}{written} rows\n");
    out.write_all(trailer.as_bytes()).await.map_err(io)?;
    out.flush().await.map_err(io)?;
    bytes += trailer.len() as u64;
    progress(written, bytes);
    Ok(DumpSummary { rows: written, bytes })
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
            SqlValue::Text(s) => {
                out.push('\'');
                out.push_str(&s.replace('\'', "''"));
                out.push('\'');
            }
        }
    }
    out.push_str(");\n");
}

/// Reads a dump written by [`write_dump`] back into rows.
pub async fn read_dump<R: AsyncBufRead + Unpin>(input: R) -> StoreResult<Vec<DumpRow>> {
    let bad = |msg: String| StoreError::Restore(msg);
    let mut lines = input.lines();
    let first = lines.next_line().await.map_err(|e| bad(format!("reading the dump: {e}")))?;
    if first.as_deref() != Some(HEADER) {
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
    let mut chars = rest.char_indices().peekable();
    loop {
        match chars.peek().copied() {
            None => return Ok(None),
            Some((_, '\'')) => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None => return Ok(None),
                        Some((_, '\'')) => {
                            if let Some((_, '\'')) = chars.peek() {
                                chars.next();
                                text.push('\'');
                            } else {
                                break;
                            }
                        }
                        Some((_, c)) => text.push(c),
                    }
                }
                values.push(SqlValue::Text(text));
            }
            Some((start, _)) => {
                let mut end = start;
                while let Some((i, c)) = chars.peek().copied() {
                    if c == ',' || c == ')' {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                let token = &rest[start..end];
                values.push(if token == "NULL" {
                    SqlValue::Null
                } else {
                    SqlValue::Int(token.parse().map_err(|_| format!("bad value {token:?}"))?)
                });
            }
        }
        match chars.next() {
            Some((_, ',')) => {
                if let Some((_, ' ')) = chars.peek() {
                    chars.next();
                }
            }
            Some((i, ')')) => {
                if &rest[i..] != ");" {
                    return Err("unexpected text after the values".into());
                }
                break;
            }
            None => return Ok(None),
            Some((_, c)) => return Err(format!("unexpected {c:?}")),
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

    #[test]
    fn insert_lines_round_trip() {
        let values = vec![
            SqlValue::Int(-3),
            SqlValue::Null,
            SqlValue::Text("it's a 'name', with (parens)\nand a line break; ok".into()),
            SqlValue::Text(String::new()),
        ];
        let cols: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let mut line = String::new();
        insert_statement(&mut line, "uploads", &cols, &values);
        let first_line = line.lines().next().unwrap();
        assert_eq!(parse_insert(first_line).unwrap(), None, "incomplete until the closing line");
        let row = parse_insert(line.trim_end_matches('\n')).unwrap().unwrap();
        assert_eq!(row, ("uploads", cols, values));
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
