//! `[[rollout.hooks]]`: HTTP calls made around a rollout (notifications and, for the gating
//! events, a go/no-go answer). Header values may come from files; they are read here, at
//! load, and never printed (`Debug` shows only the header names).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::fields::{duration_between, header_name, invalid, SECOND};
use super::raw::{RawHeaderValue, RawHook};
use super::ConfigError;

/// A rollout event a hook may be called on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookEvent {
    /// Before any traffic moves; a failure aborts the rollout (gating).
    PreRollout,
    /// Before each step's weight after the first; a failure rolls back (gating).
    Step,
    /// Before promotion; a failure rolls back (gating).
    PrePromote,
    Promoted,
    RolledBack,
    Paused,
    Aborted,
}

impl HookEvent {
    pub const ALL: [HookEvent; 7] = [
        HookEvent::PreRollout,
        HookEvent::Step,
        HookEvent::PrePromote,
        HookEvent::Promoted,
        HookEvent::RolledBack,
        HookEvent::Paused,
        HookEvent::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::PreRollout => "pre_rollout",
            HookEvent::Step => "step",
            HookEvent::PrePromote => "pre_promote",
            HookEvent::Promoted => "promoted",
            HookEvent::RolledBack => "rolled_back",
            HookEvent::Paused => "paused",
            HookEvent::Aborted => "aborted",
        }
    }

    /// Gating events wait for the hook's answer; the others only notify.
    pub fn is_gating(self) -> bool {
        matches!(
            self,
            HookEvent::PreRollout | HookEvent::Step | HookEvent::PrePromote
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookFormat {
    /// The event as a JSON object (the documented body).
    Json,
    /// `{"text": "..."}`, what a Slack incoming webhook takes.
    Slack,
}

/// A hook's URL, split for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// `host:port`, for connecting and the Host header.
    pub authority: String,
    pub path_and_query: String,
    /// As configured.
    pub text: String,
}

pub struct HookConfig {
    pub name: String,
    pub on: BTreeSet<HookEvent>,
    pub url: HookUrl,
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub format: HookFormat,
    /// The CA bundle for an https URL; the system bundle when unset.
    pub tls_ca: Option<PathBuf>,
}

impl std::fmt::Debug for HookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HookConfig")
            .field("name", &self.name)
            .field("on", &self.on)
            .field("url", &self.url.text)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("headers", &names)
            .field("format", &self.format)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

pub(super) fn hooks(raw: Vec<RawHook>) -> Result<Vec<std::sync::Arc<HookConfig>>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, h) in raw.into_iter().enumerate() {
        let key = format!("rollout.hooks[{i}]");
        let hook = hook(&key, h)?;
        if !names.insert(hook.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "{:?} names another hook too; give each hook its own name",
                    hook.name
                ),
            ));
        }
        out.push(std::sync::Arc::new(hook));
    }
    Ok(out)
}

