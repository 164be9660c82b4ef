//! Database backups in the blob store, under `backups/`: a backup is a
//! `flipstack db dump` ([`crate::store::dump`]), taken by the fleet's schedule
//! (the server's backup duty) or by an operator, pruned to the newest
//! `backup_keep`, and restored by an operator in place of the database.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::Services;
use crate::backups::{BackupName, Period};
use crate::blob::{BlobError, StoredBackup};
use crate::domain::{Email, Millis, now_millis};
use crate::metrics::OutcomeLabel;
use crate::status::BackupDone;
use crate::store::dump::{read_dump, write_dump};
use crate::store::{SqlValue, StoreError, WriteReceipt};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the database could not be read for the backup: {0}")]
    Store(#[source] StoreError),
    #[error("the blob store did not take the backup: {0}")]
    Blob(#[source] BlobError),
    #[error("there is no backup {0}")]
    NotFound(BackupName),
    #[error("{name} is not a complete flipstack dump, so nothing was replaced: {source}")]
    Unreadable {
        name: BackupName,
        #[source]
        source: StoreError,
    },
    #[error("the database as it was could not be backed up first, so nothing was replaced: {0}")]
    NoUndo(#[source] Box<BackupError>),
    #[error("the database was not replaced (the restore is one transaction): {0}")]
    Restore(#[source] StoreError),
}

impl BackupError {
    /// Whether a service did not answer (try again later), rather than the
    /// request being wrong.
    pub fn is_unavailable(&self) -> bool {
        match self {
            BackupError::Store(e) | BackupError::Restore(e) => e.is_unavailable(),
            BackupError::Blob(e) => e.is_unavailable(),
            BackupError::NoUndo(e) => e.is_unavailable(),
            BackupError::NotFound(_) | BackupError::Unreadable { .. } => false,
        }
    }
}

/// When the schedule's next backup is due: `every` after the newest backup
/// (by the time in its name), so a restart neither backs up at once nor
/// skips one; now when there is none.
pub fn next_due(newest: Option<&BackupName>, every: Period, now: Millis) -> Millis {
    newest.map_or(now, |b| b.taken_at() + every.secs() as i64 * 1000)
}

/// Writes a backup of the database now (counted in `flipstack_backups_total`).
pub async fn take(services: &Services) -> Result<BackupDone, BackupError> {
    let result = write(services, &BackupName::at(now_millis())).await;
    let outcome = if result.is_ok() { "written" } else { "failed" };
    services.metrics.backups.get_or_create(&OutcomeLabel { outcome }).inc();
    result
}

/// Streams the dump into the blob store as it is read; an error on either
/// side leaves no object under the name.
async fn write(services: &Services, name: &BackupName) -> Result<BackupDone, BackupError> {
    let mut object = services.blobs.backup_writer(name);
    let (pipe_in, pipe_out) = tokio::io::duplex(256 * 1024);
    let dump = async {
        let mut pipe_in = pipe_in;
        write_dump(services.store.as_ref(), &mut pipe_in, |_, _| {}).await
        // Dropping the pipe ends the copy below.
    };
    let upload = async {
        // Owned here: a failed upload drops the pipe, which stops the dump.
        let mut pipe_out = pipe_out;
        tokio::io::copy(&mut pipe_out, &mut object).await
    };
    let (dumped, uploaded) = tokio::join!(dump, upload);
    let failed = match (dumped, uploaded) {
        (_, Err(e)) => BackupError::Blob(BlobError::unavailable_because("writing the backup", e)),
        (Err(e), Ok(_)) => BackupError::Store(e),
        (Ok(summary), Ok(_)) => match object.shutdown().await {
            Ok(()) => {
                return Ok(BackupDone {
                    name: name.to_string(),
                    rows: summary.rows,
                    bytes: summary.bytes,
                    before: None,
                });
            }
            Err(e) => return Err(BackupError::Blob(BlobError::unavailable_because("finishing the backup", e))),
        },
    };
    if let Err(e) = object.abort().await {
        tracing::debug!(error = %e, backup = %name, "could not abort the unfinished backup's upload");
    }
    Err(failed)
}

/// Deletes the oldest backups beyond the newest `keep`; answers those deleted.
pub async fn prune(services: &Services, keep: u32) -> Result<Vec<BackupName>, BlobError> {
    let backups = services.blobs.list_backups().await?;
    let surplus = backups.len().saturating_sub(keep.max(1) as usize);
    let mut deleted = Vec::new();
    for StoredBackup { name, .. } in backups.into_iter().take(surplus) {
        services.blobs.delete_backup(&name).await?;
        tracing::info!(backup = %name, keep, "deleted an old backup");
        deleted.push(name);
    }
    Ok(deleted)
}

/// Replaces every row of the database with the backup's, as `flipstack db
/// restore --force` does, after checking the backup reads whole and backing
/// the database up as it was (`before` in the answer: restoring that undoes
/// this). The galleries of everyone in the backup are read afresh.
pub async fn restore(services: &Services, name: &BackupName) -> Result<BackupDone, BackupError> {
    let text = services.blobs.get_backup(name).await.map_err(BackupError::Blob)?;
    let text = text.ok_or_else(|| BackupError::NotFound(name.clone()))?;
    let rows = read_dump(&text[..]).await.map_err(|source| BackupError::Unreadable { name: name.clone(), source })?;
    let people: Vec<String> = rows
        .iter()
        .filter(|(table, _, _)| *table == "people")
        .filter_map(|(_, columns, values)| match values.get(columns.iter().position(|c| c == "email")?) {
            Some(SqlValue::Text(email)) => Email::parse(email).ok().map(|e| e.hashed_id()),
            _ => None,
        })
        .collect();
    // The backup of the present must not take the name of the one restored.
    let millis = now_millis();
    if BackupName::at(millis) == *name {
        tokio::time::sleep(Duration::from_millis(1000 - millis.rem_euclid(1000) as u64)).await;
    }
    let before = take(services).await.map_err(|e| BackupError::NoUndo(Box::new(e)))?;
    let restored = services.store.restore_rows(rows, true).await.map_err(BackupError::Restore)?;
    for person in &people {
        services.gallery.invalidate(person, &WriteReceipt::default()).await;
    }
    tracing::info!(backup = %name, rows = restored, before = %before.name, "database restored from a backup");
    Ok(BackupDone { name: name.to_string(), rows: restored, bytes: text.len() as u64, before: Some(before.name) })
}

/// The backups, newest first, as the admin API lists them.
pub async fn list(services: &Services) -> Result<Vec<crate::status::BackupInfo>, BlobError> {
    let mut backups = services.blobs.list_backups().await?;
    backups.reverse();
    Ok(backups
        .into_iter()
        .map(|b| crate::status::BackupInfo { at: b.name.taken_at(), name: b.name.to_string(), bytes: b.bytes })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_backup_is_due_a_period_after_the_newest() {
        let hour = Period::parse("1h").unwrap();
        let now = 1_796_667_300_000;
        assert_eq!(next_due(None, hour, now), now, "none yet: now");
        let recent = BackupName::at(now - 600_000);
        assert_eq!(next_due(Some(&recent), hour, now), now + 3_000_000, "a restart waits for its turn");
        let old = BackupName::at(now - 7_200_000);
        assert_eq!(next_due(Some(&old), hour, now), now - 3_600_000, "overdue: at once");
    }
}
