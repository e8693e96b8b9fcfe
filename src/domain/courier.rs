//! Couriers: who they are, how they travel and whether they can take an order.

use std::fmt;
use std::str::FromStr;

use chrono::Duration;

/// Why a courier field did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseCourierError {
    /// The phone is not `+` followed by exactly 11 digits.
    Phone(String),
    /// The name is empty or longer than 100 characters.
    Name,
    /// Not one of `available`, `busy`, `paused`.
    Status(String),
    /// Not one of `on_foot`, `scooter`, `car`.
    Transport(String),
}

impl fmt::Display for ParseCourierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Phone(p) => write!(f, "phone {p:?} is not '+' followed by 11 digits"),
            Self::Name => write!(
                f,
                "name must be 1 to 100 characters, none of them a control"
            ),
            Self::Status(s) => write!(f, "courier status {s:?} is not available, busy or paused"),
            Self::Transport(t) => write!(f, "transport {t:?} is not on_foot, scooter or car"),
        }
    }
}

impl std::error::Error for ParseCourierError {}

/// A courier's id, assigned by the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CourierId(pub i64);

impl fmt::Display for CourierId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CourierId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(Self)
    }
}

/// A phone number: `+` and exactly 11 digits, e.g. `+79991234567`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    /// Parses a phone; surrounding whitespace is ignored, nothing else is.
    pub fn parse(raw: &str) -> Result<Self, ParseCourierError> {
        let s = raw.trim();
        let digits = s.strip_prefix('+').unwrap_or("");
        if digits.len() == 11 && digits.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseCourierError::Phone(raw.chars().take(32).collect()))
        }
    }

    /// The phone as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Phone {
    type Err = ParseCourierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Whether a courier can take an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CourierStatus {
    /// Free: the next order may go to them.
    Available,
    /// Carrying exactly one active order.
    Busy,
    /// Off shift: gets no new orders; may still finish the one they carry.
    Paused,
}

impl CourierStatus {
    /// The spelling used in the database and on the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Busy => "busy",
            Self::Paused => "paused",
        }
    }
}

impl FromStr for CourierStatus {
    type Err = ParseCourierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "available" => Ok(Self::Available),
            "busy" => Ok(Self::Busy),
            "paused" => Ok(Self::Paused),
            _ => Err(ParseCourierError::Status(s.to_owned())),
        }
    }
}

impl fmt::Display for CourierStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a courier travels; it sets the delivery deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportType {
    OnFoot,
    Scooter,
    Car,
}

impl TransportType {
    /// Every transport, for seeding demo couriers.
    pub const ALL: [TransportType; 3] = [Self::OnFoot, Self::Scooter, Self::Car];

    /// The spelling used in the database and on the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnFoot => "on_foot",
            Self::Scooter => "scooter",
            Self::Car => "car",
        }
    }

    /// How long a delivery may take, as in the course: 30, 15 and 5 minutes.
    pub fn delivery_window(self) -> Duration {
        Duration::minutes(match self {
            Self::OnFoot => 30,
            Self::Scooter => 15,
            Self::Car => 5,
        })
    }
}

impl FromStr for TransportType {
    type Err = ParseCourierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "on_foot" => Ok(Self::OnFoot),
            "scooter" => Ok(Self::Scooter),
            "car" => Ok(Self::Car),
            _ => Err(ParseCourierError::Transport(s.to_owned())),
        }
    }
}

impl fmt::Display for TransportType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A courier to be hired: the fields a person gives, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCourier {
    /// Display name, 1 to 100 characters.
    pub name: String,
    /// Unique contact phone.
    pub phone: Phone,
    /// How they travel.
    pub transport: TransportType,
}

impl NewCourier {
    /// Builds a new courier, checking the name.
    pub fn parse(
        name: &str,
        phone: Phone,
        transport: TransportType,
    ) -> Result<Self, ParseCourierError> {
        Ok(Self {
            name: Self::parse_name(name)?,
            phone,
            transport,
        })
    }

    /// A display name: trimmed, 1 to 100 characters (also for renaming a courier).
    pub fn parse_name(name: &str) -> Result<String, ParseCourierError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ParseCourierError::Name);
        }
        Ok(name.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_is_plus_and_eleven_digits() {
        assert_eq!(
            Phone::parse(" +79991234567 ").map(|p| p.to_string()),
            Ok("+79991234567".into())
        );
        for bad in [
            "79991234567",
            "+7999123456",
            "+799912345678",
            "+7999123456a",
            "",
            "+",
            "++7999123456",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn transport_windows_match_the_course() {
        assert_eq!(
            TransportType::OnFoot.delivery_window(),
            Duration::minutes(30)
        );
        assert_eq!(
            TransportType::Scooter.delivery_window(),
            Duration::minutes(15)
        );
        assert_eq!(TransportType::Car.delivery_window(), Duration::minutes(5));
        for t in TransportType::ALL {
            assert_eq!(t.as_str().parse::<TransportType>(), Ok(t));
        }
        assert_eq!(
            "on-foot".parse::<TransportType>(),
            Ok(TransportType::OnFoot)
        );
        assert!("bike".parse::<TransportType>().is_err());
    }

    #[test]
    fn courier_status_parses() {
        for s in [
            CourierStatus::Available,
            CourierStatus::Busy,
            CourierStatus::Paused,
        ] {
            assert_eq!(s.as_str().parse::<CourierStatus>(), Ok(s));
        }
        assert!("gone".parse::<CourierStatus>().is_err());
    }

    #[test]
    fn names_are_bounded() {
        let phone = Phone::parse("+79991234567").expect("valid");
        assert!(NewCourier::parse(" ", phone.clone(), TransportType::Car).is_err());
        assert!(NewCourier::parse("A\u{0}n", phone.clone(), TransportType::Car).is_err());
        assert!(NewCourier::parse(&"n".repeat(101), phone.clone(), TransportType::Car).is_err());
        assert_eq!(
            NewCourier::parse(" Ann ", phone, TransportType::Car).map(|c| c.name),
            Ok("Ann".into())
        );
    }
}
