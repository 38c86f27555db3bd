//! The front door (docs/data-plane.md, step 1): each worker process accepts
//! on the service's public port here, on a thread of its own, and hands every
//! request to the Python app on its private Unix socket, the bodies streamed
//! both ways. The door owns the edge: HTTP/1.1 and HTTP/2, TLS 1.3 with an
//! optional client CA, the connection limit, the header read timeout, the
//! caller's address and the drain on SIGTERM. It serves the routed calls it
//! can itself (`routed.rs`) once the app has installed their plan; what the
//! app answers is what the caller gets for every other request.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_rustls::rustls::{self, server::WebPkiClientVerifier, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::connection;
use crate::routed::{self, Routing};
use crate::trust::Trust;

/// The caller's address, as the door saw it, for the app's per-address
/// limits. The app trusts it only from its private socket; the door replaces
/// any a caller sends.
pub const PEER_HEADER: &str = "x-model-router-peer";

/// Headers of one connection, not of the message (RFC 9110, 7.6.1): the door
/// does not pass them on either way.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub struct Settings {
    /// The public port, bound by `model-router serve` and shared by the workers.
    pub listener: StdListener,
    pub app_socket: PathBuf,
    /// Connections this door serves at once; past it, it stops accepting.
    pub max_connections: usize,
    /// A client slower than this to send a request's head, or to finish its
    /// TLS handshake, is cut off (slowloris).
    pub header_read_timeout: Duration,
    /// The app's limit on a request's body (`MODEL_ROUTER_MAX_BODY_BYTES`),
    /// which the door keeps for bodies of no declared length.
    pub max_body: u64,
    pub tls: Option<Arc<ServerConfig>>,
    /// The routed calls the door serves itself, shared with the app.
    pub routing: Arc<Routing>,
    /// The authorities `https://` upstreams' certificates must chain to.
    pub trust: Trust,
}

/// The largest head the app's server (Granian, HTTP/1.1: its default
/// `max_buffer_size`) reads: the door takes as much on HTTP/2 as on HTTP/1.1.
const APP_MAX_HEAD: u32 = 8192 + 4096 * 100;

/// How long a caller's idle connection to the app stays open at most: a
/// kept-alive caller between requests then costs the worker one descriptor,
/// as with Granian alone, not three (its own and both ends of the app's).
/// Under half the app's header read timeout too, which the app's server
/// closes an idle connection after (`Idle::limit`).
const APP_IDLE: Duration = Duration::from_secs(1);
/// ...and not at all when that would be under this.
const APP_IDLE_FLOOR: Duration = Duration::from_millis(10);

/// The largest body of a routed call the door reads whole (it fits in the
/// app's socket's buffer at once, when the call goes to the app), and of
/// one the app answered unread that the door reads to its end (`discard`).
const LARGE_BODY: u64 = 64 * 1024;

/// How long the rest of a body the app answered unread may take to come.
const DISCARD_WAIT: Duration = Duration::from_secs(10);

