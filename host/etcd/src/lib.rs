//! The control plane's etcd (issue 13): a blocking client of etcd's v3 API and, on it, leader
//! election among `gantry up` replicas ([`election`]).
//!
//! The client speaks the v3 API through etcd's own JSON gateway (`POST /v3/kv/range`, ...), the
//! same RPCs as its gRPC port, served by etcd itself. Why not the `etcd-client` crate: its build
//! runs `protoc` (tonic-prost-build), which a fresh machine does not have, and the README's
//! commands must build there; the gateway needs nothing beyond the HTTP client the CLI already
//! uses. Keys and values are bytes (base64 on the wire); 64-bit numbers travel as strings.
//!
//! Every call goes to one endpoint and moves on to the next when that one cannot be reached, so
//! a client of a three-member cluster keeps working while one member is down. Answers are
//! bounded ([`MAX_ANSWER`]) before they are read.

pub mod election;
pub mod testing;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};

/// The largest answer read from etcd, bytes (etcd's own request limit is 1.5 MiB; a range over
/// many keys may be larger).
pub const MAX_ANSWER: u64 = 64 << 20;

/// How many keys one range read asks for at most: a page of values of up to 128 KiB (the
/// control plane writes none larger: a request body is at most 64 KiB) is at most 11 MiB as
/// base64, well under [`MAX_ANSWER`] and read within a call's timeout.
pub const PAGE: u64 = 64;

/// The pause between rounds of a call while no member answers or none has a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How many times a consistent read of many pages starts again when etcd compacted the
/// revision it read at before it was done.
const COMPACTED_RETRIES: u32 = 3;

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// An endpoint given is not a `http://host:port` URL (`https://` with TLS).
    #[error("etcd endpoint `{0}`: expected http://HOST:PORT, or https://HOST:PORT with TLS")]
    BadEndpoint(String),
    /// The TLS certificates or key given do not read.
    #[error("TLS to etcd: {0}")]
    BadTls(String),
    /// No endpoint answered.
    #[error("no etcd endpoint answered ({endpoints}): {last}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last endpoint's failure.
        last: String,
    },
    /// etcd answered with an error.
    #[error("etcd at {endpoint}: {message} (code {code})")]
    Server {
        /// Which endpoint.
        endpoint: String,
        /// etcd's gRPC status code (5: not found, 9: failed precondition, ...).
        code: i64,
        /// Its message.
        message: String,
    },
    /// An answer that is not what the v3 API sends.
    #[error("etcd at {endpoint}: malformed answer: {message}")]
    Malformed {
        /// Which endpoint.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
    /// A write through a fenced client ([`Etcd::fenced`]) whose fence did not hold: this
    /// replica does not lead (any more), and nothing was written.
    #[error("this control plane does not lead: the write was refused")]
    Fenced,
}

impl EtcdError {
    /// Whether etcd said the revision read at is compacted away (`OutOfRange`): what a read
    /// pinned to a revision meets once `--auto-compaction-retention` revisions were written
    /// after it.
    pub fn compacted(&self) -> bool {
        matches!(self, EtcdError::Server { code: 11, message, .. } if message.contains("compacted"))
    }
}

/// What every write of a fenced client must hold: the compare (a leader's term) that makes it
/// land only while its writer leads, or `None` when no write may go (it leads no more).
pub type Fence = std::sync::Arc<dyn Fn() -> Option<Compare> + Send + Sync>;

/// A key and its value as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created the key (0: it does not exist).
    pub create_revision: i64,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// A condition of a transaction on one key.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's create revision equals this (0: the key does not exist).
    Created(Vec<u8>, i64),
    /// The key's mod revision equals this.
    Modified(Vec<u8>, i64),
    /// The key's value equals this.
    Value(Vec<u8>, Vec<u8>),
}

impl Compare {
    /// The key it compares.
    pub fn key(&self) -> &[u8] {
        match self {
            Compare::Created(k, _) | Compare::Modified(k, _) | Compare::Value(k, _) => k,
        }
    }

