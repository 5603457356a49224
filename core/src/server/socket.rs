//! Every accepted socket, before hyper or tungstenite sees it: a slot under `sockets_max`, the
//! HTTP phase's request deadline (`http_request_timeout_ms`), and write coalescing.
//!
//! The hub bounds WebSocket connections from `hello` on (`connections_max`, `hello_timeout_ms`).
//! Before that, a socket is only an HTTP connection, which hyper, as axum serves it, keeps
//! open for as long as the peer likes: it has no timer, so its `header_read_timeout` is off.
//! A peer that opens sockets and sends nothing, or sends a request one byte at a time
//! (slowloris), would hold a task, a buffer and a file descriptor each, without limit, until
//! the process runs out of descriptors and stops accepting anyone. Here every socket takes a
//! slot (one more than `sockets_max` is closed at once and counted), and a socket still
//! speaking HTTP is closed when no request begins within `http_request_timeout_ms` of its
//! accept or of its previous response, or when a request that began is not answered within
//! that long. Both are the same code on tokio TCP and on turmoil TCP.

use super::Shared;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes a [`CoalescingIo`] gathers before it writes them out without waiting for a flush:
/// bounds the transient buffer of a connection that is being written (a full batch of the
/// connection task's 64 transmits of typical event frames is ~20 KiB, so at most a few
/// syscalls per batch). A single write at least this large is passed straight through, never
/// copied.
const WRITE_COALESCE_BYTES_MAX: usize = 16 * 1024;
/// The first allocation of a [`CoalescingIo`] buffer (one typical batch of a single event frame
/// fits): small enough for glibc's per-thread cache, unlike `WRITE_COALESCE_BYTES_MAX`.
const WRITE_COALESCE_FIRST_BYTES: usize = 1024;

/// For `tap_io` on a tokio TCP listener (`axum::serve::ListenerExt`), as the `herald` binary
/// serves: event frames are small, and Nagle's algorithm would hold each one back until the
/// previous one is acknowledged, which a client's delayed ACK makes up to 40 ms (200 ms on some
/// systems). The connection task already writes a batch of ready frames as one write.
pub fn disable_nagle(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY on an accepted socket");
    }
}

/// Wraps a listener so that every accepted connection is a [`Socket`], and refuses the ones
/// beyond `sockets_max`. `Server::serve` uses it for every listener (tokio TCP in production,
/// turmoil TCP in the simulation); an application that serves `Server::router` inside its own
/// axum app gets one from `Server::guard_listener`.
pub struct SocketListener<L> {
    inner: L,
    shared: Arc<Shared>,
    /// When the last refusal was logged: a flood of refusals logs one warning per
    /// `REFUSAL_LOG_INTERVAL`, not one per socket (the metric counts each).
    refusal_logged_at: Option<Instant>,
}

