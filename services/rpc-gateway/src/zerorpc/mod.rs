//! zerorpc, as zerorpc-python 0.6.3 speaks it: events ([`event`]), and next the channels,
//! heartbeats, streams and flow control on ZeroMQ sockets.

pub mod event;
