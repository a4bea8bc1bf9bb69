//! Integration tests through HTTP against a real PostgreSQL: one database per test.

mod common;

mod auth;
mod checks;
mod cli;
mod credentials;
mod engine;
mod errors;
mod examples;
mod health;
mod hooks;
mod openapi;
mod plans;
mod providers;
mod providers_client;
mod recovery;
mod resources;
mod runners;
mod scenarios;
mod ssh;
mod sshd;
mod webhooks_out;
