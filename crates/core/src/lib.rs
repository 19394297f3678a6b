//! sophons' logic. The binaries are thin: they build the state once and hand each event to a
//! function here. Every AWS and GitHub dependency sits behind a small trait ("port") with one real
//! adapter and one in-memory fake (`fakes`), so the flows can be tested without either.

pub mod aws;
pub mod config;
pub mod fakes;
pub mod job;
pub mod logging;
pub mod queue;
pub mod secrets;
pub mod templates;
pub mod webhook;

pub use config::Config;
