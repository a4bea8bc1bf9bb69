DROP TABLE service_settings;
DROP TABLE audit_log;
DROP TABLE resource_credential_refs;
DROP TABLE credentials;
DROP TABLE resources;
