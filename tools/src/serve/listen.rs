//! The service's two listeners: each serves its router through hyper's connection builder
//! with limits `axum::serve` does not have, so that slow or idle clients cannot tie up
//! connections and file descriptors:
//!
//! - a header-read timeout: a new connection must complete its first request's headers
//!   (its TLS handshake included) within `--header-timeout-ms`, and on HTTP/1 each later
//!   request's headers must arrive within that long of their first byte (slowloris);
//! - an idle timeout: a connection with no request in flight and no byte read or written for
//!   `--idle-timeout-ms` is closed (gracefully: HTTP/2 gets a GOAWAY);
//! - a cap on open connections per listener (`--max-connections`);
//! - a deep accept queue ([`bind`]), so that a fleet connecting at once is not dropped;
//! - `--allowed-hosts`: a request whose `Host` / `:authority` is not listed is answered 421;
//! - TLS on the filter listener, with client certificates when `--filter-client-ca` is given.
//!
//! Every request carries the client's address as axum's `ConnectInfo<SocketAddr>` (the admin
//! token check keys its backoff on it).

use crate::serve::error::ApiError;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Once};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// The listeners' options, flattened into `keygate serve`.
#[derive(clap::Args, Clone, Debug)]
pub struct ListenArgs {
    /// How long a new connection may take to send its first request's headers (TLS handshake
    /// included), and an HTTP/1 request its headers from their first byte; then it is closed.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout_ms: u64,
    /// How long a connection may stay open with no request in flight and nothing read or
    /// written before it is closed. Keep it above the feed's longest wait (30000).
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub idle_timeout_ms: u64,
    /// The most connections each listener holds open; past it, a new connection is accepted
    /// and closed at once.
    #[arg(long, value_name = "N", default_value_t = 4_096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Answer only requests whose Host (or :authority) is one of these (HOST matches any
    /// port, HOST:PORT that port only); others get 421. Both listeners. Default: any host.
    #[arg(long, value_name = "HOST[,HOST...]", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// The filter listener speaks TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "filter_tls_key")]
    pub filter_tls_cert: Option<PathBuf>,
    /// The private key of --filter-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "filter_tls_cert")]
    pub filter_tls_key: Option<PathBuf>,
    /// Require a client certificate signed by one of these authorities (PEM) on the filter
    /// listener (mutual TLS). Needs --filter-tls-cert.
    #[arg(long, value_name = "FILE", requires = "filter_tls_cert")]
    pub filter_client_ca: Option<PathBuf>,
}

