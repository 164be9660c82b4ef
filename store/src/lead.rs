//! A duty one process does for the whole fleet, whoever holds its lock
//! ([`Jobs::try_lead`]): every process asks each period, the holder keeps it
//! while its lock holds, and another takes over within a period when the
//! holder dies or loses its database connection.

use crate::{Jobs, Leadership};

/// This process's hold on one fleet-wide duty.
pub struct FleetDuty {
    name: &'static str,
    held: Option<Box<dyn Leadership>>,
}

/// Whether this process does the duty this period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// It just took the lock (a duty may start afresh).
    Took,
    /// It held the lock already.
    Holds,
    /// Another process holds it, or the database could not say.
    NotOurs,
}

impl FleetDuty {
    pub fn new(name: &'static str) -> FleetDuty {
        FleetDuty { name, held: None }
    }

    /// Checks a held lock (lost with its connection), else asks for it once.
    pub async fn turn<S: Jobs + ?Sized>(&mut self, store: &S) -> Turn {
        if let Some(held) = self.held.as_mut()
            && !held.still_held().await
        {
            self.held = None;
            tracing::warn!(
                duty = self.name,
                "lost the fleet's lock of this duty (database connection lost); trying to take it again"
            );
        }
        if self.held.is_some() {
            return Turn::Holds;
        }
        match store.try_lead(self.name).await {
            Ok(Some(held)) => {
                self.held = Some(held);
                Turn::Took
            }
            Ok(None) => Turn::NotOurs,
            Err(e) => {
                tracing::debug!(error = %e, duty = self.name, "could not ask for the fleet's lock of this duty");
                Turn::NotOurs
            }
        }
    }
}
