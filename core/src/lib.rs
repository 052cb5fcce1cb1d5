//! What the wsgiscale server and operator share, without linking Python: the server's command
//! line and config file ([`config`]), the load report it serves ([`load`]) and the tracker
//! that computes it ([`loadtrack`]), the scoreboard snapshot of its workers ([`scoreboard`]),
//! the worker pool's policy ([`pool`]), the shutdown contract ([`shutdown`]),
//! the worker-count algorithms and their driver ([`scaling`]), the sizes/durations parser
//! ([`units`]) and the seeded random generator both sides replay decisions with ([`rng`]).

pub mod colour;
pub mod config;
pub mod load;
pub mod loadtrack;
pub mod pool;
pub mod rng;
pub mod scaling;
pub mod scoreboard;
pub mod shutdown;
pub mod units;
