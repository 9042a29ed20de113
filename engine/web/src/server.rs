//! The listener and the HTTP(S) server loop shared by a coordinator and
//! an embedded job's UI.

use axum::Router;

use crate::error::{Error, Result};

/// A non-blocking listener on `addr` (what serves there named in errors)
/// and the address it got.
pub fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> Result<(std::net::TcpListener, std::net::SocketAddr)> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::io(format!("serving {what} on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io(format!("the address of {what}"), e))?;
    Ok((listener, local))
}

/// Serves `app` on `listener` (HTTPS with `tls`) until `stop` completes:
/// the coordinator's API or an embedded job's UI.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<axum_server::tls_openssl::OpenSSLConfig>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let failed = |e| Error::io("serving the API", e);
    match tls {
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                stop.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(1)));
            });
            axum_server::from_tcp(listener)
                .map_err(failed)?
                .acceptor(axum_server::tls_openssl::OpenSSLAcceptor::new(tls))
                .handle(handle)
                .serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .await
                .map_err(failed)
        }
        None => {
            let listener = tokio::net::TcpListener::from_std(listener).map_err(failed)?;
            // The client's address reaches the audit log.
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await
            .map_err(failed)
        }
    }
}
