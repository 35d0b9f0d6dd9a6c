//! Reads through the poller arrive whole and in order, busy or idle, however the data is paced;
//! the poller's task ends with its last stream and starts again with the next.

use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::LocalExecutorBuilder;

use super::{PolledStream, Poller, RECEIVES};

fn on_executor<F: std::future::Future<Output = ()> + 'static>(make: impl FnOnce() -> F + Send + 'static) {
    LocalExecutorBuilder::default().spawn(make).expect("executor").join().expect("test body");
}

/// A connected pair: the polled end and the plain end the test writes from.
async fn pair() -> (PolledStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let connecting = glommio::spawn_local(async move { TcpStream::connect(address).await.expect("connect") });
    let accepted = listener.accept().await.expect("accept");
    let connected = connecting.await;
    (PolledStream::new(connected), accepted)
}

/// The bytes `count` messages of `size` make, each byte naming its place.
fn message(index: usize, size: usize) -> Vec<u8> {
    (0..size).map(|offset| (index * 31 + offset) as u8).collect()
}

/// Writes `count` messages with pauses of 0 to `pause_us_max` between them, while the reader
/// takes them in; every byte arrives, in order, and the end of the stream is seen.
async fn paced_stream(count: usize, size: usize, pause_us_max: u64) {
    let (mut polled, mut plain) = pair().await;
    let writer = glommio::spawn_local(async move {
        for index in 0..count {
            plain.write_all(&message(index, size)).await.expect("write");
            let pause = (index as u64 * 7919) % (pause_us_max + 1);
            if pause > 0 {
                glommio::timer::sleep(Duration::from_micros(pause)).await;
            }
        }
        plain.close().await.expect("close");
    });
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let read = polled.read(&mut chunk).await.expect("read");
        if read == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..read]);
    }
    writer.await;
    let expected: Vec<u8> = (0..count).flat_map(|index| message(index, size)).collect();
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "the bytes arrived changed or out of order");
}

#[test]
fn bytes_arrive_whole_when_the_writer_never_pauses() {
    on_executor(|| paced_stream(2_000, 100, 0));
}

#[test]
fn bytes_arrive_whole_when_the_writer_pauses_long_enough_for_the_thread_to_idle() {
    // Pauses up to 2 ms: far longer than the quiet turns that make the thread idle, so reads
    // come in both through the set and through glommio.
    on_executor(|| async {
        paced_stream(300, 100, 2_000).await;
        let stats = Poller::thread_stats();
        assert!(stats.asks > 0, "the set was never asked: {stats:?}");
        assert!(stats.idle_spells > 0, "the thread never idled: {stats:?}");
        assert!(stats.reads_through_glommio > 0, "no read came through glommio: {stats:?}");
    });
}

/// Request and answer over many connections at once: each of them echoes through a plain
/// stream, so every read waits on data the other side sends only after the last read.
#[test]
fn many_connections_each_see_every_answer() {
    on_executor(|| async {
        let mut tasks = Vec::new();
        for connection in 0..16usize {
            tasks.push(glommio::spawn_local(async move {
                let (mut polled, plain) = pair().await;
                let echo = glommio::spawn_local(async move {
                    let (mut reader, mut writer) = futures_lite::io::split(plain);
                    let mut buffer = vec![0u8; 256];
                    loop {
                        let read = reader.read(&mut buffer).await.expect("echo read");
                        if read == 0 {
                            break;
                        }
                        writer.write_all(&buffer[..read]).await.expect("echo write");
                    }
                });
                for round in 0..200usize {
                    let sent = message(connection * 1_000 + round, 64);
                    polled.write_all(&sent).await.expect("send");
                    let mut answer = vec![0u8; sent.len()];
                    polled.read_exact(&mut answer).await.expect("answer");
                    assert_eq!(answer, sent);
                }
                polled.close().await.expect("close");
                drop(polled);
                echo.await;
            }));
        }
        for task in tasks {
            task.await;
        }
        let stats = Poller::thread_stats();
        assert!(stats.asks > 0, "the set was never asked: {stats:?}");
    });
}

