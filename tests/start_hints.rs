//! A daemon that cannot start says how to fix it: a normal user whose config names an admin
//! socket in a directory it cannot create gets the fix, not only the errno.
// Helpers outside #[test] fns unwrap too: a panic there is a failed assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

#[test]
fn an_admin_socket_the_user_cannot_create_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let config = dir.path().join("switchyard.toml");
    // The admin socket under a directory only its owner may write to: as root the test runs
    // the daemon as `nobody`; as anyone else, the user itself cannot write to /proc.
    let (forbidden, as_nobody) = if common::own_ids().0 == 0 {
        (dir.path().join("root-only/admin.sock"), true)
    } else {
        ("/proc/switchyard/admin.sock".into(), false)
    };
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[pools.blue]\nbackends = [\"127.0.0.1:9\"]\n\
             [pools.green]\nbackends = [\"127.0.0.1:9\"]\n[admin]\nsocket = \"{}\"\n\
             [metrics]\nlisten = \"\"\n[state]\npath = \"{}/state.json\"\n",
            forbidden.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let (bin, _copy) = common::executable_by_others();
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd
        .args(["run", "--log-format", "text", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot create the admin socket")
            && stderr.contains("set [admin] socket to a path in a directory this user can write"),
        "{stderr}"
    );
}