    /// Whether it holds of `kv` (`None`: the key does not exist).
    pub fn holds(&self, kv: Option<&Kv>) -> bool {
        match (self, kv) {
            (Compare::Created(_, 0), None) => true,
            (Compare::Created(_, r), Some(kv)) => kv.create_revision == *r,
            (Compare::Modified(_, r), Some(kv)) => kv.mod_revision == *r,
            (Compare::Value(_, v), Some(kv)) => kv.value == *v,
            _ => false,
        }
    }
}

/// An operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Sets a key, attached to a lease when not 0.
    Put(Vec<u8>, Vec<u8>, i64),
    /// Deletes a key.
    Delete(Vec<u8>),
    /// Deletes every key that starts with a prefix.
    DeletePrefix(Vec<u8>),
    /// Reads a key.
    Get(Vec<u8>),
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether every compare held (then the success ops ran, else the failure ops).
    pub succeeded: bool,
    /// The store's revision after it.
    pub revision: i64,
    /// What each `Get` among the ops that ran found, in order.
    pub gets: Vec<Option<Kv>>,
}

/// TLS to etcd: the CA that signed its members' certificates, and this client's certificate
/// and key (PEM) for an etcd that asks for one (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA's certificate(s), PEM.
    pub ca_pem: Vec<u8>,
    /// This client's certificate chain and private key, PEM.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdTls {
    fn config(&self) -> Result<ureq::tls::TlsConfig, EtcdError> {
        use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig, parse_pem};
        let certs = |pem: &[u8], what: &str| {
            let certs: Vec<_> = parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(EtcdError::BadTls(format!("{what}: no PEM certificate")));
            }
            Ok(certs)
        };
        let mut config = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&certs(&self.ca_pem, "the CA")?));
        if let Some((chain, key)) = &self.client {
            let key = parse_pem(key)
                .find_map(|item| match item {
                    Ok(PemItem::PrivateKey(k)) => Some(k),
                    _ => None,
                })
                .ok_or_else(|| EtcdError::BadTls("the client key: no PEM private key".into()))?;
            let chain = certs(chain, "the client certificate")?;
            config = config.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        Ok(config.build())
    }
}

/// A client of an etcd cluster.
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The endpoint that answered last: tried first.
    current: AtomicUsize,
    /// How long a call may take, retries included.
    timeout: Duration,
    /// What each write must hold, for a leader's client ([`Etcd::fenced`]).
    fence: Option<Fence>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("fenced", &self.fence.is_some())
            .finish()
    }
}

