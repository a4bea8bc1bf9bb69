// @generated automatically by Diesel CLI.

diesel::table! {
    audit_log (id) {
        id -> Int8,
        at -> Timestamptz,
        actor -> Text,
        actor_role -> Text,
        action -> Text,
        target_type -> Text,
        target_id -> Nullable<Uuid>,
        target_name -> Nullable<Text>,
        request_id -> Nullable<Text>,
        details -> Jsonb,
    }
}

diesel::table! {
    credentials (id) {
        id -> Uuid,
        name -> Text,
        kind -> Text,
        description -> Text,
        username -> Nullable<Text>,
        secret_ciphertext -> Bytea,
        secret_nonce -> Bytea,
        key_id -> Text,
        secret_updated_at -> Timestamptz,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::table! {
    resource_credential_refs (resource_id, credential_id, attribute) {
        resource_id -> Uuid,
        credential_id -> Uuid,
        attribute -> Text,
    }
}

diesel::table! {
    resources (id) {
        id -> Uuid,
        name -> Text,
        kind -> Text,
        description -> Text,
        attributes -> Jsonb,
        labels -> Jsonb,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::table! {
    service_settings (key) {
        key -> Text,
        value -> Text,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(resource_credential_refs -> credentials (credential_id));
diesel::joinable!(resource_credential_refs -> resources (resource_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    credentials,
    resource_credential_refs,
    resources,
    service_settings,
);
