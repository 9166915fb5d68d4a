//! MLLP framing (start block 0x0B, message, end block 0x1C 0x0D) over TCP: many messages per
//! connection, one acknowledgement per message, many connections at once.
//!
//! A frame larger than the limit is refused with an acknowledgement and the connection closed,
//! since what follows it cannot be resynchronised reliably; so is a connection that sends bytes
//! outside a frame. A connection silent for longer than the read timeout is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::message::MAX_MESSAGE;

pub const START_BLOCK: u8 = 0x0B;
pub const END_BLOCK: [u8; 2] = [0x1C, 0x0D];

/// Bounds on what one connection may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest message in a frame, in bytes.
    pub max_frame: usize,
    /// How long a connection may stay silent, between or within frames.
    pub read_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: MAX_MESSAGE,
            read_timeout: Duration::from_secs(300),
            max_connections: 64,
        }
    }
}

/// `data` in an MLLP frame.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(data);
    out.extend_from_slice(&END_BLOCK);
    out
}

/// What reading a frame found instead of a message.
#[derive(Debug)]
pub enum FrameError {
    /// The frame grew past the limit; the prefix read so far is kept (for the acknowledgement).
    Oversize(Vec<u8>),
    /// Bytes outside a frame.
    Garbage,
    /// The peer closed inside a frame, or stayed silent too long.
    Truncated,
    TimedOut,
    Io(std::io::Error),
}

/// Reads frames from one stream, keeping what arrives after a frame for the next.
pub struct FrameReader<R> {
    stream: R,
    buf: Vec<u8>,
    limits: Limits,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R, limits: Limits) -> Self {
        FrameReader {
            stream,
            buf: Vec::new(),
            limits,
        }
    }

    /// The next message, or `None` when the peer closed between frames.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut scanned = 1;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            // Line breaks between frames are tolerated.
            let lead = self
                .buf
                .iter()
                .position(|b| !matches!(b, b'\r' | b'\n'))
                .unwrap_or(self.buf.len());
            if lead > 0 {
                self.buf.drain(..lead);
                scanned = 1;
            }
            if let Some(&first) = self.buf.first() {
                if first != START_BLOCK {
                    return Err(FrameError::Garbage);
                }
                let from = scanned.max(1).min(self.buf.len());
                if let Some(at) = self.buf[from..]
                    .windows(2)
                    .position(|w| w == END_BLOCK)
                    .map(|p| p + from)
                {
                    if at - 1 > self.limits.max_frame {
                        let prefix = self.buf[1..at.min(4096)].to_vec();
                        self.buf.clear();
                        return Err(FrameError::Oversize(prefix));
                    }
                    let message = self.buf[1..at].to_vec();
                    self.buf.drain(..at + 2);
                    return Ok(Some(message));
                }
                scanned = self.buf.len().saturating_sub(1).max(1);
                if self.buf.len() > self.limits.max_frame + 3 {
                    let prefix = self.buf[1..self.buf.len().min(4096)].to_vec();
                    self.buf.clear();
                    return Err(FrameError::Oversize(prefix));
                }
            }
            let n =
                match tokio::time::timeout(self.limits.read_timeout, self.stream.read(&mut chunk))
                    .await
                {
                    Err(_) => return Err(FrameError::TimedOut),
                    Ok(Err(e)) => return Err(FrameError::Io(e)),
                    Ok(Ok(n)) => n,
                };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What the listener asks of the application: an acknowledgement for each message, and one for
/// a frame too large to read.
pub trait Responder: Send + Sync + 'static {
    fn respond(&self, message: Vec<u8>, peer: SocketAddr) -> impl Future<Output = Vec<u8>> + Send;
    fn oversize(&self, prefix: &[u8]) -> Vec<u8>;
}

/// Accepts connections on `listener` until `shutdown` resolves, each served by its own task.
pub async fn serve<A: Responder>(
    listener: TcpListener,
    limits: Limits,
    app: Arc<A>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, and keep serving.
                    tracing::warn!("MLLP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        tokio::spawn(async move {
            connection(stream, peer, limits, app).await;
            drop(permit);
        });
    }
}

async fn connection<A: Responder>(
    stream: TcpStream,
    peer: SocketAddr,
    limits: Limits,
    app: Arc<A>,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut frames = FrameReader::new(read, limits);
    loop {
        let reply = match frames.next().await {
            Ok(Some(message)) => app.respond(message, peer).await,
            Ok(None) => return,
            Err(FrameError::Oversize(prefix)) => {
                tracing::warn!(
                    limit = limits.max_frame,
                    "MLLP frame too large; closing the connection"
                );
                let ack = app.oversize(&prefix);
                let _ = write.write_all(&frame(&ack)).await;
                let _ = write.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::debug!("MLLP connection closed: {e:?}");
                return;
            }
        };
        if write.write_all(&frame(&reply)).await.is_err() {
            return;
        }
    }
}
