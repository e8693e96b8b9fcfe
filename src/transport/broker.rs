//! Can the chosen client talk to the broker? Checked once at start, so that a broker the
//! client cannot use stops the service with a clear error (exit code 3) instead of an endless
//! retry.
//!
//! The `kafka` crate speaks the Kafka 0.8-era protocol (Produce v0, Fetch v0, Metadata v0,
//! ListOffsets v0, OffsetCommit/OffsetFetch v1, GroupCoordinator v0) and never asks which
//! versions the broker supports; a broker that dropped them just closes the connection, which
//! would look like an outage. So we ask the broker with ApiVersions v0 (which every broker since
//! 0.10 answers) and stop if it lacks a version the crate sends. Apache Kafka 3.9 serves them;
//! Kafka 4.1.1 (measured) no longer serves Fetch v0, ListOffsets v0 or OffsetCommit v1.
//!
//! librdkafka negotiates versions by itself and needs only what Kafka 2.3 and later serve
//! (static membership, read_committed fetches); for it the check is one metadata request
//! through librdkafka, over the configured TLS/SASL, after the same ApiVersions look on a
//! plaintext listener.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::{ClientKind, KafkaAccess, SecurityProtocol};

/// An API a client needs: (API key, name, lowest and highest version the client can send).
/// The broker must serve at least one version in that range.
pub type Need = (i16, &'static str, i16, i16);

/// A client's protocol needs and what to tell the user when a broker lacks them.
pub struct ClientNeeds {
    /// The client, for the message.
    pub client: &'static str,
    /// The APIs.
    pub needs: &'static [Need],
    /// What to do about it.
    pub advice: &'static str,
}

/// The `kafka` crate.
pub const KAFKA_CRATE: ClientNeeds = ClientNeeds {
    client: "the `kafka` crate",
    needs: &KAFKA_CRATE_NEEDS,
    advice: "KAFKA_CLIENT=kafka needs Apache Kafka 3.9 or older; set KAFKA_CLIENT=rdkafka for \
             Kafka 4.x (see docs/kafka-clients.md)",
};

/// librdkafka.
pub const RDKAFKA: ClientNeeds = ClientNeeds {
    client: "librdkafka",
    needs: &RDKAFKA_NEEDS,
    advice: "KAFKA_CLIENT=rdkafka needs Apache Kafka 2.3 or newer",
};

/// What the `kafka` crate sends, each at one version.
pub const KAFKA_CRATE_NEEDS: [Need; 7] = [
    (0, "Produce", 0, 0),
    (1, "Fetch", 0, 0),
    (2, "ListOffsets", 0, 0),
    (3, "Metadata", 0, 0),
    (8, "OffsetCommit", 1, 1),
    (9, "OffsetFetch", 1, 1),
    (10, "FindCoordinator", 0, 0),
];

/// What librdkafka needs for this service: read_committed fetches (Fetch v4+, ListOffsets
/// v2+), record batches (Produce v3+), and consumer groups with static membership (JoinGroup
/// v5+, Kafka 2.3 and newer). Cooperative-sticky rebalancing is done by the clients.
pub const RDKAFKA_NEEDS: [Need; 10] = [
    (0, "Produce", 3, i16::MAX),
    (1, "Fetch", 4, i16::MAX),
    (2, "ListOffsets", 2, i16::MAX),
    (3, "Metadata", 1, i16::MAX),
    (8, "OffsetCommit", 2, i16::MAX),
    (9, "OffsetFetch", 1, i16::MAX),
    (10, "FindCoordinator", 0, i16::MAX),
    (11, "JoinGroup", 5, i16::MAX),
    (12, "Heartbeat", 0, i16::MAX),
    (14, "SyncGroup", 0, i16::MAX),
];
const API_VERSIONS: i16 = 18;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why the probe did not say "compatible".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeError {
    /// No broker could be reached: retry later.
    Unreachable(String),
    /// The broker answered and cannot serve the crate's protocol: retrying won't help.
    Incompatible(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(m) | Self::Incompatible(m) => f.write_str(m),
        }
    }
}