impl Etcd {
    /// A client of the cluster at `endpoints` (`http://host:port`), each call bounded by
    /// `timeout` per request, and its retries by `timeout` in all. Nothing is contacted yet.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Etcd, EtcdError> {
        Self::new_tls(endpoints, timeout, None)
    }

    /// [`Etcd::new`], over TLS when `tls` is given (then every endpoint is `https://`).
    pub fn new_tls(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<&EtcdTls>,
    ) -> Result<Etcd, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::BadEndpoint(String::new()));
        }
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let e = e.trim().trim_end_matches('/');
                let rest = e
                    .strip_prefix(scheme)
                    .ok_or_else(|| EtcdError::BadEndpoint(e.into()))?;
                if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
                    return Err(EtcdError::BadEndpoint(e.into()));
                }
                Ok(e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false);
        if let Some(tls) = tls {
            config = config.tls_config(tls.config()?);
        }
        let agent = config.build().new_agent();
        Ok(Etcd {
            endpoints,
            agent,
            current: AtomicUsize::new(0),
            timeout,
            fence: None,
        })
    }

    /// This client, each of its writes (`put`, `delete`, `txn`) made to hold `fence` in the
    /// same transaction: a leader's writes through it land only while it leads, whichever of
    /// its stores makes them (one such write not fenced let a deposed leader, paused and
    /// resumed, record a dataset past a tenant's quota). Plain reads (`get`, `prefix`) are as
    /// they were; a transaction is fenced whatever its ops, reads only included.
    pub fn fenced(&self, fence: Fence) -> Etcd {
        Etcd {
            endpoints: self.endpoints.clone(),
            agent: self.agent.clone(),
            current: AtomicUsize::new(self.current.load(Ordering::Relaxed)),
            timeout: self.timeout,
            fence: Some(fence),
        }
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Calls `path` with `body` on the first endpoint that answers.
    /// Calls `path` with `body`: each endpoint in turn from the one that answered last, again
    /// after a pause while none answers or the members are between leaders (etcd's
    /// `Unavailable`: no leader, leader changed), until the client's timeout has passed.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            match self.call_round(path, body) {
                Err(e @ (EtcdError::Unreachable { .. } | EtcdError::Server { code: 14, .. }))
                    if std::time::Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tracing::debug!(error = %e, "etcd: trying again");
                    std::thread::sleep(RETRY_PAUSE);
                }
                answer => return answer,
            }
        }
    }

    /// One round of [`Etcd::call`]: the endpoints in turn while they cannot be reached or have
    /// no leader.
    fn call_round(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        let mut unavailable = None;
        for i in 0..self.endpoints.len() {
            let at = (start + i) % self.endpoints.len();
            let endpoint = &self.endpoints[at];
            let response = match self
                .agent
                .post(&format!("{endpoint}{path}"))
                .send_json(body)
            {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{endpoint}: {e}");
                    continue;
                }
            };
            self.current.store(at, Ordering::Relaxed);
            let status = response.status().as_u16();
            let malformed = |message: String| EtcdError::Malformed {
                endpoint: endpoint.clone(),
                message,
            };
            let value: Value = response
                .into_body()
                .with_config()
                .limit(MAX_ANSWER)
                .read_json()
                .map_err(|e| malformed(format!("{path}: {e}")))?;
            if let Some(message) = value.get("error").and_then(Value::as_str) {
                let code = value.get("code").and_then(Value::as_i64).unwrap_or(-1);
                let error = EtcdError::Server {
                    endpoint: endpoint.clone(),
                    code,
                    message: message.to_string(),
                };
                // A member without a leader: another may have one.
                if code == 14 {
                    unavailable = Some(error);
                    continue;
                }
                return Err(error);
            }
            if status != 200 {
                return Err(malformed(format!("{path}: HTTP {status}")));
            }
            return Ok(value);
        }
        Err(unavailable.unwrap_or(EtcdError::Unreachable {
            endpoints: self.endpoints.join(","),
            last,
        }))
    }

    fn malformed(&self, message: impl Into<String>) -> EtcdError {
        EtcdError::Malformed {
            endpoint: self.endpoints[self.current.load(Ordering::Relaxed)].clone(),
            message: message.into(),
        }
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let answer = self.call("/v3/kv/range", &json!({ "key": B64.encode(key) }))?;
        Ok(self.kvs(&answer)?.into_iter().next())
    }

    /// Every key that starts with `prefix`, in key order; at most `limit` of them (0: all).
    pub fn prefix(&self, prefix: &[u8], limit: u64) -> Result<Vec<Kv>, EtcdError> {
        self.range_pages(prefix, limit, false)
    }

    /// The keys (and their revisions, without values) that start with `prefix`, in key order.
    pub fn prefix_keys(&self, prefix: &[u8]) -> Result<Vec<Kv>, EtcdError> {
        self.range_pages(prefix, 0, true)
    }

    /// Every key that starts with `prefix`, with its value, handed to `each` a page of
    /// [`PAGE`] keys at a time, in key order, each page as etcd holds it when it is read: for a
    /// walk over a prefix that must not hold all of it at once (a rewrite of every value),
    /// which needs no one view of the whole. Pinned to its first page's revision, a long walk
    /// failed once etcd compacted past it.
    pub fn prefix_pages<E: From<EtcdError>>(
        &self,
        prefix: &[u8],
        each: impl FnMut(Vec<Kv>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.pages(prefix, 0, false, false, each)
    }

    /// A range read in pages of [`PAGE`] keys, all at the revision of the first, so that no
    /// answer grows with the store (one answer is at most [`MAX_ANSWER`]) and the whole is one
    /// consistent view.
    fn range_pages(
        &self,
        prefix: &[u8],
        limit: u64,
        keys_only: bool,
    ) -> Result<Vec<Kv>, EtcdError> {
        let mut all = Vec::new();
        self.consistent_pages(prefix, limit, keys_only, |page, first| {
            if first {
                all.clear();
            }
            all.extend(page);
        })?;
        Ok(all)
    }

    /// [`Etcd::range_pages`]'s walk, each page handed to `each` with whether it is the first of
    /// a walk: one that etcd compacted the revision of before it was done starts again (at
    /// most [`COMPACTED_RETRIES`] times), at the newest revision, its first page saying so.
    fn consistent_pages(
        &self,
        prefix: &[u8],
        limit: u64,
        keys_only: bool,
        mut each: impl FnMut(Vec<Kv>, bool),
    ) -> Result<(), EtcdError> {
        let mut tries = 0;
        loop {
            let mut first = true;
            let walked = self.pages(prefix, limit, keys_only, true, |page| {
                each(page, std::mem::take(&mut first));
                Ok::<(), EtcdError>(())
            });
            match walked {
                Err(e) if e.compacted() && tries < COMPACTED_RETRIES => {
                    tracing::debug!(error = %e, "etcd: a paged read starts again");
                    tries += 1;
                }
                walked => return walked,
            }
        }
    }

    /// A walk over `prefix` in pages, each handed to `each`, at most `limit` keys in all (0:
    /// all); every page at the first one's revision where `pinned` (one view of the whole).
    fn pages<E: From<EtcdError>>(
        &self,
        prefix: &[u8],
        limit: u64,
        keys_only: bool,
        pinned: bool,
        mut each: impl FnMut(Vec<Kv>) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut revision: Option<i64> = None;
        let mut seen = 0u64;
        loop {
            let want = match limit {
                0 => PAGE,
                l => PAGE.min(l - seen),
            };
            let mut body = json!({
                "key": B64.encode(&from),
                "range_end": B64.encode(&end),
                "limit": want.to_string(),
                "keys_only": keys_only,
            });
            if let Some(r) = revision {
                body["revision"] = r.to_string().into();
            }
            let answer = self.call("/v3/kv/range", &body)?;
            if pinned {
                revision.get_or_insert(self.revision(&answer)?);
            }
            let page = self.kvs(&answer)?;
            let more = answer.get("more").and_then(Value::as_bool).unwrap_or(false);
            let Some(last) = page.last() else {
                return Ok(());
            };
            // The next page starts just after this one's last key.
            from = last.key.clone();
            from.push(0);
            seen += page.len() as u64;
            each(page)?;
            if !more || (limit != 0 && seen >= limit) {
                return Ok(());
            }
        }
    }

    /// Sets `key` to `value` (attached to `lease` when not 0); returns the new revision.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        if self.fence.is_some() {
            let op = Op::Put(key.to_vec(), value.to_vec(), lease);
            return Ok(self.txn(&[], &[op], &[])?.revision);
        }
        let answer = self.call("/v3/kv/put", &put_body(key, value, lease))?;
        self.revision(&answer)
    }

    /// Deletes `key`; returns whether it existed (through a fenced client: whether it was
    /// there just before).
    pub fn delete(&self, key: &[u8]) -> Result<bool, EtcdError> {
        if self.fence.is_some() {
            let ops = [Op::Get(key.to_vec()), Op::Delete(key.to_vec())];
            let outcome = self.txn(&[], &ops, &[])?;
            return Ok(outcome.gets.first().is_some_and(Option::is_some));
        }
        let answer = self.call("/v3/kv/deleterange", &json!({ "key": B64.encode(key) }))?;
        Ok(number(&answer, "deleted").unwrap_or(0) > 0)
    }

    /// Runs `success` if every compare holds, else `failure`, as one atomic step. Through a
    /// fenced client, the fence is one more compare, and a transaction it fails is an error
    /// ([`EtcdError::Fenced`]), never a failure the caller's compares would explain; `failure`
    /// may then only read (`Op::Get`): it would run whichever compare failed.
    pub fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnOutcome, EtcdError> {
        let Some(fence) = &self.fence else {
            return self.txn_unfenced(compare, success, failure);
        };
        assert!(
            failure.iter().all(|op| matches!(op, Op::Get(_))),
            "a fenced transaction's failure ops only read"
        );
        let fence = fence().ok_or(EtcdError::Fenced)?;
        let mut compares = compare.to_vec();
        compares.push(fence.clone());
        let mut failure = failure.to_vec();
        failure.push(Op::Get(fence.key().to_vec()));
        let mut outcome = self.txn_unfenced(&compares, success, &failure)?;
        if !outcome.succeeded {
            let found = outcome.gets.pop().flatten();
            if !fence.holds(found.as_ref()) {
                return Err(EtcdError::Fenced);
            }
        }
        Ok(outcome)
    }

    fn txn_unfenced(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnOutcome, EtcdError> {
        let compare: Vec<Value> = compare.iter().map(compare_json).collect();
        let ops = |ops: &[Op]| ops.iter().map(op_json).collect::<Vec<_>>();
        let body = json!({ "compare": compare, "success": ops(success), "failure": ops(failure) });
        let answer = self.call("/v3/kv/txn", &body)?;
        let succeeded = answer
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut gets = Vec::new();
        let responses = answer.get("responses").and_then(Value::as_array);
        for r in responses.into_iter().flatten() {
            if let Some(range) = r.get("response_range") {
                gets.push(self.kvs(range)?.into_iter().next());
            }
        }
        Ok(TxnOutcome {
            succeeded,
            revision: self.revision(&answer)?,
            gets,
        })
    }

    /// A new lease of `ttl_s` seconds; returns its id.
    pub fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", &json!({ "TTL": ttl_s.to_string() }))?;
        number(&answer, "ID").ok_or_else(|| self.malformed("a lease without an ID"))
    }

    /// Renews lease `id`; returns the seconds it has left, or `None` if it has expired.
    pub fn keep_alive(&self, id: i64) -> Result<Option<i64>, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        let ttl = answer.get("result").and_then(|r| number(r, "TTL"));
        Ok(ttl.filter(|t| *t > 0))
    }

    /// Ends lease `id` at once: the keys attached to it are deleted. An expired lease is no
    /// error.
    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() })) {
            Err(EtcdError::Server { code: 5, .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn revision(&self, answer: &Value) -> Result<i64, EtcdError> {
        answer
            .get("header")
            .and_then(|h| number(h, "revision"))
            .ok_or_else(|| self.malformed("an answer without a revision"))
    }

    fn kvs(&self, answer: &Value) -> Result<Vec<Kv>, EtcdError> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            key: String,
            #[serde(default)]
            value: String,
            #[serde(default)]
            create_revision: Option<String>,
            #[serde(default)]
            mod_revision: Option<String>,
            #[serde(default)]
            lease: Option<String>,
        }
        let Some(kvs) = answer.get("kvs") else {
            return Ok(Vec::new());
        };
        let wire: Vec<Wire> =
            serde_json::from_value(kvs.clone()).map_err(|e| self.malformed(format!("kvs: {e}")))?;
        let int = |s: Option<String>| -> Result<i64, EtcdError> {
            s.map_or(Ok(0), |s| {
                s.parse()
                    .map_err(|_| self.malformed(format!("`{s}` is not a number")))
            })
        };
        wire.into_iter()
            .map(|w| {
                Ok(Kv {
                    key: B64
                        .decode(&w.key)
                        .map_err(|e| self.malformed(format!("key: {e}")))?,
                    value: B64
                        .decode(&w.value)
                        .map_err(|e| self.malformed(format!("value: {e}")))?,
                    create_revision: int(w.create_revision)?,
                    mod_revision: int(w.mod_revision)?,
                    lease: int(w.lease)?,
                })
            })
            .collect()
    }
}