/// At most one "refusing sockets" warning per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl<L> SocketListener<L> {
    pub(super) fn new(inner: L, shared: Arc<Shared>) -> Self {
        SocketListener {
            inner,
            shared,
            refusal_logged_at: None,
        }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for SocketListener<L> {
    type Io = Socket<L::Io>;
    type Addr = L::Addr;

    /// At `sockets_max`, an accepted socket is closed at once (the peer sees the connection end
    /// before any response) and counted in `herald_sockets_refused_total`; accepting goes on,
    /// so a socket that closes makes room for the next.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            let max = self.shared.config.sockets_max;
            if self.shared.metrics.try_open_socket(max) {
                return (Socket::new(io, self.shared.clone()), addr);
            }
            drop(io);
            let now = Instant::now();
            if self
                .refusal_logged_at
                .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL)
            {
                self.refusal_logged_at = Some(now);
                tracing::warn!(
                    sockets_max = max,
                    refused_total = self.shared.metrics.sockets_refused(),
                    "refusing sockets: sockets_max are open"
                );
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// One accepted socket: it holds a slot under `sockets_max` until it is dropped, and while it
/// still speaks HTTP it enforces `http_request_timeout_ms` on its reads. Writes go through
/// `CoalescingIo`. Once upgraded to WebSocket, the deadline is dropped (the connection task
/// has its own timeouts), so an idle WebSocket keeps no timer here.
pub struct Socket<S: AsyncWrite + Unpin> {
    io: CoalescingIo<S>,
    /// While the socket speaks HTTP: when it is closed unless a request begins (if one is
    /// awaited) or is answered. `None` once upgraded.
    request_deadline: Option<Pin<Box<RequestDeadline>>>,
    /// No byte of the next request has arrived since the last response (or since accept).
    awaiting_request: bool,
    /// The deadline passed: counted once, and every read from now on fails.
    timed_out: bool,
    /// Gives the slot back when the socket is dropped.
    shared: Arc<Shared>,
}

pin_project_lite::pin_project! {
    /// The HTTP phase's deadline. Moving it is a plain store (`at`), because a busy keep-alive
    /// moves it twice per request; the timer (`sleep`) only follows when it fires early.
    struct RequestDeadline {
        at: Instant,
        #[pin]
        sleep: Sleep,
    }
}

impl RequestDeadline {
    /// Ready once `at` has passed. A timer that fires before `at` (the deadline moved on since
    /// it was set) is set again for `at`.
    fn poll_passed(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            if Instant::now() >= *this.at {
                return Poll::Ready(());
            }
            let at = *this.at;
            this.sleep.as_mut().reset(at);
        }
    }
}

impl<S: AsyncWrite + Unpin> Socket<S> {
    fn new(io: S, shared: Arc<Shared>) -> Self {
        let at = Instant::now() + request_timeout(&shared);
        Socket {
            io: CoalescingIo::new(io),
            request_deadline: Some(Box::pin(RequestDeadline {
                at,
                sleep: tokio::time::sleep_until(at),
            })),
            awaiting_request: true,
            timed_out: false,
            shared,
        }
    }

    /// Moves the deadline to `http_request_timeout_ms` from now, or drops it once upgraded.
    fn rearm(&mut self) {
        if !self.io.in_http_phase() {
            self.request_deadline = None;
            return;
        }
        let at = Instant::now() + request_timeout(&self.shared);
        if let Some(deadline) = self.request_deadline.as_mut() {
            *deadline.as_mut().project().at = at;
        }
    }

    /// Whether the HTTP phase's deadline has passed (counted once). Polled by reads, and by
    /// writes that cannot go on: a peer that pipelines requests and never reads the responses
    /// stalls hyper in a write, and no read would ever come to see the deadline.
    fn deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.request_deadline.as_mut() else {
            return false;
        };
        if deadline.as_mut().poll_passed(cx).is_pending() {
            return false;
        }
        if !self.timed_out {
            self.timed_out = true;
            self.shared.metrics.record_http_request_timeout();
        }
        true
    }

    /// Turns a write that cannot go on into the request timeout once the deadline has passed.
    fn check_stalled_write<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_pending() && self.deadline_passed(cx) {
            return Poll::Ready(Err(request_timed_out()));
        }
        poll
    }

    /// After a write: a response went out (a new deadline for the next request to begin), or
    /// the `101` did (no deadline from now on).
    fn after_write(&mut self, written: usize) {
        if written > 0 && self.request_deadline.is_some() {
            self.awaiting_request = true;
            self.rearm();
        }
    }
}

fn request_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no complete HTTP request within http_request_timeout_ms",
    )
}

fn request_timeout(shared: &Shared) -> Duration {
    Duration::from_millis(shared.config.http_request_timeout_ms)
}

