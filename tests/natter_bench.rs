//! `natter-bench` against a real `natterd`: every scenario briefly, with a few clients,
//! checking that the report is sane (nothing lost, counts add up). Benchmarks measure;
//! these only check the tool tells the truth.

mod common;

use std::process::Command;

use common::Server;

const BENCH: &str = env!("CARGO_BIN_EXE_natter-bench");

fn credentials(n: usize) -> String {
    (0..n).map(|i| format!("u{i} p{i}\n")).collect()
}

/// Runs `natter-bench <args> --json` and returns the report's fields.
fn bench(args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new(BENCH)
        .args(args)
        .arg("--json")
        .output()
        .expect("run natter-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "natter-bench {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    report(&stdout)
}

/// natter-bench's JSON report as (key, value) pairs.
fn report(stdout: &str) -> Vec<(String, String)> {
    let body = stdout
        .trim()
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or_else(|| panic!("not one JSON object: {stdout:?}"));
    // A flat object of numbers and simple strings: split on commas between fields.
    body.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once(':').expect("key:value");
            (
                k.trim_matches('"').to_string(),
                v.trim_matches('"').to_string(),
            )
        })
        .collect()
}

fn get<'a>(report: &'a [(String, String)], key: &str) -> &'a str {
    report
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
}

fn num(report: &[(String, String)], key: &str) -> f64 {
    get(report, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {report:?}"))
}

fn server(n: usize) -> (Server, String, String) {
    let s = Server::start_with(&credentials(n), &["0"]);
    let addr = s.addr.to_string();
    let pid = s.pid().to_string();
    (s, addr, pid)
}

const BRIEF: [&str; 4] = ["--warmup", "0", "--duration", "1"];

#[test]
fn direct_delivers_everything_exactly_once() {
    let (_s, addr, pid) = server(10);
    let r = bench(
        &[
            &[
                "direct",
                "--server",
                &addr,
                "--server-pid",
                &pid,
                "-n",
                "10",
                "-w",
                "4",
            ][..],
            &BRIEF,
        ]
        .concat(),
    );
    assert_eq!(get(&r, "scenario"), "direct");
    assert!(num(&r, "deliveries") > 0.0, "{r:?}");
    assert_eq!(num(&r, "lost"), 0.0, "{r:?}");
    assert_eq!(num(&r, "duplicated"), 0.0, "{r:?}");
    assert_eq!(num(&r, "received_total"), num(&r, "sent_accepted"), "{r:?}");
    assert_eq!(num(&r, "errors"), 0.0, "{r:?}");
    assert_eq!(get(&r, "drained"), "yes");
    assert!(num(&r, "p50_us") <= num(&r, "p99_us"));
    assert!(num(&r, "p99_us") <= num(&r, "max_us"));
    assert!(num(&r, "server_cpu_us_per_delivery") > 0.0, "{r:?}");
}

#[test]
fn broadcast_reaches_every_other_client() {
    let (_s, addr, pid) = server(8);
    let r = bench(
        &[
            &[
                "broadcast",
                "--server",
                &addr,
                "--server-pid",
                &pid,
                "-n",
                "8",
                "-k",
                "2",
                "-w",
                "2",
            ][..],
            &BRIEF,
        ]
        .concat(),
    );
    assert_eq!(num(&r, "lost"), 0.0, "{r:?}");
    assert_eq!(num(&r, "duplicated"), 0.0, "{r:?}");
    // Every accepted broadcast reached the 7 other clients.
    assert_eq!(
        num(&r, "received_total"),
        num(&r, "sent_accepted") * 7.0,
        "{r:?}"
    );
    assert_eq!(num(&r, "errors"), 0.0, "{r:?}");
}

#[test]
fn login_storm_counts_every_presence_notification() {
    let (_s, addr, pid) = server(30);
    let r = bench(&[
        "login-storm",
        "--server",
        &addr,
        "--server-pid",
        &pid,
        "-n",
        "30",
    ]);
    assert_eq!(get(&r, "complete"), "yes", "{r:?}");
    assert_eq!(num(&r, "welcomed"), 30.0);
    assert_eq!(num(&r, "presence_received"), 30.0 * 29.0 / 2.0);
    assert!(num(&r, "server_peak_rss_kib") > 0.0);
}

#[test]
fn idle_reports_memory_and_wakeups() {
    let (_s, addr, pid) = server(20);
    let r = bench(&[
        "idle",
        "--server",
        &addr,
        "--server-pid",
        &pid,
        "-n",
        "20",
        "-d",
        "1",
    ]);
    assert_eq!(num(&r, "errors"), 0.0, "{r:?}");
    assert!(num(&r, "server_rss_kib") > 0.0, "{r:?}");
    assert!(num(&r, "server_wakeups_per_s") >= 0.0, "{r:?}");
    assert!(num(&r, "idle_s") >= 1.0, "{r:?}");
}

#[test]
fn churn_leaves_no_descriptors_behind() {
    let (_s, addr, pid) = server(6);
    let r = bench(&[
        "churn",
        "--server",
        &addr,
        "--server-pid",
        &pid,
        "-n",
        "6",
        "-d",
        "1",
    ]);
    assert!(num(&r, "cycles") > 0.0, "{r:?}");
    assert_eq!(get(&r, "fds_settled"), "yes", "{r:?}");
    assert!(
        num(&r, "server_fds_after") <= num(&r, "server_fds_before"),
        "{r:?}"
    );
    assert_eq!(num(&r, "errors"), 0.0, "{r:?}");
}

#[test]
fn ceiling_relays_everything_exactly_once() {
    let r = bench(&[&["ceiling", "-n", "10", "-w", "4"][..], &BRIEF].concat());
    assert!(num(&r, "deliveries") > 0.0, "{r:?}");
    assert_eq!(num(&r, "lost"), 0.0, "{r:?}");
    assert_eq!(num(&r, "duplicated"), 0.0, "{r:?}");
    assert!(num(&r, "server_cpu_us_per_delivery") > 0.0, "{r:?}");
}

#[test]
fn gen_credentials_and_refusing_remote_targets() {
    let out = Command::new(BENCH)
        .args(["gen-credentials", "3"])
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "u0 p0\nu1 p1\nu2 p2\n"
    );
    let out = Command::new(BENCH)
        .args(["direct", "--server", "192.0.2.1:4000"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn direct_and_login_storm_over_tls() {
    // Plain text from 127.0.0.1 refused: only a real TLS client gets in.
    let s = Server::start_with(&credentials(10), &["0", "--treat-as-remote", "127.0.0.1"]);
    let (addr, pid) = (s.addr.to_string(), s.pid().to_string());
    let common = ["--server", &addr, "--server-pid", &pid, "-n", "10"];
    let r = bench(&[&["direct", "--tls", "-w", "4"][..], &common, &BRIEF].concat());
    assert!(num(&r, "deliveries") > 0.0, "{r:?}");
    assert_eq!(num(&r, "lost"), 0.0, "{r:?}");
    assert_eq!(num(&r, "received_total"), num(&r, "sent_accepted"), "{r:?}");
    assert_eq!(num(&r, "errors"), 0.0, "{r:?}");
    let r = bench(&[&["login-storm", "--tls"][..], &common].concat());
    assert_eq!(num(&r, "welcomed"), 10.0, "{r:?}");
    assert_eq!(get(&r, "complete"), "yes", "{r:?}");
    // The same without TLS is refused (the server says *BYE tls-required and closes).
    let r = bench(&[&["login-storm", "--setup-timeout", "1s"][..], &common].concat());
    assert_eq!(num(&r, "welcomed"), 0.0, "{r:?}");
    assert_eq!(num(&r, "errors"), 10.0, "{r:?}");
}

/// More TLS handshakes at once than natterd runs in one loop iteration: 200 clients
/// connect and send their TLS hello while natterd is stopped, so all 200 are ready in
/// its first iteration after it continues; 128 run and the rest wait for the next
/// iterations. Every one completes, and a user logged in before is served throughout.
#[test]
fn a_tls_login_storm_larger_than_one_iteration_all_completes() {
    use nix::sys::signal::{Signal, kill};
    let s = Server::start_with(&credentials(201), &["0"]);
    let server = nix::unistd::Pid::from_raw(s.pid() as i32);
    let mut early = s.login("u200", "p200");
    assert_eq!(common::counter(&s, "handshakes_waited"), 0);
    kill(server, Signal::SIGSTOP).expect("stop");
    let storm = Command::new(BENCH)
        .args([
            "login-storm",
            "--tls",
            "-n",
            "200",
            "--setup-timeout",
            "60s",
        ])
        .args(["--server", &s.addr.to_string(), "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run natter-bench");
    common::wait_until("200 TLS hellos waiting in the kernel", || {
        common::connections_with_input(s.addr.port()) >= 200
    });
    kill(server, Signal::SIGCONT).expect("continue");
    let out = storm.wait_with_output().expect("natter-bench");
    let r = report(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(num(&r, "welcomed"), 200.0, "{r:?}");
    assert_eq!(get(&r, "complete"), "yes", "{r:?}");
    assert!(common::counter(&s, "handshakes_waited") >= 72);
    early.send("PING still-here");
    loop {
        let line = early.next_frame();
        if line == "+PONG still-here" {
            break;
        }
        assert!(
            line.starts_with("*LOGIN ") || line.starts_with("*LOGOUT "),
            "{line}"
        );
    }
}
