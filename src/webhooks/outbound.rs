//! Outbound webhooks, the pure part: the event types a subscription may filter on, the checks
//! of a subscription, the retry schedule, and the bodies sent (our JSON event with a human
//! summary and the execution's URL, or a Slack incoming-webhook message).

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::domain::validation::{check_http_url, check_name, check_text, Violations};
use crate::error::{Error, Result};

/// Every event type the engine and the clean-up write to `execution_events` (engine/store.rs,
/// providers/cleanup.rs); a subscription may filter on these only.
pub const EVENT_TYPES: &[&str] = &[
    "execution.created",
    "execution.started",
    "execution.paused",
    "execution.resumed",
    "execution.succeeded",
    "execution.failed",
    "execution.cancelled",
    "execution.cleaned_up",
    "step.ready",
    "step.started",
    "step.released",
    "step.succeeded",
    "step.failed",
    "step.skipped",
    "step.cancelled",
    "step.interrupted",
    "step.waiting_approval",
    "approval.required",
];

/// How long to wait after failed try n (1-based) before try n + 1; a delivery is dead when the
/// try after the last of these fails too (10 tries over about 15 h 45 min).
pub const RETRY_SCHEDULE: [Duration; 9] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(2 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(2 * 60 * 60),
    Duration::from_secs(4 * 60 * 60),
    Duration::from_secs(8 * 60 * 60),
];

/// What a failed try leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    RetryIn(Duration),
    Dead,
}

/// The fate of a delivery whose try number `tries` (1-based, since the last redeliver) failed.
pub fn after_failure(schedule: &[Duration], tries: i32) -> AfterFailure {
    usize::try_from(tries - 1)
        .ok()
        .and_then(|i| schedule.get(i))
        .map_or(AfterFailure::Dead, |d| AfterFailure::RetryIn(*d))
}

/// The body format of a subscription.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Our JSON event (see the README's "Webhooks out").
    #[default]
    Standard,
    /// A Slack-compatible `{"text", "blocks"}` message for an incoming-webhook URL.
    Slack,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Slack => "slack",
        }
    }

    pub fn parse(raw: &str) -> Self {
        if raw == "slack" {
            Self::Slack
        } else {
            Self::Standard
        }
    }
}

/// Checks a subscription's own fields (the plan is resolved against the database); returns
/// the event filter deduplicated, in the order given.
pub fn validate(
    name: &str,
    description: &str,
    url: &str,
    events: &[String],
) -> Result<Vec<String>> {
    let mut v = Violations::default();
    check_name(&mut v, "name", name);
    check_text(&mut v, "description", description, 2000);
    if url.len() > 2048 {
        v.add("url", "must be at most 2048 characters");
    } else {
        check_http_url(&mut v, "url", url);
    }
    if events.len() > EVENT_TYPES.len() {
        v.add("events", "lists more types than there are");
    }
    let mut kept: Vec<String> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if !EVENT_TYPES.contains(&e.as_str()) {
            v.add(
                format!("events[{i}]"),
                format!(
                    "`{}` is not an event type; known: {}",
                    e.chars().take(64).collect::<String>(),
                    EVENT_TYPES.join(", ")
                ),
            );
        } else if !kept.contains(e) {
            kept.push(e.clone());
        }
    }
    if v.is_empty() {
        Ok(kept)
    } else {
        Err(Error::Validation(v.into_errors()))
    }
}

/// What a delivery's body is made of: the event and its execution.
#[derive(Debug, Clone)]
pub struct EventFacts {
    pub webhook_id: String,
    pub event_type: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub step_key: Option<String>,
    pub data: Value,
    pub execution_id: uuid::Uuid,
    pub plan: String,
    pub version: i32,
    pub mode: String,
    /// The execution's status now (used for events that do not say it themselves).
    pub status_now: String,
}

/// The stable id of a delivery, sent as `webhook-id` on every try.
pub fn webhook_id(delivery: uuid::Uuid) -> String {
    format!("msg_{}", delivery.simple())
}

