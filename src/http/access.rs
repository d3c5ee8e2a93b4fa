//! Who is calling and how much they may send: API keys (hashed, compared in constant time, reloadable),
//! client identity behind trusted proxies, and the rate limits (global and per client, by requests or by
//! events) with their 429 answers.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::Settings;

/// A caller identified by its API key. The key itself is never kept, only its SHA-256.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    /// Topics it may write; `None` means every topic the service allows.
    pub topics: Option<HashSet<String>>,
    /// Its own limit, if any.
    limiter: Option<(DefaultDirectRateLimiter, Quota)>,
}

impl Tenant {
    pub fn may_write(&self, topic: &str) -> bool {
        self.topics.as_ref().is_none_or(|t| t.contains(topic))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    tenant: String,
    /// The key in clear (hashed at load, never kept) ...
    key: Option<String>,
    /// ... or its SHA-256, hex.
    key_sha256: Option<String>,
    topics: Option<Vec<String>>,
    rate_limit_rps: Option<u32>,
    rate_limit_burst: Option<u32>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn quota(rps: u32, burst: u32) -> Option<Quota> {
    let rps = NonZeroU32::new(rps)?;
    Some(Quota::per_second(rps).allow_burst(NonZeroU32::new(burst.max(1)).expect("max(1)")))
}

/// The configured API keys. Empty means the API is open, as the Go service was.
pub struct ApiKeys {
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
    entries: RwLock<Vec<([u8; 32], Arc<Tenant>)>>,
    loaded_mtime: RwLock<Option<SystemTime>>,
}

impl ApiKeys {
    pub fn load(settings: &Settings) -> Result<Arc<Self>, String> {
        let keys = ApiKeys {
            file: settings.access.api_keys_file.clone(),
            env: settings.access.api_keys_env.clone(),
            entries: RwLock::new(Vec::new()),
            loaded_mtime: RwLock::new(None),
        };
        keys.reload()?;
        Ok(Arc::new(keys))
    }

    pub fn enabled(&self) -> bool {
        !self.entries.read().expect("keys lock").is_empty() || self.file.is_some()
    }

    /// Re-reads the keys; on error the previous set stays in force.
    pub fn reload(&self) -> Result<usize, String> {
        let mut entries = Vec::new();
        for (tenant, key) in &self.env {
            entries.push((digest(key), Arc::new(Tenant { name: tenant.clone(), topics: None, limiter: None })));
        }
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let file: KeysFile = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            for (i, k) in file.keys.into_iter().enumerate() {
                let hash = match (k.key, k.key_sha256) {
                    (Some(key), None) if key.len() >= 16 => digest(&key),
                    (None, Some(hex_hash)) => hex::decode(hex_hash.trim())
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| format!("{}: keys[{i}].key_sha256 is not 64 hex digits", path.display()))?,
                    _ => {
                        return Err(format!(
                            "{}: keys[{i}] needs exactly one of `key` (16+ characters) or `key_sha256`",
                            path.display()
                        ))
                    }
                };
                let limiter =
                    quota(k.rate_limit_rps.unwrap_or(0), k.rate_limit_burst.unwrap_or(k.rate_limit_rps.unwrap_or(1)))
                        .map(|q| (DefaultDirectRateLimiter::direct(q), q));
                let topics = k.topics.map(|t| t.into_iter().collect());
                entries.push((hash, Arc::new(Tenant { name: k.tenant, topics, limiter })));
            }
            *self.loaded_mtime.write().expect("keys lock") = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        }
        let n = entries.len();
        *self.entries.write().expect("keys lock") = entries;
        Ok(n)
    }

    /// Reloads when the file changed since the last load.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.file else { return };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime != *self.loaded_mtime.read().expect("keys lock") {
            self.reload_logged("file changed");
        }
    }

    pub fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(n) => tracing::info!(keys = n, why, "API keys reloaded"),
            Err(e) => tracing::error!(error = %e, why, "API keys not reloaded; the previous keys stay in force"),
        }
    }

    /// The tenant of `presented`, comparing against every key in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<Arc<Tenant>> {
        let hash = digest(presented);
        let entries = self.entries.read().expect("keys lock");
        let mut found = None;
        for (candidate, tenant) in entries.iter() {
            if bool::from(candidate.ct_eq(&hash)) {
                found = Some(tenant.clone());
            }
        }
        found
    }
}