/// A 64-bit number etcd sent as a string (proto3 JSON), or absent (0 is left out).
fn number(v: &Value, field: &str) -> Option<i64> {
    match v.get(field)? {
        Value::String(s) => s.parse().ok(),
        n => n.as_i64(),
    }
}

/// The end of the range of keys that start with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the key space.
    vec![0]
}

fn put_body(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
    if lease != 0 {
        body["lease"] = json!(lease.to_string());
    }
    body
}

fn compare_json(c: &Compare) -> Value {
    match c {
        Compare::Created(key, rev) => json!({
            "key": B64.encode(key), "result": "EQUAL", "target": "CREATE",
            "create_revision": rev.to_string(),
        }),
        Compare::Modified(key, rev) => json!({
            "key": B64.encode(key), "result": "EQUAL", "target": "MOD",
            "mod_revision": rev.to_string(),
        }),
        Compare::Value(key, value) => json!({
            "key": B64.encode(key), "result": "EQUAL", "target": "VALUE",
            "value": B64.encode(value),
        }),
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put(key, value, lease) => json!({ "request_put": put_body(key, value, *lease) }),
        Op::Delete(key) => json!({ "request_delete_range": { "key": B64.encode(key) } }),
        Op::DeletePrefix(prefix) => json!({ "request_delete_range": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
        } }),
        Op::Get(key) => json!({ "request_range": { "key": B64.encode(key) } }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::EtcdProcess;

    #[test]
    fn prefix_ends_are_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"jobs/"), b"jobs0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn endpoints_must_be_http_urls_of_a_host_and_port() {
        for bad in [
            "127.0.0.1:2379",
            "http://",
            "http://host",
            "https//x:1",
            "http://h:1/x",
        ] {
            let e = Etcd::new(&[bad.to_string()], Duration::from_secs(1)).unwrap_err();
            assert!(
                e.to_string().contains("expected http://HOST:PORT"),
                "{bad}: {e}"
            );
        }
        assert!(Etcd::new(&[], Duration::from_secs(1)).is_err());
    }

    #[test]
    fn keys_values_transactions_and_leases_on_a_real_etcd() {
        let Some(etcd) = EtcdProcess::start_or_skip("keys_values_transactions_and_leases") else {
            return;
        };
        let c = etcd.client();
        assert_eq!(c.get(b"a/1").unwrap(), None);
        let r1 = c.put(b"a/1", b"one", 0).unwrap();
        c.put(b"a/2", &[0, 255, 7], 0).unwrap();
        c.put(b"b/1", b"other", 0).unwrap();
        let kv = c.get(b"a/1").unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"one"[..], r1));
        let all: Vec<_> = c.prefix(b"a/", 0).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].value, vec![0, 255, 7]);
        assert_eq!(c.prefix(b"a/", 1).unwrap().len(), 1);

        // A compare-and-set: only the writer that saw the current revision wins.
        let put = |v: &[u8]| vec![Op::Put(b"a/1".to_vec(), v.to_vec(), 0)];
        let won = c
            .txn(&[Compare::Modified(b"a/1".to_vec(), r1)], &put(b"two"), &[])
            .unwrap();
        assert!(won.succeeded);
        let lost = c
            .txn(
                &[Compare::Modified(b"a/1".to_vec(), r1)],
                &put(b"three"),
                &[Op::Get(b"a/1".to_vec())],
            )
            .unwrap();
        assert!(!lost.succeeded);
        assert_eq!(lost.gets[0].as_ref().unwrap().value, b"two".to_vec());
        let created = c
            .txn(
                &[Compare::Created(b"a/3".to_vec(), 0)],
                &[Op::Put(b"a/3".to_vec(), b"x".to_vec(), 0)],
                &[],
            )
            .unwrap();
        assert!(created.succeeded);
        assert!(c.delete(b"a/3").unwrap());
        assert!(!c.delete(b"a/3").unwrap());

        // A key on a lease goes when the lease is revoked; an ended lease renews to nothing.
        let lease = c.grant(30).unwrap();
        c.put(b"a/leased", b"x", lease).unwrap();
        assert_eq!(c.get(b"a/leased").unwrap().unwrap().lease, lease);
        assert!(c.keep_alive(lease).unwrap().is_some());
        c.revoke(lease).unwrap();
        assert_eq!(c.get(b"a/leased").unwrap(), None);
        assert_eq!(c.keep_alive(lease).unwrap(), None);
        c.revoke(lease).unwrap();
    }

    /// A paged read pinned to its first page's revision failed once etcd compacted past it (the
    /// README's `--auto-compaction-retention=1000` does, under a busy control plane): a walk
    /// that rewrites what it reads (`--authenticate-etcd-rows`) now reads each page as it is,
    /// and a consistent read starts again, whole.
    #[test]
    fn paged_reads_go_on_past_a_compaction() {
        let Some(etcd) = EtcdProcess::start_or_skip("paged_reads_go_on_past_a_compaction") else {
            return;
        };
        let c = etcd.client();
        let keys = 3 * PAGE + 5;
        for i in 0..keys {
            c.put(format!("p/{i:04}").as_bytes(), b"v", 0).unwrap();
        }
        let compact = || {
            let revision = c.put(b"other", b"x", 0).unwrap();
            c.call(
                "/v3/kv/compaction",
                &json!({ "revision": revision.to_string() }),
            )
            .unwrap();
        };
        let mut seen = 0;
        (c.prefix_pages(b"p/", |page| {
            if seen == 0 {
                compact();
            }
            seen += page.len() as u64;
            Ok::<(), EtcdError>(())
        }))
        .unwrap();
        assert_eq!(seen, keys);
        // Compacted once, during its first walk: the second sees all of it, none twice.
        let (mut all, mut walks) = (Vec::new(), 0);
        (c.consistent_pages(b"p/", 0, true, |page, first| {
            if first {
                walks += 1;
                all.clear();
                if walks == 1 {
                    compact();
                }
            }
            all.extend(page);
        }))
        .unwrap();
        assert_eq!((walks, all.len() as u64), (2, keys));
        // Compacted during every walk: it gives up, saying why.
        let e = (c.consistent_pages(b"p/", 0, true, |_, first| {
            if first {
                compact();
            }
        }))
        .unwrap_err();
        assert!(e.compacted(), "{e}");
    }

    /// Found by a review: only the job store fenced its writes by the leader's term, so a
    /// deposed leader's other writes (a dataset past a quota, an account, a policy) landed. A
    /// fenced client fences every write; a caller's own compare failing is still an answer.
    #[test]
    fn a_fenced_client_writes_only_while_its_fence_holds() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_fenced_client_writes_only") else {
            return;
        };
        let c = etcd.client();
        let term = c.put(b"leader", b"me", 0).unwrap();
        let leads = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let fence: Fence = {
            let leads = leads.clone();
            std::sync::Arc::new(move || {
                leads
                    .load(Ordering::SeqCst)
                    .then(|| Compare::Created(b"leader".to_vec(), term))
            })
        };
        let f = c.fenced(fence);
        f.put(b"k/1", b"one", 0).unwrap();
        assert!(f.delete(b"k/1").unwrap());
        assert!(!f.delete(b"k/1").unwrap());
        let created = f
            .txn(
                &[Compare::Created(b"k/2".to_vec(), 0)],
                &[Op::Put(b"k/2".to_vec(), b"two".to_vec(), 0)],
                &[],
            )
            .unwrap();
        assert!(created.succeeded);
        let again = f
            .txn(
                &[Compare::Created(b"k/2".to_vec(), 0)],
                &[Op::Put(b"k/2".to_vec(), b"2".to_vec(), 0)],
                &[Op::Get(b"k/2".to_vec())],
            )
            .unwrap();
        assert!(
            !again.succeeded,
            "the caller's compare failed, not the fence"
        );
        assert_eq!(again.gets.len(), 1, "{:?}", again.gets);
        // Another replica leads now: nothing lands, and the write says why.
        c.delete(b"leader").unwrap();
        c.put(b"leader", b"other", 0).unwrap();
        assert!(matches!(f.put(b"k/3", b"x", 0), Err(EtcdError::Fenced)));
        assert!(matches!(f.delete(b"k/2"), Err(EtcdError::Fenced)));
        assert_eq!(c.get(b"k/3").unwrap(), None);
        assert!(c.get(b"k/2").unwrap().is_some());
        // It knows it leads no more: refused without asking.
        leads.store(false, Ordering::SeqCst);
        assert!(matches!(f.put(b"k/3", b"x", 0), Err(EtcdError::Fenced)));
        // Reads are as they were.
        assert_eq!(
            f.get(b"k/2").unwrap().map(|kv| kv.value),
            Some(b"two".to_vec())
        );
    }

    #[test]
    fn a_range_larger_than_one_answer_is_read_in_pages() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_range_larger_than_one_answer") else {
            return;
        };
        let c = etcd.client();
        // 640 values of 100 KiB: 85 MiB as base64, more than one answer may hold (before, the
        // whole range was one answer, refused as too large).
        let value = vec![7u8; 100 << 10];
        for i in 0..640 {
            c.put(format!("big/{i:04}").as_bytes(), &value, 0).unwrap();
        }
        c.put(b"bigger", b"not in the range", 0).unwrap();
        let all = c.prefix(b"big/", 0).unwrap();
        assert_eq!(all.len(), 640);
        assert!(all.iter().all(|kv| kv.value == value));
        let keys: Vec<_> = all.iter().map(|kv| kv.key.clone()).collect();
        let expected: Vec<_> = (0..640)
            .map(|i| format!("big/{i:04}").into_bytes())
            .collect();
        assert_eq!(keys, expected);
        assert_eq!(c.prefix(b"big/", 300).unwrap().len(), 300);
        let names = c.prefix_keys(b"big/").unwrap();
        assert_eq!(names.len(), 640);
        assert!(
            names
                .iter()
                .all(|kv| kv.value.is_empty() && kv.create_revision > 0)
        );
    }

    /// An etcd beyond loopback is reached over TLS: its certificate checked against the CA
    /// given, this client's presented (etcd's `--client-cert-auth`).
    #[test]
    fn a_client_reaches_etcd_over_tls_with_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (server, stranger) = testing::pki(dir.path());
        let Some(etcd) = EtcdProcess::start_tls_or_skip("a_client_reaches_etcd_over_tls", &server)
        else {
            return;
        };
        let url = etcd.url();
        assert!(url.starts_with("https://"), "{url}");
        let c = etcd.client();
        c.put(b"k", b"v", 0).unwrap();
        assert_eq!(c.get(b"k").unwrap().unwrap().value, b"v".to_vec());

        let short = Duration::from_secs(1);
        let refused = |tls: Option<&EtcdTls>| {
            Etcd::new_tls(std::slice::from_ref(&url), short, tls)
                .unwrap()
                .get(b"k")
                .unwrap_err()
        };
        // Without a client certificate, or trusting another CA: no answer.
        let anonymous = EtcdTls {
            client: None,
            ..server.client.clone()
        };
        assert!(matches!(
            refused(Some(&anonymous)),
            EtcdError::Unreachable { .. }
        ));
        assert!(matches!(
            refused(Some(&stranger)),
            EtcdError::Unreachable { .. }
        ));
        // Plain HTTP to it, or an http:// endpoint with TLS: refused.
        let plain = url.replace("https://", "http://");
        assert!(
            Etcd::new(std::slice::from_ref(&plain), short)
                .unwrap()
                .get(b"k")
                .is_err()
        );
        assert!(matches!(
            Etcd::new_tls(&[plain], short, Some(&server.client)),
            Err(EtcdError::BadEndpoint(_))
        ));
        let bad = EtcdTls {
            ca_pem: b"not a certificate".to_vec(),
            client: None,
        };
        assert!(matches!(
            Etcd::new_tls(&[url], short, Some(&bad)),
            Err(EtcdError::BadTls(_))
        ));
    }

    #[test]
    fn a_client_moves_on_to_the_next_endpoint_when_one_is_down() {
        let Some(etcd) = EtcdProcess::start_or_skip("a_client_moves_on") else {
            return;
        };
        let dead = format!("http://{}", testing::free_addr());
        let c = Etcd::new(&[dead.clone(), etcd.url()], Duration::from_secs(2)).unwrap();
        c.put(b"k", b"v", 0).unwrap();
        assert_eq!(c.get(b"k").unwrap().unwrap().value, b"v".to_vec());
        let alone = Etcd::new(&[dead], Duration::from_secs(2)).unwrap();
        let e = alone.get(b"k").unwrap_err();
        assert!(matches!(e, EtcdError::Unreachable { .. }), "{e}");
    }
}