/// The execution's URL in the API.
pub fn execution_url(public_url: &str, execution: uuid::Uuid) -> String {
    format!(
        "{}/api/v1/executions/{execution}",
        public_url.trim_end_matches('/')
    )
}

fn mode_label(mode: &str) -> &'static str {
    match mode {
        "failover" => "Failover",
        "dry_run" => "Dry run",
        _ => "Drill",
    }
}

/// The execution's status as of an execution event; for other events, as of now.
fn execution_status(f: &EventFacts) -> String {
    let told = match f.event_type.as_str() {
        "execution.created" => Some("queued"),
        "execution.started" | "execution.resumed" => Some("running"),
        "execution.paused" => Some("paused"),
        "execution.succeeded" => Some("succeeded"),
        "execution.failed" => Some("failed"),
        "execution.cancelled" => Some("cancelled"),
        _ => None,
    };
    told.map_or_else(|| f.status_now.clone(), str::to_owned)
}

fn step_status(event_type: &str) -> Option<&str> {
    match event_type {
        "approval.required" => Some("waiting_approval"),
        "step.started" => Some("running"),
        "step.released" => Some("ready"),
        other => other.strip_prefix("step."),
    }
}

fn text_of<'a>(data: &'a Value, key: &str) -> Option<&'a str> {
    data.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One line a person can read in a chat: what happened to which run.
pub fn summary(f: &EventFacts) -> String {
    let subject = format!("{} of {}", mode_label(&f.mode), f.plan);
    let reason = |what: &str| match text_of(&f.data, "reason") {
        Some(r) => format!("{subject} {what}: {r}"),
        None => format!("{subject} {what}"),
    };
    let step = f.step_key.as_deref().unwrap_or("?");
    let line = match f.event_type.as_str() {
        "execution.created" => format!("{subject} was queued"),
        "execution.started" => format!("{subject} started"),
        "execution.resumed" => reason("resumed"),
        "execution.paused" => reason("paused"),
        "execution.succeeded" => format!("{subject} succeeded"),
        "execution.failed" => reason("failed"),
        "execution.cancelled" => reason("was cancelled"),
        "execution.cleaned_up" => format!(
            "{subject}: clean-up deleted {} instance(s), {} failed",
            f.data.get("instances").and_then(Value::as_i64).unwrap_or(0),
            f.data.get("failed").and_then(Value::as_i64).unwrap_or(0)
        ),
        "approval.required" => match text_of(&f.data, "instructions") {
            Some(i) => format!("{subject}: step {step} waits for approval: {i}"),
            None => format!("{subject}: step {step} waits for approval"),
        },
        other => {
            let status = step_status(other).unwrap_or(other).replace('_', " ");
            match text_of(&f.data, "error") {
                Some(e) => format!("{subject}: step {step} {status}: {e}"),
                None => format!("{subject}: step {step} {status}"),
            }
        }
    };
    shorten(&line, 500)
}

fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
}

/// The standard body: `{"id", "type", "timestamp", "data": {execution, step?, summary, ...the
/// event's own data}}`. Event data never holds secrets (the engine stores none there).
pub fn standard_body(f: &EventFacts, public_url: &str) -> Value {
    let mut data = Map::new();
    data.insert(
        "execution".into(),
        json!({
            "id": f.execution_id,
            "plan": f.plan,
            "version": f.version,
            "mode": f.mode,
            "status": execution_status(f),
            "url": execution_url(public_url, f.execution_id),
        }),
    );
    if let Some(key) = &f.step_key {
        let mut step = json!({"key": key, "status": step_status(&f.event_type)});
        if let Some(e) = text_of(&f.data, "error") {
            step["error"] = json!(e);
        }
        data.insert("step".into(), step);
    }
    data.insert("summary".into(), json!(summary(f)));
    if let Value::Object(extra) = &f.data {
        for (k, v) in extra {
            data.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    json!({
        "id": f.webhook_id,
        "type": f.event_type,
        "timestamp": f.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Slack incoming-webhook message: `text` (the summary, for notifications) and blocks with a
/// link to the execution.
pub fn slack_body(f: &EventFacts, public_url: &str) -> Value {
    let summary = summary(f);
    let url = execution_url(public_url, f.execution_id);
    json!({
        "text": summary,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*", slack_escape(&summary))}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "`{}` · {} v{} · <{}|execution {}>",
                f.event_type, slack_escape(&f.plan), f.version, url, &f.execution_id.simple().to_string()[..8]
            )}]}
        ]
    })
}

