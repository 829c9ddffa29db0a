//! Ferry's integration tests: each module pins one promise of the engine, exercised
//! end to end through the HTTP API of a real in-process server.

mod harness;

mod admission;
mod agents;
mod auth;
mod blobs;
mod breakers;
mod cancel_replay;
mod consistency;
mod errors;
mod escalation;
mod events;
mod exec;
mod idempotency;
mod lifecycle;
mod listing;
mod llm;
mod lost_worker;
mod openapi;
mod ordering;
mod queues;
mod refusals;
mod remote;
mod restart;
mod retention;
mod retries;
mod schedules;
mod scheduling;
mod streams;
mod subruns;
mod system;
mod tenancy;
mod transport;
mod validation;
mod waiting;
mod webhooks;
mod workflows;