/// Watches for SIGHUP and file changes (checked every 2 s) and reloads the keys.
pub fn watch_keys(keys: Arc<ApiKeys>, stop: tokio_util::sync::CancellationToken) {
    if keys.file.is_none() {
        return;
    }
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            #[cfg(unix)]
            let hup_signal = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup_signal = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hup_signal => keys.reload_logged("SIGHUP"),
                _ = tick.tick() => keys.reload_if_changed(),
            }
        }
    });
}

/// The key a request presents: `Authorization: Bearer`, `X-API-Key`, or `api_key` in the query (for
/// `navigator.sendBeacon`, which cannot set headers).
fn presented_key(req: &Request) -> Option<String> {
    let h = req.headers();
    if let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(token) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            return Some(token.trim().to_string());
        }
    }
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    req.uri().query()?.split('&').find_map(|p| p.strip_prefix("api_key=").map(str::to_string))
}

/// Authenticates an ingest request (keys are configured, or this is not called): a 401 answer without a
/// valid key. Probes and the OpenAPI document stay open. Requests-mode tenant limits are applied here.
pub fn authenticate(state: &AppState, req: &mut Request) -> Result<(), ApiError> {
    if req.method() == axum::http::Method::GET || req.method() == axum::http::Method::OPTIONS {
        return Ok(());
    }
    let Some(tenant) = presented_key(req).and_then(|k| state.access.keys.authenticate(&k)) else {
        state.metrics.rejected("unauthorized", 1);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer, X-API-Key)",
        )
        .header("www-authenticate", "Bearer".to_string()));
    };
    if !state.access.limits.count_events {
        state.access.limits.check_tenant(&tenant, 1).inspect_err(|_| state.metrics.rate_limited("tenant"))?;
    }
    req.extensions_mut().insert(tenant);
    Ok(())
}

/// Rate limits: global and per client. In `requests` mode the global and per-client limits are tower
/// layers (tower_governor); in `events` mode they are checked here once the batch size is known.
pub struct RateLimits {
    pub count_events: bool,
    global: Option<(DefaultDirectRateLimiter, Quota)>,
    client: Option<(DefaultKeyedRateLimiter<String>, Quota)>,
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl RateLimits {
    pub fn from_settings(settings: &Settings) -> Self {
        let rl = &settings.rate_limit;
        RateLimits {
            count_events: rl.count_events,
            global: quota(rl.rps, rl.burst).map(|q| (DefaultDirectRateLimiter::direct(q), q)),
            client: quota(rl.client_rps, rl.client_burst).map(|q| (DefaultKeyedRateLimiter::keyed(q), q)),
            trusted_proxies: rl.trusted_proxies.clone(),
        }
    }

    /// The key a client is limited by: its tenant, else its address (behind trusted proxies, the
    /// forwarded one).
    pub fn client_key(&self, headers: &HeaderMap, peer: Option<SocketAddr>, tenant: Option<&Tenant>) -> String {
        match tenant {
            Some(t) => format!("tenant:{}", t.name),
            None => format!(
                "ip:{}",
                client_ip(headers, peer, &self.trusted_proxies).map_or("unknown".into(), |ip| ip.to_string())
            ),
        }
    }

    fn check_tenant(&self, tenant: &Tenant, n: u32) -> Result<(), ApiError> {
        match &tenant.limiter {
            Some((limiter, q)) => check_n(limiter.check_n(nz(n)), q, "tenant"),
            None => Ok(()),
        }
    }

    /// `events` mode: every limit, counting `n` events.
    pub fn check_events(&self, client: &str, tenant: Option<&Tenant>, n: usize) -> Result<(), ApiError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if let Some((limiter, q)) = &self.global {
            check_n(limiter.check_n(nz(n)), q, "global")?;
        }
        if let Some((limiter, q)) = &self.client {
            check_n(limiter.check_key_n(&client.to_string(), nz(n)), q, "client")?;
        }
        if let Some(t) = tenant {
            self.check_tenant(t, n)?;
        }
        Ok(())
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("max(1)")
}

fn check_n<E>(
    result: Result<Result<(), governor::NotUntil<governor::clock::QuantaInstant>>, E>,
    q: &Quota,
    scope: &'static str,
) -> Result<(), ApiError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Err(rate_limited(scope, q, wait))
        }
        // More events in one request than the burst can ever hold.
        Err(_) => Err(rate_limited(scope, q, q.replenish_interval() * q.burst_size().get())),
    }
}

