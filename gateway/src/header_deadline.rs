//! A deadline on each request's headers, counted from their first byte.
//!
//! hyper's own `header_read_timeout` starts as soon as a keep-alive
//! connection waits for its next request, so it bounds idle time and slow
//! headers with one number. Pooled clients keep idle connections for 90 s
//! (reqwest, hyper-util, Go's `http.Transport`), and a connection the server
//! closes while the client picks it fails that request with "error sending
//! request": a short idle limit loses tags, a long one lets slowloris
//! clients hold connections for as long. This splits the two, as Go's
//! `ReadHeaderTimeout` and `IdleTimeout` do: hyper's timer bounds an idle
//! connection, and [`HeaderDeadline`] bounds the headers of each request
//! from their first byte to the blank line that ends them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// An HTTP/1 connection's byte stream, with a deadline on each request's
/// headers: reading fails with `TimedOut` once they have taken longer than
/// the limit since their first byte.
///
/// Requests start with the first byte read after the answer to the one
/// before (or after the connection opened), and their headers end at the
/// first `\r\n\r\n` since. Bytes that follow in the same read (a body, a
/// pipelined request) are not looked at until the next answer is written.
pub struct HeaderDeadline<S> {
    inner: S,
    limit: Duration,
    state: State,
    /// The timer of the current request's headers, armed only when they
    /// take more than one read (most requests come whole in one), and
    /// reset rather than allocated again for the next request that does.
    deadline: Option<Pin<Box<Sleep>>>,
}

enum State {
    /// Between requests: the next byte read starts one.
    Idle,
    /// Headers being read, the deadline armed: how many bytes of the
    /// `\r\n\r\n` that ends them the last read ended with.
    Headers { matched: usize },
    /// The headers ended; waiting for the answer.
    Answering,
}

const END: &[u8; 4] = b"\r\n\r\n";

impl<S> HeaderDeadline<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            state: State::Idle,
            deadline: None,
        }
    }

    /// Follows the headers through the bytes just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let starts = matches!(self.state, State::Idle);
        let mut matched = match self.state {
            State::Idle => 0,
            State::Headers { matched } => matched,
            State::Answering => return,
        };
        for &byte in bytes {
            matched = match (END.get(matched), byte) {
                (Some(&want), got) if want == got => matched + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if matched == END.len() {
                self.state = State::Answering;
                return;
            }
        }
        self.state = State::Headers { matched };
        if starts {
            // The first byte came in this read: the limit counts from now.
            let at = tokio::time::Instant::now() + self.limit;
            match &mut self.deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }

    /// A write answers the request: the next byte read starts another.
    fn wrote(&mut self, written: usize) {
        if written > 0 {
            self.state = State::Idle;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let filled = buf.filled();
            this.saw(filled.get(before..).unwrap_or_default());
        }
        if let (State::Headers { .. }, Some(deadline)) = (&this.state, &mut this.deadline) {
            // Polled on every read, so the timer wakes the connection's
            // task when it fires, even while no byte comes.
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request headers took too long",
                )));
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.wrote(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.wrote(written);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_after(chunks: &[&[u8]]) -> &'static str {
        let mut io = HeaderDeadline::new((), Duration::from_secs(1));
        for chunk in chunks {
            io.saw(chunk);
        }
        match io.state {
            State::Idle => "idle",
            State::Headers { .. } => "headers",
            State::Answering => "answering",
        }
    }

    #[tokio::test]
    async fn headers_end_at_the_first_blank_line_across_reads() {
        assert_eq!(state_after(&[]), "idle");
        assert_eq!(state_after(&[b"POST /user_tags HTTP/1.1\r\n"]), "headers");
        assert_eq!(
            state_after(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]),
            "answering"
        );
        assert_eq!(
            state_after(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r", b"\n"]),
            "answering"
        );
        // A lone CR, or CR LF CR followed by something else, is no end.
        assert_eq!(state_after(&[b"GET / HTTP/1.1\r\r\n\rX\r\n"]), "headers");
        assert_eq!(
            state_after(&[b"GET / HTTP/1.1\r\nA: b\r\r\n\r\n"]),
            "answering"
        );
    }

    /// A request whose headers come in one read arms no timer; one whose
    /// headers span reads does, and the next such request reuses it.
    #[tokio::test]
    async fn only_headers_that_span_reads_arm_the_timer() {
        let mut io = HeaderDeadline::new((), Duration::from_secs(1));
        io.saw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(io.deadline.is_none(), "armed for headers that came whole");
        io.wrote(10);
        io.saw(b"GET / HTTP/1.1\r\n");
        let first: *const Sleep = &**io.deadline.as_ref().expect("armed");
        io.saw(b"\r\n");
        io.wrote(10);
        io.saw(b"GET / HT");
        let second: *const Sleep = &**io.deadline.as_ref().expect("armed again");
        assert_eq!(first, second, "the timer is reset, not allocated again");
        assert!(matches!(io.state, State::Headers { matched: 0 }));
    }

    #[tokio::test]
    async fn an_answer_makes_the_next_byte_start_a_request() {
        let mut io = HeaderDeadline::new((), Duration::from_secs(1));
        io.saw(b"GET / HTTP/1.1\r\n\r\n");
        io.wrote(0);
        assert!(matches!(io.state, State::Answering), "nothing written yet");
        io.wrote(10);
        assert!(matches!(io.state, State::Idle));
        io.saw(b"G");
        assert!(matches!(io.state, State::Headers { .. }));
    }
}
