//! `ringkv serve --metrics-listen` serves Prometheus text at `/metrics`: after a known mix of
//! operations (native and Redis protocol), the request counters moved by exactly that mix, the
//! latency histograms counted every request, bytes and connections moved, a flush and WAL syncs
//! show up, and the text parses: strictly by this test's own reader of the format, and by the
//! official Python client's parser when `prometheus_client` is installed (tools/test.sh installs
//! it; without it that part is skipped with a printed reason).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, Server, SHARDS};
use ringkv_wire::{Command as WireCommand, Operation, Reply, Scan, ScanEnd, ScanStart};

/// Longest wait for figures the shards copy in periodically (every second).
const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One sample: its labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// GET /metrics; the status line must be 200 and the content type Prometheus text 0.0.4.
fn scrape_text(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the metrics port");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// Parses the text format strictly: every sample belongs to a family announced by `# HELP` and
/// `# TYPE` before it, names and labels are well formed, every histogram's buckets are
/// cumulative in rising `le` order and end at `+Inf` equal to its `_count`.
fn parse(text: &str) -> Vec<Sample> {
    let is_name = |name: &str| {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = 0;
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, text) = help.split_once(' ').expect("HELP has a name and a text");
            assert!(is_name(name) && !text.is_empty(), "{line}");
            helps += 1;
            continue;
        }
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared.split_once(' ').expect("TYPE has a name and a kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "{name} declared twice");
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "unexpected line {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("labels close")),
            None => (series, ""),
        };
        assert!(is_name(name), "{line}");
        let mut parsed = BTreeMap::new();
        for label in labels.split(',').filter(|label| !label.is_empty()) {
            let (key, quoted) = label.split_once('=').expect("label=value");
            let value =
                quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')).expect("quoted label value");
            assert!(is_name(key) && !value.contains('"'), "{line}");
            assert!(parsed.insert(key.to_string(), value.to_string()).is_none(), "{line}");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|family| types.get(*family).is_some_and(|kind| kind == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no TYPE before it");
        assert!(value >= 0.0, "{line}");
        samples.push(Sample { name: name.to_string(), labels: parsed, value });
    }
    assert_eq!(helps, types.len(), "every family has a HELP");
    // Histograms: cumulative buckets, +Inf last and equal to the count.
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in samples.iter().filter(|sample| sample.name.ends_with("_bucket")) {
        let mut labels = sample.labels.clone();
        let le = labels.remove("le").expect("a bucket has le");
        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le is a number") };
        buckets.entry(format!("{}{labels:?}", sample.name)).or_default().push((bound, sample.value));
    }
    assert!(!buckets.is_empty());
    for (series, points) in &buckets {
        assert!(points.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 <= pair[1].1), "{series}");
        let (last_bound, last) = *points.last().unwrap();
        assert!(last_bound.is_infinite(), "{series} ends at +Inf");
        let count_series = series.replacen("_bucket", "_count", 1);
        let count = samples
            .iter()
            .find(|sample| format!("{}{:?}", sample.name, sample.labels) == count_series)
            .unwrap_or_else(|| panic!("{series} has a _count"));
        assert_eq!(count.value, last, "{series}: +Inf bucket and _count");
    }
    samples
}

/// The sum over shards of `name` with the labels in `wanted`.
fn total(samples: &[Sample], name: &str, wanted: &[(&str, &str)]) -> u64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|sample| {
            sample.name == name
                && wanted
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
        .collect();
    assert!(!matching.is_empty(), "no sample {name} {wanted:?}");
    let shards: std::collections::BTreeSet<_> =
        matching.iter().map(|sample| sample.labels["shard"].clone()).collect();
    assert_eq!(shards.len(), SHARDS, "{name}: one series per shard");
    matching.iter().map(|sample| sample.value as u64).sum()
}

fn scrape(port: u16) -> Vec<Sample> {
    parse(&scrape_text(port))
}

/// Scrapes until `done` holds of a scrape (figures copied in periodically), or fails.
fn scrape_until(port: u16, what: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let started = Instant::now();
    loop {
        let samples = scrape(port);
        if done(&samples) {
            return samples;
        }
        assert!(started.elapsed() < DEADLINE, "{what} never showed in the metrics");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one Redis command as a RESP array and reads the reply line.
fn resp_command(stream: &mut TcpStream, arguments: &[&str]) -> String {
    let mut request = format!("*{}\r\n", arguments.len());
    for argument in arguments {
        request.push_str(&format!("${}\r\n{argument}\r\n", argument.len()));
    }
    stream.write_all(request.as_bytes()).unwrap();
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
    let root = tempfile::tempdir().unwrap();
    let (metrics_port, resp_port) = (free_port(), free_port());
    let server = Server::start_with(
        &root.path().join("data"),
        &[
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--resp-listen",
            &format!("127.0.0.1:{resp_port}"),
        ],
    );
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
