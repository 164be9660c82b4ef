//! Where flipstack runs on AWS and how big it is: the provisioner ([`aws`]:
//! plan, up, down, status) with its command line in [`cli`], the check of the
//! [`release`] it ships, the Auto Scaling groups of a running stack
//! ([`fleet`]) and what the fleet published to CloudWatch
//! ([`fleet_numbers`]). It knows the domain and the AWS SDK, never the store,
//! the imaging or the adapters: the console reaches AWS only through it.

pub mod aws;
pub mod cli;
pub mod fleet;
pub mod fleet_numbers;
pub mod release;

pub use flipstack_aws::AwsSettings;
