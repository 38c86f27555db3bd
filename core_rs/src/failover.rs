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
    /// A stream that broke (an error event, nonsense, a stall) once its
    /// first content had reached the caller: too late to fail over.
    StreamError,
    /// The caller left before the answer was complete.
    Cancelled,
}

/// 4xx answers that are not the caller's fault: the provider refused the
/// router's key (401, 403), timed out the request (408) or is busy (409, 429).
const FAILOVER_4XX: [u16; 5] = [401, 403, 408, 409, 429];

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::RateLimited,
        Outcome::UpstreamError,
        Outcome::Timeout,
        Outcome::ConnectError,
        Outcome::Malformed,
        Outcome::StreamError,
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
            Outcome::StreamError => "stream_error",
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

    /// Whether the endpoint did its job (its breaker and health count it
    /// so): it did when the caller erred, or left a stream it had begun. (A
    /// whole answer's caller leaving first is no verdict either way: that
    /// attempt is recorded with none, `Engine::record`'s `success` None.)
    pub fn healthy(self) -> bool {
        matches!(
            self,
            Outcome::Success | Outcome::ClientError | Outcome::Cancelled
        )
    }

    /// Whether the call goes on to the next candidate: after any failure of
    /// the endpoint's but a stream's, whose content the caller has.
    pub fn fails_over(self) -> bool {
        !self.healthy() && self != Outcome::StreamError
    }
}

/// A provider asking to be left alone for over a day is not believed.
pub const MAX_RETRY_AFTER_MS: u64 = 86_400_000;

/// The wait a `Retry-After` value asks for, in ms: delay-seconds (a
/// fraction, a sign allowed, as some providers send them; a wait in the past
/// is none) or a date, RFC 9110's forms or RFC 2822's (a numeric zone, no
/// weekday), at most MAX_RETRY_AFTER_MS; None when it is neither.
pub fn retry_after_ms(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        // Not "inf" or "NaN", which parse too.
        let finite = seconds.is_finite() && value.starts_with(|c: char| !c.is_ascii_alphabetic());
        return finite.then(|| ((seconds.max(0.0) * 1000.0) as u64).min(MAX_RETRY_AFTER_MS));
    }
    let at = httpdate::parse_http_date(value)
        .ok()
        .or_else(|| rfc2822_date(value))?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some((wait.as_millis() as u64).min(MAX_RETRY_AFTER_MS))
}

/// `[Wed, ]21 Oct 2015 07:28:00 +0000` (or a zone name: GMT, UT, UTC, Z).
fn rfc2822_date(value: &str) -> Option<SystemTime> {
    let mut words: Vec<&str> = value.split_ascii_whitespace().collect();
    if words.first()?.ends_with(',') {
        words.remove(0);
    }
    let [day, month, year, time, zone] = words[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let mut clock = time.split(':').map(|part| part.parse::<i64>().ok());
    let (hour, minute) = (clock.next()??, clock.next()??);
    let second = clock.next().unwrap_or(Some(0))?;
    let offset_minutes = match zone {
        "GMT" | "UT" | "UTC" | "Z" => 0,
        _ if zone.len() == 5 && zone.starts_with(['+', '-']) => {
            let hhmm: i64 = zone[1..].parse().ok()?;
            let minutes = hhmm / 100 * 60 + hhmm % 100;
            if zone.starts_with('-') {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    if !(1..=31).contains(&day) || year < 1970 || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's `days_from_civil`).
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
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
        let labels = |keep: fn(&Outcome) -> bool| -> Vec<&str> {
            Outcome::ALL
                .iter()
                .filter(|o| keep(o))
                .map(|o| o.label())
                .collect()
        };
        assert_eq!(
            labels(|o| o.fails_over()),
            [
                "rate_limited",
                "upstream_error",
                "timeout",
                "connect_error",
                "malformed"
            ]
        );
        // A broken stream fails over no more, and counts against its endpoint.
        assert_eq!(
            labels(|o| o.healthy()),
            ["success", "client_error", "cancelled"]
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
        // As Python's float() and email.utils read them, before the core did.
        assert_eq!(retry_after_ms("-5", now), Some(0));
        assert_eq!(retry_after_ms(".5", now), Some(500));
        assert_eq!(retry_after_ms("+5", now), Some(5000));
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:00 +0000", now),
            Some(10_000)
        );
        assert_eq!(
            retry_after_ms("21 Oct 2015 07:28:00 GMT", now),
            Some(10_000)
        );
        assert_eq!(
            retry_after_ms("21 Oct 2015 09:28:00 +0200", now),
            Some(10_000)
        );
        let leap_day = retry_after_ms("Thu, 29 Feb 2024 00:00:00 GMT", now);
        assert_eq!(leap_day, Some(MAX_RETRY_AFTER_MS));
        for nonsense in [
            "",
            "soon",
            "1e999",
            "inf",
            "NaN",
            "7 seconds",
            "Wed, 32 Oct 2015",
            "21 Oct 2015 07:28:00 EST",
            "21 Foo 2015 07:28:00 GMT",
        ] {
            assert_eq!(retry_after_ms(nonsense, now), None, "{nonsense:?}");
        }
    }
}
