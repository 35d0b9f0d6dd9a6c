//! The tokio adapter: [`Client`], an [`AsyncClient`] whose connections run as tokio tasks.
//!
//! Needs a tokio runtime with I/O and timers enabled (`enable_all`). The client is `Clone`
//! and `Send`; share it between tasks and their requests pipeline on each shard's connection.
//!
//! ```no_run
//! use ringkv_client::tokio::Client;
//!
//! async fn run() -> Result<(), ringkv_client::Error> {
//!     let client = Client::connect("127.0.0.1:7379").await?;
//!     client.put("greeting", "hello").await?;
//!     // Many requests in flight on one connection per shard.
//!     let reads = (0..100).map(|_| {
//!         let client = client.clone();
//!         tokio::spawn(async move { client.get("greeting").await })
//!     });
//!     for read in reads {
//!         let value = read.await.expect("task")?.expect("written above");
//!         assert_eq!(&value.value[..], b"hello");
//!     }
//!     Ok(())
//! }
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! runtime.block_on(run()).unwrap();
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::TcpStream;

use crate::asynchronous::{sealed, AsyncClient, SharedConnection, Transport};
use crate::options::ClientOptions;

/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A shard-aware ringkv client on tokio; every method is on [`AsyncClient`].
pub type Client = AsyncClient<Tokio>;

/// The tokio runtime, as a [`Transport`].
#[derive(Debug)]
pub enum Tokio {}

impl sealed::Sealed for Tokio {}

impl Transport for Tokio {
    async fn open(address: SocketAddr, options: &ClientOptions) -> std::io::Result<Arc<SharedConnection>> {
        let stream = ::tokio::time::timeout(options.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let shared = SharedConnection::new(address, options);
        match &options.tls {
            None => spawn_io(stream, &shared),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config());
                let handshake = connector.connect(tls.server_name(address), stream);
                let stream = ::tokio::time::timeout(options.connect_timeout, handshake)
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })?
                    .map_err(crate::tls::explain)?;
                spawn_io(stream, &shared);
            }
        }
        ::tokio::spawn(Arc::clone(&shared).expire_overdue(::tokio::time::sleep));
        Ok(shared)
    }

    async fn sleep(duration: Duration) {
        if !duration.is_zero() {
            ::tokio::time::sleep(duration).await;
        }
    }

    async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
        ::tokio::time::timeout(duration, future).await.ok()
    }
}

/// Runs a connection's reader and writer tasks over `stream`, plaintext or TLS.
fn spawn_io<S>(stream: S, shared: &Arc<SharedConnection>)
where
    S: ::tokio::io::AsyncRead + ::tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = ::tokio::io::split(stream);
    let reading = Arc::clone(shared);
    ::tokio::spawn(async move {
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => break reading.close("closed by the server"),
                Ok(read) => reading.on_received(&chunk[..read]),
                Err(error) => break reading.close(&error.to_string()),
            }
            if reading.is_closed() {
                break;
            }
        }
    });
    let writing = Arc::clone(shared);
    ::tokio::spawn(async move {
        while let Some(bytes) = writing.next_output().await {
            // The flush matters with TLS: rustls may hold part of the records until it.
            if let Err(error) = async {
                writer.write_all(&bytes).await?;
                writer.flush().await
            }
            .await
            {
                writing.close(&error.to_string());
            }
        }
        // Closing our side lets the server close its side, which ends the reader task.
        let _ = writer.shutdown().await;
    });
}
