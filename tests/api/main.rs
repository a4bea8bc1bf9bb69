//! Integration tests through HTTP against a real PostgreSQL: one database per test.

mod common;

mod auth;
mod cli;
mod credentials;
mod errors;
mod health;
mod openapi;
mod resources;
