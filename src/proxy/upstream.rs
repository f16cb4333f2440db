//! DATA PLANE: the keep-alive HTTP/1.1 client that carries requests to one pool's backends.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::proxy::body::LimitedBody;

/// Knobs of an upstream client, from `proxy.timeouts` and `pools.*`.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
}

/// One client per pool; its connection pool is keyed by backend address.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    pub client: Client<HttpConnector, LimitedBody>,
}

impl UpstreamClient {
    pub fn new(opts: &UpstreamOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(opts.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(opts.idle_timeout)
            .pool_max_idle_per_host(opts.max_idle_per_backend)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The downstream Host header is forwarded as it came; never invent one.
            .set_host(true)
            .build(connector);
        UpstreamClient { client }
    }
}
