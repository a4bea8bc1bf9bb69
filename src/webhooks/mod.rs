//! Webhooks, both ways: ITSM/ChatOps tools call inbound hooks to start executions and decide
//! approvals; subscriptions receive every event of a run. Both sign with the Standard Webhooks
//! scheme ([`signature`]).

pub mod dispatcher;
pub mod inbound;
pub mod outbound;
pub mod signature;
