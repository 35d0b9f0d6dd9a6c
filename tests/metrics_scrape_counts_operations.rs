//! `ringkv serve --metrics-listen` serves Prometheus text at `/metrics`: after a known mix of
//! operations (native and Redis protocol), the request counters moved by exactly that mix, the
//! latency histograms counted every request, bytes and connections moved, a flush and WAL syncs
//! show up, and the text parses: strictly by this test's own reader of the format, and by the
//! official Python client's parser when `prometheus_client` is installed (tools/test.sh installs
//! it; without it that part is skipped with a printed reason).

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::metrics::{scrape, scrape_text, scrape_until, total, Sample};
use common::{Client, Server, LISTENER};
use ringkv_wire::{Command as WireCommand, Operation, Reply, Scan, ScanEnd, ScanStart};

/// Longest wait for a Redis reply.
const DEADLINE: Duration = Duration::from_secs(60);

/// Sends one Redis command as a RESP array and reads the reply line.
fn resp_command(stream: &mut TcpStream, arguments: &[&str]) -> String {
    let arguments: Vec<&[u8]> = arguments.iter().map(|argument| argument.as_bytes()).collect();
    stream.write_all(&common::resp::request(&arguments)).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        stream.read_exact(&mut byte).unwrap();
        reply.push(byte[0]);
    }
    String::from_utf8(reply).unwrap()
}