/// The check for the configured client: the ApiVersions look where it can be made (plaintext),
/// and for librdkafka a metadata request over the configured security.
pub fn check(brokers: &[String], access: &KafkaAccess) -> Result<(), ProbeError> {
    match access.client {
        ClientKind::Kafka => probe(brokers, &KAFKA_CRATE),
        ClientKind::Rdkafka => {
            if access.security.protocol == SecurityProtocol::Plaintext {
                probe(brokers, &RDKAFKA)?;
            }
            crate::transport::rdkafka_client::check_metadata(brokers, access)
                .map(|_| ())
                .map_err(ProbeError::Unreachable)
        }
    }
}

/// Asks the first reachable broker which API versions it serves, and checks `needs`.
pub fn probe(brokers: &[String], needs: &ClientNeeds) -> Result<(), ProbeError> {
    let mut last = String::from("no broker given");
    for broker in brokers {
        match probe_one(broker, needs) {
            Ok(()) => return Ok(()),
            Err(ProbeError::Unreachable(m)) => last = m,
            Err(incompatible) => return Err(incompatible),
        }
    }
    Err(ProbeError::Unreachable(last))
}

fn probe_one(broker: &str, needs: &ClientNeeds) -> Result<(), ProbeError> {
    let unreachable = |e: std::io::Error| ProbeError::Unreachable(format!("{broker}: {e}"));
    let addr = broker
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| ProbeError::Unreachable(format!("{broker}: no address")))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    stream
        .write_all(&api_versions_request())
        .map_err(unreachable)?;
    let mut len = [0u8; 4];
    if let Err(e) = stream.read_exact(&mut len) {
        // Brokers older than 0.10 close the connection on ApiVersions; they speak the old
        // protocol, so let the crate try. A timeout is an outage, not an answer.
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => Ok(()),
            _ => Err(unreachable(e)),
        };
    }
    let len = i32::from_be_bytes(len);
    if !(6..=1 << 20).contains(&len) {
        return Err(ProbeError::Incompatible(format!(
            "{broker} answered ApiVersions with a {len}-byte frame: not a Kafka broker?"
        )));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).map_err(unreachable)?;
    check_versions(broker, &body, needs)
}