impl ListenArgs {
    /// The options checked and the TLS files read, so that a bad one stops the start.
    pub fn load(self) -> Result<Listen, String> {
        let allowed_hosts = if self.allowed_hosts.is_empty() {
            None
        } else {
            let hosts = self
                .allowed_hosts
                .iter()
                .map(|h| {
                    Authority::parse(h).ok_or_else(|| {
                        format!(
                            "--allowed-hosts: {h:?} is not a host name, an IP address or HOST:PORT"
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some(hosts.into())
        };
        let filter_tls = match (&self.filter_tls_cert, &self.filter_tls_key) {
            (Some(cert), Some(key)) => Some(tls(cert, key, self.filter_client_ca.as_deref())?),
            _ => None,
        };
        Ok(Listen {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections as usize,
            allowed_hosts,
            filter_tls,
        })
    }
}

/// [`ListenArgs`], checked and loaded.
#[derive(Clone)]
pub struct Listen {
    header_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    allowed_hosts: Option<Arc<[Authority]>>,
    filter_tls: Option<TlsAcceptor>,
}

impl Listen {
    /// The filter listener's URL scheme, for the start-up line.
    pub fn filter_scheme(&self) -> &'static str {
        if self.filter_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// How many connections the kernel holds before they are accepted. The standard library
/// asks for 128: a burst of new connections (a fleet of Envoys reconnecting after a restart)
/// overflows that while the accept loop is busy for a few milliseconds, and a client whose
/// SYN was dropped tries again only a second later. The kernel caps this at
/// `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// A listener on `addr` with the [`BACKLOG`] above.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Which listener: TLS applies to the filter's only.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Which {
    Admin,
    Filter,
}

/// Serves `router` on `listener` until the process stops.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    listen: &Listen,
    which: Which,
) -> io::Result<()> {
    raise_file_limit(listen.max_connections);
    let tls = if which == Which::Filter { listen.filter_tls.clone() } else { None };
    let permits = Arc::new(Semaphore::new(listen.max_connections));
    let full = Every::new(Duration::from_secs(10));
    let failing = Every::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) or a connection reset before it
                // was accepted: not fatal; wait a little so that a full table is not spun on.
                if failing.now() {
                    eprintln!("keygate serve: {which:?} listener cannot accept: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the cap, the connection is accepted and closed at once rather than left in
        // the kernel's backlog: the client learns at once (and may retry), and the backlog
        // never fills with connections nobody will serve.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            if full.now() {
                eprintln!(
                    "keygate serve: {which:?} listener holds {} connections (--max-connections); \
                     closing new ones at once",
                    listen.max_connections
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, listen, tls) = (router.clone(), listen.clone(), tls.clone());
        tokio::spawn(async move {
            let state = Arc::new(Conn::new());
            match tls {
                None => connection(stream, peer, router, &listen, state).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(listen.header_timeout, handshake).await
                    {
                        connection(stream, peer, router, &listen, state).await;
                    }
                }
            }
            drop(permit);
        });
    }
}

/// One connection, served until it ends or a timeout closes it.
async fn connection<I>(io: I, peer: SocketAddr, router: Router, listen: &Listen, state: Arc<Conn>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hosts = listen.allowed_hosts.clone();
    let watched = state.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let guard = Started::new(watched.clone());
        request.extensions_mut().insert(ConnectInfo(peer));
        let (router, hosts) = (router.clone(), hosts.clone());
        async move {
            let _guard = guard;
            if let Some(refused) = hosts.as_deref().and_then(|h| misdirected(h, &request)) {
                return Ok::<Response, Infallible>(refused);
            }
            router.oneshot(request).await
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout is ours (`Conn`): hyper's would also close a keep-alive connection
    // that waits for its next request longer than that.
    builder.http1().header_read_timeout(None);
    let conn =
        builder.serve_connection(TokioIo::new(Watched { io, state: state.clone() }), service);
    tokio::pin!(conn);
    let (header, idle) = (ms(listen.header_timeout), ms(listen.idle_timeout));
    let mut closing: Option<u64> = None;
    loop {
        let now = state.now();
        let head = state.head_deadline(header);
        if head.is_some_and(|d| now >= d) || closing.is_some_and(|d| now >= d) {
            return; // dropped: closed at once
        }
        let idle_at = state.idle_deadline(idle);
        if closing.is_none() && idle_at.is_some_and(|d| now >= d) {
            conn.as_mut().graceful_shutdown();
            closing = Some(now + header);
        }
        let next = [head, closing, idle_at.filter(|_| closing.is_none()), Some(now + idle)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + idle)
            .max(now + 1);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep_until((state.start + Duration::from_millis(next)).into()) => {}
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What a connection's watcher needs to know, updated by its I/O and its requests. Times
/// are milliseconds since `start`.
struct Conn {
    start: Instant,
    last_io: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// 1 + when the bytes of an HTTP/1 request's headers began to arrive; 0 when none are.
    head_since: AtomicU64,
    /// The connection opened with HTTP/2's preface (its frames are not request heads).
    h2: AtomicBool,
    read_any: AtomicBool,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            start: Instant::now(),
            last_io: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            read_any: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        ms(self.start.elapsed())
    }

    fn read(&self, bytes: &[u8]) {
        let now = self.now();
        self.last_io.store(now, Relaxed);
        if !self.read_any.swap(true, Relaxed) {
            const PREFACE: &[u8] = b"PRI * HTTP/2.0";
            let n = bytes.len().min(PREFACE.len());
            self.h2.store(bytes[..n] == PREFACE[..n], Relaxed);
        }
        if !self.h2.load(Relaxed) && self.in_flight.load(Relaxed) == 0 {
            let _ = self.head_since.compare_exchange(0, now + 1, Relaxed, Relaxed);
        }
    }

    /// When the connection is closed unless a request's headers have arrived.
    fn head_deadline(&self, header: u64) -> Option<u64> {
        if self.requests.load(Relaxed) == 0 {
            return Some(header);
        }
        match self.head_since.load(Relaxed) {
            0 => None,
            since => Some(since - 1 + header),
        }
    }

    /// When the connection is idle long enough to close, if nothing is in flight.
    fn idle_deadline(&self, idle: u64) -> Option<u64> {
        (self.in_flight.load(Relaxed) == 0).then(|| self.last_io.load(Relaxed) + idle)
    }
}

/// A request in flight, from its headers' arrival until its answer's headers leave.
struct Started(Arc<Conn>);

impl Started {
    fn new(conn: Arc<Conn>) -> Started {
        conn.in_flight.fetch_add(1, Relaxed);
        conn.requests.fetch_add(1, Relaxed);
        conn.head_since.store(0, Relaxed);
        Started(conn)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.0.last_io.store(self.0.now(), Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A connection's stream, noting each read and write in its [`Conn`].
struct Watched<I> {
    io: I,
    state: Arc<Conn>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.last_io.store(self.state.now(), Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.last_io.store(self.state.now(), Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A host and an optional port, as in `--allowed-hosts` and in `Host`: lower case, without
/// an IPv6 address's brackets or a name's trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    pub fn parse(text: &str) -> Option<Authority> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (host, port)
        } else {
            match text.split_once(':') {
                Some((host, port)) if !port.contains(':') => (host, Some(port)),
                Some(_) => (text, None), // a bare IPv6 address
                None => (text, None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None => None,
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
        (!host.is_empty() && host.chars().all(allowed)).then_some(Authority { host, port })
    }

    /// Whether a request's authority is this listed one: the same host, and the same port
    /// when a port is listed.
    fn admits(&self, asked: &Authority) -> bool {
        self.host == asked.host && self.port.is_none_or(|p| asked.port == Some(p))
    }
}

/// The 421 for a request whose `Host` or `:authority` is missing or not listed.
fn misdirected(allowed: &[Authority], request: &Request<Incoming>) -> Option<Response> {
    let from_uri = request.uri().authority().map(|a| a.as_str());
    let from_header = request.headers().get(header::HOST).map(|v| v.to_str().unwrap_or("\u{0}"));
    let named: Vec<&str> = [from_uri, from_header].into_iter().flatten().collect();
    let admitted = |text: &&str| {
        Authority::parse(text).is_some_and(|asked| allowed.iter().any(|a| a.admits(&asked)))
    };
    if !named.is_empty() && named.iter().all(admitted) {
        return None;
    }
    let message = match named.iter().find(|t| !admitted(t)) {
        Some(host) => format!("this service does not answer for host {host:?} (--allowed-hosts)"),
        None => "a Host header is required (--allowed-hosts)".to_string(),
    };
    Some(ApiError::new(StatusCode::MISDIRECTED_REQUEST, message).into_response())
}

/// The filter listener's TLS: this certificate chain and key, and, with `client_ca`, client
/// certificates required and verified against it.
fn tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let open = |flag: &str, path: &Path| {
        std::fs::File::open(path)
            .map(io::BufReader::new)
            .map_err(|e| format!("--{flag} {}: {e}", path.display()))
    };
    let certs = |flag: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let all = rustls_pemfile::certs(&mut open(flag, path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--{flag} {}: {e}", path.display()))?;
        if all.is_empty() {
            return Err(format!("--{flag} {}: no PEM certificate in it", path.display()));
        }
        Ok(all)
    };
    let chain = certs("filter-tls-cert", cert)?;
    let private: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut open("filter-tls-key", key)?)
            .map_err(|e| format!("--filter-tls-key {}: {e}", key.display()))?
            .ok_or_else(|| {
                format!("--filter-tls-key {}: no PEM private key in it", key.display())
            })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certs("filter-client-ca", path)? {
                roots.add(ca).map_err(|e| format!("--filter-client-ca {}: {e}", path.display()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| format!("--filter-client-ca {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|e| {
        format!("--filter-tls-cert {} with --filter-tls-key {}: {e}", cert.display(), key.display())
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Raises the soft open-file limit to the hard one once (as Go's runtime does), so that both
/// listeners' caps fit; warns when even that is too low.
fn raise_file_limit(per_listener: usize) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        let soft = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                }
            }
            limit.rlim_cur
        };
        let needed = 2 * per_listener as u64 + 256;
        if soft < needed {
            eprintln!(
                "keygate serve: the open-file limit is {soft}, below the {needed} that two \
                 listeners of --max-connections {per_listener} need; raise it (ulimit -n, \
                 LimitNOFILE=) or lower --max-connections"
            );
        }
    });
}

/// True at most once per period: for log lines that could otherwise flood.
pub(crate) struct Every {
    period: u64,
    next: AtomicU64,
    start: Instant,
}

impl Every {
    pub(crate) fn new(period: Duration) -> Every {
        Every { period: ms(period), next: AtomicU64::new(0), start: Instant::now() }
    }

    pub(crate) fn now(&self) -> bool {
        let now = ms(self.start.elapsed());
        let next = self.next.load(Relaxed);
        now >= next && self.next.compare_exchange(next, now + self.period, Relaxed, Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(host: &str, port: Option<u16>) -> Option<Authority> {
        Some(Authority { host: host.into(), port })
    }

    #[test]
    fn authorities_parse_like_host_headers() {
        assert_eq!(Authority::parse("Keys.Internal."), a("keys.internal", None));
        assert_eq!(Authority::parse("keys.internal:9101"), a("keys.internal", Some(9101)));
        assert_eq!(Authority::parse("[::1]:9100"), a("::1", Some(9100)));
        assert_eq!(Authority::parse("[::1]"), a("::1", None));
        assert_eq!(Authority::parse("::1"), a("::1", None));
        assert_eq!(Authority::parse("127.0.0.1"), a("127.0.0.1", None));
        for bad in ["", ":80", "a:b", "a:99999", "[::1", "[::1]x", "a b", "a/b", "a@b"] {
            assert_eq!(Authority::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_bare_host_admits_any_port_and_a_port_only_itself() {
        let (bare, with) = (Authority::parse("keys"), Authority::parse("keys:9101"));
        let asked =
            |t| Authority::parse(t).unwrap_or(Authority { host: String::new(), port: None });
        assert!(bare
            .as_ref()
            .is_some_and(|b| b.admits(&asked("keys:1")) && b.admits(&asked("keys"))));
        assert!(with.as_ref().is_some_and(|w| w.admits(&asked("keys:9101"))));
        assert!(with
            .as_ref()
            .is_some_and(|w| !w.admits(&asked("keys")) && !w.admits(&asked("keys:1"))));
        assert!(bare.is_some_and(|b| !b.admits(&asked("evil.example"))));
    }

    #[test]
    fn every_is_true_once_a_period() {
        let every = Every::new(Duration::from_secs(60));
        assert!(every.now());
        assert!(!every.now());
    }
}
