//! CONTROL PLANE: who may use the admin socket. A pure decision over the peer's
//! SO_PEERCRED identity and the `[admin]` lists, so it is tested with arbitrary uids.
//!
//! Levels: admin (every verb), read-only (`status`, `gates`, `watch`, `help`), denied.
//! By default root and the daemon's own uid are admins without being listed (they can
//! rewrite the socket and state file anyway). [`AccessPolicy::implicit_admins`] `= false`
//! makes the configured lists exhaustive; the tests use it, since they run as root.

use serde::Serialize;

use crate::config::AdminConfig;

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Admin,
    ReadOnly,
    Denied,
}

/// The peer of an admin connection, from SO_PEERCRED (`pid` is absent on some kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// The rules [`decide`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    pub admin_uids: Vec<u32>,
    pub admin_gids: Vec<u32>,
    pub readonly_uids: Vec<u32>,
    pub readonly_gids: Vec<u32>,
    /// The daemon's own uid (the socket's owner).
    pub own_uid: u32,
    /// Whether root and `own_uid` are admins without being listed.
    pub implicit_admins: bool,
}

impl AccessPolicy {
    pub fn from_config(cfg: &AdminConfig, own_uid: u32, implicit_admins: bool) -> Self {
        AccessPolicy {
            admin_uids: cfg.admin_uids.clone(),
            admin_gids: cfg.admin_gids.clone(),
            readonly_uids: cfg.readonly_uids.clone(),
            readonly_gids: cfg.readonly_gids.clone(),
            own_uid,
            implicit_admins,
        }
    }
}

/// The access level of `peer`. Only the peer's primary gid is checked (SO_PEERCRED
/// carries no supplementary groups).
pub fn decide(policy: &AccessPolicy, peer: &Peer) -> Access {
    let p = policy;
    let implicit = p.implicit_admins && (peer.uid == 0 || peer.uid == p.own_uid);
    if implicit || p.admin_uids.contains(&peer.uid) || p.admin_gids.contains(&peer.gid) {
        Access::Admin
    } else if p.readonly_uids.contains(&peer.uid) || p.readonly_gids.contains(&peer.gid) {
        Access::ReadOnly
    } else {
        Access::Denied
    }
}

/// Whether a peer at `access` may run a command; `mutation` per `AdminCommand::is_mutation`.
pub fn allows(access: Access, mutation: bool) -> bool {
    match access {
        Access::Admin => true,
        Access::ReadOnly => !mutation,
        Access::Denied => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(implicit_admins: bool) -> AccessPolicy {
        AccessPolicy {
            admin_uids: vec![1001],
            admin_gids: vec![500],
            readonly_uids: vec![2002],
            readonly_gids: vec![600],
            own_uid: 999,
            implicit_admins,
        }
    }

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: Some(42),
        }
    }

    #[test]
    fn listed_uids_and_gids_get_their_level() {
        let p = policy(true);
        assert_eq!(decide(&p, &peer(1001, 1)), Access::Admin);
        assert_eq!(decide(&p, &peer(7, 500)), Access::Admin);
        assert_eq!(decide(&p, &peer(2002, 1)), Access::ReadOnly);
        assert_eq!(decide(&p, &peer(7, 600)), Access::ReadOnly);
        assert_eq!(decide(&p, &peer(7, 7)), Access::Denied);
        // Admin wins over read-only when both lists match.
        assert_eq!(decide(&p, &peer(2002, 500)), Access::Admin);
    }

    #[test]
    fn root_and_own_uid_are_admins_only_when_implicit() {
        assert_eq!(decide(&policy(true), &peer(0, 0)), Access::Admin);
        assert_eq!(decide(&policy(true), &peer(999, 0)), Access::Admin);
        assert_eq!(decide(&policy(false), &peer(0, 0)), Access::Denied);
        assert_eq!(decide(&policy(false), &peer(999, 999)), Access::Denied);
        let mut ro_root = policy(false);
        ro_root.readonly_uids.push(0);
        assert_eq!(decide(&ro_root, &peer(0, 0)), Access::ReadOnly);
    }

    #[test]
    fn read_only_may_read_but_not_mutate() {
        assert!(allows(Access::Admin, true));
        assert!(allows(Access::ReadOnly, false));
        assert!(!allows(Access::ReadOnly, true));
        assert!(!allows(Access::Denied, false));
        for uid in [1u32, 3, 65534, u32::MAX] {
            let a = decide(&policy(false), &peer(uid, uid));
            assert!(!allows(a, true), "uid {uid} must not mutate");
        }
    }
}
