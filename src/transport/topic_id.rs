//! A topic's id (KIP-516), read with librdkafka's DescribeTopics. A topic deleted and created
//! again keeps its name and gets a new id: the id is the one sure sign that a partition's log
//! was replaced under a running consumer, which librdkafka itself does not act on (it reads the
//! new log on from the old position). The `rdkafka` crate does not wrap DescribeTopics, so this
//! module calls the C API through `rdkafka::bindings`; the unsafe code is kept here.

use std::ffi::{CStr, CString};
use std::fmt;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

use super::librdkafka_owned::Owned;

/// A topic id: the 128 bits of the broker's UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicId {
    high: i64,
    low: i64,
}

impl TopicId {
    /// An id from its two halves (tests of the rules that compare ids).
    #[cfg(test)]
    pub(crate) fn from_parts(high: i64, low: i64) -> Self {
        Self { high, low }
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.high as u64, self.low as u64)
    }
}

/// The id of `topic` as the cluster has it now; `Err` when it cannot be read (the topic does
/// not exist at the moment, the broker is unreachable, or it predates topic ids).
pub fn read<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<TopicId, String> {
    let name = CString::new(topic).map_err(|e| format!("topic name {topic:?}: {e}"))?;
    let mut names = [name.as_ptr()];
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: every pointer passed is valid for the call (the name outlives the collection,
    // which librdkafka copies); every object created is freed by its `Owned` guard, the result
    // objects borrowed from the event are read before the event is freed, and a null from any
    // call is checked before use.
    unsafe {
        let collection = Owned::new(
            rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1),
            rd::rd_kafka_TopicCollection_destroy,
        );
        let queue = Owned::new(
            rd::rd_kafka_queue_new(client.native_ptr()),
            rd::rd_kafka_queue_destroy,
        );
        if collection.ptr().is_null() || queue.ptr().is_null() {
            return Err("librdkafka could not allocate the request".into());
        }
        rd::rd_kafka_DescribeTopics(
            client.native_ptr(),
            collection.ptr(),
            std::ptr::null(),
            queue.ptr(),
        );
        let event = Owned::new(
            rd::rd_kafka_queue_poll(queue.ptr(), millis),
            rd::rd_kafka_event_destroy,
        );
        if event.ptr().is_null() {
            return Err(format!("no answer within {timeout:?}"));
        }
        if rd::rd_kafka_event_error(event.ptr())
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(text(rd::rd_kafka_event_error_string(event.ptr())));
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.ptr());
        if result.is_null() {
            return Err("not a DescribeTopics result".into());
        }
        let mut count = 0usize;
        let topics = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if topics.is_null() || count == 0 {
            return Err("no topic in the answer".into());
        }
        let description = *topics;
        let error = rd::rd_kafka_TopicDescription_error(description);
        if !error.is_null()
            && rd::rd_kafka_error_code(error) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(text(rd::rd_kafka_error_string(error)));
        }
        let uuid = rd::rd_kafka_TopicDescription_topic_id(description);
        if uuid.is_null() {
            return Err("the broker gave no topic id".into());
        }
        let id = TopicId {
            high: rd::rd_kafka_Uuid_most_significant_bits(uuid),
            low: rd::rd_kafka_Uuid_least_significant_bits(uuid),
        };
        if id.high == 0 && id.low == 0 {
            return Err("the broker gave no topic id".into());
        }
        Ok(id)
    }
}

/// A C string from librdkafka, copied (empty when null).
///
/// # Safety
/// `ptr` is null or a NUL-terminated string that lives for the call.
unsafe fn text(ptr: *const std::os::raw::c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        CStr::from_ptr(ptr).to_string_lossy().into_owned()
    }
}
