//! The HTTP API's listener: plain TCP or TLS (rustls, from PEM certificate and key files).
//!
//! TLS handshakes run on tasks of their own, each with a deadline, and only finished
//! connections reach hyper: a client that opens a socket and never speaks costs a task,
//! not the accept loop. The number of connections open at once is bounded, and a request
//! head must arrive within a deadline, so slow clients cannot hold the slots.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// A TLS client must finish its handshake within this.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// What an accepted connection is, TLS or not.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A connection with its slot: the slot is free again when axum drops the connection.
pub struct Conn {
    io: Box<dyn Stream>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Who a request comes from: the connection's peer, and the client it stands for (the
/// peer itself unless it is a trusted reverse proxy), for the per-client rate limit.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub client: IpAddr,
}

/// Load a rustls server configuration from PEM files (the certificate chain, leaf first,
/// and its private key).
pub fn tls_config(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no PEM certificate in it", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the TLS key {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepted (and, with TLS, handshaken) connections for axum.
pub struct Listener {
    ready: mpsc::Receiver<(Conn, SocketAddr)>,
}

impl Listener {
    /// Start accepting on `listener` (inside a tokio runtime).
    pub fn start(
        listener: tokio::net::TcpListener,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> std::io::Result<Listener> {
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(
            listener,
            tls.map(tokio_rustls::TlsAcceptor::from),
            tx,
        ));
        Ok(Listener { ready })
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tx: mpsc::Sender<(Conn, SocketAddr)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // EMFILE and the like persist for a while: do not spin on them.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let tx = tx.clone();
        match &tls {
            None => {
                let conn = Conn {
                    io: Box::new(tcp),
                    _slot: slot,
                };
                if tx.send((conn, peer)).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = Conn {
                                io: Box::new(stream),
                                _slot: slot,
                            };
                            let _ = tx.send((conn, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Serve `app` on every connection the listener hands over until `stop` resolves, then
/// let the connections finish what they are answering (the caller bounds how long). A
/// request's head must arrive within `header_deadline` of the connection's start (or of
/// the previous answer on it), or the connection is closed.
///
/// hyper's own connection loop rather than `axum::serve`, because axum installs no timer,
/// so hyper's header-read deadline never fires: a client that opens a connection and
/// dribbles its request head would hold one of the [`MAX_CONNECTIONS`] slots for ever.
pub async fn serve(
    mut listener: Listener,
    app: axum::Router,
    header_deadline: Duration,
    trusted_proxies: Arc<Vec<IpAddr>>,
    stop: impl std::future::Future<Output = ()>,
) {
    use tower_service::Service as _;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_deadline);
    tokio::pin!(stop);
    loop {
        let (conn, addr) = tokio::select! {
            accepted = listener.ready.recv() => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
            () = &mut stop => break,
        };
        let app = app.clone();
        let trusted = trusted_proxies.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                let client = client_address(addr.ip(), request.headers(), &trusted);
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(Peer { addr, client }));
                app.clone().call(request)
            },
        );
        let connection =
            graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(conn), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %addr, "HTTP connection ended: {e}");
            }
        });
    }
    graceful.shutdown().await;
}

/// The client a request comes from: the peer itself, or, when the peer is one of
/// `trusted_proxies` (`http.trusted_proxies`), the address its `X-Forwarded-For` names.
/// The header is read from the right, past every trusted proxy: entries to the left of
/// the first untrusted one were written by the client and prove nothing.
pub fn client_address(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted_proxies: &[IpAddr],
) -> IpAddr {
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            match parse_hop(hop.trim()) {
                Some(ip) if trusted_proxies.contains(&ip) => client = ip,
                Some(ip) => return ip,
                // Garbage from a proxy we trust: stop at the last address we could vouch for.
                None => return client,
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`[::1]:80`, `192.0.2.1:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn the_forwarded_client_counts_only_behind_a_trusted_proxy() {
        let proxy = ip("127.0.0.1");
        let trusted = [proxy, ip("10.0.0.2")];
        let h = forwarded(&["203.0.113.9"]);
        // Not from a proxy: the header is the client's own claim.
        assert_eq!(
            client_address(ip("198.51.100.7"), &h, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("198.51.100.7"), &h, &[]),
            ip("198.51.100.7")
        );
        // From the proxy: the address it saw.
        assert_eq!(client_address(proxy, &h, &trusted), ip("203.0.113.9"));
        // A spoofed entry on the left is skipped: the rightmost untrusted hop wins.
        let h = forwarded(&["1.2.3.4, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(client_address(proxy, &h, &trusted), ip("203.0.113.9"));
        // Several header lines are one list; ports and IPv6 brackets are understood.
        let h = forwarded(&["1.2.3.4", "[2001:db8::1]:4711"]);
        assert_eq!(client_address(proxy, &h, &trusted), ip("2001:db8::1"));
        // No header, or garbage: the proxy (or the last trusted hop) itself.
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
        let h = forwarded(&["not-an-address, 10.0.0.2"]);
        assert_eq!(client_address(proxy, &h, &trusted), ip("10.0.0.2"));
    }
}
