//! The engine every service shares: the log, the live projections folded from it, and the
//! keyring that seals what the log must not hold in the clear. `AppState`, the sync
//! workers and the rotation scheduler each hold one (cheap to clone).

use crate::projector::{NotReached, Projector};
use crate::secrets::Keyring;
use crate::store::EventLog;
use std::sync::Arc;
use std::time::Duration;

/// The log, the projections and the keyring.
#[derive(Clone)]
pub struct Engine {
    /// The log (the only source of truth).
    pub log: Arc<dyn EventLog>,
    /// Live projections.
    pub projector: Projector,
    /// Sealing and unsealing; shredding deleted subjects' keys.
    pub keyring: Arc<Keyring>,
}

impl Engine {
    /// Waits until the projections include everything committed so far: decisions read
    /// their state from there.
    pub async fn settle(&self) -> Result<(), NotReached> {
        self.projector
            .wait_for(self.log.head().position, Duration::from_secs(60))
            .await
    }
}
