//! Wake-ups between processes on one machine: each waiting process binds a
//! Unix datagram socket in `<data>/wake/`, named by its role and pid, and a
//! process that has news for a role sends one byte to every socket of that
//! role. The database queue uses it so an idle worker starts a new job at
//! once (the poll stays, as the fallback), and the server's event tail so a
//! finished job reaches the gallery's push at once. A wake-up carries no
//! data: the receiver reads the database as it would on its poll, so a lost
//! or extra wake-up changes only how soon. Processes on other machines are
//! not reached; they keep their poll (SQS workers long-poll the queue).

use std::path::{Path, PathBuf};

/// The roles that wait: workers (new jobs) and servers (finished jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Server,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Worker => "worker-",
            Role::Server => "server-",
        }
    }
}

/// The folder of the wake-up sockets under a data folder.
pub fn folder(data_dir: &Path) -> PathBuf {
    data_dir.join("wake")
}

/// This process's wake-up socket; removed when dropped.
pub struct Listener {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl Listener {
    /// Binds `<dir>/<role>-<pid>-<n>.sock`. `None` (and the caller polls) when
    /// the folder cannot be made or the path is too long for a socket.
    pub fn bind(dir: &Path, role: Role) -> Option<Listener> {
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::debug!(error = %e, dir = %dir.display(), "no wake-up folder; polling only");
            return None;
        }
        // Several listeners of one role may share a process (tests, `up`'s
        // in-process parts): the count tells them apart.
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{}{}-{n}.sock", role.prefix(), std::process::id()));
        // A previous process with this pid left it behind.
        let _ = std::fs::remove_file(&path);
        match tokio::net::UnixDatagram::bind(&path) {
            Ok(socket) => Some(Listener { socket, path }),
            Err(e) => {
                tracing::debug!(error = %e, path = %path.display(), "no wake-up socket; polling only");
                None
            }
        }
    }

    /// Resolves at the next wake-up (and takes any others queued behind it).
    pub async fn woken(&self) {
        let mut buf = [0u8; 16];
        if self.socket.recv(&mut buf).await.is_err() {
            // Should not happen on a bound socket; do not spin on it.
            std::future::pending::<()>().await;
        }
        while self.socket.try_recv(&mut buf).is_ok() {}
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Wakes every process of `role` waiting in `dir`. Sockets nobody listens
/// on any more (a process that was killed) are removed on the way.
pub fn notify(dir: &Path, role: Role) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let Ok(sender) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let _ = sender.set_nonblocking(true);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(role.prefix()) && name.ends_with(".sock")) {
            continue;
        }
        let path = entry.path();
        if let Err(e) = sender.send_to(&[1], &path)
            && e.kind() == std::io::ErrorKind::ConnectionRefused
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notification_wakes_the_role_and_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let worker = Listener::bind(dir.path(), Role::Worker).expect("a socket");
        notify(dir.path(), Role::Server);
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), worker.woken()).await;
        assert!(early.is_err(), "a server's wake-up does not wake a worker");
        notify(dir.path(), Role::Worker);
        tokio::time::timeout(std::time::Duration::from_secs(5), worker.woken()).await.expect("woken");
        // A socket left by a process that is gone is cleared away.
        let stale = dir.path().join("worker-999999999.sock");
        drop(std::os::unix::net::UnixDatagram::bind(&stale).unwrap());
        notify(dir.path(), Role::Worker);
        assert!(!stale.exists());
        drop(worker);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the socket goes with its listener");
    }
}
