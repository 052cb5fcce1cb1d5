//! The wsgiscale server. The master process runs a tokio + hyper front ([`front`]) that owns
//! every client connection and queues complete requests in one FIFO ([`dispatch`]); each
//! worker process has a link task ([`link`]) that writes it requests and routes its responses
//! back. Workers are forked by a single-threaded fork server ([`zygote`]) that imported the
//! app once, and run it on their own CPython interpreter ([`worker`]). The [`supervisor`]
//! keeps the right number of workers alive. [`proto`] is the master <-> worker framing, carried
//! by shared-memory rings ([`ring`], mapped by [`shm`]; the master's sleep is announced
//! from the runtime's park hook, [`park`]), and [`environ`] builds the CGI
//! environ; the framing, the rings' arithmetic and the environ are pure.

pub mod access;
pub mod admin;
pub mod cgroup;
pub mod cli;
pub mod control;
pub mod dispatch;
pub mod entry;
pub mod environ;
pub mod forwarded;
pub mod front;
pub mod hooks;
pub mod launch;
pub mod limits;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod park;
pub mod procmem;
pub mod proto;
pub mod protocol;
pub mod python;
pub mod ring;
pub mod server;
pub mod shm;
pub mod spool;
pub mod state;
pub mod static_files;
pub mod supervisor;
pub mod sys;
pub mod tls;
pub mod worker;
pub mod zygote;
