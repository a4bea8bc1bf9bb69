//! Pure domain logic, no I/O: what a valid resource or credential is, and the field checks
//! they share. Everything here is unit-tested without a database.

pub mod credentials;
pub mod resources;
pub mod validation;
