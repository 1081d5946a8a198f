//! `qwenrt loadgen` against `qwenrt_server` on an ephemeral port: every request streams to
//! `[DONE]` and is measured; a wrong API key makes every request a counted failure; the
//! command's flags and its JSON report.

#[path = "../../server/tests/support/server_kit.rs"]
mod kit;

use std::process::Command;

use kit::*;
use qwenrt_cli::loadgen::{self, LoadgenOptions};

fn options(s: &Server, clients: usize, requests: usize, max_tokens: usize) -> LoadgenOptions {
    LoadgenOptions {
        url: s.base.clone(),
        clients,
        requests,
        max_tokens,
        timeout: Duration::from_secs(120),
        ..LoadgenOptions::default()
    }
}

#[test]
fn every_request_streams_and_is_measured() {
    let s = Server::start(ServerOptions {
        max_queue: 8,
        ..opts()
    });
    let (c, r, n) = (3, 2, 12);
    let o = options(&s, c, r, n);
    let (results, wall) = loadgen::run_requests(&o).unwrap();
    assert_eq!(results.len(), c * r);
    for res in &results {
        assert_eq!(res.error, None, "client {}", res.client);
        assert!((1..=n).contains(&res.tokens), "{} tokens", res.tokens);
        let ttft = res.ttft.expect("a content chunk");
        assert!(ttft <= res.elapsed && res.elapsed <= wall);
        // one content chunk per token at most, so at most tokens - 1 gaps
        assert!(res.itl.len() < res.tokens);
    }
    let report = loadgen::Report::new(&o, &results, wall);
    assert_eq!((report.requests_ok, report.requests_failed), (c * r, 0));
    let tokens: usize = results.iter().map(|r| r.tokens).sum();
    assert_eq!(report.tokens, tokens);
    // the server counted the same completion tokens the usage chunks reported
    assert_eq!(metric(&s, "qwenrt_completion_tokens_total"), tokens as f64);
    assert!(report.tokens_per_s > 0.0 && report.client_tokens_per_s_median > 0.0);
    let (p50, p99) = (report.ttft_p50_ms.unwrap(), report.ttft_p99_ms.unwrap());
    assert!(p50 <= p99 && p99 <= report.wall_s * 1e3);
    assert!(report.errors.is_empty());
}

#[test]
fn a_wrong_api_key_counts_every_request_as_failed() {
    let s = Server::start(ServerOptions {
        api_key: Some("right".into()),
        ..opts()
    });
    let o = LoadgenOptions {
        api_key: Some("wrong".into()),
        ..options(&s, 2, 3, 4)
    };
    let report = loadgen::run(&o).unwrap();
    assert_eq!((report.requests_ok, report.requests_failed), (0, 6));
    assert_eq!(report.tokens, 0);
    assert_eq!(report.ttft_p50_ms, None);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(
        report.errors[0].starts_with("6 x HTTP 401"),
        "{:?}",
        report.errors
    );
    // the right key works
    let report = loadgen::run(&LoadgenOptions {
        api_key: Some("right".into()),
        ..o
    })
    .unwrap();
    assert_eq!((report.requests_ok, report.requests_failed), (6, 0));
}

#[test]
fn an_unreachable_server_is_a_counted_connection_error() {
    // a port that was free a moment ago
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = LoadgenOptions {
        url: format!("http://127.0.0.1:{port}"),
        clients: 2,
        requests: 1,
        ..LoadgenOptions::default()
    };
    let report = loadgen::run(&o).unwrap();
    assert_eq!((report.requests_ok, report.requests_failed), (0, 2));
    assert!(
        report.errors[0].contains("connection error"),
        "{:?}",
        report.errors
    );
}

fn qwenrt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qwenrt"))
        .args(args)
        .env_remove("QWENRT_API_KEY")
        .output()
        .unwrap()
}

#[test]
fn the_command_reports_json_and_refuses_bad_flags() {
    let s = Server::start(opts());
    let out = qwenrt(&[
        "loadgen",
        "--url",
        &s.base,
        "--clients",
        "2",
        "--requests",
        "1",
        "--max-tokens",
        "5",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["requests_ok"], 2);
    assert_eq!(v["requests_failed"], 0);
    assert!(v["tokens"].as_u64().unwrap() >= 2);
    assert!(v["ttft_p99_ms"].as_f64().unwrap() >= v["ttft_p50_ms"].as_f64().unwrap());

    // the table, and exit status 1 when requests fail
    let out = qwenrt(&[
        "loadgen",
        "--url",
        "http://127.0.0.1:1",
        "-c",
        "1",
        "-r",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("0 ok, 1 failed"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: 1 of 1 requests failed"));

    for (args, needle) in [
        (&["--clients", "0"][..], "--clients must be at least 1"),
        (&["--requests", "0"][..], "--requests must be at least 1"),
        (
            &["--max-tokens", "0"][..],
            "--max-tokens must be at least 1",
        ),
        (&["--url", "localhost:8080"][..], "must start with http://"),
        (&["--url", "http://h:port"][..], "port"),
        (&["--clients", "-1"][..], "--clients"),
    ] {
        let mut a = vec!["loadgen"];
        a.extend_from_slice(args);
        let out = qwenrt(&a);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}
