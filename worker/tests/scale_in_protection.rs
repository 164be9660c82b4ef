//! Scale-in protection against moto's Auto Scaling: the worker finds its
//! instance through the instance metadata service (here a small one on
//! loopback, as IMDSv2 answers) and sets and clears ProtectedFromScaleIn on
//! it in its group.
//!
//! Needs FLIPSTACK_TEST_AWS_ENDPOINT (scripts/test.sh sets it).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use flipstack_core::aws::{AwsSettings, sdk_config};
use flipstack_worker::protection::{AutoScalingInstance, Protect};

const REGION: &str = "us-east-1";

/// Answers IMDSv2's token request and the instance-id path, then stops.
fn metadata_service(instance_id: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { break };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let (status, body) = if request.starts_with("PUT /latest/api/token") {
                ("200 OK", "test-token".to_owned())
            } else if request.starts_with("GET /latest/meta-data/instance-id") {
                ("200 OK", instance_id.clone())
            } else {
                ("404 Not Found", String::new())
            };
            let extra = if request.starts_with("PUT") { "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n" } else { "" };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_worker_protects_its_instance_in_its_group_and_clears_it() {
    let Ok(endpoint) = std::env::var("FLIPSTACK_TEST_AWS_ENDPOINT") else {
        println!("skipped: FLIPSTACK_TEST_AWS_ENDPOINT is not set (run scripts/test.sh)");
        return;
    };
    let aws = AwsSettings { region: REGION.into(), endpoint: Some(endpoint.clone()) };
    let asg = aws_sdk_autoscaling::Client::new(&sdk_config(&aws).await);
    let group = format!("flipstack-prot{:06x}-worker", rand_suffix());
    let lc = format!("{group}-lc");
    asg.create_launch_configuration()
        .launch_configuration_name(&lc)
        .image_id("ami-12c6146b")
        .instance_type("t3.small")
        .send()
        .await
        .expect("creating a launch configuration in moto_server");
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&group)
        .launch_configuration_name(&lc)
        .min_size(1)
        .max_size(2)
        .desired_capacity(1)
        .availability_zones(format!("{REGION}a"))
        .send()
        .await
        .expect("creating a group in moto_server");
    let protected = |asg: aws_sdk_autoscaling::Client, group: String| async move {
        let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(&group).send().await.unwrap();
        let g = &out.auto_scaling_groups()[0];
        let i = &g.instances()[0];
        (i.instance_id().unwrap().to_owned(), i.protected_from_scale_in().unwrap_or(false))
    };
    let (instance, before) = protected(asg.clone(), group.clone()).await;
    assert!(!before, "a new instance is not protected");

    // The worker's own way of finding its instance: the metadata service.
    let imds = metadata_service(instance.clone());
    // SAFETY: this test binary runs this one test; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds) };
    let config = flipstack_core::Config {
        aws_endpoint_url: Some(endpoint.clone()),
        aws_region: REGION.into(),
        scale_in_protection_group: Some(group.clone()),
        ..flipstack_core::Config::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = flipstack_core::Config { data_dir: dir.path().to_owned(), ..config };
    let services = flipstack_core::Services::connect(config).await.unwrap();
    let me = AutoScalingInstance::this_instance(&services, &group).await.expect("the instance id from IMDS");
    assert!(me.describe().contains(&instance), "{}", me.describe());

    me.set(true).await.unwrap();
    assert!(protected(asg.clone(), group.clone()).await.1, "protected while a job is in hand");
    me.set(false).await.unwrap();
    assert!(!protected(asg.clone(), group.clone()).await.1, "released when idle");

    let _ = asg.delete_auto_scaling_group().auto_scaling_group_name(&group).force_delete(true).send().await;
    let _ = asg.delete_launch_configuration().launch_configuration_name(&lc).send().await;
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() & 0xff_ffff
}
