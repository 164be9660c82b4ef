//! Where flipstack runs and how big it is: the autoscaling [`policy`] (a pure
//! function, shared by both targets), the [`local`] worker pool of
//! `flipstack up`, and the AWS provisioner ([`aws`]: plan, up, down, status),
//! with its command line in [`cli`], and the check of the [`release`] it ships.

pub mod aws;
pub mod cli;
pub mod fleet;
pub mod local;
pub mod policy;
pub mod release;
