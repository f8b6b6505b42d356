//! The relay's answer to a submission. Laniakea emitters ignore it; `hark publish` waits
//! for it, so a submitter knows its event was published (or exactly why not).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Verified and published; `seq` is its place in the relay's stream.
    Accepted,
    /// Already published earlier (a retry); nothing more to do.
    Duplicate,
    /// Not published; `reason` is the counter label and `message` says what to change.
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub uuid: Option<String>,
    pub status: AckStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Ack {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
