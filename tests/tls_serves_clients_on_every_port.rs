//! A real two-shard node with TLS on: the blocking, tokio and glommio clients and the CLI (trusting the
//! node's CA) put and get over the client and shard ports, redis-cli does over the RESP port; a
//! client that trusts another CA fails with an error that says so; a plaintext client and a
//! client that never finishes its handshake are closed while the others are served; and
//! `serve --check-config` names a missing file, bad PEM and a key that is not the
//! certificate's.

use crate::common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::tls::Authority;
use common::{free_port, Server, LISTENER};
use ringkv_client::blocking::Client;
use ringkv_client::{ClientOptions, TlsOptions};
use ringkv_wire::{Command as WireCommand, Request};

fn tls_client(port: u16, ca_file: &Path) -> Result<Client, ringkv_client::Error> {
    let options =
        ClientOptions { tls: Some(TlsOptions::from_ca_file(ca_file).unwrap()), ..ClientOptions::default() };
    Client::connect_with(("127.0.0.1", port), options)
}

fn cli(args: &[&str], ca_file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env("RINGKV_TLS_CA", ca_file)
        .stdin(Stdio::null())
        .output()
        .expect("running the ringkv binary")
}

/// Reads until the server closes the connection (or the guard deadline passes); whether it did.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn tls_serves_clients_on_every_port() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let authority = Authority::new(root.path(), "cluster");
    let identity = authority.issue(root.path(), "node");
    let stranger = Authority::new(root.path(), "stranger");
    let mut args = identity.serve_args();
    args.extend([
        "--resp-listen".to_string(),
        LISTENER.to_string(),
        "--frame-timeout-ms".to_string(),
        "2000".to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(&root.path().join("data"), &args);
    let resp_port = server.listener_port(0);

    // The blocking client, through the client port (it then routes to the shard ports).
    let mut client = tls_client(server.client_port, &identity.ca_file).unwrap();
    let version = client.put("fruit", "apple").unwrap();
    let stored = client.get("fruit").unwrap().expect("just written");
    assert_eq!((&stored.value[..], stored.version), (&b"apple"[..], version));
    for shard in 0..common::SHARDS as u32 {
        let mut direct = tls_client(server.shard_port(shard), &identity.ca_file).unwrap();
        assert_eq!(&direct.get("fruit").unwrap().expect("written above").value[..], b"apple");
    }

    // The tokio client.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let options = ClientOptions {
            tls: Some(TlsOptions::from_ca_file(&identity.ca_file).unwrap()),
            ..Default::default()
        };
        let client = ringkv_client::tokio::Client::connect_with(("127.0.0.1", server.client_port), options)
            .await
            .unwrap();
        client.put("vegetable", "leek").await.unwrap();
        assert_eq!(&client.get("vegetable").await.unwrap().expect("just written").value[..], b"leek");
    });

    // The glommio client, with many requests pipelined on each TLS connection.
    let port = server.client_port;
    let ca_file = identity.ca_file.clone();
    let executor = glommio::LocalExecutorBuilder::default()
        .name("tls-client-test")
        .spawn(move || async move {
            let options = ClientOptions {
                tls: Some(TlsOptions::from_ca_file(&ca_file).unwrap()),
                ..Default::default()
            };
            let client =
                ringkv_client::glommio::Client::connect_with(("127.0.0.1", port), options).await.unwrap();
            let tasks: Vec<_> = (0..200)
                .map(|index| {
                    let client = client.clone();
                    glommio::spawn_local(async move {
                        let key = format!("glommio-{index}");
                        client.put(&key, &key).await.unwrap();
                        assert_eq!(
                            client.get(&key).await.unwrap().expect("just written").value,
                            key.as_bytes()
                        );
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        })
        .unwrap();
    executor.join().unwrap();

    // The CLI, with the CA from RINGKV_TLS_CA.
    let address = format!("127.0.0.1:{}", server.client_port);
    let put = cli(&["put", "colour", "green", "--addr", &address], &identity.ca_file);
    assert!(put.status.success(), "ringkv put failed: {}", String::from_utf8_lossy(&put.stderr));
    let get = cli(&["get", "colour", "--addr", &address], &identity.ca_file);
    assert!(get.status.success(), "ringkv get failed: {}", String::from_utf8_lossy(&get.stderr));
    assert_eq!(get.stdout, b"green");
    let get = cli(&["get", "fruit", "--addr", &address, "--tls-server-name", "localhost"], &identity.ca_file);
    assert_eq!(get.stdout, b"apple", "{}", String::from_utf8_lossy(&get.stderr));

    // A client that trusts another CA is refused with an error that says why, and is not
    // retried as if the node were down.
    let error =
        tls_client(server.client_port, &stranger.cert_file).err().expect("the node's CA is not trusted");
    let message = format!("{error:#}");
    assert!(
        matches!(error, ringkv_client::Error::Connect { attempts: 1, .. })
            && message.contains("TLS handshake failed"),
        "{message}"
    );
    assert!(message.contains("certificate"), "{message}");
    let refused = cli(&["get", "fruit", "--addr", &address], &stranger.cert_file);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("TLS handshake failed") && stderr.contains("certificate"), "{stderr}");
    // A name the certificate does not carry fails too.
    let wrong_name =
        cli(&["get", "fruit", "--addr", &address, "--tls-server-name", "elsewhere"], &identity.ca_file);
    assert_eq!(wrong_name.status.code(), Some(2), "{}", String::from_utf8_lossy(&wrong_name.stdout));

    // A plaintext client is closed; a client that connects and sends nothing is closed once the
    // handshake outlives the frame timeout. The TLS client is served meanwhile.
    let mut silent = TcpStream::connect((Ipv4Addr::LOCALHOST, server.client_port)).unwrap();
    let mut plain = common::Client::connect(server.client_port);
    plain.send(&Request { consistency: None, id: 1, command: WireCommand::Ping });
    assert!(closed_by_server(&mut plain.stream().try_clone().unwrap()), "a plaintext client was not closed");
    client.put("fruit", "pear").unwrap();
    assert_eq!(&client.get("fruit").unwrap().expect("written").value[..], b"pear");
    assert!(closed_by_server(&mut silent), "a client that never handshakes was not closed");
    assert_eq!(&client.get("fruit").unwrap().expect("written").value[..], b"pear");

    // redis-cli over TLS on the RESP port.
    let mut redis_cli = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &resp_port.to_string(), "--tls", "--cacert"])
        .arg(&identity.ca_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting redis-cli (apt-get install -y redis-tools)");
    redis_cli.stdin.take().unwrap().write_all(b"SET city paris\nGET city\nGET fruit\n").unwrap();
    let output = redis_cli.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["OK", "paris", "pear"],
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Plaintext redis-cli gets nothing from the TLS port.
    let plaintext = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &resp_port.to_string(), "GET", "city"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plaintext.stdout).contains("paris"));
    assert_eq!(&client.get("city").unwrap().expect("written through RESP").value[..], b"paris");
}

