//! Outbound webhook rows: subscriptions (secret sealed with the master key, audited CRUD under
//! `If-Match`), their deliveries and attempts, and the dispatcher's claim and record. The
//! deliveries themselves are created by the `webhook_outbox` trigger on `execution_events`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Double, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use serde_json::{json, Value};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::audit::{self, Actor, AuditEntry};
use super::schema::{plans, webhook_deliveries, webhook_delivery_attempts, webhook_subscriptions};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::http::IfMatch;

/// A subscription without its sealed secret.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_subscriptions, check_for_backend(diesel::pg::Pg))]
pub struct SubscriptionRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub url: String,
    pub events: Vec<String>,
    pub plan_id: Option<Uuid>,
    pub format: String,
    pub active: bool,
    pub secret_updated_at: DateTime<Utc>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

/// The fields a subscription write sets.
#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = webhook_subscriptions)]
pub struct SubscriptionWrite {
    pub name: String,
    pub description: String,
    pub url: String,
    pub events: Vec<String>,
    #[diesel(treat_none_as_null = true)]
    pub plan_id: Option<Uuid>,
    pub format: String,
    pub active: bool,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries, check_for_backend(diesel::pg::Pg))]
pub struct DeliveryRow {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub event_id: i64,
    pub execution_id: Uuid,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub tries: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub payload: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_delivery_attempts, check_for_backend(diesel::pg::Pg))]
pub struct AttemptRow {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i32,
    pub response_excerpt: Option<String>,
}

super::lookup_by_key!(webhook_subscriptions, SubscriptionRow, "webhook");

pub fn list(
    conn: &mut PgConnection,
    page: &super::NamePage,
) -> Result<(Vec<SubscriptionRow>, i64)> {
    let build = || webhook_subscriptions::table.into_boxed();
    super::page_by_name!(conn, build, webhook_subscriptions, SubscriptionRow, page)
}

/// The id of the plan a filter names; a missing plan is a validation error on `plan`.
pub fn plan_id(conn: &mut PgConnection, name: &str) -> Result<Uuid> {
    let found = match super::Key::parse("plan", name) {
        Ok(super::Key::Id(id)) => plans::table
            .find(id)
            .select(plans::id)
            .first(conn)
            .optional()?,
        Ok(super::Key::Name(n)) => plans::table
            .filter(plans::name.eq(n))
            .select(plans::id)
            .for_share()
            .first(conn)
            .optional()?,
        Err(_) => None,
    };
    found.ok_or_else(|| Error::field("plan", format!("no plan named `{name}` exists")))
}

/// The names of plans by id (for showing a subscription's plan filter).
pub fn plan_names(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, String>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(plans::table
        .filter(plans::id.eq_any(ids))
        .select((plans::id, plans::name))
        .load::<(Uuid, String)>(conn)?
        .into_iter()
        .collect())
}

