//! The glommio adapter: [`Client`], an [`AsyncClient`] whose connections run as tasks on the
//! current glommio executor. Create one client per executor (per core): the connection tasks
//! belong to the executor that opened them.
//!
//! ```no_run
//! use glommio::LocalExecutorBuilder;
//! use ringkv_client::glommio::Client;
//!
//! let executor = LocalExecutorBuilder::default().spawn(|| async move {
//!     let client = Client::connect("127.0.0.1:7379").await?;
//!     client.put("greeting", "hello").await?;
//!     let stored = client.get("greeting").await?.expect("just written");
//!     assert_eq!(&stored.value[..], b"hello");
//!     Ok::<(), ringkv_client::Error>(())
//! });
//! executor.unwrap().join().unwrap().unwrap();
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::glommio::net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::asynchronous::{sealed, AsyncClient, SharedConnection, Transport};
use crate::options::ClientOptions;

/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A shard-aware ringkv client on glommio; every method is on [`AsyncClient`].
pub type Client = AsyncClient<Glommio>;

/// The glommio runtime, as a [`Transport`].
#[derive(Debug)]
pub enum Glommio {}

impl sealed::Sealed for Glommio {}

impl Transport for Glommio {
    async fn open(address: SocketAddr, options: &ClientOptions) -> std::io::Result<Arc<SharedConnection>> {
        let stream = TcpStream::connect_timeout(address, options.connect_timeout).await?;
        // Requests are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let shared = SharedConnection::new(address, options);
        // Read through the executor's epoll set while it is busy (see `ringkv_readiness`).
        match &options.tls {
            None => spawn_io(ringkv_readiness::PolledStream::new(stream), &shared),
            Some(tls) => {
                let connector = futures_rustls::TlsConnector::from(tls.config());
                let handshake =
                    connector.connect(tls.server_name(address), ringkv_readiness::PolledStream::new(stream));
                let stream = ::glommio::timer::timeout(options.connect_timeout, async {
                    Ok(handshake.await.map_err(crate::tls::explain))
                })
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
                spawn_io(stream, &shared);
            }
        }
        ::glommio::spawn_local(Arc::clone(&shared).expire_overdue(::glommio::timer::sleep)).detach();
        Ok(shared)
    }

    async fn sleep(duration: Duration) {
        if !duration.is_zero() {
            ::glommio::timer::sleep(duration).await;
        }
    }

    async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
        ::glommio::timer::timeout(duration, async move { Ok(future.await) }).await.ok()
    }
}

/// Runs a connection's reader and writer tasks over `stream`, plaintext or TLS.
fn spawn_io<S>(stream: S, shared: &Arc<SharedConnection>)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
{
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let reading = Arc::clone(shared);
    ::glommio::spawn_local(async move {
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
            // Let the callers just woken run (and send their next requests) before reading
            // again: a read that finds data returns without yielding.
            futures_lite::future::yield_now().await;
        }
    })
    .detach();
    let writing = Arc::clone(shared);
    ::glommio::spawn_local(async move {
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
        let _ = writer.close().await;
    })
    .detach();
}
