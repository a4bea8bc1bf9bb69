//! Step output on its way to the database: lines are masked (every injected secret becomes
//! `******`) before they are stored, batched, and pushed through a bounded channel, so memory
//! stays bounded whatever a step prints.

use std::time::Duration;

use diesel::prelude::*;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db::schema::step_logs;
use crate::db::Db;

/// Longest stored line; longer output is split.
pub const MAX_LINE: usize = 16 * 1024;
const BATCH_LINES: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug)]
struct Line {
    stream: &'static str,
    data: String,
}

/// Where a runner writes its output.
#[derive(Clone)]
pub struct LogSink {
    tx: mpsc::Sender<Line>,
    secrets: std::sync::Arc<Vec<String>>,
}

impl LogSink {
    /// Starts the writer for one attempt; `secrets` are masked in everything written. The
    /// returned handle finishes once every sink clone is dropped and all lines are stored.
    pub fn start(
        db: Db,
        execution: Uuid,
        step: String,
        attempt: i32,
        secrets: Vec<String>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .flat_map(|s| s.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|s| s.len() >= 3)
            .collect();
        // Longest first, so a secret that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let writer = tokio::spawn(write_batches(db, execution, step, attempt, rx));
        (
            Self {
                tx,
                secrets: std::sync::Arc::new(secrets),
            },
            writer,
        )
    }

    /// A sink whose lines go nowhere (benchmarks, tools); call inside a tokio runtime.
    pub fn discard() -> Self {
        let (tx, mut rx) = mpsc::channel::<Line>(1024);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Self {
            tx,
            secrets: std::sync::Arc::new(Vec::new()),
        }
    }

    fn mask(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "******");
            }
        }
        out
    }

    /// Stores one line (split when over `MAX_LINE`); waits when the writer is behind.
    pub async fn line(&self, stream: &'static str, text: &str) {
        let masked = self.mask(text);
        let mut rest = masked.as_str();
        while !rest.is_empty() || masked.is_empty() {
            let mut cut = rest.len().min(MAX_LINE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            let _ = self
                .tx
                .send(Line {
                    stream,
                    data: piece.to_owned(),
                })
                .await;
            rest = tail;
            if masked.is_empty() {
                break;
            }
        }
    }

    /// A line from the orchestrator itself (why a step failed, what it waits for).
    pub async fn system(&self, text: &str) {
        self.line("system", text).await;
    }
}

async fn write_batches(
    db: Db,
    execution: Uuid,
    step: String,
    attempt: i32,
    mut rx: mpsc::Receiver<Line>,
) {
    let mut batch: Vec<Line> = Vec::new();
    let mut bytes = 0;
    loop {
        let next = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Ok(line) => line,
                Err(_) => {
                    flush(&db, execution, &step, attempt, &mut batch).await;
                    bytes = 0;
                    continue;
                }
            }
        };
        let Some(line) = next else {
            flush(&db, execution, &step, attempt, &mut batch).await;
            return;
        };
        bytes += line.data.len();
        batch.push(line);
        if batch.len() >= BATCH_LINES || bytes >= BATCH_BYTES {
            flush(&db, execution, &step, attempt, &mut batch).await;
            bytes = 0;
        }
    }
}

async fn flush(db: &Db, execution: Uuid, step: &str, attempt: i32, batch: &mut Vec<Line>) {
    if batch.is_empty() {
        return;
    }
    let lines = std::mem::take(batch);
    let step = step.to_owned();
    let stored = db
        .run(move |conn| {
            let rows: Vec<_> = lines
                .iter()
                .map(|l| {
                    (
                        step_logs::execution_id.eq(execution),
                        step_logs::step_key.eq(&step),
                        step_logs::attempt.eq(attempt),
                        step_logs::stream.eq(l.stream),
                        step_logs::data.eq(l.data.replace('\0', "\u{fffd}")),
                    )
                })
                .collect();
            diesel::insert_into(step_logs::table)
                .values(&rows)
                .execute(conn)?;
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, %execution, "storing step output failed");
    }
}
