//! Domain types that parse, not validate: once you hold an [`OrderId`], a [`Phone`] or an
//! [`OrderEvent`], it is valid. Everything outside the process (Kafka payloads, CLI arguments,
//! database rows) goes through these parsers before any rule looks at it.

mod courier;
mod event;
mod order;
mod rank;

pub use courier::{CourierId, CourierStatus, NewCourier, ParseCourierError, Phone, TransportType};
pub use event::{BadEvent, OrderEvent};
pub use order::{CompletedBy, OrderId, OrderStatus, ParseOrderError, StatusFamily};
pub use rank::{CourierRank, QueueKey};
