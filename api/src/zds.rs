//! ZDS: the enrolment channel between the node agent (the CNI side) and ztunnel,
//! message for message as Istio defines it (`istio.workload.zds`, docs/wire.md
//! appendix A). One protobuf message per SOCK_SEQPACKET packet; an `add` carries
//! the pod's network-namespace fd with SCM_RIGHTS.

/// Protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Version {
    /// Unset.
    NotUsed = 0,
    /// The only version.
    V1 = 1,
}

/// ztunnel's first message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ZdsHello {
    /// Protocol version.
    #[prost(enumeration = "Version", tag = "1")]
    pub version: i32,
}

/// Pod identity details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadInfo {
    /// Pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Service account.
    #[prost(string, tag = "3")]
    pub service_account: String,
}

/// Enrol a pod (with its netns fd).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddWorkload {
    /// Workload uid.
    #[prost(string, tag = "1")]
    pub uid: String,
    /// Details.
    #[prost(message, optional, tag = "2")]
    pub workload_info: Option<WorkloadInfo>,
}

/// Keep a pod already enrolled (after a reconnect).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeepWorkload {
    /// Workload uid.
    #[prost(string, tag = "1")]
    pub uid: String,
}

/// Release a pod.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DelWorkload {
    /// Workload uid (field 2 upstream).
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// The snapshot is complete: anything not mentioned goes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotSent {}

/// What the agent sends.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Payload {
    /// Enrol.
    #[prost(message, tag = "1")]
    Add(AddWorkload),
    /// Release.
    #[prost(message, tag = "2")]
    Del(DelWorkload),
    /// End of snapshot.
    #[prost(message, tag = "3")]
    SnapshotSent(SnapshotSent),
    /// Keep.
    #[prost(message, tag = "5")]
    Keep(KeepWorkload),
}

/// The agent's message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadRequest {
    /// Which request.
    #[prost(oneof = "Payload", tags = "1, 2, 3, 5")]
    pub payload: Option<Payload>,
}

/// ztunnel's answer to each request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// Empty on success.
    #[prost(string, tag = "1")]
    pub error: String,
}

/// Wrapper of the answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkloadResponse {
    /// The ack.
    #[prost(message, optional, tag = "1")]
    pub ack: Option<Ack>,
}

/// ztunnel reads at most this many bytes per message.
pub const MAX_MESSAGE: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_tags() {
        let del = WorkloadRequest {
            payload: Some(Payload::Del(DelWorkload { uid: "u".into() })),
        }
        .encode_to_vec();
        // field 2 (del), length 3, inner field 2 (uid) length 1 "u".
        assert_eq!(del, vec![0x12, 0x03, 0x12, 0x01, b'u']);
        let keep = WorkloadRequest {
            payload: Some(Payload::Keep(KeepWorkload { uid: "u".into() })),
        }
        .encode_to_vec();
        assert_eq!(keep[0], 0x2a, "keep is field 5");
        let hello = ZdsHello {
            version: Version::V1 as i32,
        }
        .encode_to_vec();
        assert_eq!(hello, vec![0x08, 0x01]);
    }
}
