//! The console's fleet panel against AWS (moto_server): a stack's two
//! Auto Scaling groups, found by tag, with their counts; a change of desired
//! capacity shows up. The flipstack server is deliberately not running: the
//! fleet must update while the status source is down.
//!
//! Needs FLIPSTACK_TEST_AWS_ENDPOINT (the project's test script sets it,
//! with AWS_ACCESS_KEY_ID=testing and friends).

mod common;
mod console_support;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::types::Tag;
use console_support::{REGION, Tmux, aws_endpoint, free_port, group_row};

async fn make_group(asg: &Client, stack: &str, role: &str, lc: &str, desired: i32, max: i32) {
    let name = format!("flipstack-{stack}-{role}");
    let tag = |k: &str, v: &str| {
        Tag::builder()
            .key(k)
            .value(v)
            .resource_id(&name)
            .resource_type("auto-scaling-group")
            .propagate_at_launch(true)
            .build()
    };
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_configuration_name(lc)
        .min_size(1)
        .max_size(max)
        .desired_capacity(desired)
        .availability_zones(format!("{REGION}a"))
        .tags(tag("flipstack:stack", stack))
        .tags(tag("flipstack:role", role))
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {}", aws_sdk_autoscaling::error::DisplayErrorContext(e)));
}

/// Deletes what the test made, even when it fails part-way.
struct Cleanup {
    asg: Client,
    groups: Vec<String>,
    lc: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let asg = self.asg.clone();
        let groups = self.groups.clone();
        let lc = self.lc.clone();
        // Drop cannot await: a thread of its own runs the deletions.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                for g in groups {
                    let _ = asg.delete_auto_scaling_group().auto_scaling_group_name(g).force_delete(true).send().await;
                }
                let _ = asg.delete_launch_configuration().launch_configuration_name(lc).send().await;
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_panel_follows_the_stacks_auto_scaling_groups() {
    let Some(endpoint) = aws_endpoint() else {
        return;
    };
    let stack = format!("console{}", free_port());
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(flipstack_core::aws::http_client())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let asg = Client::new(&config);
    let lc = format!("flipstack-{stack}-lc");
    asg.create_launch_configuration()
        .launch_configuration_name(&lc)
        .image_id("ami-12c6146b")
        .instance_type("t3.small")
        .send()
        .await
        .expect("creating a launch configuration in moto_server");
    let _cleanup = Cleanup {
        asg: asg.clone(),
        groups: vec![format!("flipstack-{stack}-web"), format!("flipstack-{stack}-worker")],
        lc: lc.clone(),
    };
    make_group(&asg, &stack, "web", &lc, 1, 4).await;
    make_group(&asg, &stack, "worker", &lc, 2, 8).await;

    let cwd = tempfile::tempdir().unwrap();
    // Nothing listens on this port: the server's panels wait, the fleet does not.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let tmux = Tmux::start(
        80,
        24,
        cwd.path(),
        &[("FLIPSTACK_AWS_ENDPOINT_URL", endpoint.clone()), ("FLIPSTACK_AWS_REGION", REGION.into())],
        &[
            console_support::BIN.to_owned(),
            "console".into(),
            "--url".into(),
            nowhere,
            "--token".into(),
            "unused".into(),
            "--stack".into(),
            stack.clone(),
            "--fleet-every".into(),
            "1".into(),
        ],
    );
    let screen = tmux.wait_for("both groups", Duration::from_secs(30), |s| {
        group_row(s, "web") == Some((1, 1, 0)) && group_row(s, "worker") == Some((2, 2, 0))
    });
    assert!(screen.contains(&format!("fleet · stack {stack}")), "{screen}");
    assert!(screen.contains("waiting for the server"), "the server's panels wait while the fleet shows:\n{screen}");

    asg.set_desired_capacity()
        .auto_scaling_group_name(format!("flipstack-{stack}-worker"))
        .desired_capacity(4)
        .send()
        .await
        .expect("changing the worker group's desired capacity");
    tmux.wait_for("the worker group at 4", Duration::from_secs(20), |s| {
        group_row(s, "worker") == Some((4, 4, 0)) && group_row(s, "web") == Some((1, 1, 0))
    });
}

/// Issue 12: with several web instances the console's cache, reads and queue
/// panels show the fleet's numbers, read back from CloudWatch: here two
/// servers and a worker publish (as their background tasks do each minute),
/// and the panels show the sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panels_show_numbers_summed_over_the_servers_from_cloudwatch() {
    use flipstack_core::aws::AwsSettings;
    use flipstack_core::aws::cloudwatch::Publisher;
    use flipstack_core::metrics::MetricsSnapshot;
    if aws_endpoint().is_none() {
        return;
    }
    // A moto of its own: moto's GetMetricData drops the namespace from a
    // query with dimensions, so the other aws-tier tests' workers (namespace
    // `flipstack`, role `worker`) would add their jobs to these sums.
    let moto = common::PrivateServices::start("moto");
    let endpoint = moto.get("FLIPSTACK_TEST_AWS_ENDPOINT");
    let aws = AwsSettings { region: REGION.into(), endpoint: Some(endpoint.clone()) };
    // A namespace of its own, still: against real CloudWatch it is what keeps the sums apart.
    let namespace = format!("flipstack-test-{}", free_port());
    let zero = MetricsSnapshot::default();
    for (hits, misses, from_cache, from_primary) in [(3, 1, 2, 1), (4, 2, 5, 0)] {
        let server = Publisher::new(&aws, &namespace, "web").await;
        let now = MetricsSnapshot {
            cache_hits: hits,
            cache_misses: misses,
            reads_cache: from_cache,
            reads_primary: from_primary,
            ..MetricsSnapshot::default()
        };
        server.put(server.datums(&zero, &now, Some(1))).await.expect("a server publishes to moto's CloudWatch");
    }
    let worker = Publisher::new(&aws, &namespace, "worker").await;
    let done = MetricsSnapshot { job_count: 5, job_seconds_sum: 2.5, jobs_failed: 2, ..MetricsSnapshot::default() };
    worker.put(worker.datums(&zero, &done, None)).await.expect("a worker publishes");
    let other = Publisher::new(&aws, &namespace, "worker").await;
    let failed = MetricsSnapshot { jobs_failed: 1, ..MetricsSnapshot::default() };
    other.put(other.datums(&zero, &failed, None)).await.expect("a second worker publishes");

    let stack = format!("cw{}", free_port());
    let cwd = tempfile::tempdir().unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let tmux = Tmux::start(
        100,
        30,
        cwd.path(),
        &[
            ("FLIPSTACK_AWS_ENDPOINT_URL", endpoint.clone()),
            ("FLIPSTACK_AWS_REGION", REGION.into()),
            ("FLIPSTACK_METRICS_NAMESPACE", namespace.clone()),
        ],
        &[
            console_support::BIN.to_owned(),
            "console".into(),
            "--url".into(),
            nowhere,
            "--token".into(),
            "unused".into(),
            "--stack".into(),
            stack,
            "--fleet-every".into(),
            "1".into(),
        ],
    );
    let screen = tmux.wait_for("the fleet's sums", Duration::from_secs(30), |s| {
        s.contains("fleet/min hits 7  misses 3 (70.0%)")
            && s.contains("fleet/min cache 7  replica 0  primary 1")
            && s.contains("done 5  failed 3  job 0.50s")
    });
    assert!(!screen.contains("(stale)"), "just published, not stale:\n{screen}");
}