#[test]
fn check_config_names_what_is_wrong_with_the_tls_files() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let authority = Authority::new(root.path(), "cluster");
    let identity = authority.issue(root.path(), "node");
    let other = authority.issue(root.path(), "other");
    let garbage = root.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let data_dir = root.path().join("data");
    let check = |tls: &[&Path]| {
        let mut args = common::serve_args(&data_dir, free_port());
        for (flag, path) in ["--tls-cert-file", "--tls-key-file", "--tls-ca-file"].iter().zip(tls) {
            args.extend([flag.to_string(), path.display().to_string()]);
        }
        args.push("--check-config".to_string());
        common::run_to_exit(&args)
    };

    let (status, output) = check(&[&identity.cert_file, &identity.key_file, &identity.ca_file]);
    assert!(status.success(), "{output}");

    let missing = root.path().join("missing.pem");
    let (status, output) = check(&[&missing, &identity.key_file, &identity.ca_file]);
    assert!(!status.success());
    assert!(output.contains("tls_cert_file") && output.contains("missing.pem"), "{output}");

    let (status, output) = check(&[&identity.cert_file, &garbage, &identity.ca_file]);
    assert!(!status.success());
    assert!(output.contains("tls_key_file") && output.contains("no PEM private key"), "{output}");

    let (status, output) = check(&[&identity.cert_file, &identity.key_file, &garbage]);
    assert!(!status.success());
    assert!(output.contains("tls_ca_file") && output.contains("no PEM certificate"), "{output}");

    let (status, output) = check(&[&identity.cert_file, &other.key_file, &identity.ca_file]);
    assert!(!status.success());
    assert!(output.contains("does not match the certificate"), "{output}");

    let (status, output) = check(&[&identity.cert_file, &identity.key_file]);
    assert!(!status.success());
    assert!(output.contains("tls_ca_file together"), "{output}");
}

#[test]
fn tls_client_certificates_are_required_when_configured() {
    let _slot = common::test_slot();
    let root = tempfile::tempdir().unwrap();
    let authority = Authority::new(root.path(), "cluster");
    let identity = authority.issue(root.path(), "node");
    let clients = Authority::new(root.path(), "clients");
    let client_identity = clients.issue(root.path(), "app");
    let mut args = identity.serve_args();
    args.extend(["--tls-client-ca-file".to_string(), clients.cert_file.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(&root.path().join("data"), &args);

    // Without a certificate the node ends the connection once the handshake is over.
    let anonymous =
        tls_client(server.client_port, &identity.ca_file).and_then(|mut client| client.put("k", "v"));
    assert!(anonymous.is_err(), "a client without a certificate was served");

    let tls = TlsOptions::from_ca_file_with_client_certificate(
        &identity.ca_file,
        &client_identity.cert_file,
        &client_identity.key_file,
    )
    .unwrap();
    let options = ClientOptions { tls: Some(tls), ..ClientOptions::default() };
    let mut client = Client::connect_with(("127.0.0.1", server.client_port), options).unwrap();
    let version = client.put("k", "v").unwrap();
    assert_eq!(client.get("k").unwrap().expect("just written").version, version);
}
