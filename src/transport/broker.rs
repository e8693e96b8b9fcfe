//! Is the broker one the `kafka` crate can talk to? The crate speaks the Kafka 0.8-era protocol
//! (Produce v0, Fetch v0, Metadata v0, ListOffsets v0, OffsetCommit/OffsetFetch v1,
//! GroupCoordinator v0) and never asks which versions the broker supports. Apache Kafka up to
//! 3.9 still serves them; 4.x dropped them and just closes the connection, which would look like
//! an endless outage. So before anything else we ask the broker with ApiVersions v0 (which every
//! broker since 0.10 answers) and stop with a clear error if it has dropped what the crate needs.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// (API key, name, the version the crate sends).
const NEEDED: [(i16, &str, i16); 7] = [
    (0, "Produce", 0),
    (1, "Fetch", 0),
    (2, "ListOffsets", 0),
    (3, "Metadata", 0),
    (8, "OffsetCommit", 1),
    (9, "OffsetFetch", 1),
    (10, "FindCoordinator", 0),
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

/// Asks the first reachable broker which API versions it serves.
pub fn probe(brokers: &[String]) -> Result<(), ProbeError> {
    let mut last = String::from("no broker given");
    for broker in brokers {
        match probe_one(broker) {
            Ok(()) => return Ok(()),
            Err(ProbeError::Unreachable(m)) => last = m,
            Err(incompatible) => return Err(incompatible),
        }
    }
    Err(ProbeError::Unreachable(last))
}

fn probe_one(broker: &str) -> Result<(), ProbeError> {
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
    check_versions(broker, &body)
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

/// Reads an ApiVersions v0 response body (after the size) and checks every API the crate uses.
pub fn check_versions(broker: &str, body: &[u8]) -> Result<(), ProbeError> {
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
    for (key, name, version) in NEEDED {
        match ranges.iter().find(|(k, _, _)| *k == key) {
            Some((_, min, max)) if *min <= version && version <= *max => {}
            Some((_, min, max)) => {
                missing.push(format!("{name} v{version} (broker: v{min}-v{max})"))
            }
            None => missing.push(format!("{name} v{version} (broker: none)")),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::Incompatible(format!(
            "the broker at {broker} does not serve the protocol versions the `kafka` crate uses: {}. \
             This is Kafka 4.x or a Kafka-compatible broker the crate can't speak to; \
             service-courier needs Apache Kafka 3.9 or older.",
            missing.join(", ")
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
        let ranges = [
            (0, 0, 11),
            (1, 0, 16),
            (2, 0, 9),
            (3, 0, 12),
            (8, 0, 9),
            (9, 0, 9),
            (10, 0, 6),
            (18, 0, 4),
        ];
        assert_eq!(check_versions("b:9092", &answer(&ranges)), Ok(()));
    }

    #[test]
    fn kafka_4_is_refused_with_the_reason() {
        let ranges = [
            (0, 3, 12),
            (1, 4, 17),
            (2, 1, 10),
            (3, 0, 13),
            (8, 2, 9),
            (9, 1, 9),
            (10, 0, 6),
            (18, 0, 4),
        ];
        match check_versions("b:9092", &answer(&ranges)) {
            Err(ProbeError::Incompatible(m)) => {
                assert!(m.contains("Fetch v0 (broker: v4-v17)"), "{m}");
                assert!(m.contains("Kafka 3.9 or older"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_answers_are_errors_not_panics() {
        for n in 0..12 {
            let full = answer(&[(0, 0, 1)]);
            let _ = check_versions("b", &full[..n.min(full.len())]);
        }
    }

    #[test]
    fn nobody_listening_is_unreachable() {
        assert!(matches!(
            probe(&["127.0.0.1:1".into()]),
            Err(ProbeError::Unreachable(_))
        ));
    }
}
