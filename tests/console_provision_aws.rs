//! The console's provisioning view against AWS (moto_server), in a real
//! terminal, given nothing but `--stack` (the release it ships is the
//! running flipstack itself): `p` shows the plan; `D` refuses a wrong name; `u`, `y` runs
//! `up` step by step and the fleet panel then shows the stack's groups; `D`
//! and the stack's name typed out run `down`, after which AWS has no group
//! of the stack left.
//!
//! Needs FLIPSTACK_TEST_AWS_ENDPOINT (the project's test script sets it,
//! with AWS_ACCESS_KEY_ID=testing and friends).

mod console_support;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_autoscaling::types::Filter;
use console_support::{REGION, Tmux, aws_endpoint, free_port, group_row};
use flipstack_core::aws::AwsSettings;

/// Takes the stack down again if the test stops part-way.
struct Teardown {
    aws: AwsSettings,
    stack: String,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let (aws, stack) = (self.aws.clone(), self.stack.clone());
        // Drop cannot await: a thread of its own runs `down`.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let options = flipstack_provision::aws::DownOptions::default();
                let _ = flipstack_provision::aws::down(&aws, &stack, &options, &flipstack_provision::aws::no_progress)
                    .await;
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_view_plans_brings_up_and_takes_down_a_stack() {
    let Some(endpoint) = aws_endpoint() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stack = format!("cons{}", free_port());
    let aws = AwsSettings { region: REGION.into(), endpoint: Some(endpoint.clone()) };
    let _teardown = Teardown { aws: aws.clone(), stack: stack.clone() };

    let tmux = Tmux::start(
        80,
        24,
        dir.path(),
        &[("FLIPSTACK_AWS_ENDPOINT_URL", endpoint.clone()), ("FLIPSTACK_AWS_REGION", REGION.into())],
        &[
            console_support::BIN.to_owned(),
            "console".into(),
            "--url".into(),
            format!("http://127.0.0.1:{}", free_port()),
            "--token".into(),
            "unused".into(),
            "--stack".into(),
            stack.clone(),
            "--fleet-every".into(),
            "1".into(),
        ],
    );
    tmux.wait_for("the empty fleet", Duration::from_secs(20), |s| s.contains("no Auto Scaling groups tagged"));

    tmux.keys(&["p"]);
    tmux.wait_for("the plan", Duration::from_secs(30), |s| {
        s.contains(&format!("stack {stack} in {REGION}:")) && s.contains("to create") && s.contains("+ create")
    });

    // Down wants the name typed out: a wrong one does nothing.
    tmux.keys(&["D"]);
    tmux.wait_for("the down confirmation", Duration::from_secs(5), |s| s.contains("Type the stack's name"));
    tmux.keys(&["-l", "not-it"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the refusal", Duration::from_secs(5), |s| s.contains("the name does not match"));
    tmux.keys(&["Escape"]);
    tmux.wait_for("the plan again", Duration::from_secs(5), |s| {
        !s.contains("Type the stack's name") && !s.contains("provision down")
    });

    tmux.keys(&["u"]);
    tmux.wait_for("the up confirmation", Duration::from_secs(5), |s| s.contains("on AWS as planned?"));
    tmux.keys(&["y"]);
    let screen = tmux.wait_for("up finished", Duration::from_secs(120), |s| s.contains("provision up finished"));
    assert!(screen.contains("✓") && screen.contains("created"), "up shows its steps:\n{screen}");
    assert!(screen.contains("auto scaling group"), "{screen}");
    // The release up shipped is this flipstack executable.
    let s3_config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(flipstack_core::aws::http_client())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let s3 =
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&s3_config).force_path_style(true).build());
    let release = s3
        .head_object()
        .bucket(format!("flipstack-{stack}-123456789012-{REGION}"))
        .key("release/flipstack")
        .send()
        .await
        .expect("up uploaded a release");
    let shipped = release.content_length().unwrap_or(0) as u64;
    assert_eq!(shipped, std::fs::metadata(console_support::BIN).unwrap().len(), "the release is the running flipstack");
    assert!(release.metadata().is_some_and(|m| m.contains_key("sha256")));

    // The view closed, the fleet panel shows what up made.
    tmux.keys(&["Escape"]);
    tmux.wait_for("the new groups in the fleet panel", Duration::from_secs(20), |s| {
        group_row(s, "web").is_some_and(|(want, _, _)| want >= 1)
            && group_row(s, "worker").is_some_and(|(want, _, _)| want >= 1)
    });

    tmux.keys(&["p"]);
    tmux.wait_for("the provisioning view", Duration::from_secs(5), |s| s.contains("provision up finished"));
    tmux.keys(&["D"]);
    tmux.wait_for("the down confirmation", Duration::from_secs(5), |s| s.contains("Type the stack's name"));
    tmux.keys(&["-l", &stack]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("down finished", Duration::from_secs(120), |s| s.contains("provision down finished"));

    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(flipstack_core::aws::http_client())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let left = aws_sdk_autoscaling::Client::new(&config)
        .describe_auto_scaling_groups()
        .filters(Filter::builder().name("tag:flipstack:stack").values(&stack).build())
        .send()
        .await
        .unwrap();
    assert!(left.auto_scaling_groups().is_empty(), "down left groups: {:?}", left.auto_scaling_groups());

    tmux.keys(&["Escape"]);
    // Sent together, Escape and q read as Alt-q: wait for the view to close first.
    tmux.wait_for("the view closed", Duration::from_secs(10), |s| s.contains("no Auto Scaling groups tagged"));
    tmux.keys(&["q"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tmux.exit_status().is_none() {
        assert!(std::time::Instant::now() < deadline, "q did not quit:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tmux.exit_status(), Some(0));
}
