//! Scraping a node's `/metrics` and reading the text strictly.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::SHARDS;

/// Longest wait for the server, and for figures that change in the background (a flush, hints).
const DEADLINE: Duration = Duration::from_secs(60);

/// One sample: its labels and value.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// GET /metrics; the status line must be 200 and the content type Prometheus text 0.0.4.
pub fn scrape_text(port: u16) -> String {
    metrics_body(&get_metrics(port, ""))
}

/// The whole response to `GET /metrics` over plain HTTP, with `headers` (each ending in CRLF)
/// added to the request.
pub fn get_metrics(port: u16, headers: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the metrics port");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    exchange(&mut stream, headers)
}

/// Sends `GET /metrics` with `headers` on `stream` and reads the response to its end.
pub fn exchange<S: Read + Write>(stream: &mut S, headers: &str) -> String {
    let request = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A TLS server may close without close_notify after its answer; what came is whole.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(error) => panic!("reading the metrics response: {error}"),
    }
    String::from_utf8(response).expect("a UTF-8 response")
}

/// The body of a response, which must be a 200 in Prometheus text 0.0.4.
pub fn metrics_body(response: &str) -> String {
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// Parses the text format strictly: every sample belongs to a family announced by `# HELP` and
/// `# TYPE` before it, names and labels are well formed, every histogram's buckets are
/// cumulative in rising `le` order and end at `+Inf` equal to its `_count`.
pub fn parse(text: &str) -> Vec<Sample> {
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
pub fn total(samples: &[Sample], name: &str, wanted: &[(&str, &str)]) -> u64 {
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

pub fn scrape(port: u16) -> Vec<Sample> {
    parse(&scrape_text(port))
}

/// Scrapes until `done` holds of a scrape (figures that change in the background), or fails.
pub fn scrape_until(port: u16, what: &str, done: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
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
