//! What an attempt came to, and whether the call goes on to the next
//! candidate (docs/providers.md, "Failover"): a connect error, a timeout, a
//! 5xx, a 408, 409 or 429, a 401 or 403 (the provider refused the router's
//! key) or an answer that cannot be read fail over; any other 4xx is the
//! caller's and goes back as it is. And how long a provider asks to be left
//! alone (`Retry-After`).

use std::time::{Duration, SystemTime};

/// An attempt's outcome; its label is what the API, the logs and the
/// rollups call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The provider refused the caller's request (a 4xx that does not fail over).
    ClientError,
    RateLimited,
    UpstreamError,
    Timeout,
    ConnectError,
    /// An answer that is not of its format's shape.
    Malformed,
    /// The caller left before the answer was complete.
    Cancelled,
}

/// 4xx answers that are not the caller's fault: the provider refused the
/// router's key (401, 403), timed out the request (408) or is busy (409, 429).
const FAILOVER_4XX: [u16; 5] = [401, 403, 408, 409, 429];

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::RateLimited,
        Outcome::UpstreamError,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::Malformed,
        Outcome::Cancelled,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::Malformed => "malformed",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// What an answer's status makes of an attempt (its body not yet read).
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200 => Outcome::Success,
            429 => Outcome::RateLimited,
            s if s >= 500 || FAILOVER_4XX.contains(&s) => Outcome::UpstreamError,
            _ => Outcome::ClientError,
        }
    }

    /// Whether the call goes on to the next candidate.
    pub fn fails_over(self) -> bool {
        !matches!(
            self,
            Outcome::Success | Outcome::ClientError | Outcome::Cancelled
        )
    }

    /// Whether the endpoint did its job (its breaker and health count it
    /// so): it did when the caller erred or left.
    pub fn healthy(self) -> bool {
        !self.fails_over()
    }
}

/// A provider asking to be left alone for over a day is not believed.
pub const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// The wait a `Retry-After` value asks for, in ms: delay-seconds (a
/// fraction allowed, as some providers send) or an HTTP-date (RFC 9110),
/// at most MAX_RETRY_AFTER_MS; None when it is neither.
pub fn retry_after_ms(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if value.starts_with(|c: char| c.is_ascii_digit()) {
        let seconds: f64 = value.parse().ok().filter(|s: &f64| s.is_finite())?;
        return Some(((seconds * 1000.0) as u64).min(MAX_RETRY_AFTER_MS));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some((wait.as_millis() as u64).min(MAX_RETRY_AFTER_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn statuses_that_fail_over_and_those_that_are_the_callers() {
        assert_eq!(Outcome::of_status(200), Outcome::Success);
        assert_eq!(Outcome::of_status(429), Outcome::RateLimited);
        for status in [401, 403, 408, 409, 500, 502, 503, 504, 599] {
            assert_eq!(
                Outcome::of_status(status),
                Outcome::UpstreamError,
                "{status}"
            );
        }
        for status in [400, 404, 413, 422, 201, 204, 302] {
            assert_eq!(Outcome::of_status(status), Outcome::ClientError, "{status}");
        }
        let failing: Vec<&str> = Outcome::ALL
            .iter()
            .filter(|o| o.fails_over())
            .map(|o| o.label())
            .collect();
        assert_eq!(
            failing,
            [
                "rate_limited",
                "upstream_error",
                "timeout",
                "connect_error",
                "malformed"
            ]
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470); // Wed, 21 Oct 2015 07:27:50 GMT
        assert_eq!(retry_after_ms("7", now), Some(7000));
        assert_eq!(retry_after_ms(" 0.5 ", now), Some(500));
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(10_000)
        );
        assert_eq!(
            retry_after_ms("Wednesday, 21-Oct-15 07:28:00 GMT", now),
            Some(10_000)
        );
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(0)
        ); // past
        assert_eq!(retry_after_ms("9999999999", now), Some(MAX_RETRY_AFTER_MS));
        for nonsense in [
            "",
            "soon",
            "-5",
            "1e999",
            "inf",
            "NaN",
            "7 seconds",
            "Wed, 32 Oct 2015",
        ] {
            assert_eq!(retry_after_ms(nonsense, now), None, "{nonsense:?}");
        }
    }
}
