-- Reusable steps, plans and their immutable versions.

CREATE TABLE steps (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    kind        text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- The validated definition: kind, params (defaults filled), timeout, retry, idempotent.
    definition  jsonb NOT NULL,
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    updated_by  text NOT NULL,
    CONSTRAINT steps_name_key UNIQUE (name),
    CONSTRAINT steps_kind_check CHECK (kind IN ('host_recovery', 'power_on', 'remote_script',
        'local_script', 'http_request', 'check', 'manual_approval', 'wait'))
);
CREATE INDEX steps_kind_name_idx ON steps (kind, name);

CREATE TABLE plans (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    description    text NOT NULL DEFAULT '',
    latest_version integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL,
    updated_by     text NOT NULL,
    CONSTRAINT plans_name_key UNIQUE (name)
);

-- Never updated: a new version is a new row.
CREATE TABLE plan_versions (
    plan_id    uuid NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    version    integer NOT NULL,
    -- The plan as written (JSON form of the YAML/JSON document).
    spec       jsonb NOT NULL,
    -- Each plan step pinned to its step definition with the plan's overrides applied.
    resolved   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    PRIMARY KEY (plan_id, version)
);

-- Which steps the latest version of each plan uses: a step in use cannot be deleted.
CREATE TABLE plan_step_refs (
    plan_id uuid NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    step_id uuid NOT NULL REFERENCES steps (id) ON DELETE RESTRICT,
    PRIMARY KEY (plan_id, step_id)
);
CREATE INDEX plan_step_refs_step_idx ON plan_step_refs (step_id);
