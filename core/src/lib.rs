//! What the wsgiscale server and operator share, without linking Python: the server's command
//! line and config file ([`config`]), the load report it serves ([`load`]) and the tracker
//! that computes it ([`loadtrack`]), the scoreboard snapshot of its workers ([`scoreboard`]),
//! the worker pool's policy ([`pool`]), the shutdown contract ([`shutdown`]),
//! the worker-count algorithms and their driver ([`scaling`]), the sizes/durations parser
//! ([`units`]), the server hooks ([`hooks`]) and the front's TLS and HTTP/2 settings
//! ([`protocols`]).

pub mod colour;
pub mod config;
pub mod hooks;
pub mod load;
pub mod loadtrack;
pub mod migrate;
pub mod pool;
pub mod protocols;
pub mod scaling;
pub mod scoreboard;
pub mod shutdown;
pub mod units;
