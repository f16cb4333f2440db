//! CTL: `switchyard ctl`, the client side of the admin socket (the daemon's side is
//! [`crate::control::admin`]).
//!
//! - [`client`]: sends one command, prints the reply, exits with the design's code; its
//!   pieces (connection, exit codes, rendering) serve the verbs with their own loop.
//!
//! `ctl rollout ... --wait` follows a rollout with [`crate::control::follow`], built on
//! [`client`]'s pieces.

pub mod client;
