-- Inbound hooks: what an ITSM or ChatOps tool may do by calling `POST /hooks/{id}` (start a
-- plan, or approve or reject a waiting manual step), how it authenticates, and every delivery
-- it made, so a retried delivery answers the same and a reused id with another body is refused.

CREATE TABLE hooks (
    id                    uuid PRIMARY KEY,
    name                  text NOT NULL,
    description           text NOT NULL DEFAULT '',
    action                text NOT NULL CHECK (action IN ('start', 'approve', 'reject')),
    -- start: the plan (its latest version at each call) and the mode.
    plan_id               uuid REFERENCES plans (id) ON DELETE RESTRICT,
    mode                  text CHECK (mode IN ('drill', 'failover', 'dry_run')),
    -- signature: Standard Webhooks HMAC; bearer: `Authorization: Bearer <token>`.
    auth                  text NOT NULL CHECK (auth IN ('signature', 'bearer')),
    -- start: { "<plan parameter>": "<JSON pointer into the payload>" }.
    params                jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- start, failover: `operator` (created paused) or `payload` (confirm_pointer names the plan).
    failover_confirmation text NOT NULL DEFAULT 'operator' CHECK (failover_confirmation IN ('operator', 'payload')),
    confirm_pointer       text,
    -- approve / reject: where the payload holds the execution id and an optional comment.
    execution_pointer     text,
    comment_pointer       text,
    enabled               boolean NOT NULL DEFAULT true,
    -- The `whsec_...` secret or the bearer token, sealed with the master key (row id as AAD).
    secret_ciphertext     bytea NOT NULL,
    secret_nonce          bytea NOT NULL,
    key_id                text NOT NULL,
    secret_updated_at     timestamptz NOT NULL DEFAULT now(),
    version               integer NOT NULL DEFAULT 1,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    created_by            text NOT NULL,
    updated_by            text NOT NULL,
    CONSTRAINT hooks_name_key UNIQUE (name),
    CONSTRAINT hooks_start_has_plan CHECK ((action = 'start') = (plan_id IS NOT NULL AND mode IS NOT NULL))
);
CREATE INDEX hooks_plan_idx ON hooks (plan_id);

-- One row per accepted delivery, written in the transaction that acted on it.
CREATE TABLE hook_deliveries (
    hook_id      uuid NOT NULL REFERENCES hooks (id) ON DELETE CASCADE,
    -- `webhook-id`, or `Idempotency-Key` in bearer mode.
    delivery_id  text NOT NULL,
    body_sha256  bytea NOT NULL,
    execution_id uuid REFERENCES executions (id) ON DELETE CASCADE,
    -- The 202 body answered, answered again to a retry.
    response     jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hook_id, delivery_id)
);
CREATE INDEX hook_deliveries_execution_idx ON hook_deliveries (execution_id);
