//! Runs `flipstack console` in a real pseudo-terminal (tmux) and reads the
//! screen as a person would, with send-keys and capture-pane.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flipstack");

/// A free loopback port: bound, read, released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A command for the flipstack binary with no FLIPSTACK_* setting inherited
/// from the test's environment, so only what the test says applies.
pub fn flipstack() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("FLIPSTACK_") {
            c.env_remove(k);
        }
    }
    c
}

/// A tmux server of the test's own (its own socket), holding one session.
pub struct Tmux {
    socket: String,
    conf: tempfile::NamedTempFile,
    /// Where the program's exit status is written when it ends.
    status: tempfile::TempDir,
}

impl Tmux {
    /// Starts `argv` in a `cols`×`rows` terminal in `cwd`, with `env` added.
    pub fn start(cols: u16, rows: u16, cwd: &Path, env: &[(&str, String)], argv: &[String]) -> Tmux {
        let mut conf = tempfile::NamedTempFile::new().unwrap();
        // Keep the pane after the program exits: its last screen is read.
        use std::io::Write;
        writeln!(conf, "set -g remain-on-exit on").unwrap();
        let socket = format!("flipstack-test-{}-{}", std::process::id(), free_port());
        let tmux = Tmux { socket, conf, status: tempfile::tempdir().unwrap() };
        let mut args: Vec<String> = vec![
            "new-session".into(),
            "-d".into(),
            "-s".into(),
            "console".into(),
            "-x".into(),
            cols.to_string(),
            "-y".into(),
            rows.to_string(),
            "-c".into(),
            cwd.display().to_string(),
        ];
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        // A shell waits for the program and writes its exit status (tmux's
        // own pane_dead_status now and then lags behind a program's exit).
        let status = tmux.status.path().join("status");
        args.extend([
            "--".into(),
            "sh".into(),
            "-c".into(),
            format!("\"$@\"; echo $? > '{0}.tmp' && mv '{0}.tmp' '{0}'", status.display()),
            "sh".into(),
        ]);
        args.extend(argv.iter().cloned());
        let out = tmux.run(&args);
        assert!(out.status.success(), "tmux new-session failed: {}", String::from_utf8_lossy(&out.stderr));
        tmux
    }

    fn run(&self, args: &[String]) -> Output {
        let mut c = Command::new("tmux");
        c.arg("-L").arg(&self.socket).arg("-f").arg(self.conf.path());
        // The programs in the pane see only the FLIPSTACK_* the test gives.
        for (k, _) in std::env::vars() {
            if k.starts_with("FLIPSTACK_") || k == "TMUX" {
                c.env_remove(k);
            }
        }
        c.args(args).output().expect("tmux is installed")
    }

    pub fn screen(&self) -> String {
        let out = self.run(&["capture-pane".into(), "-p".into(), "-t".into(), "console".into()]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types keys (tmux key names: "b", "y", "Enter", "Escape").
    pub fn keys(&self, keys: &[&str]) {
        let mut args: Vec<String> = vec!["send-keys".into(), "-t".into(), "console".into()];
        args.extend(keys.iter().map(|k| k.to_string()));
        let out = self.run(&args);
        assert!(out.status.success(), "tmux send-keys failed");
    }

    /// Waits until the screen satisfies `ok`; fails with the screen if it
    /// does not within `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("the console did not show {what} within {timeout:?}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The program's exit status once it has exited.
    pub fn exit_status(&self) -> Option<i32> {
        std::fs::read_to_string(self.status.path().join("status")).ok()?.trim().parse().ok()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server".into()]);
    }
}

/// A line of the screen that contains `needle`.
pub fn line_with<'a>(screen: &'a str, needle: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.contains(needle))
}

/// The region every AWS test uses.
pub const REGION: &str = "us-east-1";

/// moto_server's endpoint, or None when the AWS tests were not asked for
/// (a clear failure when FLIPSTACK_TEST_TIERS asks for them without it).
pub fn aws_endpoint() -> Option<String> {
    match std::env::var("FLIPSTACK_TEST_AWS_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            let tiers = std::env::var("FLIPSTACK_TEST_TIERS").unwrap_or_default();
            assert!(
                !tiers.split([',', ' ']).any(|t| t.trim() == "aws"),
                "FLIPSTACK_TEST_TIERS asks for the aws tier but FLIPSTACK_TEST_AWS_ENDPOINT is not set: start moto_server (scripts/services.sh up DIR --only moto) and export the endpoint"
            );
            eprintln!("the AWS test was not requested (no FLIPSTACK_TEST_AWS_ENDPOINT): skipping it");
            None
        }
    }
}

/// The numbers of a group's row in the fleet panel (the left half of an
/// 80-column screen): want, in service, pending.
pub fn group_row(screen: &str, role: &str) -> Option<(u32, u32, u32)> {
    screen.lines().find_map(|line| {
        let left: String = line.chars().take(40).collect();
        let mut words = left.trim_matches(|c| c == '│' || c == ' ').split_whitespace();
        if words.next()? != role {
            return None;
        }
        let mut n = || words.next()?.parse::<u32>().ok();
        Some((n()?, n()?, n()?))
    })
}