#[test]
fn the_poller_ends_with_its_last_stream_and_starts_again_with_the_next() {
    on_executor(|| async {
        for _ in 0..3 {
            let (mut polled, mut plain) = pair().await;
            assert!(Poller::is_running());
            plain.write_all(b"ping").await.expect("write");
            let mut buffer = [0u8; 4];
            polled.read_exact(&mut buffer).await.expect("read");
            assert_eq!(&buffer, b"ping");
            drop(polled);
            drop(plain);
            // The task notices at its next turn (at most an interval, or at once if idle).
            let mut turns = 0;
            while Poller::is_running() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
                turns += 1;
                assert!(turns < 10_000, "the poller kept running with nothing registered");
            }
        }
    });
}

#[test]
fn a_closed_peer_ends_the_stream_busy_or_idle() {
    on_executor(|| async {
        for pause_ms in [0, 5] {
            let (mut polled, plain) = pair().await;
            let closer = glommio::spawn_local(async move {
                if pause_ms > 0 {
                    glommio::timer::sleep(Duration::from_millis(pause_ms)).await;
                }
                drop(plain);
            });
            let mut buffer = [0u8; 16];
            assert_eq!(polled.read(&mut buffer).await.expect("read"), 0);
            closer.await;
        }
    });
}

/// Many readers wait while the thread idles (so each moves to glommio's poll), then data comes
/// to all of them at once, several times over: every reader gets its bytes each time.
#[test]
fn readers_waiting_through_an_idle_spell_all_get_their_data() {
    on_executor(|| async {
        let mut polled = Vec::new();
        let mut plain = Vec::new();
        for _ in 0..64 {
            let (reader, writer) = pair().await;
            polled.push(reader);
            plain.push(writer);
        }
        let readers: Vec<_> = polled
            .into_iter()
            .enumerate()
            .map(|(index, mut reader)| {
                glommio::spawn_local(async move {
                    for round in 0..5usize {
                        let mut buffer = [0u8; 8];
                        reader.read_exact(&mut buffer).await.expect("read");
                        assert_eq!(buffer, ((index * 100 + round) as u64).to_le_bytes());
                    }
                })
            })
            .collect();
        for round in 0..5usize {
            // Long enough for the quiet asks to run out.
            glommio::timer::sleep(Duration::from_millis(3)).await;
            for (index, writer) in plain.iter_mut().enumerate() {
                writer.write_all(&((index * 100 + round) as u64).to_le_bytes()).await.expect("write");
            }
        }
        for reader in readers {
            reader.await;
        }
        let stats = Poller::thread_stats();
        assert!(stats.idle_spells >= 1, "the thread never idled: {stats:?}");
        drop(plain);
    });
}

/// While the thread idles, each message is read by glommio's read alone: no read of the
/// socket's own before it, and the poll glommio arms after a read that emptied the socket
/// serves as the wait, so no second read finds it empty either.
#[test]
fn an_idle_thread_reads_each_message_through_glommio_alone() {
    on_executor(|| async {
        let (mut polled, mut plain) = pair().await;
        // Let the poller's quiet asks run out, so the thread idles before the first message.
        glommio::timer::sleep(Duration::from_millis(5)).await;
        let before = RECEIVES.with(|receives| receives.get());
        let stats_before = Poller::thread_stats();
        let writer = glommio::spawn_local(async move {
            for index in 0..20 {
                glommio::timer::sleep(Duration::from_millis(3)).await;
                plain.write_all(&message(index, 100)).await.expect("write");
            }
            plain
        });
        for index in 0..20 {
            let mut received = vec![0u8; 100];
            polled.read_exact(&mut received).await.expect("read");
            assert_eq!(received, message(index, 100));
        }
        drop(writer.await);
        let receives = RECEIVES.with(|receives| receives.get()) - before;
        let stats = Poller::thread_stats();
        let through_glommio = stats.reads_through_glommio - stats_before.reads_through_glommio;
        assert!(through_glommio >= 20, "{through_glommio} reads through glommio for 20 messages: {stats:?}");
        // A busy spell could bring the poller back for a moment; the test's thread hardly runs,
        // so nearly every read must bypass the crate's own `recv`.
        assert!(receives <= 4, "{receives} reads of the crate's own while the thread idled");
    });
}
