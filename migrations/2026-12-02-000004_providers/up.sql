-- Recovery providers (the DR products that recover protected hosts) and every host recovery an
-- execution asked for: the record that makes recovery idempotent across crashes and tells a
-- drill's clean-up exactly what to delete.

CREATE TABLE providers (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('hyperbdr', 'simulator')),
    description   text NOT NULL DEFAULT '',
    base_url      text NOT NULL,
    -- The login (a `password` credential); a simulator may go without one.
    credential_id uuid REFERENCES credentials (id) ON DELETE RESTRICT,
    -- tls_verify, request_timeout, poll_interval, recovery_timeout, power_on_timeout.
    settings      jsonb NOT NULL DEFAULT '{}'::jsonb,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL,
    updated_by    text NOT NULL,
    CONSTRAINT providers_name_key UNIQUE (name)
);
CREATE INDEX providers_credential_idx ON providers (credential_id);

CREATE TABLE recoveries (
    id               uuid PRIMARY KEY,
    execution_id     uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    step_key         text NOT NULL,
    -- The inventory host and where it was recovered (names kept as they were at the time).
    resource_name    text NOT NULL,
    provider_name    text NOT NULL,
    provider_host_id text NOT NULL,
    purpose          text NOT NULL CHECK (purpose IN ('drill', 'failover')),
    -- requested: about to ask (or asked) the provider; recovered: powered off; running: booted;
    -- failed: the provider reported a failure; deleted: cleaned up.
    state            text NOT NULL CHECK (state IN ('requested', 'recovered', 'running', 'failed', 'deleted')),
    instance_id      text,
    facts            jsonb NOT NULL DEFAULT '{}'::jsonb,
    error            text,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    cleanup_error    text,
    CONSTRAINT recoveries_execution_host_key UNIQUE (execution_id, resource_name)
);
CREATE INDEX recoveries_live_idx ON recoveries (provider_name, provider_host_id) WHERE deleted_at IS NULL;

-- A drill whose plan asks for automatic clean-up keeps its instances this long after it ends.
ALTER TABLE executions ADD COLUMN auto_cleanup_secs integer;
