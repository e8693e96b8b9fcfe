//! A synchronous offset commit with a time bound, for librdkafka. The `rdkafka` crate's
//! synchronous commit waits as long as librdkafka does, and with the group coordinator
//! unreachable (a broker restart) that was 45 s and more: the watchdog ended the service, and a
//! stop would have waited the same. Here the commit is sent with librdkafka's
//! `rd_kafka_commit_queue` to a queue of its own, and its result waited for up to a bound. A
//! commit not confirmed in time is an error to the caller (its offsets stay open: at worst the
//! events come again); if it lands later, it lands. The unsafe code is kept here.

use std::fmt;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::librdkafka_owned::Owned;

/// Why a commit is not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFailure {
    /// librdkafka's error code, when it gave one (none: no answer in time, no queue).
    pub code: Option<RDKafkaErrorCode>,
    /// What happened, in words.
    pub message: String,
}

impl CommitFailure {
    fn code(code: rd::rd_kafka_resp_err_t, context: &str) -> Self {
        let code = RDKafkaErrorCode::from(code);
        Self {
            code: Some(code),
            message: format!("{context}{code}"),
        }
    }

    fn other(message: String) -> Self {
        Self {
            code: None,
            message,
        }
    }
}

impl fmt::Display for CommitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Commits `offsets` for the consumer's group and waits up to `limit` for the group
/// coordinator's answer; `Err` says why it is not confirmed (refused, or no answer in time).
pub fn commit<C: ClientContext>(
    client: &Client<C>,
    offsets: &TopicPartitionList,
    limit: Duration,
) -> Result<(), CommitFailure> {
    let millis = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the client and the offset list are valid for the call (librdkafka copies the
    // list); the queue is ours and freed by its guard (librdkafka keeps its own reference for a
    // reply still on its way); the event is read before its guard frees it; every pointer from
    // librdkafka is checked for null before use.
    unsafe {
        let queue = Owned::new(
            rd::rd_kafka_queue_new(client.native_ptr()),
            rd::rd_kafka_queue_destroy,
        );
        if queue.ptr().is_null() {
            return Err(CommitFailure::other(
                "librdkafka could not allocate a queue".into(),
            ));
        }
        let sent = rd::rd_kafka_commit_queue(
            client.native_ptr(),
            offsets.ptr(),
            queue.ptr(),
            None,
            std::ptr::null_mut(),
        );
        if sent != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(CommitFailure::code(sent, ""));
        }
        let event = Owned::new(
            rd::rd_kafka_queue_poll(queue.ptr(), millis),
            rd::rd_kafka_event_destroy,
        );
        if event.ptr().is_null() {
            return Err(CommitFailure::other(format!(
                "not confirmed within {limit:?}"
            )));
        }
        let error = rd::rd_kafka_event_error(event.ptr());
        if error != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(CommitFailure::code(error, ""));
        }
        // Each partition has its own outcome too.
        let list = rd::rd_kafka_event_topic_partition_list(event.ptr());
        if !list.is_null() {
            let list = &*list;
            for i in 0..usize::try_from(list.cnt).unwrap_or(0) {
                let element = &*list.elems.add(i);
                if element.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return Err(CommitFailure::code(
                        element.err,
                        &format!("partition {}: ", element.partition),
                    ));
                }
            }
        }
        Ok(())
    }
}