#[test]
fn metrics_scrape_counts_operations() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &root.path().join("data"),
        &["--metrics-listen", LISTENER, "--resp-listen", LISTENER],
    );
    let (metrics_port, resp_port) = (server.listener_port(0), server.listener_port(1));
    let before = scrape(metrics_port);
    let requests = |samples: &[Sample], operation: &str, outcome: &str| {
        total(samples, "ringkv_requests_total", &[("operation", operation), ("outcome", outcome)])
    };
    let latencies = |samples: &[Sample], operation: &str| {
        total(samples, "ringkv_request_duration_seconds_count", &[("operation", operation)])
    };

    // Native: 40 puts of 64 KiB (2.5 MiB: past the 1 MiB memtable, so a flush), 10 gets that
    // find their key, 5 that do not, 3 deletes and one scan page.
    let mut client = Client::connect(server.client_port);
    let value = vec![b'v'; 64 << 10];
    for index in 0..40 {
        client.put(format!("key-{index}").as_bytes(), &value);
    }
    for index in 0..10 {
        assert!(client.get_value(format!("key-{index}").as_bytes()).is_some());
    }
    for index in 0..5 {
        assert!(client.get_value(format!("missing-{index}").as_bytes()).is_none());
    }
    for index in 0..3 {
        client.execute(Operation::Delete { key: Bytes::from(format!("key-{index}")) }).unwrap();
    }
    let scan = Scan { start: ScanStart::Token(0), end: ScanEnd::Last, limit: 5 };
    assert!(matches!(client.call(WireCommand::Scan(scan)), Reply::Scan(_)));
    // Redis protocol: two SETs, one GET found and one not.
    let mut resp = TcpStream::connect(("127.0.0.1", resp_port)).unwrap();
    resp.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(resp_command(&mut resp, &["SET", "redis-a", "1"]), "+OK\r\n");
    assert_eq!(resp_command(&mut resp, &["SET", "redis-b", "2"]), "+OK\r\n");
    assert_eq!(resp_command(&mut resp, &["GET", "redis-a"]), "$1\r\n");
    let mut rest = [0u8; 3];
    resp.read_exact(&mut rest).unwrap();
    assert_eq!(resp_command(&mut resp, &["GET", "redis-missing"]), "$-1\r\n");

    let after = scrape_until(metrics_port, "a flush", |samples| {
        total(samples, "ringkv_flushes_total", &[]) > total(&before, "ringkv_flushes_total", &[])
    });
    let moved = |operation: &str, outcome: &str| {
        requests(&after, operation, outcome) - requests(&before, operation, outcome)
    };
    assert_eq!(moved("put", "ok"), 42, "40 native puts and 2 Redis SETs");
    assert_eq!(moved("get", "ok"), 11);
    assert_eq!(moved("get", "not_found"), 6);
    assert_eq!(moved("delete", "ok"), 3);
    assert_eq!(moved("scan", "ok"), 1);
    for outcome in ["overloaded", "timeout", "unavailable", "error", "cas_mismatch"] {
        for operation in ["get", "put", "delete", "scan", "cas"] {
            assert_eq!(moved(operation, outcome), 0, "{operation} {outcome}");
        }
    }
    for (operation, count) in [("put", 42), ("get", 17), ("delete", 3), ("scan", 1), ("cas", 0)] {
        assert_eq!(
            latencies(&after, operation) - latencies(&before, operation),
            count,
            "{operation} latencies"
        );
    }

    // Bytes: at least the values sent in, and replies out; Redis counted apart.
    let bytes =
        |samples: &[Sample], name: &str, protocol: &str| total(samples, name, &[("protocol", protocol)]);
    let native_in = bytes(&after, "ringkv_received_bytes_total", "native")
        - bytes(&before, "ringkv_received_bytes_total", "native");
    assert!(native_in >= 40 * (64 << 10), "{native_in} bytes received");
    assert!(
        bytes(&after, "ringkv_sent_bytes_total", "native")
            > bytes(&before, "ringkv_sent_bytes_total", "native")
    );
    let resp_in = bytes(&after, "ringkv_received_bytes_total", "resp")
        - bytes(&before, "ringkv_received_bytes_total", "resp");
    let resp_sent: u64 = [["SET", "redis-a", "1"], ["SET", "redis-b", "2"]]
        .iter()
        .map(|arguments| {
            4 + arguments.iter().map(|a| format!("${}\r\n{a}\r\n", a.len()).len()).sum::<usize>() as u64
        })
        .sum::<u64>()
        + [["GET", "redis-a"], ["GET", "redis-missing"]]
            .iter()
            .map(|arguments| {
                4 + arguments.iter().map(|a| format!("${}\r\n{a}\r\n", a.len()).len()).sum::<usize>() as u64
            })
            .sum::<u64>();
    assert_eq!(resp_in, resp_sent, "every byte of the four Redis commands");
    let resp_out =
        bytes(&after, "ringkv_sent_bytes_total", "resp") - bytes(&before, "ringkv_sent_bytes_total", "resp");
    assert_eq!(resp_out, (5 + 5 + 7 + 5) as u64, "+OK twice, $1 1 and $-1");
    assert_eq!(
        bytes(&after, "ringkv_connections_accepted_total", "resp")
            - bytes(&before, "ringkv_connections_accepted_total", "resp"),
        1
    );
    assert!(bytes(&after, "ringkv_connections_open", "resp") >= 1);
    assert!(bytes(&after, "ringkv_connections_open", "native") >= 1);

    // Storage: the flush wrote a table; every acknowledged put was synced (sync = always).
    assert!(total(&after, "ringkv_sstable_bytes", &[]) > 0);
    assert!(total(&after, "ringkv_sstables", &[]) >= 1);
    assert!(total(&after, "ringkv_flush_bytes_total", &[]) > 0);
    let syncs = total(&after, "ringkv_wal_syncs_total", &[]) - total(&before, "ringkv_wal_syncs_total", &[]);
    assert!(syncs >= 1, "writes acknowledged after a sync");
    assert_eq!(
        total(&after, "ringkv_wal_sync_duration_seconds_count", &[]),
        total(&after, "ringkv_wal_syncs_total", &[])
    );
    assert!(total(&after, "ringkv_wal_bytes_total", &[]) >= 40 * (64 << 10));
    // The connection's reads went through the shard's socket poller, busy or idle.
    let polls = total(&after, "ringkv_socket_polls_total", &[]);
    let after_idle = total(&after, "ringkv_socket_reads_after_idle_total", &[]);
    assert!(polls + after_idle > 0, "no read went through the socket poller");
    // The kernel's account of each shard's thread, where it keeps one: the shard that served
    // these requests ran, and no shard's wait goes backwards.
    if std::path::Path::new("/proc/self/schedstat").exists() {
        let seconds = |samples: &[Sample], name: &str| -> f64 {
            samples.iter().filter(|sample| sample.name == name).map(|sample| sample.value).sum()
        };
        let shards = after.iter().filter(|sample| sample.name == "ringkv_shard_cpu_seconds_total").count();
        assert!(shards >= 1, "no shard's CPU time in the scrape");
        assert_eq!(
            shards,
            after.iter().filter(|sample| sample.name == "ringkv_shard_cpu_wait_seconds_total").count()
        );
        assert!(
            seconds(&after, "ringkv_shard_cpu_seconds_total")
                > seconds(&before, "ringkv_shard_cpu_seconds_total")
        );
        assert!(
            seconds(&after, "ringkv_shard_cpu_wait_seconds_total")
                >= seconds(&before, "ringkv_shard_cpu_wait_seconds_total")
        );
    }
    // A single node: nothing to time out, repair or hint.
    for name in ["ringkv_replica_timeouts_total", "ringkv_read_repairs_total", "ringkv_hints_stored_total"] {
        assert_eq!(total(&after, name, &[]), 0, "{name}");
    }

    // The official parser reads it too, when installed.
    let text = scrape_text(metrics_port);
    let check = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\n\
                 families = list(parse(sys.stdin.read()))\nprint(len(families))\n";
    let has_parser = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if has_parser {
        let mut child = Command::new("python3")
            .args(["-c", check])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "prometheus_client refused the text: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let families: usize = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
        assert_eq!(families, text.lines().filter(|line| line.starts_with("# TYPE ")).count());
    } else {
        println!("skipped the prometheus_client parse: the Python package is not installed (pip install prometheus-client)");
    }
    drop(resp);
    drop(client);
    drop(server);
}