fn hook(key: &str, raw: RawHook) -> Result<HookConfig, ConfigError> {
    let name = match raw.name {
        Some(n) if !n.is_empty() && n.len() <= 64 && !n.chars().any(char::is_control) => n,
        _ => {
            return Err(invalid(
                format!("{key}.name"),
                "is missing or empty; name the hook (up to 64 characters), e.g. \"smoke-test\"",
            ))
        }
    };
    let known = HookEvent::ALL.map(HookEvent::as_str).join(", ");
    let on_key = format!("{key}.on");
    let mut on = BTreeSet::new();
    for event in raw.on.unwrap_or_default() {
        let Some(e) = HookEvent::ALL.into_iter().find(|e| e.as_str() == event) else {
            return Err(invalid(
                on_key,
                format!("{event:?} is not a rollout event; use some of: {known}"),
            ));
        };
        on.insert(e);
    }
    if on.is_empty() {
        return Err(invalid(
            on_key,
            format!("is missing or empty; list the events to call the hook on, out of: {known}"),
        ));
    }
    let url = url(&format!("{key}.url"), raw.url.as_deref())?;
    let timeout = duration_between(
        &format!("{key}.timeout"),
        raw.timeout,
        5 * SECOND,
        Duration::from_millis(10),
        Some(60 * SECOND),
    )?;
    let retries = raw.retries.unwrap_or(2);
    if retries > 10 {
        return Err(invalid(
            format!("{key}.retries"),
            format!("{retries} is too many; use at most 10 (the default is 2)"),
        ));
    }
    let mut headers = Vec::new();
    for (hname, value) in raw.headers.unwrap_or_default() {
        let hkey = format!("{key}.headers.{hname}");
        let n = header_name(&hkey, &hname)?;
        let text = match value {
            RawHeaderValue::Text(t) => t,
            RawHeaderValue::File { file } => std::fs::read_to_string(&file)
                .map_err(|e| {
                    invalid(
                        hkey.clone(),
                        format!("cannot read the value's file {file:?}: {e}; give a readable file"),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        };
        let mut v = HeaderValue::from_str(&text).map_err(|_| {
            // The value is a secret: never echoed.
            invalid(
                hkey.clone(),
                "the value is not a valid HTTP header value (control characters?); it is not shown",
            )
        })?;
        v.set_sensitive(true);
        headers.push((n, v));
    }
    let format = match raw.format.as_deref() {
        None | Some("json") => HookFormat::Json,
        Some("slack") => HookFormat::Slack,
        Some(other) => {
            return Err(invalid(
                format!("{key}.format"),
                format!("{other:?} is not a format; use \"json\" (the default) or \"slack\""),
            ))
        }
    };
    let tls_ca = match raw.tls_ca {
        None => None,
        Some(p) if p.is_empty() => {
            return Err(invalid(
                format!("{key}.tls_ca"),
                "is empty; give a PEM bundle path or leave it out for the system bundle",
            ))
        }
        Some(p) => Some(PathBuf::from(p)),
    };
    Ok(HookConfig {
        name,
        on,
        url,
        timeout,
        retries,
        headers,
        format,
        tls_ca,
    })
}

/// `http://host[:port]/path` or `https://...`.
pub(super) fn url(key: &str, raw: Option<&str>) -> Result<HookUrl, ConfigError> {
    let example = "e.g. \"https://hooks.example.com/rollout\"";
    let Some(text) = raw.filter(|t| !t.is_empty()) else {
        return Err(invalid(
            key,
            format!("is missing; give an http or https URL, {example}"),
        ));
    };
    let bad = |why: &str| invalid(key, format!("{text:?} {why}; {example}"));
    let uri: Uri = text.parse().map_err(|_| bad("is not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("is not an http or https URL")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("has no host"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("carries credentials; put them in a header instead"));
    }
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    Ok(HookUrl {
        https,
        host,
        port,
        authority,
        path_and_query,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_refuse_what_is_not_http() {
        let u = url("k", Some("http://127.0.0.1:9/x?y=1")).expect("valid");
        assert_eq!(
            (u.authority.as_str(), u.path_and_query.as_str()),
            ("127.0.0.1:9", "/x?y=1")
        );
        let u = url("k", Some("https://example.com")).expect("valid");
        assert_eq!(
            (u.port, u.https, u.path_and_query.as_str()),
            (443, true, "/")
        );
        for bad in ["ftp://x/", "example.com/x", "", "http://u:p@h/"] {
            assert!(url("k", Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_events_and_secret_values_are_handled() {
        let raw = RawHook {
            name: Some("n".into()),
            on: Some(vec!["promoted".into(), "deployed".into()]),
            url: Some("http://127.0.0.1:1/".into()),
            ..RawHook::default()
        };
        let e = hook("rollout.hooks[0]", raw)
            .expect_err("unknown event")
            .to_string();
        assert!(
            e.contains("rollout.hooks[0].on") && e.contains("deployed"),
            "{e}"
        );
        let mut headers = std::collections::BTreeMap::new();
        headers.insert(
            "Authorization".to_string(),
            RawHeaderValue::Text("Bearer s3cret".into()),
        );
        let raw = RawHook {
            name: Some("n".into()),
            on: Some(vec!["promoted".into()]),
            url: Some("http://127.0.0.1:1/".into()),
            headers: Some(headers),
            ..RawHook::default()
        };
        let h = hook("k", raw).expect("valid");
        let shown = format!("{h:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("authorization"),
            "{shown}"
        );
    }
}
