//! The outbound dispatcher: a background task per instance that claims due deliveries from
//! PostgreSQL (`SKIP LOCKED` and a lease, so instances never send the same try at once), sends
//! each signed with the Standard Webhooks headers, records every try, and schedules the next
//! one by the retry schedule. It has its own connections and tasks and a bound on tries in
//! flight, so a slow receiver never holds up the engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::outbound::{self, AfterFailure, EventFacts, Format};
use super::signature::{self, Secret};
use crate::crypto::MasterKey;
use crate::db::webhooks::{self as store, Attempt, Claimed};
use crate::db::Db;

/// How a dispatcher works.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// The service's public base URL, for the execution links in bodies.
    pub public_url: String,
    /// Waits between failed tries ([`outbound::RETRY_SCHEDULE`]; tests use a short one).
    pub schedule: Vec<Duration>,
    /// Tries in flight at once.
    pub concurrency: usize,
    /// How often to look for due deliveries.
    pub poll: Duration,
    /// How long a claim lasts: longer than a try can take.
    pub lease: Duration,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// How old an event must be before it is sent: a transaction that took a lower event id
    /// of the same execution has committed by then (see `db::webhooks::claim`).
    pub settle: Duration,
}

impl DispatcherConfig {
    pub fn new(public_url: impl Into<String>) -> Self {
        Self {
            public_url: public_url.into(),
            schedule: outbound::RETRY_SCHEDULE.to_vec(),
            concurrency: 4,
            poll: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            settle: Duration::from_secs(1),
        }
    }
}

/// Most of a response body read (the rest is not waited for).
const READ_LIMIT: usize = 64 * 1024;
/// Most of a response body stored with a try.
const EXCERPT_LIMIT: usize = 1024;

pub struct Dispatcher {
    db: Db,
    master_key: Arc<MasterKey>,
    client: reqwest::Client,
    config: DispatcherConfig,
    owner: String,
    wake: Notify,
}

impl Dispatcher {
    pub fn new(
        db: Db,
        master_key: Arc<MasterKey>,
        config: DispatcherConfig,
    ) -> Result<Arc<Self>, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "dr-orchestrator-webhooks/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            db,
            master_key,
            client,
            config,
            owner: format!(
                "webhooks:{}:{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            wake: Notify::new(),
        }))
    }

    /// Starts the loop on the current runtime; it stops when the handle is aborted.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move { me.run().await })
    }

    async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let lease = self.config.lease.as_secs().max(1) as i32;
        loop {
            let Ok(first) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut free = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                free.push(permit);
            }
            let owner = self.owner.clone();
            let limit = free.len() as i32;
            let settle = self.config.settle.as_secs_f64();
            let claimed = self
                .db
                .transaction(move |conn| store::claim(conn, &owner, lease, limit, settle))
                .await;
            match claimed {
                Ok(list) if !list.is_empty() => {
                    for c in list {
                        let permit = free.pop().expect("claimed no more than the free slots");
                        let me = self.clone();
                        tokio::spawn(async move {
                            me.deliver(c).await;
                            drop(permit);
                            me.wake.notify_one();
                        });
                    }
                }
                Ok(_) => {
                    drop(free);
                    let _ = tokio::time::timeout(self.config.poll, self.wake.notified()).await;
                }
                Err(e) => {
                    drop(free);
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                    tokio::time::sleep(self.config.poll).await;
                }
            }
        }
    }

    /// One try of one delivery, recorded.
    async fn deliver(&self, c: Claimed) {
        let key = self.master_key.clone();
        let sub = c.subscription_id;
        let secret = self
            .db
            .run(move |conn| store::open_secret(conn, sub, &key))
            .await;
        let secret = match secret.map(|s| Secret::parse(&String::from_utf8_lossy(&s))) {
            Ok(Ok(secret)) => secret,
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => unreachable!("handled above"),
                };
                tracing::error!(delivery = %c.id, error = %why, "cannot open a webhook's secret; will try later");
                let owner = self.owner.clone();
                let _ = self
                    .db
                    .run(move |conn| store::release(conn, &c, &owner, Duration::from_secs(60)))
                    .await;
                return;
            }
        };
        let webhook_id = outbound::webhook_id(c.id);
        let payload = c.payload.clone().unwrap_or_else(|| {
            let facts = EventFacts {
                webhook_id: webhook_id.clone(),
                event_type: c.event_type.clone(),
                at: c.event_at,
                step_key: c.step_key.clone(),
                data: c.data.clone(),
                execution_id: c.execution_id,
                plan: c.plan_name.clone(),
                version: c.plan_version,
                mode: c.mode.clone(),
                status_now: c.execution_status.clone(),
            };
            outbound::body(Format::parse(&c.format), &facts, &self.config.public_url)
        });
        let attempt = self.send(&c.url, &webhook_id, &secret, &payload).await;
        let retry_in = if attempt.delivered {
            None
        } else {
            match outbound::after_failure(&self.config.schedule, c.tries) {
                AfterFailure::RetryIn(d) => Some(d),
                AfterFailure::Dead => None,
            }
        };
        if !attempt.delivered {
            tracing::info!(delivery = %c.id, attempt = c.attempt, status = ?attempt.status_code,
                error = attempt.error.as_deref().unwrap_or(""), dead = retry_in.is_none(),
                "a webhook delivery failed");
        }
        let owner = self.owner.clone();
        let recorded = self
            .db
            .transaction(move |conn| store::record(conn, &c, &owner, &payload, &attempt, retry_in))
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "recording a webhook delivery failed");
        }
    }

    async fn send(
        &self,
        url: &str,
        id: &str,
        secret: &Secret,
        payload: &serde_json::Value,
    ) -> Attempt {
        let body = serde_json::to_vec(payload).expect("a JSON value serializes");
        let timestamp = chrono::Utc::now().timestamp();
        let started = Instant::now();
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::ID_HEADER, id)
            .header(signature::TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                signature::SIGNATURE_HEADER,
                secret.sign(id, timestamp, &body),
            )
            .body(body)
            .send()
            .await;
        let (status_code, error, excerpt) = match sent {
            Ok(response) => {
                let status = response.status();
                let (excerpt, read_error) = read_excerpt(response).await;
                (Some(i32::from(status.as_u16())), read_error, excerpt)
            }
            Err(e) => (None, Some(describe(&e)), None),
        };
        let latency_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let delivered = error.is_none() && status_code.is_some_and(|s| (200..300).contains(&s));
        let error = error.or_else(|| {
            status_code
                .filter(|s| !(200..300).contains(s))
                .map(|s| format!("HTTP {s}"))
        });
        Attempt {
            status_code,
            error,
            latency_ms,
            response_excerpt: excerpt,
            delivered,
        }
    }
}

/// Reads at most [`READ_LIMIT`] bytes of a response; keeps the first [`EXCERPT_LIMIT`] as text.
async fn read_excerpt(mut response: reqwest::Response) -> (Option<String>, Option<String>) {
    let mut body: Vec<u8> = Vec::new();
    let mut error = None;
    while body.len() < READ_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                error = Some(describe(&e));
                break;
            }
        }
    }
    if body.is_empty() {
        return (None, error);
    }
    body.truncate(EXCERPT_LIMIT);
    let mut text = String::from_utf8_lossy(&body).into_owned();
    // A cut through a multi-byte character becomes a replacement character: drop it.
    if text.ends_with('\u{fffd}') && body.len() == EXCERPT_LIMIT {
        text.pop();
    }
    (Some(text), error)
}

/// What went wrong, without the URL (a Slack webhook URL is itself a secret).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_redirect() {
        "redirect refused"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {cause}")
    }
}
