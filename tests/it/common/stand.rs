//! What a test of the running service against the shared PostgreSQL and Kafka starts from: a
//! schema of its own, a topic of its own (with its dead-letter topic) and a consumer group of
//! its own, and the environment that points the binary at them.

use std::time::Duration;

use service_courier::domain::TransportType;
use service_courier::repository::{CourierRepository, OrderState, Snapshot};
use service_courier::usecase::couriers;

use super::{at, courier, create_topic, kafka_brokers, unique, wait_drained, Service, TestDb};

/// A schema, a topic and its dead-letter topic, and a group, all of the test's own.
pub struct ServiceStand {
    /// The schema.
    pub db: TestDb,
    /// The shared broker's bootstrap address.
    pub brokers: String,
    /// The order topic.
    pub topic: String,
    /// Its dead-letter topic (created only when asked for).
    pub dlq: String,
    /// The consumer group.
    pub group: String,
}

impl ServiceStand {
    /// A topic named after `prefix` with `partitions`, its dead-letter topic when `with_dlq`;
    /// `None` (outside CI) without the shared services.
    pub fn new(prefix: &str, partitions: u32, with_dlq: bool) -> Option<Self> {
        let db = TestDb::new(2)?;
        let brokers = kafka_brokers()?;
        let topic = unique(&format!("{prefix}-orders"));
        let dlq = format!("{topic}.dlq");
        create_topic(&topic, partitions);
        if with_dlq {
            create_topic(&dlq, 1);
        }
        Some(Self {
            db,
            brokers,
            topic,
            dlq,
            group: unique(&format!("{prefix}-group")),
        })
    }

    /// Hires couriers 0..n, the transport of each chosen by `transport`.
    pub fn hire(&self, n: u32, transport: impl Fn(u32) -> TransportType) {
        for i in 0..n {
            couriers::add(&self.db.repo, &courier(i, transport(i)), at(i64::from(i)))
                .expect("hire");
        }
    }

    /// The binary's environment: this stand, commits every 200 ms, `workers` workers, log level
    /// info; then `extra`, which may override any of them.
    pub fn env(
        &self,
        workers: usize,
        extra: &[(&'static str, &str)],
    ) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DATABASE_URL", self.db.url.clone()),
            ("KAFKA_BROKERS", self.brokers.clone()),
            ("KAFKA_ORDER_TOPIC", self.topic.clone()),
            ("KAFKA_DLQ_TOPIC", self.dlq.clone()),
            ("KAFKA_GROUP_ID", self.group.clone()),
            ("KAFKA_COMMIT_INTERVAL_MS", "200".into()),
            ("WORKERS", workers.to_string()),
            ("LOG_LEVEL", "info".into()),
        ];
        for (name, value) in extra {
            env.retain(|(n, _)| n != name);
            env.push((name, (*value).to_owned()));
        }
        env
    }

    /// Waits until the group has committed every partition up to its high watermark.
    pub fn wait_drained(&self, service: &mut Service, limit: Duration) {
        wait_drained(&self.brokers, &self.group, &self.topic, limit, || {
            assert!(service.running(), "service died:\n{}", service.log_text());
        });
    }

    /// The whole state.
    pub fn snapshot(&self) -> Snapshot {
        self.db.repo.snapshot().expect("snapshot")
    }
}

/// How many deliveries couriers completed, after checking that the statistics count exactly
/// those: nothing took effect twice, nothing was lost.
pub fn completed_deliveries(s: &Snapshot) -> usize {
    let completed = s
        .orders
        .values()
        .filter(|st| matches!(st, OrderState::Completed(Some(_))))
        .count();
    assert_eq!(
        s.statistics().values().sum::<i64>(),
        i64::try_from(completed).expect("a count"),
        "the statistics count exactly the deliveries completed by a courier"
    );
    completed
}
