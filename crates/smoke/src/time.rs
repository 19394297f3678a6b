//! Moments in GitHub's clock and the offsets between them. GitHub's timestamps are RFC 3339 in
//! whole seconds, and its `Date` header is an HTTP date; both are read here without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self(since.as_secs() as i64)
    }

    /// `2026-03-01T10:00:41Z`; a fraction is dropped, an offset (`+02:00`) applied.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let (date, time) = text.split_once(['T', 't', ' '])?;
        let mut date = date.splitn(3, '-').map(|part| part.parse::<i64>().ok());
        let (year, month, day) = (date.next()??, date.next()??, date.next()??);
        let (clock, offset) = match time.find(['Z', 'z', '+', '-']) {
            Some(index) => time.split_at(index),
            None => return None,
        };
        let clock = clock.split('.').next()?;
        let mut clock = clock.splitn(3, ':').map(|part| part.parse::<i64>().ok());
        let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
        let offset_seconds = match offset {
            "Z" | "z" => 0,
            _ => {
                let sign = if offset.starts_with('-') { -1 } else { 1 };
                let (hours, minutes) = offset[1..].split_once(':')?;
                sign * (hours.parse::<i64>().ok()? * 3600 + minutes.parse::<i64>().ok()? * 60)
            }
        };
        let valid = (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && (0..24).contains(&hour)
            && (0..60).contains(&minute)
            && (0..=60).contains(&second);
        valid.then(|| {
            Self(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds)
        })
    }

    /// An HTTP `Date` header (IMF-fixdate): `Sun, 01 Mar 2026 10:00:41 GMT`.
    pub fn parse_http_date(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [_, day, month, year, clock, "GMT"] = parts.as_slice() else {
            return None;
        };
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = MONTHS.iter().position(|m| m == month)? + 1;
        Self::parse_rfc3339(&format!("{year}-{month:02}-{day}T{clock}Z"))
    }

    pub fn rfc3339(self) -> String {
        let (days, seconds) = (self.0.div_euclid(86_400), self.0.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        let (hour, minute, second) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    }
}

/// `+0s`, `+41s`, `+1m02s`, `+1h00m05s`; negative when `to` is before `from`.
pub fn offset(from: Timestamp, to: Timestamp) -> String {
    let seconds = to.0 - from.0;
    let sign = if seconds < 0 { '-' } else { '+' };
    let seconds = seconds.abs();
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{sign}{s}s"),
        (0, m, s) => format!("{sign}{m}m{s:02}s"),
        (h, m, s) => format!("{sign}{h}h{m:02}m{s:02}s"),
    }
}

/// `15 min`, `5s`, `20ms`.
pub fn duration_text(duration: Duration) -> String {
    match (duration.as_secs(), duration.subsec_millis()) {
        (seconds, 0) if seconds >= 60 && seconds % 60 == 0 => format!("{} min", seconds / 60),
        (seconds, 0) => format!("{seconds}s"),
        _ => format!("{}ms", duration.as_millis()),
    }
}

// Howard Hinnant's days-from-civil and civil-from-days (proleptic Gregorian calendar).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_timestamps_read_and_write_back_the_same() {
        for text in ["1970-01-01T00:00:00Z", "2000-02-29T23:59:59Z", "2026-03-01T10:00:41Z"] {
            assert_eq!(Timestamp::parse_rfc3339(text).unwrap().rfc3339(), text);
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(Timestamp(1_700_000_000))
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2023-11-14T23:13:20.123+01:00"),
            Some(Timestamp(1_700_000_000))
        );
        for bad in [
            "",
            "2023-11-14",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20",
            "x-y-zT00:00:00Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates_are_read_in_gmt() {
        assert_eq!(
            Timestamp::parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT"),
            Some(Timestamp(1_700_000_000))
        );
        assert_eq!(Timestamp::parse_http_date("Tue, 14 Nov 2023 22:13:20 CET"), None);
        assert_eq!(Timestamp::parse_http_date("yesterday"), None);
    }

    #[test]
    fn offsets_read_as_minutes_and_seconds() {
        let at = |s: i64| Timestamp(1_700_000_000 + s);
        assert_eq!(offset(at(0), at(0)), "+0s");
        assert_eq!(offset(at(0), at(41)), "+41s");
        assert_eq!(offset(at(0), at(62)), "+1m02s");
        assert_eq!(offset(at(0), at(3605)), "+1h00m05s");
        assert_eq!(offset(at(3), at(0)), "-3s");
    }

    #[test]
    fn durations_read_in_the_largest_whole_unit() {
        assert_eq!(duration_text(Duration::from_secs(900)), "15 min");
        assert_eq!(duration_text(Duration::from_secs(5)), "5s");
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text(Duration::from_millis(20)), "20ms");
    }
}
