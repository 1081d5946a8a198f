//! The placeholder server that answers on the listener while the model loads: `/live` 200
//! (the process is alive), `/health` and `/ready` 503 (`{"status": "loading"}`, as
//! llama-server answers `/health` while it loads), anything else 503 with `Retry-After`. A
//! load balancer or a Kubernetes readiness probe thus sees "alive, not ready" instead of a
//! refused or hanging connection, and a liveness probe on `/live` does not kill a replica
//! that is still loading.

use std::net::TcpListener;
use std::thread::JoinHandle;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::api::ApiError;
use crate::ServerError;

/// A running placeholder server; [`Loading::stop`] (or dropping it) ends it and leaves the
/// listener to the real server, in blocking mode as `std` makes it. Connections that arrive in
/// between wait in the listener's backlog.
pub struct Loading {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The listener's socket, to put it back in blocking mode (the flag is the socket's, shared
    /// by every duplicate of it).
    socket: TcpListener,
}

impl Loading {
    /// Starts answering on `listener` (on a duplicate of its socket, from a thread of its own).
    pub fn start(listener: &TcpListener) -> Result<Loading, ServerError> {
        let socket = listener.try_clone()?;
        let own = listener.try_clone()?;
        own.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (up_tx, up_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("qwenrt-loading".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(own) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = up_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = up_tx.send(Ok(()));
                    let _ = axum::serve(listener, router())
                        .with_graceful_shutdown(async move {
                            let _ = stop_rx.await;
                        })
                        .await;
                });
            })?;
        let loading = Loading {
            stop: Some(stop_tx),
            thread: Some(thread),
            socket,
        };
        match up_rx.recv() {
            Ok(Ok(())) => Ok(loading),
            Ok(Err(e)) => Err(ServerError::Io(e)),
            Err(_) => Err(ServerError::Option(
                "the loading placeholder server died while starting".into(),
            )),
        }
    }

    /// Stops answering; returns once the placeholder's connections are closed.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = self.socket.set_nonblocking(false);
        }
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        self.end();
    }
}

fn router() -> Router {
    Router::new()
        .route("/live", get(alive))
        .route("/health", get(not_ready))
        .route("/ready", get(not_ready))
        .fallback(loading)
}

fn status(code: StatusCode) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"status": "loading"}).to_string(),
    )
        .into_response()
}

async fn alive() -> Response {
    status(StatusCode::OK)
}

async fn not_ready() -> Response {
    status(StatusCode::SERVICE_UNAVAILABLE)
}

async fn loading() -> Response {
    let e = ApiError::new(
        503,
        "server_error",
        "the model is still loading; retry when /ready answers 200",
    )
    .code("loading");
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        e.body().to_string(),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}
