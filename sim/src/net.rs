//! The network seam: turmoil's simulated TCP plugged into the core's generic adapters — an
//! `axum::serve::Listener` for the server and a client `Connector` for the client library.

use herald_core::client::Connector;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// The port every simulated server life listens on.
pub const SERVER_PORT: u16 = 8080;
/// The server host's name in the simulated network.
pub const SERVER_HOST: &str = "server";

/// turmoil's listener as an axum listener. Accept errors are retried after a short pause, as
/// `tokio::net::TcpListener`'s impl in axum does.
pub struct TurmoilListener(pub turmoil::net::TcpListener);

impl axum::serve::Listener for TurmoilListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(error) => {
                    tracing::debug!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Opens turmoil TCP streams to the simulated server for the client library.
#[derive(Debug, Clone)]
pub struct TurmoilConnector;

impl Connector for TurmoilConnector {
    type Stream = turmoil::net::TcpStream;

    fn connect(&self) -> impl std::future::Future<Output = io::Result<Self::Stream>> + Send {
        turmoil::net::TcpStream::connect((SERVER_HOST, SERVER_PORT))
    }
}

/// The URL clients put in their upgrade request.
pub fn server_ws_url() -> String {
    format!("ws://{SERVER_HOST}:{SERVER_PORT}{}", herald_core::protocol::WS_PATH)
}
