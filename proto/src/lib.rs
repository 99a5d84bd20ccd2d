//! Quartet's gRPC contracts, one protobuf package per service (`quartet.<service>.v1`) and one
//! for what every service offers alike (`quartet.kit.v1`).
//!
//! The Rust code is generated at build time from `proto/quartet/**.proto`; nothing here is
//! written by hand except the module tree. [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

#![allow(missing_docs)] // generated code carries the .proto comments, not Rust docs on every item

/// The encoded `FileDescriptorSet` of every Quartet `.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quartet_descriptor");

/// `quartet.auth.v1`: authorization questions to `quartet-auth`.
pub mod auth {
    pub mod v1 {
        tonic::include_proto!("quartet.auth.v1");
    }
}

/// `quartet.kit.v1`: the service-information API every Quartet server offers.
pub mod kit {
    pub mod v1 {
        tonic::include_proto!("quartet.kit.v1");
    }
}

/// `quartet.db.v1`: the database's admin API and its replicas' Raft traffic.
pub mod db {
    pub mod v1 {
        tonic::include_proto!("quartet.db.v1");
    }
}

/// `quartet.rpc.v1`: the RPC gateway's gRPC front.
pub mod rpc {
    pub mod v1 {
        tonic::include_proto!("quartet.rpc.v1");
    }
}

/// `quartet.tasks.v1`: the task gateway's API.
pub mod tasks {
    pub mod v1 {
        tonic::include_proto!("quartet.tasks.v1");
    }
}
