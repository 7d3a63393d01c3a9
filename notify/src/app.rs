//! The notify service process: bind, then serve until shut down.

use std::{future::Future, net::SocketAddr};

use ssak3_common::{
    config::Config,
    server::{self, ServiceHost},
};

/// The default port of the notify service.
pub const DEFAULT_PORT: u16 = 50053;

/// A notify service bound to its port, ready to run.
#[derive(Debug)]
pub struct App {
    host: ServiceHost,
    grace: std::time::Duration,
}

impl App {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let listen = config
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
        Ok(Self {
            host: ServiceHost::new(server::bind(listen).await?, &[])?,
            grace: config.shutdown_grace(),
        })
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.host.local_addr()
    }

    /// Serves until `shutdown`, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.host.run(async { Ok(()) }, shutdown, self.grace).await
    }
}
