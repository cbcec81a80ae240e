//! End-to-end tests: the `gantry` binary and the library together, with real wasm plugins
//! (the shipped ones and the hostile fixtures in `tests/fixtures/`).

mod agents;
mod audit;
mod bundle_signatures;
mod cli;
mod commands;
mod control_plane;
mod crash;
mod daemon;
mod daemon_plugins;
mod differential;
mod durability;
mod faults;
mod hostile_clients;
mod hostile_input;
mod lifecycle;
mod loading;
mod plugins;
mod policy;
mod preprocess;
mod reliability;
mod signatures;
mod storage;
mod support;
mod synthetic;
mod training;
