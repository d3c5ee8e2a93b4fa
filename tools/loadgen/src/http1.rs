//! The load's HTTP/1.1 client: one keep-alive connection, one request at a time, each request written
//! in one `write(2)` and its answer read into a buffer the connection keeps. hyper's client runs a
//! connection task next to the caller and hands every request and answer across a channel — two task
//! wake-ups a request, which on this 2-core machine cost loadgen about as much CPU as the server it
//! measures. This one does what the load needs and no more: `Content-Length` answers (what the service
//! and the bare server send), keep-alive, `Connection: close`; anything else is an error, counted as a
//! transport error, never guessed at.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Answer heads longer than this are refused (the service's are a few hundred bytes).
const MAX_HEAD: usize = 16 * 1024;

pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The kernel's receive time (CLOCK_REALTIME) of the last bytes read.
    rx_ts: Option<Duration>,
    /// The server said `Connection: close` (or closed): a new connection for the next request.
    closed: bool,
}

pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// From just before the request's write to the kernel's receipt of the answer's last bytes: the
    /// answer's time without this client's own scheduling delay in noticing it.
    pub kernel_latency: Option<Duration>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        enable_rx_timestamps(&stream);
        Ok(Conn { stream, buf: BytesMut::with_capacity(4096), rx_ts: None, closed: false })
    }

    /// Whether a request can go out on this connection: not if the server has closed it (an idle
    /// keep-alive timeout, a drain). Looks at the readiness the runtime already has, without a syscall
    /// unless the socket turned readable between two requests — which only a close (or a stray byte)
    /// makes it.
    pub fn reusable(&self) -> bool {
        if self.closed || !self.buf.is_empty() {
            return false;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(Err(_)) => false,
            std::task::Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes `request` (head and body) and reads the answer.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<Answer> {
        self.rx_ts = None;
        let written = realtime();
        self.stream.write_all(request).await?;
        let (status, head_len, body_len) = loop {
            if let Some(head) = parse_head(&self.buf)? {
                if head.close {
                    self.closed = true;
                }
                break (head.status, head.len, head.body_len);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid(format!("answer head longer than {MAX_HEAD} bytes")));
            }
            self.read_more().await?;
        };
        while self.buf.len() < head_len + body_len {
            self.buf.reserve(head_len + body_len - self.buf.len());
            self.read_more().await?;
        }
        let mut answer = self.buf.split_to(head_len + body_len);
        let body = answer.split_off(head_len).freeze();
        let kernel_latency = self.rx_ts.map(|rx| rx.saturating_sub(written));
        Ok(Answer { status, body, kernel_latency })
    }

    async fn read_more(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        let n = loop {
            self.stream.readable().await?;
            let (buf, rx_ts) = (&mut self.buf, &mut self.rx_ts);
            let fd = std::os::fd::AsRawFd::as_raw_fd(&self.stream);
            match self.stream.try_io(tokio::io::Interest::READABLE, || recv_timestamped(fd, buf, rx_ts)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            self.closed = true;
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        Ok(())
    }
}

/// Asks the kernel to stamp each received segment (software, CLOCK_REALTIME). Best effort: without it
/// answers carry no `kernel_latency`.
fn enable_rx_timestamps(stream: &TcpStream) {
    let flags: libc::c_int = (libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE) as libc::c_int;
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
    // SAFETY: `fd` is an open socket for the call's duration and `flags` outlives it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            (&flags as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn realtime() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// One `recvmsg(2)` into `buf`'s spare capacity, keeping the receive timestamp the kernel attached.
fn recv_timestamped(fd: std::os::fd::RawFd, buf: &mut BytesMut, rx_ts: &mut Option<Duration>) -> io::Result<usize> {
    use bytes::BufMut as _;
    let spare = buf.chunk_mut();
    let mut iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `iov` points into `buf`'s spare capacity and `control` is ours; both outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote `n` bytes into the spare capacity.
    unsafe { buf.advance_mut(n as usize) };
    // SAFETY: walking the control messages the kernel wrote, within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_TIMESTAMPING {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::timespec>());
                if ts.tv_sec != 0 || ts.tv_nsec != 0 {
                    *rx_ts = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n as usize)
}

struct Head {
    status: u16,
    len: usize,
    body_len: usize,
    close: bool,
}

/// The answer's head, once all of it is in `buf`.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("malformed answer head: {e}"))),
    };
    let status = res.code.unwrap_or(0);
    let mut body_len = None;
    let mut close = res.version == Some(0);
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            body_len = Some(n.ok_or_else(|| invalid("bad Content-Length".into()))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid("a Transfer-Encoding answer (loadgen reads Content-Length answers only)".into()));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let body_len = match (status, body_len) {
        (100..=199 | 204 | 304, _) => 0,
        (_, Some(n)) => n,
        (_, None) => return Err(invalid(format!("a {status} answer without Content-Length"))),
    };
    Ok(Some(Head { status, len, body_len, close }))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// `POST path` with `headers` and `body`, as written on the wire.
pub fn post(out: &mut Vec<u8>, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    use std::io::Write as _;
    out.clear();
    let _ = write!(out, "POST {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[test]
    fn heads_are_read_only_when_complete_and_framed_by_content_length() {
        let full = b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello";
        assert!(parse_head(&full[..20]).unwrap().is_none());
        let head = parse_head(full).unwrap().unwrap();
        assert_eq!((head.status, head.body_len, head.close), (202, 5, false));
        assert_eq!(&full[head.len..], b"hello");
        let close = parse_head(b"HTTP/1.1 503 x\r\nConnection: close\r\ncontent-length: 0\r\n\r\n").unwrap().unwrap();
        assert!(close.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert_eq!(parse_head(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap().body_len, 0);
    }

    #[tokio::test]
    async fn keep_alive_answers_come_back_in_order_and_a_close_is_noticed() {
        use tokio::io::AsyncBufReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = tokio::io::BufReader::new(stream);
            for i in 0..2 {
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length: ") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                stream.read_exact(&mut body).await.unwrap();
                let answer = format!("answer {i} to {}", String::from_utf8(body).unwrap());
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", answer.len());
                stream.get_mut().write_all(head.as_bytes()).await.unwrap();
                // The body in a second write: the client must wait for all of it.
                tokio::task::yield_now().await;
                stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
            }
            // Then the server closes the idle connection.
        });
        let mut conn = Conn::connect(addr).await.unwrap();
        let mut req = Vec::new();
        for i in 0..2 {
            assert!(conn.reusable());
            post(&mut req, "/events", &[("host", "x")], format!("e{i}").as_bytes());
            let answer = conn.send(&req).await.unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, format!("answer {i} to e{i}"));
        }
        let mut reusable = true;
        for _ in 0..100 {
            reusable = conn.reusable();
            if !reusable {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!reusable, "a connection the server closed is not reused");
    }

    #[tokio::test]
    async fn the_kernel_receipt_leaves_out_the_clients_own_delay() {
        use std::io::{Read as _, Write as _};
        // A blocking server on its own thread: answers each request 20 ms after it arrives.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno").unwrap();
            std::thread::sleep(Duration::from_secs(1));
        });
        let mut conn = Conn::connect(addr).await.unwrap();
        let mut req = Vec::new();
        post(&mut req, "/events", &[("host", "x")], b"e");
        let started = std::time::Instant::now();
        let mut send = std::pin::pin!(conn.send(&req));
        // The request goes out on the first poll; then this client is busy elsewhere for 200 ms and notices
        // the answer late, as a client thread kept off the CPU would.
        let pending = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(send.as_mut(), cx).is_pending())
        })
        .await;
        assert!(pending);
        std::thread::sleep(Duration::from_millis(200));
        let answer = send.await.unwrap();
        let noticed = started.elapsed();
        let kernel = answer.kernel_latency.expect("the kernel stamps loopback segments");
        assert_eq!((answer.status, &answer.body[..]), (503, &b"no"[..]));
        assert!(noticed >= Duration::from_millis(200), "{noticed:?}");
        assert!(kernel >= Duration::from_millis(15) && kernel < Duration::from_millis(150), "{kernel:?}");
    }
}
