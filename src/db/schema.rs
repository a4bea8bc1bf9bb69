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
    execution_events (id) {
        id -> Int8,
        execution_id -> Uuid,
        at -> Timestamptz,
        #[sql_name = "type"]
        type_ -> Text,
        step_key -> Nullable<Text>,
        data -> Jsonb,
    }
}

diesel::table! {
    executions (id) {
        id -> Uuid,
        plan_id -> Uuid,
        plan_version -> Int4,
        plan_name -> Text,
        mode -> Text,
        status -> Text,
        params -> Jsonb,
        idempotency_key -> Nullable<Text>,
        pause_reason -> Nullable<Text>,
        error -> Nullable<Text>,
        created_by -> Text,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        auto_cleanup_secs -> Nullable<Int4>,
    }
}

diesel::table! {
    hook_deliveries (hook_id, delivery_id) {
        hook_id -> Uuid,
        delivery_id -> Text,
        body_sha256 -> Bytea,
        execution_id -> Nullable<Uuid>,
        response -> Jsonb,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    hooks (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        action -> Text,
        plan_id -> Nullable<Uuid>,
        mode -> Nullable<Text>,
        auth -> Text,
        params -> Jsonb,
        failover_confirmation -> Text,
        confirm_pointer -> Nullable<Text>,
        execution_pointer -> Nullable<Text>,
        comment_pointer -> Nullable<Text>,
        enabled -> Bool,
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
    plan_step_refs (plan_id, step_id) {
        plan_id -> Uuid,
        step_id -> Uuid,
    }
}

diesel::table! {
    plan_versions (plan_id, version) {
        plan_id -> Uuid,
        version -> Int4,
        spec -> Jsonb,
        resolved -> Jsonb,
        created_at -> Timestamptz,
        created_by -> Text,
    }
}

diesel::table! {
    plans (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        latest_version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::table! {
    providers (id) {
        id -> Uuid,
        name -> Text,
        kind -> Text,
        description -> Text,
        base_url -> Text,
        credential_id -> Nullable<Uuid>,
        settings -> Jsonb,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::table! {
    recoveries (id) {
        id -> Uuid,
        execution_id -> Uuid,
        step_key -> Text,
        resource_name -> Text,
        provider_name -> Text,
        provider_host_id -> Text,
        purpose -> Text,
        state -> Text,
        instance_id -> Nullable<Text>,
        facts -> Jsonb,
        error -> Nullable<Text>,
        requested_at -> Timestamptz,
        updated_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        cleanup_error -> Nullable<Text>,
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

diesel::table! {
    step_logs (id) {
        id -> Int8,
        execution_id -> Uuid,
        step_key -> Text,
        attempt -> Int4,
        stream -> Text,
        at -> Timestamptz,
        data -> Text,
    }
}

diesel::table! {
    step_runs (execution_id, key) {
        execution_id -> Uuid,
        key -> Text,
        position -> Int4,
        kind -> Text,
        step -> Jsonb,
        dependents -> Array<Text>,
        status -> Text,
        pending_deps -> Int4,
        attempt -> Int4,
        next_attempt_at -> Timestamptz,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        deadline_at -> Nullable<Timestamptz>,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        exit_code -> Nullable<Int4>,
        outputs -> Jsonb,
        error -> Nullable<Text>,
        approval -> Nullable<Jsonb>,
    }
}

diesel::table! {
    steps (id) {
        id -> Uuid,
        name -> Text,
        kind -> Text,
        description -> Text,
        definition -> Jsonb,
        version -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        created_by -> Text,
        updated_by -> Text,
    }
}

diesel::joinable!(execution_events -> executions (execution_id));
diesel::joinable!(step_logs -> executions (execution_id));
diesel::joinable!(step_runs -> executions (execution_id));
diesel::joinable!(hook_deliveries -> executions (execution_id));
diesel::joinable!(hook_deliveries -> hooks (hook_id));
diesel::joinable!(hooks -> plans (plan_id));
diesel::joinable!(plan_step_refs -> plans (plan_id));
diesel::joinable!(plan_step_refs -> steps (step_id));
diesel::joinable!(plan_versions -> plans (plan_id));
diesel::joinable!(providers -> credentials (credential_id));
diesel::joinable!(recoveries -> executions (execution_id));
diesel::joinable!(resource_credential_refs -> credentials (credential_id));
diesel::joinable!(resource_credential_refs -> resources (resource_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    credentials,
    execution_events,
    executions,
    hook_deliveries,
    hooks,
    plan_step_refs,
    plan_versions,
    plans,
    providers,
    recoveries,
    resource_credential_refs,
    resources,
    service_settings,
    step_logs,
    step_runs,
    steps,
);

diesel::table! {
    webhook_subscriptions (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        url -> Text,
        events -> Array<Text>,
        plan_id -> Nullable<Uuid>,
        format -> Text,
        active -> Bool,
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
    webhook_deliveries (id) {
        id -> Uuid,
        subscription_id -> Uuid,
        event_id -> Int8,
        execution_id -> Uuid,
        event_type -> Text,
        status -> Text,
        attempts -> Int4,
        tries -> Int4,
        next_attempt_at -> Timestamptz,
        lease_owner -> Nullable<Text>,
        lease_expires_at -> Nullable<Timestamptz>,
        payload -> Nullable<Jsonb>,
        created_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    webhook_delivery_attempts (delivery_id, attempt) {
        delivery_id -> Uuid,
        attempt -> Int4,
        at -> Timestamptz,
        status_code -> Nullable<Int4>,
        error -> Nullable<Text>,
        latency_ms -> Int4,
        response_excerpt -> Nullable<Text>,
    }
}

diesel::joinable!(webhook_deliveries -> webhook_subscriptions (subscription_id));
diesel::joinable!(webhook_delivery_attempts -> webhook_deliveries (delivery_id));
diesel::joinable!(webhook_subscriptions -> plans (plan_id));

diesel::allow_tables_to_appear_in_same_query!(
    webhook_subscriptions,
    webhook_deliveries,
    webhook_delivery_attempts,
    plans,
);
