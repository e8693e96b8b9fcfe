//! A stand-in for service-order: publishes realistic order lifecycles the way it does (created,
//! pending, confirmed, cooking, delivering, then completed; some cancelled, canceled or deleted;
//! the odd `updated`), unkeyed by default, at a steady rate or as fast as possible. Drives the
//! local stand and the benchmarks. Also seeds demo couriers. Not on the path of an event.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::Utc;
use kafka::client::{KafkaClient, RequiredAcks};
use kafka::producer::{Producer, Record};

use crate::config::{ClientKind, KafkaAccess};
use crate::domain::{NewCourier, OrderEvent, OrderId, OrderStatus, Phone, TransportType};
use crate::shutdown::Shutdown;
use crate::transport::rdkafka_client::RdkafkaProducer;

/// A small seeded generator (xorshift64*): the same seed, the same stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `p` (0.0 ..= 1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationPlan {
    /// Orders to run through their lifecycle.
    pub orders: usize,
    /// Events per second; `None` = as fast as possible (burst).
    pub rate: Option<f64>,
    /// Share of orders that end cancelled (by `cancelled`, `canceled` or `deleted`).
    pub cancel_ratio: f64,
    /// Seed of the order ids and choices.
    pub seed: u64,
    /// Key each event by its order id (events of one order then share a partition).
    pub keyed: bool,
    /// Orders in progress at once: how far lifecycles interleave.
    pub concurrency: usize,
    /// Short lifecycles for benchmarks: created, a no-op status half of the time, then the end
    /// (about 2.5 events per order instead of 7).
    pub short: bool,
}

/// The statuses of one order's life, in the order service-order sends them.
pub fn lifecycle(rng: &mut Rng, cancel_ratio: f64) -> Vec<OrderStatus> {
    use OrderStatus::*;
    let mut statuses = vec![Created, Pending, Confirmed];
    if rng.chance(0.1) {
        statuses.push(Updated);
    }
    if rng.chance(cancel_ratio) {
        // Cancelled somewhere along the way, with any of the three spellings.
        statuses.truncate(1 + rng.below(statuses.len()));
        statuses.push([Cancelled, Canceled, Deleted][rng.below(3)]);
    } else {
        statuses.extend([Cooking, Delivering]);
        statuses.push(if rng.chance(0.2) {
            Delivered
        } else {
            Completed
        });
    }
    statuses
}

/// A benchmark lifecycle: created, `pending` half of the time, then completed or cancelled.
pub fn short_lifecycle(rng: &mut Rng, cancel_ratio: f64) -> Vec<OrderStatus> {
    let mut statuses = vec![OrderStatus::Created];
    if rng.chance(0.5) {
        statuses.push(OrderStatus::Pending);
    }
    statuses.push(if rng.chance(cancel_ratio) {
        OrderStatus::Cancelled
    } else {
        OrderStatus::Completed
    });
    statuses
}

/// Every event of the plan, in send order (lifecycles interleaved), stamped at `created_at`
/// when sent.
pub struct EventStream {
    rng: Rng,
    plan: SimulationPlan,
    started: usize,
    active: Vec<(OrderId, VecDeque<OrderStatus>)>,
}

impl EventStream {
    /// The stream of a plan.
    pub fn new(plan: SimulationPlan) -> Self {
        Self {
            rng: Rng::new(plan.seed),
            plan,
            started: 0,
            active: Vec::new(),
        }
    }
}

impl Iterator for EventStream {
    type Item = OrderEvent;

    fn next(&mut self) -> Option<OrderEvent> {
        while self.active.len() < self.plan.concurrency.max(1) && self.started < self.plan.orders {
            let id = format!("sim-{}-{}", self.plan.seed, self.started);
            let id = OrderId::parse(id).ok()?;
            let life = if self.plan.short {
                short_lifecycle(&mut self.rng, self.plan.cancel_ratio)
            } else {
                lifecycle(&mut self.rng, self.plan.cancel_ratio)
            };
            self.active.push((id, life.into()));
            self.started += 1;
        }
        if self.active.is_empty() {
            return None;
        }
        let k = self.rng.below(self.active.len());
        let (id, statuses) = &mut self.active[k];
        let status = statuses.pop_front()?;
        let event = OrderEvent {
            order_id: id.clone(),
            status,
            created_at: Utc::now(),
        };
        if statuses.is_empty() {
            self.active.swap_remove(k);
        }
        Some(event)
    }
}

/// A producer of the client KAFKA_CLIENT selects (acks from the partition leader).
enum Sink {
    Crate(Box<Producer>),
    Librdkafka(RdkafkaProducer),
}

impl Sink {
    fn connect(brokers: &[String], access: &KafkaAccess) -> Result<Self, String> {
        match access.client {
            ClientKind::Kafka => {
                let mut client = KafkaClient::new(brokers.to_vec());
                client.set_client_id("service-courier-simulator".into());
                client.load_metadata_all().map_err(|e| e.to_string())?;
                let producer = Producer::from_client(client)
                    .with_ack_timeout(Duration::from_secs(10))
                    .with_required_acks(RequiredAcks::One)
                    .create()
                    .map_err(|e| e.to_string())?;
                Ok(Self::Crate(Box::new(producer)))
            }
            ClientKind::Rdkafka => RdkafkaProducer::new(
                brokers,
                access,
                "service-courier-simulator",
                "1",
                Duration::from_secs(30),
            )
            .map(Self::Librdkafka)
            .map_err(|e| e.to_string()),
        }
    }

