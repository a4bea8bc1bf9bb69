-- Outbound webhooks: subscriptions, the deliveries the outbox trigger creates for each execution
-- event that a subscription wants (in the event's own transaction), and every attempt to send one.

CREATE TABLE webhook_subscriptions (
    id                uuid PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    description       text NOT NULL DEFAULT '',
    url               text NOT NULL,
    -- Event types wanted; empty: every event.
    events            text[] NOT NULL DEFAULT '{}',
    -- Only this plan's executions; NULL: every plan. A plan with subscriptions cannot be deleted.
    plan_id           uuid REFERENCES plans (id) ON DELETE RESTRICT,
    format            text NOT NULL DEFAULT 'standard' CHECK (format IN ('standard', 'slack')),
    active            boolean NOT NULL DEFAULT true,
    -- The signing secret, sealed with the master key (the row id as associated data).
    secret_ciphertext bytea NOT NULL,
    secret_nonce      bytea NOT NULL,
    key_id            text NOT NULL,
    secret_updated_at timestamptz NOT NULL DEFAULT now(),
    version           integer NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    created_by        text NOT NULL,
    updated_by        text NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id  uuid NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_id         bigint NOT NULL REFERENCES execution_events (id) ON DELETE CASCADE,
    execution_id     uuid NOT NULL,
    event_type       text NOT NULL,
    -- pending: to send (first time or again after a failed attempt); delivered (2xx); dead (the
    -- last try failed; a redeliver makes it pending again).
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    -- Attempts ever made (numbers the attempts) and tries since the last (re)delivery request
    -- (what the retry schedule counts).
    attempts         integer NOT NULL DEFAULT 0,
    tries            integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- The instance sending it now, until when (a dead instance's claim lapses).
    lease_owner      text,
    lease_expires_at timestamptz,
    -- The body as first sent; every retry sends the same.
    payload          jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- Ordering: the earliest pending event of an execution for a subscription goes first.
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (subscription_id, execution_id, event_id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_list_idx ON webhook_deliveries (subscription_id, event_id DESC);

CREATE TABLE webhook_delivery_attempts (
    delivery_id      uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    status_code      integer,
    error            text,
    latency_ms       integer NOT NULL,
    response_excerpt text,
    PRIMARY KEY (delivery_id, attempt)
);

-- The outbox: every statement that inserts execution events creates, in the same transaction,
-- one delivery per active subscription whose event and plan filters match. No code path that
-- writes an event can forget it.
CREATE FUNCTION webhook_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (subscription_id, event_id, execution_id, event_type)
    SELECT s.id, ev.id, ev.execution_id, ev.type
    FROM new_events ev
    JOIN executions e ON e.id = ev.execution_id
    JOIN webhook_subscriptions s ON s.active
        AND (cardinality(s.events) = 0 OR ev.type = ANY (s.events))
        AND (s.plan_id IS NULL OR s.plan_id = e.plan_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER execution_events_webhook_outbox
    AFTER INSERT ON execution_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox();
