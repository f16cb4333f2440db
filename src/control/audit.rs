//! CONTROL PLANE: the audit log — one JSON line per mutation, applied or refused.
//!
//! A line: `{"time":"2025-01-31T12:00:00.123Z","actor":{"kind":"admin","uid":0,"gid":0,
//! "pid":1234},"command":"weight 37","outcome":"applied","generation":8,
//! "changes":[{"field":"green_percent","old":0.0,"new":37.0}]}`; a refusal carries
//! `"outcome":"refused","error":{"code":...,"message":...}` instead of changes. Each line is
//! one `write` on a file opened with O_APPEND (mode 0600), so concurrent writers do not
//! interleave. A failing audit log is logged and never blocks the command.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tracing::warn;

use super::command::AdminError;
use super::Actor;

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl AuditLog {
    /// Opens (creating) the log; a failure here is reported again on every write.
    pub fn open(path: &Path) -> AuditLog {
        let log = AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(None),
        };
        if let Err(e) = log.with_file(|_| Ok(())) {
            warn!(path = %path.display(), error = %e, "cannot open the audit log");
        }
        log
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_file(&self, f: impl FnOnce(&mut File) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut slot = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            *slot = Some(file);
        }
        match slot.as_mut() {
            Some(file) => f(file),
            None => Ok(()),
        }
    }

    /// Appends one record (see the module doc for its shape).
    pub fn record(
        &self,
        actor: &Actor,
        command: &str,
        generation: u64,
        outcome: Result<&[Value], &AdminError>,
    ) {
        let mut line = json!({
            "time": rfc3339(SystemTime::now()),
            "actor": actor,
            "command": command,
            "generation": generation,
        });
        match outcome {
            Ok(changes) => {
                line["outcome"] = json!(if changes.is_empty() {
                    "unchanged"
                } else {
                    "applied"
                });
                line["changes"] = Value::Array(changes.to_vec());
            }
            Err(e) => {
                line["outcome"] = json!("refused");
                line["error"] = json!({ "code": e.code, "message": e.message });
            }
        }
        let mut text = line.to_string();
        text.push('\n');
        if let Err(e) = self.with_file(|f| f.write_all(text.as_bytes())) {
            warn!(path = %self.path.display(), error = %e, "audit log write failed");
            // Reopen next time: the file may have been rotated away or the disk fixed.
            *self.file.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day) 12:34:56.789
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_827_696_789)),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_735_689_599)),
            "2024-12-31T23:59:59.000Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_107_542_400)),
            "2100-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn appends_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        let log = AuditLog::open(&path);
        let actor = Actor::admin(crate::control::access::Peer {
            uid: 7,
            gid: 8,
            pid: Some(9),
        });
        log.record(
            &actor,
            "weight 5",
            3,
            Ok(&[json!({"field":"green_percent","old":0.0,"new":5.0})]),
        );
        log.record(
            &actor,
            "weight 5 expect-gen 1",
            3,
            Err(&AdminError::new("conflict", "stale")),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["actor"]["uid"], 7);
        assert_eq!(lines[0]["actor"]["pid"], 9);
        assert_eq!(lines[0]["outcome"], "applied");
        assert_eq!(lines[1]["outcome"], "refused");
        assert_eq!(lines[1]["error"]["code"], "conflict");
    }
}
