//! One client per service, all from core's SDK configuration (so the endpoint
//! override reaches every one of them), and the error conversion they share.

use std::fmt;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use flipstack_aws::{AwsSettings, sdk_config};

use super::ProvisionError;

pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub asg: aws_sdk_autoscaling::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub iam: aws_sdk_iam::Client,
    pub rds: aws_sdk_rds::Client,
    pub cache: aws_sdk_elasticache::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sts: aws_sdk_sts::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub region: String,
}

impl Clients {
    pub async fn new(aws: &AwsSettings) -> Clients {
        let conf = sdk_config(aws).await;
        // Endpoint overrides (moto, LocalStack) answer path-style bucket URLs.
        let s3 = aws_sdk_s3::config::Builder::from(&conf).force_path_style(aws.endpoint.is_some()).build();
        Clients {
            ec2: aws_sdk_ec2::Client::new(&conf),
            asg: aws_sdk_autoscaling::Client::new(&conf),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(&conf),
            iam: aws_sdk_iam::Client::new(&conf),
            rds: aws_sdk_rds::Client::new(&conf),
            cache: aws_sdk_elasticache::Client::new(&conf),
            s3: aws_sdk_s3::Client::from_conf(s3),
            sqs: aws_sdk_sqs::Client::new(&conf),
            sts: aws_sdk_sts::Client::new(&conf),
            cloudwatch: aws_sdk_cloudwatch::Client::new(&conf),
            region: aws.region.clone(),
        }
    }

    /// The account and partition the credentials belong to.
    pub async fn identity(&self) -> Result<(String, String), ProvisionError> {
        let me = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| aws_error("finding the AWS account (sts:GetCallerIdentity)", e))?;
        let account = me.account().unwrap_or_default().to_owned();
        let partition = me.arn().and_then(|a| a.split(':').nth(1)).unwrap_or("aws").to_owned();
        if account.is_empty() {
            return Err(ProvisionError::Invalid("AWS did not say which account these credentials belong to".into()));
        }
        Ok((account, partition))
    }
}

/// The service's error code, when the service answered.
pub fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

pub fn code_in<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, codes: &[&str]) -> bool {
    code(e).is_some_and(|c| codes.contains(&c))
}

/// An SDK error as an operator-facing one: what was being done, what AWS
/// said, and what to do about the common causes.
pub fn aws_error<E, R>(doing: impl Into<String>, e: SdkError<E, R>) -> ProvisionError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let hint = match (&e, code(&e)) {
        (_, Some(c))
            if c.contains("AccessDenied")
                || c == "UnauthorizedOperation"
                || c == "AuthFailure"
                || c == "InvalidClientTokenId"
                || c == "SignatureDoesNotMatch" =>
        {
            "; the credentials in use may not allow this: check AWS_PROFILE (or `aws sts get-caller-identity`) and the permissions listed in docs/aws.md"
        }
        (_, Some(c)) if c.contains("ExpiredToken") || c == "RequestExpired" => {
            "; the credentials have expired: refresh them (e.g. `aws sso login`) and run the command again"
        }
        (_, Some(c)) if c.contains("LimitExceeded") || c.contains("QuotaExceeded") => {
            "; an account quota is reached: remove unused resources or raise the quota in the Service Quotas console"
        }
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => {
            "; AWS could not be reached, or no credentials were found: check the network, the region (--region), FLIPSTACK_AWS_ENDPOINT_URL, and AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        }
        (SdkError::ConstructionFailure(_), _) => {
            "; no usable AWS credentials or region: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and --region"
        }
        _ => "",
    };
    let detail = DisplayErrorContext(&e).to_string();
    ProvisionError::Aws { doing: doing.into(), detail, hint: hint.into(), source: Box::new(e) }
}