/// 429 with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` headers.
pub fn rate_limited(scope: &'static str, q: &Quota, wait: Duration) -> ApiError {
    let retry = wait.as_secs_f64().ceil().max(1.0) as u64;
    let per_second = (1.0 / q.replenish_interval().as_secs_f64()).round() as u64;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("over the {scope} rate limit ({per_second}/s, burst {})", q.burst_size()),
    )
    .retry_after(retry)
    .header("ratelimit-policy", format!("\"{scope}\";q={};w=1", per_second.max(1)))
    .header("ratelimit", format!("\"{scope}\";r=0;t={retry}"))
    .with("scope", scope)
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the right-most address in
/// `X-Forwarded-For` / `Forwarded` that is not itself a trusted proxy.
pub fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = peer?.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()) {
        for part in v.split([',', ';']) {
            if let Some(f) = part.trim().strip_prefix("for=").or_else(|| part.trim().strip_prefix("For=")) {
                let f = f.trim_matches('"').trim_start_matches('[');
                let f = f.split(']').next().unwrap_or(f);
                if let Ok(ip) = f.parse::<IpAddr>().or_else(|_| f.parse::<SocketAddr>().map(|s| s.ip())) {
                    chain.push(ip);
                }
            }
        }
    }
    if chain.is_empty() {
        for v in headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()) {
            chain.extend(v.split(',').filter_map(|s| s.trim().parse::<IpAddr>().ok()));
        }
    }
    Some(chain.into_iter().rev().find(|ip| !is_trusted(ip)).unwrap_or(peer))
}

/// The tower_governor key for per-client limits in `requests` mode.
#[derive(Clone)]
pub struct ClientKeyExtractor {
    pub trusted: Arc<Vec<ipnet::IpNet>>,
}

impl tower_governor::key_extractor::KeyExtractor for ClientKeyExtractor {
    type Key = String;

    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<Self::Key, tower_governor::GovernorError> {
        if let Some(t) = req.extensions().get::<Arc<Tenant>>() {
            return Ok(format!("tenant:{}", t.name));
        }
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        Ok(format!(
            "ip:{}",
            client_ip(req.headers(), peer, &self.trusted).map_or("unknown".into(), |ip| ip.to_string())
        ))
    }
}

/// Everything access-related the handlers share.
pub struct Access {
    pub keys: Arc<ApiKeys>,
    pub limits: RateLimits,
}

/// Per-topic permissions: 403 when the tenant may not write `topic`.
pub fn check_topic(tenant: Option<&Arc<Tenant>>, topic: &str) -> Result<(), ApiError> {
    match tenant {
        Some(t) if !t.may_write(topic) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("tenant {:?} may not write topic {topic:?}", t.name),
        )),
        _ => Ok(()),
    }
}

/// The hex SHA-256 of a key, as `key_sha256` in the keys file takes it (so the file need not hold keys).
pub fn hash_hex(key: &str) -> String {
    hex::encode(digest(key))
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tenants: Vec<String> =
            self.entries.read().map(|e| e.iter().map(|(_, t)| t.name.clone()).collect()).unwrap_or_default();
        f.debug_struct("ApiKeys").field("file", &self.file).field("tenants", &tenants).finish()
    }
}
