//! sophons' logic. The binaries are thin: they build the state once and hand each event to a
//! function here. Every AWS and GitHub dependency sits behind a small trait ("port") with one real
//! adapter and one in-memory fake (`fakes`), so the flows can be tested without either.

pub mod aws;
pub mod commands;
pub mod config;
pub mod create;
pub mod fakes;
pub mod fleet;
pub mod github;
pub mod interruptions;
pub mod job;
pub mod lambda;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod parameters;
pub mod ports;
pub mod queue;
pub mod redeliver;
pub mod redrive;
pub mod release;
pub mod runner_cache;
pub mod slots;
pub mod stop;
pub mod templates;
pub mod waiting;
pub mod webhook;

pub use config::Config;