/// TLS 1.3 only, HTTP/2 or HTTP/1.1 by ALPN; with `client_ca`, every client
/// must show a certificate it signed.
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read the client CA {}: {e}", path.display()))?
            {
                let ca =
                    ca.map_err(|e| format!("cannot read the client CA {}: {e}", path.display()))?;
                roots
                    .add(ca)
                    .map_err(|e| format!("the client CA {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("the client CA {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A running door. `drain` stops it accepting; `wait` for its connections.
pub struct Door {
    drain: watch::Sender<bool>,
    finished: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Door {
    pub fn start(settings: Settings) -> io::Result<Door> {
        settings.listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Upstream host names are resolved on blocking threads: a resolver
            // that hangs must not grow them to Tokio's default of 512.
            .max_blocking_threads(8)
            .build()?;
        let (drain, draining) = watch::channel(false);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("door".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(settings.listener) {
                        Ok(listener) => {
                            let app = AppSocket {
                                path: Arc::from(settings.app_socket),
                            };
                            let pool = connection::Pool::new(settings.trust);
                            tokio::spawn(connection::reap(pool.clone()));
                            let edge = Edge::new(
                                app,
                                settings.header_read_timeout,
                                settings.max_body,
                                settings.tls,
                                Calls {
                                    routing: settings.routing,
                                    pool,
                                },
                            );
                            serve(listener, edge, settings.max_connections, draining).await
                        }
                        Err(e) => eprintln!("model-router: the door cannot listen: {e}"),
                    }
                });
                let _ = done.send(());
            })?;
        Ok(Door {
            drain,
            finished: Mutex::new(finished),
        })
    }

    /// Stops accepting; each connection ends once its requests are answered
    /// (HTTP/1.1: after the one in flight; HTTP/2: GOAWAY).
    pub fn drain(&self) {
        let _ = self.drain.send(true);
    }

    /// Whether every connection ended within `timeout` (after a `drain`).
    pub fn wait(&self, timeout: Duration) -> bool {
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        !matches!(
            finished.recv_timeout(timeout),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        )
    }
}

async fn serve(
    listener: TcpListener,
    edge: Edge,
    max_connections: usize,
    mut draining: watch::Receiver<bool>,
) {
    let edge = Arc::new(edge);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    while !*draining.borrow() {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = draining.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = draining.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of descriptors or memory, or the client left first:
                // accepting again at once would spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (edge, watcher) = (edge.clone(), graceful.watcher());
        tokio::spawn(async move {
            edge.connection(stream, peer.ip().to_canonical(), watcher)
                .await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// What every connection shares: the HTTP server's settings, TLS, the way
/// to the app and the routed calls the door serves.
struct Edge {
    http: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    max_body: u64,
    tls: Option<TlsAcceptor>,
    app: AppSocket,
    calls: Arc<Calls>,
}

/// The routed calls the door serves, and its connections to their upstreams.
struct Calls {
    routing: Arc<Routing>,
    pool: connection::Pool,
}

impl Edge {
    fn new(
        app: AppSocket,
        header_read_timeout: Duration,
        max_body: u64,
        tls: Option<Arc<ServerConfig>>,
        calls: Calls,
    ) -> Edge {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        // hyper's HTTP/2 default (16 KiB of headers) refuses heads that
        // Granian alone took; the app's HTTP/1.1 reads this much.
        http.http2().max_header_list_size(APP_MAX_HEAD);
        Edge {
            http,
            header_read_timeout,
            max_body,
            tls: tls.map(TlsAcceptor::from),
            app,
            calls: Arc::new(calls),
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: IpAddr, watcher: Watcher) {
        let address: Arc<str> = Arc::from(peer.to_string());
        let peer = HeaderValue::from_str(&address).expect("an address is a header value");
        // The caller's connection has connections to the app of its own, and
        // they end with it: a caller that leaves is seen to go.
        let app = AppLink {
            socket: self.app.clone(),
            idle: Arc::new(Mutex::new(Idle::new(self.header_read_timeout))),
        };
        let max_body = self.max_body;
        let calls = self.calls.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let (app, peer, calls, address) =
                (app.clone(), peer.clone(), calls.clone(), address.clone());
            async move {
                let mut request = request.map(|body| body.map_err(BoxError::from).boxed());
                // The door's verdict comes from the door alone.
                request.headers_mut().remove(routed::VERDICT_HEADER);
                let routed = routable(&request, max_body);
                if routed {
                    request = match route(&calls, request, &address).await {
                        Ok(answer) => return Ok::<_, Infallible>(answer),
                        Err(request) => request, // its body read whole
                    };
                }
                Ok(forward(&app, request, routed, peer, max_body).await)
            }
        });
        match &self.tls {
            None => {
                let _ = watcher
                    .watch(self.http.serve_connection(TokioIo::new(stream), service))
                    .await;
            }
            Some(tls) => {
                let handshake = tokio::time::timeout(self.header_read_timeout, tls.accept(stream));
                if let Ok(Ok(stream)) = handshake.await {
                    let _ = watcher
                        .watch(self.http.serve_connection(TokioIo::new(stream), service))
                        .await;
                }
            }
        }
    }
}

/// Whether `request` may be a routed call the door serves: the route, a
/// declared length of a body that fits in memory at once, no `Expect` (the
/// app answers those as it did).
fn routable(request: &Request<Body>, max_body: u64) -> bool {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    request.method() == Method::POST
        && request.uri().path() == routed::ROUTE
        && request.uri().query().is_none()
        && declared.is_some_and(|n| n <= LARGE_BODY.min(max_body))
        && !request.headers().contains_key(header::EXPECT)
        && json_or_none(request.headers().get(header::CONTENT_TYPE))
}

/// A JSON media type, or none declared (`is_json` in app.py).
fn json_or_none(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.filter(|v| !v.is_empty()) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    let media = media.to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The door's answer to a routed call, or the request back for the app
/// (with the door's verdict, once it admitted the call).
async fn route(
    calls: &Calls,
    request: Request<Body>,
    peer: &str,
) -> Result<Response<Body>, Request<Body>> {
    let started = std::time::Instant::now();
    let (mut parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(body_cut_short()),
    };
    let asked = routed::Asked {
        headers: &parts.headers,
        body: &body,
        peer,
        started,
    };
    match routed::serve(&calls.routing, &calls.pool, asked).await {
        routed::Served::Answer(answer) => Ok(answer.map(full)),
        routed::Served::Stream(answer) => {
            Ok(answer.map(|body| body.map_err(|never| match never {}).boxed()))
        }
        routed::Served::ToApp(verdict) => {
            if let Some(verdict) = verdict.and_then(|v| HeaderValue::from_str(&v).ok()) {
                let name = HeaderName::from_static(routed::VERDICT_HEADER);
                parts.headers.insert(name, verdict);
            }
            let body = full(body);
            Err(Request::from_parts(parts, body))
        }
    }
}

/// The app's answer to `request` (its body `in_memory`, or still coming from
/// the caller), streamed; if the app cannot be reached (stopping, or gone),
/// a 503 the caller can retry.
async fn forward(
    app: &AppLink,
    mut request: Request<Body>,
    in_memory: bool,
    peer: HeaderValue,
    max_body: u64,
) -> Response<Body> {
    // An HTTP/2 request names its host in the URI; the app reads a header.
    let host = request
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    join_cookie_crumbs(headers);
    // The app frames the request afresh; hyper has checked the caller's framing.
    headers.insert(HeaderName::from_static(PEER_HEADER), peer);
    if let (false, Some(host)) = (headers.contains_key(header::HOST), host) {
        headers.insert(header::HOST, host);
    }
    // The app is asked by path (an HTTP/2 request's URI is absolute).
    let Some(path) = request.uri().path_and_query().cloned() else {
        return own_answer(
            StatusCode::BAD_REQUEST,
            "the request's target is not a path",
        );
    };
    *request.uri_mut() = Uri::from(path);
    *request.version_mut() = Version::HTTP_11;
    // A caller's body that breaks off or is badly framed fails the app's
    // request too: that is the caller's error, not the app's absence.
    let body_broke = Arc::new(AtomicBool::new(false));
    let broke = body_broke.clone();
    let request = request.map(|body| {
        body.map_err(move |e| {
            broke.store(true, Ordering::Relaxed);
            e
        })
        .boxed()
    });
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let no_length = declared.is_none() && !hyper::body::Body::is_end_stream(request.body());
    // A body of no declared length is cut off past the app's limit, and the
    // app asked again with the head alone, declaring one byte too many: the
    // app answers its 413 unread. Were the body sent on, the app would answer
    // and close while the door still wrote, and its answer be lost to a 503.
    let head = no_length.then(|| {
        let r = &request;
        (r.method().clone(), r.uri().clone(), r.headers().clone())
    });
    let request = if no_length {
        request.map(|body| Limited::new(body, max_body as usize).boxed())
    } else {
        request
    };
    let answer = match app.send(held_for_continue(request, in_memory)).await {
        Err(e) if caused_by::<LengthLimitError>(&*e) => {
            let head = head.expect("kept for a body of no declared length");
            let over = declaring(head, max_body + 1);
            app.send(held_for_continue(over, false)).await
        }
        answer => answer,
    };
    match answer {
        Ok((mut head, body)) => {
            // The app's `connection: close` (after a 413 it did not read the
            // body of, or while it stops) is the caller's too; HTTP/2 drops it.
            let close = head.headers.get(header::CONNECTION).is_some_and(|v| {
                v.as_bytes()
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            });
            strip_hop_by_hop(&mut head.headers);
            if close {
                head.headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Response::from_parts(head, body)
        }
        Err(_) if body_broke.load(Ordering::Relaxed) => body_cut_short(),
        Err(_) => own_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is starting or stopping",
        ),
    }
}

/// A request with `head` and no body, which declares `length` bytes of one
/// and expects to be asked for them: it never sends them, and the app's
/// connection, which would owe them, is closed once the answer is read.
fn declaring((method, uri, headers): (Method, Uri, HeaderMap), length: u64) -> Request<Body> {
    let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    let headers = request.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    request
}

/// The door's answer to a caller whose body breaks off or is badly framed:
/// the caller's error, not one to retry.
fn body_cut_short() -> Response<Body> {
    own_answer(
        StatusCode::BAD_REQUEST,
        "the request's body ended before it was complete",
    )
}

/// Whether `error`, or an error it came from, is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<E>())
}

/// A body still coming from the caller goes to the app only once the app
/// asks for it: the app answers some requests without reading their body (a
/// 404, a bad query, a 413) and closes the connection, and a body sent
/// meanwhile would fail the door's write, and the answer be lost to a 503.
/// A body `in_memory` (a routed call's, LARGE_BODY at most) goes with its
/// head, in one write.
fn held_for_continue(mut request: Request<Body>, in_memory: bool) -> AppRequest {
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let coming = !in_memory && !hyper::body::Body::is_end_stream(request.body());
    if !(expects_continue || coming) {
        return AppRequest {
            request,
            answer_read: None,
        };
    }
    if !expects_continue {
        let expect = HeaderValue::from_static("100-continue");
        request.headers_mut().insert(header::EXPECT, expect);
    }
    let (asked, ask) = oneshot::channel();
    let asked = Mutex::new(Some(asked));
    hyper::ext::on_informational(&mut request, move |answer| {
        if answer.status() == StatusCode::CONTINUE {
            if let Some(asked) = asked.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = asked.send(());
            }
        }
    });
    let (answer_read, read) = oneshot::channel();
    let request = request.map(|body| {
        AfterContinue {
            ask: Some(ask),
            answer_read: read,
            withheld: false,
            body,
        }
        .boxed()
    });
    AppRequest {
        request,
        answer_read: Some(answer_read),
    }
}

/// A request for the app, and what its answer's body drops once read to its
/// end, for a body held back until the app asks for it.
struct AppRequest {
    request: Request<Body>,
    answer_read: Option<oneshot::Sender<()>>,
}

/// The caller's body held back until the app asks for it with its own
/// `100 Continue`: hyper tells a caller to send its body when the door first
/// reads it, and a body the app refuses unread (413) must not be sent.
struct AfterContinue {
    /// Resolves on the app's `100 Continue`, or fails when its answer comes
    /// without one.
    ask: Option<oneshot::Receiver<()>>,
    /// Fails once the app's answer has been read to its end (or dropped).
    answer_read: oneshot::Receiver<()>,
    /// The app answered without asking: once its answer has been read, the
    /// app's connection, which owes the app a body, is closed.
    withheld: bool,
    body: Body,
}

/// What ends a request whose body the app never asked for.
#[derive(Debug)]
struct Withheld;

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the app answered without asking for the body")
    }
}

impl std::error::Error for Withheld {}

impl hyper::body::Body for AfterContinue {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(ask) = this.ask.as_mut() {
            match Pin::new(ask).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => this.ask = None,
                Poll::Ready(Err(_)) => {
                    this.ask = None;
                    this.withheld = true;
                    let body = std::mem::replace(
                        &mut this.body,
                        Empty::new().map_err(|never| match never {}).boxed(),
                    );
                    tokio::spawn(discard(body));
                }
            }
        }
        if this.withheld {
            return match Pin::new(&mut this.answer_read).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => Poll::Ready(Some(Err(Withheld.into()))),
            };
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Reads and drops what is left of a caller's body the app answered unread,
/// up to LARGE_BODY and for DISCARD_WAIT at most: hyper closes a caller's
/// connection whose body went unread past one read (with a reset, which may
/// cost the caller the answer), where Granian alone drains about 32 KiB.
/// Past either, the body is let go: HTTP/2 tells the caller to stop, and an
/// HTTP/1.1 connection is closed.
async fn discard(mut body: Body) {
    let drained = async {
        let mut left = LARGE_BODY;
        while let Some(Ok(frame)) = body.frame().await {
            let read = frame.data_ref().map_or(0, |data| data.len() as u64);
            let Some(rest) = left.checked_sub(read) else {
                return;
            };
            left = rest;
        }
    };
    let _ = tokio::time::timeout(DISCARD_WAIT, drained).await;
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// HTTP/2 may send a cookie in crumbs, one field each (RFC 9113, 8.2.3); the
/// app's HTTP/1.1 hop gets them as one field, joined by "; ", as an
/// HTTP/1.1 caller sends it.
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let crumbs = headers.get_all(header::COOKIE);
    if crumbs.iter().nth(1).is_none() {
        return;
    }
    let joined = crumbs
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    let joined = HeaderValue::from_bytes(&joined).expect("header values joined by \"; \" are one");
    headers.insert(header::COOKIE, joined);
}

/// A body that is all in memory.
fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// The door's own answer, in the router's error shape (the app writes every
/// other error).
fn own_answer(status: StatusCode, message: &str) -> Response<Body> {
    let kind = if status == StatusCode::BAD_REQUEST {
        "invalid_request"
    } else {
        "unavailable"
    };
    let body = serde_json::json!({"error": {"type": kind, "message": message, "details": null}});
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The worker's app's Unix socket. It listens before the door starts
/// (door.py, `own_app_socket`): a starting app's connections wait in its
/// backlog, and one refused means the app is gone (stopped serving).
#[derive(Clone)]
struct AppSocket {
    path: Arc<Path>,
}

impl AppSocket {
    async fn connect(&self) -> io::Result<UnixStream> {
        UnixStream::connect(&*self.path).await
    }
}

type AppSender = hyper::client::conn::http1::SendRequest<Body>;

/// A caller's idle connections to the app, newest last, each with the time
/// its last answer came; `sweeping` while a task closes those idle for
/// `limit`.
struct Idle {
    senders: Vec<(tokio::time::Instant, AppSender)>,
    sweeping: bool,
    limit: Duration,
}

impl Idle {
    /// For an app that closes connections idle for `header_read_timeout`:
    /// under half of it, and none kept under a few milliseconds, which the
    /// door's timers and scheduling could not keep to.
    fn new(header_read_timeout: Duration) -> Idle {
        let limit = APP_IDLE.min(header_read_timeout / 2);
        Idle {
            senders: Vec::new(),
            sweeping: false,
            limit: if limit < APP_IDLE_FLOOR {
                Duration::ZERO
            } else {
                limit
            },
        }
    }
}

/// One caller's connection's connections to the app: HTTP/1.1, one request
/// at a time each, kept while idle for the caller's next request, for
/// `Idle::limit` at most. They close when the caller's connection does (they
/// are dropped with it), when an answer is not read to its end (the caller
/// left), or after an answer other than a success to a request with a body
/// (the app may not have read it).
#[derive(Clone)]
struct AppLink {
    socket: AppSocket,
    idle: Arc<Mutex<Idle>>,
}

fn lock(idle: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppLink {
    /// The app's answer's head, and its body, which gives the connection
    /// back once it has been read to its end.
    async fn send(
        &self,
        request: AppRequest,
    ) -> Result<(hyper::http::response::Parts, Body), BoxError> {
        let AppRequest {
            mut request,
            answer_read,
        } = request;
        loop {
            let kept = {
                let mut idle = lock(&self.idle);
                let limit = idle.limit;
                idle.senders.retain(|(since, _)| since.elapsed() < limit);
                idle.senders.pop()
            };
            let fresh = kept.is_none();
            let mut sender = match kept {
                Some((_, sender)) => sender,
                None => self.connect().await?,
            };
            match sender.ready().await {
                Err(_) if !fresh => continue, // the app closed it while idle
                ready => ready?,
            }
            let with_body = !hyper::body::Body::is_end_stream(request.body());
            match sender.try_send_request(request).await {
                Ok(answer) => {
                    let (head, body) = answer.into_parts();
                    // The app answers some errors (a 404, a bad query) without
                    // reading the body, and then closes the connection unless
                    // it could drain what was left in one read: the door's
                    // next request on it would fail (a 503). It answers a
                    // success only once it has read the body (app.py).
                    let unread = with_body && !head.status.is_success();
                    let mut body = GiveBack {
                        body,
                        sender: (!unread).then_some(sender),
                        // The app's idle clock starts once it has written the
                        // answer: no earlier than its head came.
                        answered: tokio::time::Instant::now(),
                        idle: self.idle.clone(),
                        answer_read,
                    };
                    if hyper::body::Body::is_end_stream(&body.body) {
                        body.give_back(); // nothing to read: hyper may not poll it
                    }
                    return Ok((head, body.map_err(BoxError::from).boxed()));
                }
                // Closed by the app before the request left: send it on another.
                Err(mut failed) if !fresh && failed.message().is_some() => {
                    request = failed.take_message().expect("checked");
                }
                Err(failed) => return Err(failed.into_error().into()),
            }
        }
    }

    async fn connect(&self) -> Result<AppSender, BoxError> {
        let stream = self.socket.connect().await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // Ends when the sender is dropped, closing the socket.
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// Closes a caller's connections to the app once idle for their limit; ends
/// when none is idle (or the caller's connection is gone). One task per
/// caller's connection at most, waking once per limit.
async fn sweep(idle: Weak<Mutex<Idle>>, limit: Duration) {
    loop {
        tokio::time::sleep(limit).await;
        let Some(idle) = idle.upgrade() else { return };
        let mut idle = lock(&idle);
        idle.senders.retain(|(since, _)| since.elapsed() < limit);
        if idle.senders.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

/// An answer's body that hands its connection back to the caller's idle
/// ones once read to its end; dropped before (the caller left), it drops the
/// connection, and the app sees the caller go.
struct GiveBack {
    body: Incoming,
    sender: Option<AppSender>,
    answered: tokio::time::Instant,
    idle: Arc<Mutex<Idle>>,
    /// Dropped once the answer has been read: see `AfterContinue`.
    answer_read: Option<oneshot::Sender<()>>,
}

impl GiveBack {
    fn give_back(&mut self) {
        self.answer_read = None;
        if let Some(sender) = self.sender.take() {
            let mut idle = lock(&self.idle);
            if self.answered.elapsed() >= idle.limit {
                return; // not kept: the sender is dropped, the connection closes
            }
            idle.senders.push((self.answered, sender));
            if !idle.sweeping {
                idle.sweeping = true;
                tokio::spawn(sweep(Arc::downgrade(&self.idle), idle.limit));
            }
        }
    }
}

impl hyper::body::Body for GiveBack {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // Ended: hyper stops polling after the last frame of a sized body.
        if matches!(polled, Poll::Ready(None)) || hyper::body::Body::is_end_stream(&self.body) {
            self.give_back();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[path = "door_tests.rs"]
mod tests;