impl<S: AsyncWrite + Unpin> Drop for Socket<S> {
    fn drop(&mut self) {
        self.shared.metrics.close_socket();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Socket<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.request_deadline.is_none() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        if this.deadline_passed(cx) {
            return Poll::Ready(Err(request_timed_out()));
        }
        let filled = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.awaiting_request && matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > filled {
            // The next request began: it has a whole timeout to be answered in.
            this.awaiting_request = false;
            this.rearm();
        }
        read
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Socket<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        let written = ready!(self.check_stalled_write(cx, poll))?;
        self.after_write(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        let written = ready!(self.check_stalled_write(cx, poll))?;
        self.after_write(written);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.check_stalled_write(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check_stalled_write(cx, poll)
    }
}

/// A socket whose writes are gathered until the next `flush` (or until
/// `WRITE_COALESCE_BYTES_MAX` bytes are pending), then written with one syscall. The buffer is
/// allocated by the first write after a flush and freed once it has been written out, so an
/// idle connection holds no write buffer (an empty `Vec`). Every writer on a server socket
/// flushes when it is done — hyper after each response, tungstenite in `flush` and when it
/// answers pings or closes, our connection task after every batch — so nothing waits here
/// beyond the end of its batch.
///
/// While the socket still speaks HTTP/1 (until it writes `101 Switching Protocols`), hyper's
/// flush after a response is *owed* rather than performed when the last read brought bytes
/// (more pipelined requests may be in hyper's buffer), and paid as soon as a read finds nothing
/// more to read (or at the bound, at shutdown, at drop). A publisher that pipelines requests
/// thus gets its responses in one write per batch. A flush that comes after a read already
/// found nothing writes at once: hyper may not read again before the peer sends more (a GET,
/// or a refusal sent without reading the body, is answered after hyper's last read), and a
/// peer waiting for that answer would otherwise wait for the request timeout. Once upgraded,
/// every flush writes.
pub(crate) struct CoalescingIo<S: AsyncWrite + Unpin> {
    inner: S,
    /// Bytes accepted but not yet written to `inner`; `pending[written..]` is still to go.
    pending: Vec<u8>,
    written: usize,
    /// HTTP/1 phase: flushes are deferred to the next read that would block.
    defer_flush: bool,
    /// A flush was requested and deferred; `pending` must go out at the next idle read.
    flush_owed: bool,
    /// The last read of `inner` found nothing: the peer is waiting for answers, and no read may
    /// come to pay a deferred flush, so flushes write at once.
    read_idle: bool,
}

/// The status line hyper writes when a WebSocket upgrade succeeds; from then on the socket
/// carries WebSocket frames and every flush writes through.
const UPGRADE_STATUS_LINE: &[u8] = b"HTTP/1.1 101 ";

impl<S: AsyncWrite + Unpin> CoalescingIo<S> {
    pub(super) fn new(inner: S) -> Self {
        CoalescingIo {
            inner,
            pending: Vec::new(),
            written: 0,
            defer_flush: true,
            flush_owed: false,
            read_idle: false,
        }
    }

    /// True until the socket wrote its `101 Switching Protocols`: it still speaks HTTP/1.
    fn in_http_phase(&self) -> bool {
        self.defer_flush
    }

    fn note_upgrade(&mut self, bytes: &[u8]) {
        if self.defer_flush && bytes.starts_with(UPGRADE_STATUS_LINE) {
            self.defer_flush = false;
        }
    }

    fn pending_len(&self) -> usize {
        self.pending.len() - self.written
    }

    /// Takes `bytes` into the buffer if they fit under `WRITE_COALESCE_BYTES_MAX`.
    fn gather(&mut self, bytes: &[u8]) -> bool {
        if self.pending.len() + bytes.len() > WRITE_COALESCE_BYTES_MAX {
            return false;
        }
        if self.pending.capacity() == 0 {
            // Most batches are one small frame: a small first allocation is the allocator's
            // fast path (a 16 KiB one was not), and a larger batch grows the buffer by doubling.
            self.pending.reserve(bytes.len().max(WRITE_COALESCE_FIRST_BYTES));
        }
        self.pending.extend_from_slice(bytes);
        debug_assert!(self.pending.len() <= WRITE_COALESCE_BYTES_MAX);
        true
    }
}

impl<S: AsyncWrite + Unpin> CoalescingIo<S> {
    /// Writes out everything pending, then frees the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        debug_assert!(self.written <= self.pending.len());
        while self.pending_len() > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending = Vec::new();
        self.written = 0;
        self.flush_owed = false;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescingIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read_idle = read.is_pending();
        if read.is_pending() && this.flush_owed {
            // Nothing more to read: the peer is waiting for our answers. If the socket cannot
            // take them all yet, the write side's waker is registered too.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> Drop for CoalescingIo<S> {
    /// Best effort, never blocking: answers whose flush was deferred are offered to the socket
    /// once more, so a connection that ends without a shutdown (an error) still sends them if
    /// the socket has room.
    fn drop(&mut self) {
        if self.pending_len() == 0 {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while self.pending_len() > 0 {
            match Pin::new(&mut self.inner).poll_write(&mut cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(n)) if n > 0 => self.written += n,
                _ => break,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.note_upgrade(buf);
        if this.gather(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_drain(cx))?;
        if this.gather(buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        // Larger than the whole buffer: nothing is pending, so write it through.
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.note_upgrade(first);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.pending.len() + total > WRITE_COALESCE_BYTES_MAX {
            ready!(this.poll_drain(cx))?;
            if total > WRITE_COALESCE_BYTES_MAX {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for buf in bufs {
            let gathered = this.gather(buf);
            debug_assert!(gathered);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.defer_flush && !self.read_idle && self.pending_len() > 0 {
            self.flush_owed = true;
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A socket past its WebSocket upgrade: every flush writes.
    fn upgraded<S: AsyncWrite + Unpin>(inner: S) -> CoalescingIo<S> {
        let mut io = CoalescingIo::new(inner);
        io.defer_flush = false;
        io
    }

    #[tokio::test]
    async fn a_batch_is_one_write_and_the_buffer_is_freed_by_flush() {
        let mut io = upgraded(ScriptedSocket::default());
        for i in 0..64u8 {
            io.write_all(&[i; 100]).await.unwrap();
        }
        assert_eq!(io.inner.writes, 0, "nothing is written before the flush");
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1);
        assert_eq!(io.inner.bytes.len(), 6_400);
        assert!(io
            .inner
            .bytes
            .chunks(100)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| usize::from(*b) == i)));
        assert_eq!(io.pending.capacity(), 0, "an idle connection holds no write buffer");
    }

    #[tokio::test]
    async fn the_buffer_is_bounded_and_large_writes_pass_through() {
        let mut io = upgraded(ScriptedSocket::default());
        let chunk = vec![7u8; WRITE_COALESCE_BYTES_MAX / 4 + 1];
        for _ in 0..4 {
            io.write_all(&chunk).await.unwrap();
            assert!(io.pending.len() <= WRITE_COALESCE_BYTES_MAX);
        }
        assert_eq!(
            io.inner.writes, 1,
            "the fourth chunk did not fit: the first three went out"
        );
        let large = vec![9u8; WRITE_COALESCE_BYTES_MAX + 1];
        io.write_all(&large).await.unwrap();
        assert_eq!(
            io.inner.writes, 3,
            "pending drained, then the large write passed through"
        );
        assert_eq!(io.pending.capacity(), 0);
        io.flush().await.unwrap();
        assert_eq!(io.inner.bytes.len(), 4 * chunk.len() + large.len());
        assert_eq!(io.inner.bytes[4 * chunk.len()..], large[..]);
    }

    /// Counts writes; reads return the queued chunks, then `Pending`.
    #[derive(Default)]
    struct ScriptedSocket {
        writes: usize,
        bytes: Vec<u8>,
        reads: std::collections::VecDeque<Vec<u8>>,
    }

    impl AsyncRead for ScriptedSocket {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            match self.reads.pop_front() {
                Some(chunk) => {
                    buf.put_slice(&chunk);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for ScriptedSocket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Polls one read once; `Some(bytes)` if it was ready.
    async fn read_once(io: &mut CoalescingIo<ScriptedSocket>) -> Option<Vec<u8>> {
        let mut storage = [0u8; 64];
        let mut buf = ReadBuf::new(&mut storage);
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut buf))).await;
        match polled {
            Poll::Ready(result) => {
                result.unwrap();
                Some(buf.filled().to_vec())
            }
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn pipelined_http_responses_leave_together_when_a_read_finds_nothing() {
        let mut socket = ScriptedSocket::default();
        socket.reads.push_back(b"POST /2".to_vec());
        let mut io = CoalescingIo::new(socket);
        io.write_all(b"HTTP/1.1 201 Created\r\n\r\n1").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 0, "the flush is owed while requests may follow");
        assert_eq!(read_once(&mut io).await.as_deref(), Some(&b"POST /2"[..]));
        assert_eq!(io.inner.writes, 0, "a read that finds a request keeps gathering");
        io.write_all(b"HTTP/1.1 201 Created\r\n\r\n2").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(read_once(&mut io).await, None);
        assert_eq!(
            io.inner.writes, 1,
            "the idle read paid the owed flush, both answers in one write"
        );
        assert_eq!(
            io.inner.bytes,
            b"HTTP/1.1 201 Created\r\n\r\n1HTTP/1.1 201 Created\r\n\r\n2"
        );
        assert_eq!(io.pending.capacity(), 0);
    }

    #[tokio::test]
    async fn a_flush_after_a_read_found_nothing_writes_at_once() {
        // hyper answers a GET after its last read: no read would come to pay an owed flush.
        let mut socket = ScriptedSocket::default();
        socket.reads.push_back(b"GET /healthz".to_vec());
        let mut io = CoalescingIo::new(socket);
        assert_eq!(read_once(&mut io).await.as_deref(), Some(&b"GET /healthz"[..]));
        assert_eq!(read_once(&mut io).await, None);
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1, "the answer left at its flush");
        assert_eq!(io.pending.capacity(), 0);
    }

    #[tokio::test]
    async fn an_upgrade_ends_flush_deferral() {
        let mut io = CoalescingIo::new(ScriptedSocket::default());
        io.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 1, "the 101 leaves at its flush");
        io.write_all(b"\x81\x02{}").await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 2, "WebSocket frames leave at every flush");
    }

    #[tokio::test]
    async fn owed_answers_are_offered_to_the_socket_on_drop() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut io = CoalescingIo::new(a);
        io.write_all(b"HTTP/1.1 201 Created\r\n\r\n").await.unwrap();
        io.flush().await.unwrap();
        drop(io);
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"HTTP/1.1 201 Created\r\n\r\n");
    }

    #[tokio::test]
    async fn reads_and_shutdown_pass_through_after_pending_bytes() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut io = CoalescingIo::new(a);
        io.write_all(b"hello").await.unwrap();
        b.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        io.shutdown().await.unwrap();
        let mut all = Vec::new();
        b.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello", "shutdown writes out what was pending");
    }
}
