//! The receiver against the real embedded agent over pipes, against a
//! hand-written hostile agent, and two receivers sharing one `InFlight`.

#[path = "receiver/bullseye.rs"]
mod bullseye;
#[path = "receiver/hostile.rs"]
mod hostile;
#[path = "receiver/inflight.rs"]
mod inflight;
#[path = "receiver/real_agent.rs"]
mod real_agent;
#[path = "receiver/support.rs"]
mod support;