/// The body of a delivery in a subscription's format.
pub fn body(format: Format, f: &EventFacts, public_url: &str) -> Value {
    match format {
        Format::Standard => standard_body(f, public_url),
        Format::Slack => slack_body(f, public_url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(event_type: &str, step: Option<&str>, data: Value) -> EventFacts {
        EventFacts {
            webhook_id: "msg_1".into(),
            event_type: event_type.into(),
            at: chrono::Utc::now(),
            step_key: step.map(str::to_owned),
            data,
            execution_id: uuid::Uuid::nil(),
            plan: "wordpress_failover".into(),
            version: 3,
            mode: "drill".into(),
            status_now: "running".into(),
        }
    }

    #[test]
    fn a_failed_step_reads_as_a_sentence_with_its_error_and_the_url() {
        let f = facts(
            "step.failed",
            Some("nginx_upstream_switch"),
            json!({"attempt": 1, "error": "exit code 1"}),
        );
        assert_eq!(
            summary(&f),
            "Drill of wordpress_failover: step nginx_upstream_switch failed: exit code 1"
        );
        let b = standard_body(&f, "https://dro.example.com/");
        assert_eq!(b["data"]["step"]["status"], "failed");
        assert_eq!(b["data"]["step"]["error"], "exit code 1");
        assert_eq!(b["data"]["attempt"], 1);
        assert_eq!(
            b["data"]["execution"]["url"],
            "https://dro.example.com/api/v1/executions/00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn execution_events_say_their_own_status() {
        let f = facts("execution.succeeded", None, json!({"reason": null}));
        assert_eq!(summary(&f), "Drill of wordpress_failover succeeded");
        assert_eq!(
            standard_body(&f, "http://x")["data"]["execution"]["status"],
            "succeeded"
        );
        let f = facts(
            "execution.failed",
            None,
            json!({"reason": "step `a` failed"}),
        );
        assert_eq!(
            summary(&f),
            "Drill of wordpress_failover failed: step `a` failed"
        );
    }

    #[test]
    fn slack_messages_escape_and_link() {
        let f = facts("step.failed", Some("a"), json!({"error": "<b> & c"}));
        let b = slack_body(&f, "http://x");
        assert_eq!(
            b["text"],
            "Drill of wordpress_failover: step a failed: <b> & c"
        );
        let section = b["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(section.contains("&lt;b&gt; &amp; c"), "{section}");
        let context = b["blocks"][1]["elements"][0]["text"].as_str().unwrap();
        assert!(
            context.contains("<http://x/api/v1/executions/"),
            "{context}"
        );
    }

    #[test]
    fn unknown_event_types_and_bad_urls_are_named() {
        let err =
            validate("ops", "", "ftp://x", &["step.failed".into(), "nope".into()]).unwrap_err();
        let Error::Validation(errors) = err else {
            panic!()
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["url", "events[1]"]);
        assert_eq!(
            validate(
                "ops",
                "",
                "https://x.example/h",
                &["step.failed".into(), "step.failed".into()]
            )
            .unwrap(),
            ["step.failed"]
        );
        assert!(validate("ops", "", "https://u:p@x.example/h", &[]).is_err());
    }

    #[test]
    fn the_schedule_ends_in_dead() {
        assert_eq!(
            after_failure(&RETRY_SCHEDULE, 1),
            AfterFailure::RetryIn(Duration::from_secs(5))
        );
        assert_eq!(
            after_failure(&RETRY_SCHEDULE, 9),
            AfterFailure::RetryIn(Duration::from_secs(8 * 3600))
        );
        assert_eq!(after_failure(&RETRY_SCHEDULE, 10), AfterFailure::Dead);
        assert_eq!(after_failure(&[], 1), AfterFailure::Dead);
    }
}