fn seal(conn: &mut PgConnection, id: Uuid, secret: &str, key: &MasterKey) -> Result<()> {
    let sealed = key.seal(secret.as_bytes(), id.as_bytes());
    diesel::update(webhook_subscriptions::table.find(id))
        .set((
            webhook_subscriptions::secret_ciphertext.eq(&sealed.ciphertext),
            webhook_subscriptions::secret_nonce.eq(&sealed.nonce),
            webhook_subscriptions::key_id.eq(&sealed.key_id),
            webhook_subscriptions::secret_updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Creates a subscription with its (generated) secret, sealed.
pub fn create(
    conn: &mut PgConnection,
    write: SubscriptionWrite,
    secret: &str,
    key: &MasterKey,
    actor: &Actor,
) -> Result<SubscriptionRow> {
    let id = Uuid::new_v4();
    let sealed = key.seal(secret.as_bytes(), id.as_bytes());
    let row: SubscriptionRow = diesel::insert_into(webhook_subscriptions::table)
        .values((
            webhook_subscriptions::id.eq(id),
            &write,
            webhook_subscriptions::secret_ciphertext.eq(&sealed.ciphertext),
            webhook_subscriptions::secret_nonce.eq(&sealed.nonce),
            webhook_subscriptions::key_id.eq(&sealed.key_id),
            webhook_subscriptions::created_by.eq(&actor.subject),
            webhook_subscriptions::updated_by.eq(&actor.subject),
        ))
        .returning(SubscriptionRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "create",
            "webhook",
            row.id,
            &row.name,
            json!({"url": row.url, "events": row.events, "format": row.format, "active": row.active}),
        ),
    )?;
    Ok(row)
}

/// Replaces a subscription with what `next` makes of the locked current row.
pub fn update(
    conn: &mut PgConnection,
    key: &str,
    if_match: &IfMatch,
    actor: &Actor,
    next: impl FnOnce(&mut PgConnection, &SubscriptionRow) -> Result<SubscriptionWrite>,
) -> Result<SubscriptionRow> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    let write = next(conn, &current)?;
    let row: SubscriptionRow = diesel::update(webhook_subscriptions::table.find(current.id))
        .set((
            &write,
            webhook_subscriptions::version.eq(webhook_subscriptions::version + 1),
            webhook_subscriptions::updated_at.eq(diesel::dsl::now),
            webhook_subscriptions::updated_by.eq(&actor.subject),
        ))
        .returning(SubscriptionRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "update",
            "webhook",
            row.id,
            &row.name,
            json!({"url": row.url, "events": row.events, "format": row.format, "active": row.active}),
        ),
    )?;
    Ok(row)
}

/// Replaces a subscription's secret (a new version: its ETag changes).
pub fn rotate_secret(
    conn: &mut PgConnection,
    key: &str,
    if_match: &IfMatch,
    secret: &str,
    master_key: &MasterKey,
    actor: &Actor,
) -> Result<SubscriptionRow> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    seal(conn, current.id, secret, master_key)?;
    let row: SubscriptionRow = diesel::update(webhook_subscriptions::table.find(current.id))
        .set((
            webhook_subscriptions::version.eq(webhook_subscriptions::version + 1),
            webhook_subscriptions::updated_at.eq(diesel::dsl::now),
            webhook_subscriptions::updated_by.eq(&actor.subject),
        ))
        .returning(SubscriptionRow::as_returning())
        .get_result(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new("rotate_secret", "webhook", row.id, &row.name, json!({})),
    )?;
    Ok(row)
}

pub fn delete(conn: &mut PgConnection, key: &str, if_match: &IfMatch, actor: &Actor) -> Result<()> {
    let current = find_for_update(conn, key)?;
    if_match.check(current.version)?;
    diesel::delete(webhook_subscriptions::table.find(current.id)).execute(conn)?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "delete",
            "webhook",
            current.id,
            &current.name,
            json!({"url": current.url}),
        ),
    )
}

/// The plaintext `whsec_...` secret of a subscription, for signing.
pub fn open_secret(
    conn: &mut PgConnection,
    id: Uuid,
    key: &MasterKey,
) -> Result<Zeroizing<Vec<u8>>> {
    let sealed: super::Sealed = webhook_subscriptions::table
        .find(id)
        .select((
            webhook_subscriptions::secret_ciphertext,
            webhook_subscriptions::secret_nonce,
            webhook_subscriptions::key_id,
        ))
        .first(conn)
        .optional()?
        .ok_or_else(|| Error::not_found("webhook", id))?;
    super::open_sealed(key, "webhook", id, sealed)
}

/// A delivery and its attempts, in order.
pub type DeliveryWithAttempts = (DeliveryRow, Vec<AttemptRow>);

