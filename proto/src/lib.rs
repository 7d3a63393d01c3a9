//! The protobuf API of Ssak3: generated messages, clients and servers, and
//! the encoded descriptor set that server reflection serves. The public API
//! (`proto/`) and the internal protos (`proto-internal/`: events, the
//! service-only payment calls, the bench's echo service) alike.

pub mod codec;

/// Every Ssak3 .proto file (with its imports), encoded as a `FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ssak3_descriptor.bin"));

/// `ssak3.type.v1`: the types shared by every API (money).
pub mod r#type {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ssak3.r#type.v1");
    }
}

/// `ssak3.reservation.v1`: booking, reading and cancelling; the cleaning companies' jobs.
pub mod reservation {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ssak3.reservation.v1");
    }
}

/// `ssak3.payment.v1`: reading payments; `ssak3.payment.internal.v1`: taking
/// and refunding them (service-only).
pub mod payment {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ssak3.payment.v1");
    }

    /// The service-only calls (internal).
    pub mod internal {
        #[allow(missing_docs, clippy::all)]
        pub mod v1 {
            tonic::include_proto!("ssak3.payment.internal.v1");
        }
    }
}

/// `ssak3.notify.v1`: notifications to customers and cleaning companies.
pub mod notify {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ssak3.notify.v1");
    }
}

/// `ssak3.mypage.v1`: the read model of reservations.
pub mod mypage {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ssak3.mypage.v1");
    }
}

/// `ssak3.events.v1`: the payloads on the event exchange (internal).
pub mod events {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ssak3.events.v1");
    }
}

/// `ssak3.bench.v1`: the bare echo service `ssak3 bench` compares with (internal).
pub mod bench {
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ssak3.bench.v1");
    }
}
