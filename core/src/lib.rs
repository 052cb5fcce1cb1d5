//! What the wsgiscale server, operator and activator share, without linking Python: the
//! operator-activator contract ([`activator`]), the server's command line and config file
//! ([`config`], with its hooks and TLS/HTTP/2 parts), the load report it serves ([`load`])
//! and the tracker that computes it ([`loadtrack`]), the scoreboard snapshot of its workers ([`scoreboard`]),
//! the worker pool's policy ([`pool`]), the shutdown contract ([`shutdown`]),
//! the worker-count algorithms and their driver ([`scaling`]), the sizes/durations parser
//! ([`units`]), the translation of gunicorn's and uWSGI's settings ([`migrate`]), load
//! traces ([`trace`]) and the one seeded random generator ([`rng`]).

pub mod activator;
pub mod colour;
pub mod config;
pub mod load;
pub mod loadtrack;
pub mod migrate;
pub mod pool;
pub mod rng;
pub mod scaling;
pub mod scoreboard;
pub mod shutdown;
pub mod trace;
pub mod units;
