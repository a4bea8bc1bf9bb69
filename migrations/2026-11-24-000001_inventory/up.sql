-- Inventory (resources, credentials), the audit trail, and service-wide settings.

CREATE TABLE resources (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    kind        text NOT NULL,
    description text NOT NULL DEFAULT '',
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    updated_by  text NOT NULL,
    CONSTRAINT resources_name_key UNIQUE (name),
    CONSTRAINT resources_kind_check CHECK (kind IN
        ('host', 'jump_server', 'database', 'dns_record', 'http_endpoint', 'object_storage', 'generic'))
);
CREATE INDEX resources_kind_name_idx ON resources (kind, name);
CREATE INDEX resources_labels_idx ON resources USING gin (labels jsonb_path_ops);

CREATE TABLE credentials (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    kind              text NOT NULL,
    description       text NOT NULL DEFAULT '',
    username          text,
    -- AEAD (AES-256-GCM) of the secret's JSON; nonce is random per write; key_id names the master key.
    secret_ciphertext bytea NOT NULL,
    secret_nonce      bytea NOT NULL,
    key_id            text NOT NULL,
    secret_updated_at timestamptz NOT NULL DEFAULT now(),
    version           integer NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    created_by        text NOT NULL,
    updated_by        text NOT NULL,
    CONSTRAINT credentials_name_key UNIQUE (name),
    CONSTRAINT credentials_kind_check CHECK (kind IN
        ('ssh_password', 'ssh_private_key', 'token', 'access_key_pair', 'password'))
);

-- Which resource refers to which credential (derived from the resource's attributes on every
-- write). RESTRICT makes "delete a credential still in use" impossible even under races.
CREATE TABLE resource_credential_refs (
    resource_id   uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    credential_id uuid NOT NULL REFERENCES credentials (id) ON DELETE RESTRICT,
    attribute     text NOT NULL,
    PRIMARY KEY (resource_id, credential_id, attribute)
);
CREATE INDEX resource_credential_refs_credential_idx ON resource_credential_refs (credential_id);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    actor_role  text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   uuid,
    target_name text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor);

CREATE TABLE service_settings (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
