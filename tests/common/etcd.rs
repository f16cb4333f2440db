//! A real etcd for the fleet tests: one member or a three-member cluster on free loopback
//! ports with a temporary data directory, killed by pid when dropped. Without the `etcd`
//! binary the tests fail (they do not skip) and say how to install it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL: &str =
    "etcd is needed by the fleet tests: run `bash scripts/install-test-deps.sh` (Debian's etcd-server)";

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A port no socket holds right now (the listener is closed before etcd binds it).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

impl Etcd {
    /// One member.
    pub fn single() -> Etcd {
        Self::cluster(1)
    }

    /// `n` members forming one cluster.
    pub fn cluster(n: usize) -> Etcd {
        let found = Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(matches!(found, Ok(s) if s.success()), "{INSTALL}");
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut etcd = Etcd { members, dir };
        for i in 0..n {
            etcd.start(i);
        }
        etcd.wait_ready(Duration::from_secs(30));
        etcd
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again, after [`Etcd::kill`]: same ports and data).
    pub fn start(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .expect("etcd log file");
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "switchyard-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL} (spawning it failed: {e})"));
        m.child = Some(child);
    }

    /// Kills member `i` (SIGKILL, by its pid) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes member `i` (SIGSTOP, by its pid): its sockets stay open and say nothing, as
    /// in a network partition. [`Etcd::thaw`] lets it go on.
    pub fn freeze(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets a frozen member go on (SIGCONT).
    pub fn thaw(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.members[i]
            .child
            .as_ref()
            .expect("the member is running")
            .id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// Client URLs, for `[fleet] etcd`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// A `[fleet]` section for an instance of this etcd.
    pub fn fleet_toml(&self, prefix: &str, instance: &str) -> String {
        let list = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!("\n[fleet]\netcd = [{list}]\nprefix = \"{prefix}\"\ninstance = \"{instance}\"\nlease_ttl = \"2s\"\npublish_interval = \"100ms\"\n")
    }

    /// Waits until every running member answers a write through the JSON gateway.
    pub fn wait_ready(&self, deadline: Duration) {
        let start = Instant::now();
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                let ok = Command::new("etcdctl")
                    .args(["--endpoints", &format!("http://127.0.0.1:{}", m.client)])
                    .args(["--command-timeout", "2s", "put", "/ready", "1"])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                assert!(
                    start.elapsed() < deadline,
                    "etcd member {} not ready after {deadline:?}; log in {}",
                    m.name,
                    self.dir.path().display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