/// A page of a subscription's deliveries, newest event first, each with its attempts.
pub fn deliveries(
    conn: &mut PgConnection,
    subscription: Uuid,
    status: Option<&str>,
    before_event: Option<i64>,
    limit: i64,
) -> Result<(Vec<DeliveryWithAttempts>, i64)> {
    let build = || {
        let mut q = webhook_deliveries::table
            .filter(webhook_deliveries::subscription_id.eq(subscription))
            .into_boxed();
        if let Some(s) = status {
            q = q.filter(webhook_deliveries::status.eq(s.to_owned()));
        }
        q
    };
    let total: i64 = build().count().get_result(conn)?;
    let mut q = build();
    if let Some(before) = before_event {
        q = q.filter(webhook_deliveries::event_id.lt(before));
    }
    let rows: Vec<DeliveryRow> = q
        .order(webhook_deliveries::event_id.desc())
        .limit(limit)
        .select(DeliveryRow::as_select())
        .load(conn)?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut attempts: HashMap<Uuid, Vec<AttemptRow>> = HashMap::new();
    for a in webhook_delivery_attempts::table
        .filter(webhook_delivery_attempts::delivery_id.eq_any(&ids))
        .order((
            webhook_delivery_attempts::delivery_id,
            webhook_delivery_attempts::attempt,
        ))
        .select(AttemptRow::as_select())
        .load(conn)?
    {
        attempts.entry(a.delivery_id).or_default().push(a);
    }
    let page = rows
        .into_iter()
        .map(|r| {
            let a = attempts.remove(&r.id).unwrap_or_default();
            (r, a)
        })
        .collect();
    Ok((page, total))
}

/// Sends a delivery again as soon as possible, whatever its state; its attempts are kept and
/// the retry schedule starts over. Audited.
pub fn redeliver(
    conn: &mut PgConnection,
    subscription_key: &str,
    delivery: Uuid,
    actor: &Actor,
) -> Result<DeliveryWithAttempts> {
    let sub = find(conn, subscription_key)?;
    let row: DeliveryRow = diesel::update(
        webhook_deliveries::table
            .find(delivery)
            .filter(webhook_deliveries::subscription_id.eq(sub.id)),
    )
    .set((
        webhook_deliveries::status.eq("pending"),
        webhook_deliveries::tries.eq(0),
        webhook_deliveries::next_attempt_at.eq(diesel::dsl::now),
        webhook_deliveries::delivered_at.eq(None::<DateTime<Utc>>),
    ))
    .returning(DeliveryRow::as_returning())
    .get_result(conn)
    .optional()?
    .ok_or_else(|| Error::not_found("delivery", delivery))?;
    audit::record(
        conn,
        actor,
        AuditEntry::new(
            "redeliver",
            "webhook",
            sub.id,
            &sub.name,
            json!({"delivery": row.id, "event_type": row.event_type}),
        ),
    )?;
    let attempts = webhook_delivery_attempts::table
        .filter(webhook_delivery_attempts::delivery_id.eq(row.id))
        .order(webhook_delivery_attempts::attempt)
        .select(AttemptRow::as_select())
        .load(conn)?;
    Ok((row, attempts))
}

/// A delivery claimed for one try, with what its body is made of.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    #[diesel(sql_type = Integer)]
    pub tries: i32,
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub payload: Option<Value>,
    #[diesel(sql_type = SqlUuid)]
    pub subscription_id: Uuid,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Text)]
    pub format: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Timestamptz)]
    pub event_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    pub step_key: Option<String>,
    #[diesel(sql_type = Jsonb)]
    pub data: Value,
    #[diesel(sql_type = SqlUuid)]
    pub execution_id: Uuid,
    #[diesel(sql_type = Text)]
    pub plan_name: String,
    #[diesel(sql_type = Integer)]
    pub plan_version: i32,
    #[diesel(sql_type = Text)]
    pub mode: String,
    #[diesel(sql_type = Text)]
    pub execution_status: String,
}

