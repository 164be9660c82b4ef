//! Runs the provisioner for the provisioning view. TEMPORARY until the
//! provision crate's AWS API is merged.

use flipstack_core::aws::AwsSettings;
use tokio::sync::mpsc;

use crate::app::Msg;
use crate::provision::{ProvisionMsg, ProvisionOp};

const MISSING: &str = "this build has no AWS provisioner yet";

pub async fn plan(_aws: AwsSettings, _stack: String, tx: mpsc::Sender<Msg>) {
    let _ = tx.send(Msg::Provision(ProvisionMsg::Plan(Err(MISSING.into())))).await;
}

pub async fn apply(_aws: AwsSettings, _stack: String, _op: ProvisionOp, tx: mpsc::Sender<Msg>) {
    let _ = tx.send(Msg::Provision(ProvisionMsg::Finished(Err(MISSING.into())))).await;
}
