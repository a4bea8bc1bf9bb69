-- Executions of plan versions, their step runs (the work queue), the event timeline (also the
-- webhook outbox) and the step logs.

CREATE TABLE executions (
    id              uuid PRIMARY KEY,
    plan_id         uuid NOT NULL,
    plan_version    integer NOT NULL,
    plan_name       text NOT NULL,
    mode            text NOT NULL CHECK (mode IN ('drill', 'failover', 'dry_run')),
    status          text NOT NULL CHECK (status IN
        ('queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled')),
    params          jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text,
    pause_reason    text,
    error           text,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    -- A plan version that has executions cannot disappear under them.
    FOREIGN KEY (plan_id, plan_version) REFERENCES plan_versions (plan_id, version) ON DELETE RESTRICT
);
CREATE UNIQUE INDEX executions_idempotency_idx ON executions (plan_id, created_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX executions_plan_idx ON executions (plan_id, created_at DESC);
CREATE INDEX executions_status_idx ON executions (status);

CREATE TABLE step_runs (
    execution_id     uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    key              text NOT NULL,
    position         integer NOT NULL,
    kind             text NOT NULL,
    -- The resolved (pinned) step as the plan version holds it.
    step             jsonb NOT NULL,
    dependents       text[] NOT NULL DEFAULT '{}',
    status           text NOT NULL CHECK (status IN ('pending', 'ready', 'running',
        'waiting_approval', 'succeeded', 'failed', 'skipped', 'cancelled', 'interrupted')),
    pending_deps     integer NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    deadline_at      timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    exit_code        integer,
    outputs          jsonb NOT NULL DEFAULT '{}'::jsonb,
    error            text,
    approval         jsonb,
    PRIMARY KEY (execution_id, key)
);
CREATE INDEX step_runs_ready_idx ON step_runs (next_attempt_at) WHERE status = 'ready';
CREATE INDEX step_runs_lease_idx ON step_runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX step_runs_approval_idx ON step_runs (deadline_at) WHERE status = 'waiting_approval';

CREATE TABLE execution_events (
    id           bigserial PRIMARY KEY,
    execution_id uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    type         text NOT NULL,
    step_key     text,
    data         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX execution_events_execution_idx ON execution_events (execution_id, id);

CREATE TABLE step_logs (
    id           bigserial PRIMARY KEY,
    execution_id uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    step_key     text NOT NULL,
    attempt      integer NOT NULL,
    stream       text NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    data         text NOT NULL
);
CREATE INDEX step_logs_execution_idx ON step_logs (execution_id, id);
