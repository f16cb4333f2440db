//! A real Prometheus for the query gate tests: started by pid on a free loopback port with a
//! temporary config and data directory, scraping the given targets every second, killed when
//! dropped. Without the `prometheus` binary the tests fail (they do not skip) and say how to
//! install it. Also a test exporter whose values a test sets.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const INSTALL: &str = "prometheus is needed by the query gate tests: run `bash scripts/install-test-deps.sh` (Debian's prometheus)";

pub struct Prometheus {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port no socket holds right now (the listener is closed before Prometheus binds it).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

impl Prometheus {
    /// Scrapes `targets` (`/metrics`) every second; returns once `/-/ready` answers 200.
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        let found = Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(matches!(found, Ok(s) if s.success()), "{INSTALL}");
        let dir = tempfile::tempdir().expect("temp dir");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: [{list}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL} (spawning it failed: {e})"));
        let p = Prometheus {
            port,
            child: Some(child),
            dir,
        };
        p.wait_ready(Duration::from_secs(30)).await;
        p
    }

    /// The base URL, for `prometheus = "..."`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, by its pid) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let c = super::client();
        let req = hyper::Request::get(format!("{}{path}", self.url()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(2), c.request(req))
            .await
            .ok()?
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn wait_ready(&self, deadline: Duration) {
        let start = Instant::now();
        while !matches!(self.get("/-/ready").await, Some((200, _))) {
            assert!(
                start.elapsed() < deadline,
                "prometheus not ready after {deadline:?}; log in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an instant query of `metric` returns a series (it was scraped).
    pub async fn wait_for_series(&self, metric: &str, deadline: Duration) {
        let start = Instant::now();
        loop {
            let answer = self.get(&format!("/api/v1/query?query={metric}")).await;
            if answer.is_some_and(|(s, b)| s == 200 && b.contains("\"value\"")) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "prometheus has no {metric} after {deadline:?}; log in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A `/metrics` endpoint on 127.0.0.1:0 serving `test_error_ratio{pool}` for both pools.
pub struct Exporter {
    pub addr: SocketAddr,
    values: Arc<Mutex<[f64; 2]>>,
}

impl Exporter {
    pub async fn start() -> Exporter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let values = Arc::new(Mutex::new([0.0; 2]));
        let v = values.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let v = v.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                        let [blue, green] = *v.lock().unwrap();
                        let text = format!(
                            "# TYPE test_error_ratio gauge\ntest_error_ratio{{pool=\"blue\"}} {blue}\ntest_error_ratio{{pool=\"green\"}} {green}\n"
                        );
                        async move {
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "text/plain; version=0.0.4")
                                    .body(Full::new(Bytes::from(text)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Exporter { addr, values }
    }

    /// Sets `test_error_ratio{pool="blue"}`.
    pub fn set_blue(&self, value: f64) {
        self.values.lock().unwrap()[0] = value;
    }

    /// Sets `test_error_ratio{pool="green"}`.
    pub fn set_green(&self, value: f64) {
        self.values.lock().unwrap()[1] = value;
    }
}