/// Claims up to `limit` due deliveries for `owner` until the lease ends: only events written at
/// least `settle_secs` ago (commit order is not id order: a transaction that took a lower event
/// id may commit a moment after one with a higher id; engine transactions last milliseconds,
/// so by then it has), only the earliest pending event of each execution for each
/// subscription (order), only of active
/// subscriptions, never one another instance holds (`SKIP LOCKED`, unexpired lease).
pub fn claim(
    conn: &mut PgConnection,
    owner: &str,
    lease_secs: i32,
    limit: i32,
    settle_secs: f64,
) -> Result<Vec<Claimed>> {
    Ok(diesel::sql_query(
        "WITH picked AS (
             SELECT d.id FROM webhook_deliveries d
             JOIN webhook_subscriptions s ON s.id = d.subscription_id AND s.active
             JOIN execution_events settled ON settled.id = d.event_id
                 AND settled.at <= clock_timestamp() - make_interval(secs => $4)
             WHERE d.status = 'pending' AND d.next_attempt_at <= now()
               AND (d.lease_expires_at IS NULL OR d.lease_expires_at < now())
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p
                   WHERE p.subscription_id = d.subscription_id AND p.execution_id = d.execution_id
                     AND p.status = 'pending' AND p.event_id < d.event_id)
             ORDER BY d.next_attempt_at, d.event_id
             LIMIT $3
             FOR UPDATE OF d SKIP LOCKED),
         taken AS (
             UPDATE webhook_deliveries d SET attempts = d.attempts + 1, tries = d.tries + 1,
                 lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)
             FROM picked WHERE d.id = picked.id
             RETURNING d.id, d.attempts, d.tries, d.payload, d.subscription_id, d.event_id)
         SELECT t.id, t.attempts AS attempt, t.tries, t.payload, t.subscription_id, s.url, s.format,
             ev.type AS event_type, ev.at AS event_at, ev.step_key, ev.data, e.id AS execution_id,
             e.plan_name, e.plan_version, e.mode, e.status AS execution_status
         FROM taken t
         JOIN webhook_subscriptions s ON s.id = t.subscription_id
         JOIN execution_events ev ON ev.id = t.event_id
         JOIN executions e ON e.id = ev.execution_id
         ORDER BY t.event_id",
    )
    .bind::<Text, _>(owner)
    .bind::<Integer, _>(lease_secs)
    .bind::<Integer, _>(limit)
    .bind::<Double, _>(settle_secs)
    .load(conn)?)
}

/// How one try went.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i32,
    pub response_excerpt: Option<String>,
    pub delivered: bool,
}

/// Records a try and what follows (delivered, retry after `retry_in`, or dead when `None`),
/// unless the claim was lost meanwhile (the try is still recorded).
pub fn record(
    conn: &mut PgConnection,
    c: &Claimed,
    owner: &str,
    payload: &Value,
    attempt: &Attempt,
    retry_in: Option<Duration>,
) -> Result<()> {
    diesel::insert_into(webhook_delivery_attempts::table)
        .values((
            webhook_delivery_attempts::delivery_id.eq(c.id),
            webhook_delivery_attempts::attempt.eq(c.attempt),
            webhook_delivery_attempts::status_code.eq(attempt.status_code),
            webhook_delivery_attempts::error.eq(attempt.error.as_deref()),
            webhook_delivery_attempts::latency_ms.eq(attempt.latency_ms),
            webhook_delivery_attempts::response_excerpt.eq(attempt.response_excerpt.as_deref()),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    let status = match (attempt.delivered, retry_in) {
        (true, _) => "delivered",
        (false, Some(_)) => "pending",
        (false, None) => "dead",
    };
    diesel::sql_query(
        "UPDATE webhook_deliveries SET status = $4, payload = coalesce(payload, $5),
             lease_owner = NULL, lease_expires_at = NULL,
             next_attempt_at = now() + make_interval(secs => $6),
             delivered_at = CASE WHEN $4 = 'delivered' THEN now() ELSE delivered_at END
         WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND status = 'pending'",
    )
    .bind::<SqlUuid, _>(c.id)
    .bind::<Text, _>(owner)
    .bind::<Integer, _>(c.attempt)
    .bind::<Text, _>(status)
    .bind::<Jsonb, _>(payload)
    .bind::<Double, _>(retry_in.map_or(0.0, |d| d.as_secs_f64()))
    .execute(conn)?;
    Ok(())
}

/// Gives a claim back without a try (the secret could not be opened, say): due again later.
pub fn release(
    conn: &mut PgConnection,
    c: &Claimed,
    owner: &str,
    retry_in: Duration,
) -> Result<()> {
    diesel::sql_query(
        "UPDATE webhook_deliveries SET attempts = attempts - 1, tries = tries - 1,
             lease_owner = NULL, lease_expires_at = NULL,
             next_attempt_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind::<SqlUuid, _>(c.id)
    .bind::<Text, _>(owner)
    .bind::<Double, _>(retry_in.as_secs_f64())
    .execute(conn)?;
    Ok(())
}