/// ApiVersions v0: size, api key, api version, correlation id, client id.
fn api_versions_request() -> Vec<u8> {
    let client_id = b"service-courier";
    let mut body = Vec::new();
    body.extend_from_slice(&API_VERSIONS.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Reads an ApiVersions v0 response body (after the size) and checks every API in `needs`.
pub fn check_versions(broker: &str, body: &[u8], needs: &ClientNeeds) -> Result<(), ProbeError> {
    let garbled =
        || ProbeError::Incompatible(format!("{broker} sent a garbled ApiVersions answer"));
    let i16_at = |i: usize| -> Result<i16, ProbeError> {
        body.get(i..i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(garbled)
    };
    let error_code = i16_at(4)?;
    if error_code != 0 {
        return Err(ProbeError::Incompatible(format!(
            "{broker} refused ApiVersions v0 (error code {error_code})"
        )));
    }
    let count = body
        .get(6..10)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(garbled)?;
    let mut ranges = Vec::new();
    for k in 0..count.max(0) as usize {
        let at = 10 + 6 * k;
        ranges.push((i16_at(at)?, i16_at(at + 2)?, i16_at(at + 4)?));
    }
    let mut missing = Vec::new();
    for &(key, name, low, high) in needs.needs {
        let wanted = if low == high {
            format!("{name} v{low}")
        } else {
            format!("{name} v{low}+")
        };
        match ranges.iter().find(|(k, _, _)| *k == key) {
            Some((_, min, max)) if *min <= high && low <= *max => {}
            Some((_, min, max)) => missing.push(format!("{wanted} (broker: v{min}-v{max})")),
            None => missing.push(format!("{wanted} (broker: none)")),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::Incompatible(format!(
            "the broker at {broker} does not serve the protocol versions {} uses: {}. {}.",
            needs.client,
            missing.join(", "),
            needs.advice
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(ranges: &[(i16, i16, i16)]) -> Vec<u8> {
        let mut b = 1i32.to_be_bytes().to_vec();
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(ranges.len() as i32).to_be_bytes());
        for (k, min, max) in ranges {
            for v in [k, min, max] {
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
        b
    }

    #[test]
    fn kafka_3_9_is_compatible() {
        // What Apache Kafka 3.9.1 (KRaft) answered here.
        let ranges = [
            (0, 0, 11),
            (1, 0, 17),
            (2, 0, 9),
            (3, 0, 12),
            (8, 0, 9),
            (9, 0, 9),
            (10, 0, 6),
            (11, 0, 9),
            (12, 0, 4),
            (13, 0, 5),
            (14, 0, 5),
            (18, 0, 4),
        ];
        assert_eq!(
            check_versions("b:9092", &answer(&ranges), &KAFKA_CRATE),
            Ok(())
        );
        assert_eq!(check_versions("b:9092", &answer(&ranges), &RDKAFKA), Ok(()));
    }

    /// What Apache Kafka 4.1.1 (KRaft) answered here, for the APIs either client uses.
    const KAFKA_4_1_1: [(i16, i16, i16); 12] = [
        (0, 0, 13),
        (1, 4, 18),
        (2, 1, 10),
        (3, 0, 13),
        (8, 2, 9),
        (9, 1, 9),
        (10, 0, 6),
        (11, 0, 9),
        (12, 0, 4),
        (13, 0, 5),
        (14, 0, 5),
        (18, 0, 4),
    ];

    #[test]
    fn kafka_4_is_refused_for_the_crate_with_the_reason_and_taken_by_librdkafka() {
        match check_versions("b:9092", &answer(&KAFKA_4_1_1), &KAFKA_CRATE) {
            Err(ProbeError::Incompatible(m)) => {
                assert!(m.contains("Fetch v0 (broker: v4-v18)"), "{m}");
                assert!(m.contains("ListOffsets v0 (broker: v1-v10)"), "{m}");
                assert!(m.contains("OffsetCommit v1 (broker: v2-v9)"), "{m}");
                assert!(!m.contains("Produce"), "{m}");
                assert!(m.contains("Kafka 3.9 or older"), "{m}");
                assert!(m.contains("KAFKA_CLIENT=rdkafka"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            check_versions("b:9092", &answer(&KAFKA_4_1_1), &RDKAFKA),
            Ok(())
        );
    }

    #[test]
    fn a_broker_too_old_for_librdkafka_is_refused() {
        // Kafka 2.2: JoinGroup up to v4, no static membership (group.instance.id needs v5).
        let kafka_2_2 = [
            (0, 0, 7),
            (1, 0, 10),
            (2, 0, 5),
            (3, 0, 7),
            (8, 0, 6),
            (9, 0, 5),
            (10, 0, 2),
            (11, 0, 4),
            (12, 0, 2),
            (14, 0, 2),
        ];
        match check_versions("b:9092", &answer(&kafka_2_2), &RDKAFKA) {
            Err(ProbeError::Incompatible(m)) => {
                assert!(m.contains("JoinGroup v5+ (broker: v0-v4)"), "{m}");
                assert!(m.contains("librdkafka"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_answers_are_errors_not_panics() {
        for n in 0..12 {
            let full = answer(&[(0, 0, 1)]);
            let _ = check_versions("b", &full[..n.min(full.len())], &KAFKA_CRATE);
        }
    }

    #[test]
    fn nobody_listening_is_unreachable() {
        assert!(matches!(
            probe(&["127.0.0.1:1".into()], &KAFKA_CRATE),
            Err(ProbeError::Unreachable(_))
        ));
    }
}
