//! redis-py, the Python Redis client, against the Redis protocol port of a real two-shard
//! server, over RESP2 and RESP3: every command ringkv serves, their options, and their errors
//! (unknown command, wrong arity, syntax, non-integer, ringkv's key and value limits, EXPIRE's
//! incompatible options). The script runs under `python3`
//! and needs the `redis` package (`pip install redis`); without either, the test fails saying
//! so rather than passing untested.

use crate::common;

use std::process::Command;

use common::{Server, LISTENER};

/// The checks, run once per protocol version. Expiries are checked in ways that do not depend on
/// timing: a key given a TTL in the past, or a short TTL and then a longer sleep, is gone; a TTL
/// read back lies between 0 and what was set (or a later bound) and never above it.
const SCRIPT: &str = r#"
import sys, time
import redis

port = int(sys.argv[1])

def error_of(call):
    try:
        call()
    except redis.ResponseError as error:
        return str(error)
    raise AssertionError("expected an error")

def check(protocol):
    r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol)
    p = "p%d:" % protocol
    stale = list(r.scan_iter(match=p + "*"))
    if stale:
        r.delete(*stale)

    # Connection and server commands.
    assert r.ping() is True
    assert r.echo("hi") == b"hi"
    hello = r.execute_command("HELLO", protocol)
    if isinstance(hello, list):
        hello = dict(zip(hello[::2], hello[1::2]))
    hello = {(k.decode() if isinstance(k, bytes) else k): v for k, v in hello.items()}
    assert hello["proto"] == protocol, hello
    assert "NOPROTO" in error_of(lambda: r.execute_command("HELLO", 4))
    assert r.select(0) is True or r.select(0) == b"OK"
    assert "DB index is out of range" in error_of(lambda: r.select(1))
    assert r.command_count() >= 30
    info = r.execute_command("COMMAND INFO", "get")
    assert info and info[0] is not None
    assert r.execute_command("COMMAND DOCS", "set")
    assert r.client_setname("tester") is True
    assert r.client_getname() in ("tester", b"tester")
    client_id = r.client_id()
    assert isinstance(client_id, int)
    assert r.client_info()["name"] == "tester"
    info = r.info()
    assert info["connected_clients"] >= 1 and "total_commands_processed" in info
    assert "used_memory_rss" in r.info("memory")

    # Unknown commands and wrong arity, in Redis's words.
    assert error_of(lambda: r.execute_command("LPUSH", "list", "x")) == \
        "unknown command 'LPUSH', with args beginning with: 'list' 'x' "
    assert error_of(lambda: r.execute_command("GET")) == "wrong number of arguments for 'get' command"

    # GET and SET with every option.
    assert r.get(p + "missing") is None
    assert r.set(p + "a", "1") is True
    assert r.get(p + "a") == b"1"
    assert r.set(p + "a", "2", nx=True) is None
    assert r.set(p + "b", "1", xx=True) is None
    assert r.get(p + "b") is None
    assert r.set(p + "a", "3", xx=True) is True
    assert r.set(p + "a", "4", get=True) == b"3"
    assert r.set(p + "new", "x", nx=True, get=True) is None
    assert r.get(p + "new") == b"x"
    assert r.set(p + "ex", "v", ex=100) is True and r.get(p + "ex") == b"v"
    assert r.set(p + "px", "v", px=100000) is True and r.get(p + "px") == b"v"
    assert r.set(p + "exat", "v", exat=int(time.time()) + 100) is True and r.get(p + "exat") == b"v"
    assert r.set(p + "pxat", "v", pxat=int(time.time() * 1000) + 100000) is True
    assert r.set(p + "past", "v", pxat=1000) is True and r.get(p + "past") is None
    assert r.set(p + "short", "v", px=50) is True
    # KEEPTTL keeps the key's expiry; a plain SET drops it.
    assert r.set(p + "keep", "1", ex=100) is True
    assert r.set(p + "keep", "2", keepttl=True) is True and r.get(p + "keep") == b"2"
    assert 0 < r.ttl(p + "keep") <= 100
    assert r.set(p + "keep", "3", keepttl=True, get=True, xx=True) == b"2"
    assert 0 < r.pttl(p + "keep") <= 100000
    assert r.set(p + "keep", "4") is True and r.ttl(p + "keep") == -1
    assert r.set(p + "keep", "5", keepttl=True) is True and r.ttl(p + "keep") == -1
    assert r.set(p + "keepnew", "1", keepttl=True) is True and r.ttl(p + "keepnew") == -1
    assert error_of(lambda: r.execute_command("SET", p + "keep", "1", "EX", "10", "KEEPTTL")) == "syntax error"
    assert error_of(lambda: r.execute_command("SET", p + "a", "1", "NX", "XX")) == "syntax error"
    assert error_of(lambda: r.execute_command("SET", p + "a", "1", "EX", "0")) == \
        "invalid expire time in 'set' command"
    assert error_of(lambda: r.execute_command("SET", p + "a", "1", "EX", "soon")) == \
        "value is not an integer or out of range"
    assert "KEY_BYTES_MAX" in error_of(lambda: r.set("k" * 300, "v"))
    assert "VALUE_BYTES_MAX" in error_of(lambda: r.set(p + "big", b"v" * (1024 * 1024 + 1)))
    assert "TTL_MS_MAX" in error_of(lambda: r.setex(p + "a", 10**12, "v"))
    assert r.set(p + "max", b"v" * (1024 * 1024)) is True and len(r.get(p + "max")) == 1024 * 1024

    # SETNX, SETEX, PSETEX, GETDEL, GETEX.
    assert r.setnx(p + "nx", "1") is True
    assert r.setnx(p + "nx", "2") is False
    assert r.get(p + "nx") == b"1"
    assert r.setex(p + "setex", 100, "v") is True and r.get(p + "setex") == b"v"
    assert r.psetex(p + "psetex", 100000, "v") is True and r.get(p + "psetex") == b"v"
    assert "invalid expire time" in error_of(lambda: r.setex(p + "setex", 0, "v"))
    assert r.getdel(p + "setex") == b"v"
    assert r.get(p + "setex") is None and r.getdel(p + "setex") is None
    assert r.getex(p + "psetex") == b"v" and 0 < r.pttl(p + "psetex") <= 100000
    assert r.getex(p + "psetex", ex=50) == b"v" and 0 < r.ttl(p + "psetex") <= 50
    assert r.getex(p + "psetex", persist=True) == b"v" and r.ttl(p + "psetex") == -1
    assert r.getex(p + "psetex", persist=True) == b"v" and r.ttl(p + "psetex") == -1
    assert r.getex(p + "psetex", px=100000) == b"v" and 50 < r.ttl(p + "psetex") <= 100
    assert r.getex(p + "missing", ex=100) is None
    assert r.getex(p + "psetex", pxat=1000) == b"v" and r.get(p + "psetex") is None

    # DEL, UNLINK, EXISTS, MGET, MSET, MSETNX.
    assert r.mset({p + "m1": "1", p + "m2": "2", p + "m3": "3"}) is True
    assert r.mget(p + "m1", p + "m2", p + "missing", p + "m3") == [b"1", b"2", None, b"3"]
    assert r.exists(p + "m1", p + "m2", p + "missing", p + "m1") == 3
    assert r.delete(p + "m1", p + "missing", p + "m1") == 1
    assert r.unlink(p + "m2") == 1 and r.unlink(p + "m2") == 0
    assert r.exists(p + "m1", p + "m2", p + "m3") == 1
    assert r.msetnx({p + "one": "1"}) is True
    assert r.msetnx({p + "one": "2"}) is False and r.get(p + "one") == b"1"
    # MSETNX of several keys is atomic when they live on one shard (of the server's two), and
    # refused otherwise. Which pairs share a shard follows from their tokens: try pairs until
    # both cases are seen (one of 64 pairs each way, or the hash is broken).
    together = apart = None
    for i in range(64):
        pair = (p + "nx:a%d" % i, p + "nx:b%d" % i)
        try:
            assert r.msetnx({pair[0]: "1", pair[1]: "2"}) is True
            together = together or pair
        except redis.ResponseError as error:
            assert "only when every key lives on one shard" in str(error), error
            assert r.exists(*pair) == 0
            apart = apart or pair
        if together and apart:
            break
    assert together and apart, (together, apart)
    a, b = together
    assert r.mget(a, b) == [b"1", b"2"]
    assert r.msetnx({a: "3", b: "4"}) is False and r.mget(a, b) == [b"1", b"2"]
    assert r.delete(b) == 1
    assert r.msetnx({b: "5", a: "6"}) is False and r.mget(a, b) == [b"1", None]
    assert r.delete(a) == 1
    assert r.execute_command("MSETNX", a, "7", b, "8", a, "9") == 1 and r.mget(a, b) == [b"9", b"8"]
    # MSET is atomic for keys of one shard and per key otherwise; either way every key is set,
    # and a key listed twice keeps its last value, as in Redis.
    assert r.execute_command("MSET", a, "x", b, "y", a, "z") in (True, b"OK", "OK")
    assert r.mget(a, b) == [b"z", b"y"]
    assert r.mset({apart[0]: "p", apart[1]: "q"}) is True and r.mget(*apart) == [b"p", b"q"]
    # One atomic write holds about one largest value: past it MSETNX is refused naming the
    # limit, and MSET writes each key on its own.
    half = b"h" * (600 * 1024)
    assert "VALUE_BYTES_MAX" in error_of(lambda: r.msetnx({p + "big1": half, p + "big2": half}))
    assert r.exists(p + "big1", p + "big2") == 0
    assert r.mset({a: half, b: half}) is True
    assert r.get(a) == half and r.get(b) == half
    assert "wrong number of arguments" in error_of(lambda: r.execute_command("MSET", p + "a"))

    # EXPIRE, PEXPIRE, TTL, PTTL, PERSIST.
    assert r.ttl(p + "m3") == -1 and r.pttl(p + "m3") == -1
    assert r.expire(p + "m3", 100) is True and 0 < r.ttl(p + "m3") <= 100
    assert r.pexpire(p + "m3", 200000) is True and 100000 < r.pttl(p + "m3") <= 200000
    assert r.expire(p + "missing", 100) is False
    assert r.ttl(p + "missing") == -2 and r.pttl(p + "missing") == -2
    # NX/XX/GT/LT against a key with an expiry (about 200 s)...
    assert r.expire(p + "m3", 50, nx=True) is False and r.ttl(p + "m3") > 100
    assert r.expire(p + "m3", 300, xx=True) is True and 200 < r.ttl(p + "m3") <= 300
    assert r.expire(p + "m3", 100, gt=True) is False and r.ttl(p + "m3") > 200
    assert r.expire(p + "m3", 400, gt=True) is True and 300 < r.ttl(p + "m3") <= 400
    assert r.pexpire(p + "m3", 500000, lt=True) is False and r.ttl(p + "m3") <= 400
    assert r.expire(p + "m3", 150, xx=True, lt=True) is True and 0 < r.ttl(p + "m3") <= 150
    # ... then without one, which counts as expiring never.
    assert r.persist(p + "m3") is True and r.ttl(p + "m3") == -1
    assert r.persist(p + "m3") is False and r.persist(p + "missing") is False
    assert r.expire(p + "m3", 100, xx=True) is False and r.ttl(p + "m3") == -1
    assert r.expire(p + "m3", 100, gt=True) is False and r.ttl(p + "m3") == -1
    assert r.expire(p + "m3", 100, lt=True) is True and 0 < r.ttl(p + "m3") <= 100
    assert r.persist(p + "m3") is True
    assert r.expire(p + "m3", 100, nx=True) is True and 0 < r.ttl(p + "m3") <= 100
    assert r.expire(p + "missing", 100, nx=True) is False
    assert error_of(lambda: r.execute_command("EXPIRE", p + "m3", "10", "NX", "XX")) == \
        "NX and XX, GT or LT options at the same time are not compatible"
    assert error_of(lambda: r.execute_command("EXPIRE", p + "m3", "10", "GT", "LT")) == \
        "GT and LT options at the same time are not compatible"
    assert error_of(lambda: r.execute_command("EXPIRE", p + "m3", "10", "SOON")) == "Unsupported option SOON"
    assert r.get(p + "m3") == b"3"
    assert r.expire(p + "m3", -1, gt=True) is False and r.get(p + "m3") == b"3"
    assert r.expire(p + "m3", -1) is True and r.get(p + "m3") is None

    # INCR, DECR, INCRBY, DECRBY.
    assert r.incr(p + "n") == 1
    assert r.incrby(p + "n", 41) == 42
    assert r.decr(p + "n") == 41
    assert r.decrby(p + "n", 40) == 1
    assert r.get(p + "n") == b"1" and r.ttl(p + "n") == -1
    # The number keeps the key's expiry, as in Redis.
    assert r.set(p + "counter", "5", ex=100) is True
    assert r.incr(p + "counter") == 6 and 0 < r.ttl(p + "counter") <= 100
    assert r.set(p + "n", str(2**63 - 1)) is True
    assert "overflow" in error_of(lambda: r.incr(p + "n"))
    assert r.set(p + "text", "abc") is True
    assert error_of(lambda: r.incr(p + "text")) == "value is not an integer or out of range"
    assert error_of(lambda: r.incrby(p + "n", "x")) == "value is not an integer or out of range"

    # Pipelines: replies in order, and a read sees the writes sent before it.
    pipe = r.pipeline(transaction=False)
    for i in range(50):
        pipe.set(p + "pipe", str(i))
    pipe.get(p + "pipe")
    pipe.incr(p + "pipe")
    pipe.get(p + "pipe")
    results = pipe.execute()
    assert results[:50] == [True] * 50 and results[50:] == [b"49", 50, b"50"], results

    # SCAN: paging with COUNT finds every key once; MATCH filters; DBSIZE counts.
    for i in range(25):
        r.set(p + "scan:%02d" % i, "v")
    found = list(r.scan_iter(match=p + "scan:*", count=2))
    assert sorted(found) == sorted((p + "scan:%02d" % i).encode() for i in range(25)), found
    cursor, page = r.scan(0, count=3)
    assert len(page) <= 3 and cursor != 0
    assert error_of(lambda: r.execute_command("SCAN", "nope")) == "invalid cursor"
    size = r.dbsize()
    assert size >= 25
    keyspace = r.info("keyspace")
    assert keyspace["db0"]["keys"] == size, keyspace

    # The short TTL set earlier has long passed after this sleep.
    time.sleep(0.3)
    assert r.get(p + "short") is None
    r.close()

for protocol in (2, 3):
    check(protocol)
print("every check passed")
"#;

#[test]
fn resp_redis_py_serves_every_command() {
    let _slot = common::test_slot();
    let probe = Command::new("python3").args(["-c", "import redis"]).output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "redis-py is not installed for python3: this test needs it (pip install redis): {}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("python3 is not installed ({error}): this test needs it with redis-py"),
    }
    let root = tempfile::tempdir().unwrap();
    let server = Server::start_with(&root.path().join("data"), &["--resp-listen", LISTENER]);
    let port = server.listener_port(0);
    let output = Command::new("python3").args(["-c", SCRIPT, &port.to_string()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the redis-py checks failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "every check passed");
    drop(server);
}
