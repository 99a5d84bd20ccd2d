//! zerorpc, as zerorpc-python 0.6.3 speaks it: events ([`event`]) on ZeroMQ sockets
//! ([`socket`]), request/reply with channels, heartbeats, streams and flow control
//! ([`server`], [`client`]), and the one-way push/pull and publish/subscribe patterns
//! ([`pattern`]).

pub mod client;
pub mod event;
pub mod pattern;
pub mod server;
pub mod socket;

/// Whether the libzmq in use can do CURVE security.
pub fn has_curve() -> bool {
    zmq::has("curve").unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_linked_libzmq_speaks_curve() {
        assert!(
            super::has_curve(),
            "libzmq without CURVE: install Debian's libzmq3-dev"
        );
        let (major, minor, _) = zmq::version();
        assert!((major, minor) >= (4, 3));
    }
}
