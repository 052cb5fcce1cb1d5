//! What the wsgiscale server and operator share, without linking Python: the server's command
//! line and config file ([`config`]), the load report it serves ([`load`]), the scoreboard
//! snapshot of its workers ([`scoreboard`]) and the sizes/durations parser ([`units`]).

pub mod config;
pub mod load;
pub mod scoreboard;
pub mod units;