    /// Sends `(key, value)` pairs (an empty key: unkeyed) and waits for the acknowledgements.
    fn send(&mut self, topic: &str, batch: &[(String, String)]) -> Result<(), String> {
        match self {
            Self::Crate(producer) => {
                let records: Vec<Record<'_, &[u8], &[u8]>> = batch
                    .iter()
                    .map(|(k, v)| Record::from_key_value(topic, k.as_bytes(), v.as_bytes()))
                    .collect();
                producer
                    .send_all(&records)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Self::Librdkafka(producer) => {
                let records: Vec<(Option<&[u8]>, &[u8])> = batch
                    .iter()
                    .map(|(k, v)| ((!k.is_empty()).then_some(k.as_bytes()), v.as_bytes()))
                    .collect();
                producer
                    .send_all(topic, &records)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Publishes the plan to `topic` with the client `access` selects, printing progress to stderr
/// on long runs. Returns the number of events sent.
pub fn publish(
    brokers: &[String],
    access: &KafkaAccess,
    topic: &str,
    plan: SimulationPlan,
    shutdown: &Shutdown,
) -> Result<u64, String> {
    let mut sink = Sink::connect(brokers, access)?;
    let keyed = plan.keyed;
    let rate = plan.rate;
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut sent = 0u64;
    let mut batch: Vec<(String, String)> = Vec::with_capacity(512);
    let mut stream = EventStream::new(plan).peekable();
    while stream.peek().is_some() && !shutdown.is_shutdown() {
        // How many events are due by now (all of them in burst mode, up to a batch).
        let due = match rate {
            None => 512,
            Some(r) => {
                let target = (start.elapsed().as_secs_f64() * r) as u64;
                if target <= sent {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                (target - sent).min(512) as usize
            }
        };
        batch.clear();
        for event in stream.by_ref().take(due) {
            let key = if keyed {
                event.order_id.to_string()
            } else {
                String::new()
            };
            batch.push((key, event.to_json()));
        }
        sink.send(topic, &batch)?;
        sent += batch.len() as u64;
        if last_report.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "simulate: {sent} events sent ({:.0}/s)",
                sent as f64 / start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    Ok(sent)
}

/// `count` demo couriers with valid random phones and transports.
pub fn demo_couriers(count: usize, seed: u64) -> Vec<NewCourier> {
    const NAMES: [&str; 12] = [
        "Anna", "Boris", "Vera", "Gleb", "Daria", "Egor", "Zoya", "Ilya", "Kira", "Lev", "Maya",
        "Nikita",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let phone = format!("+79{:09}", rng.next_u64() % 1_000_000_000);
        let Ok(phone) = Phone::parse(&phone) else {
            continue;
        };
        let name = format!("{} {}", NAMES[rng.below(NAMES.len())], out.len() + 1);
        let transport = TransportType::ALL[rng.below(3)];
        if let Ok(c) = NewCourier::parse(&name, phone, transport) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn plan(orders: usize, cancel_ratio: f64) -> SimulationPlan {
        SimulationPlan {
            orders,
            rate: None,
            cancel_ratio,
            seed: 7,
            keyed: false,
            concurrency: 20,
            short: false,
        }
    }

    #[test]
    fn each_order_lives_a_service_order_lifecycle_in_order() {
        let mut per_order: HashMap<OrderId, Vec<OrderStatus>> = HashMap::new();
        for e in EventStream::new(plan(500, 0.3)) {
            per_order.entry(e.order_id).or_default().push(e.status);
        }
        assert_eq!(per_order.len(), 500);
        let mut cancelled = 0;
        for statuses in per_order.values() {
            assert_eq!(statuses[0], OrderStatus::Created);
            let last = statuses.last().copied().expect("non-empty");
            use crate::domain::StatusFamily::*;
            match last.family() {
                Cancel => cancelled += 1,
                Complete => assert!(statuses.contains(&OrderStatus::Delivering)),
                other => panic!("lifecycle ends with {other:?}"),
            }
        }
        assert!(
            (100..200).contains(&cancelled),
            "{cancelled} cancelled of 500"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let a: Vec<(OrderId, OrderStatus)> = EventStream::new(plan(50, 0.3))
            .map(|e| (e.order_id, e.status))
            .collect();
        let b: Vec<(OrderId, OrderStatus)> = EventStream::new(plan(50, 0.3))
            .map(|e| (e.order_id, e.status))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn demo_couriers_have_valid_distinct_phones() {
        let c = demo_couriers(200, 1);
        let phones: std::collections::HashSet<_> = c.iter().map(|c| c.phone.clone()).collect();
        assert_eq!(c.len(), 200);
        assert!(phones.len() > 195);
    }
}
