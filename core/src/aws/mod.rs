//! The adapters on AWS: the SQS job queue and the CloudWatch publisher. What
//! every AWS client shares (settings, HTTP client, SDK configuration, names)
//! is flipstack-aws, re-exported here.

pub mod cloudwatch;
pub mod sqs;

pub use flipstack_aws::*;
