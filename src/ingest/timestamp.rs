//! The RFC 3339 text of an event's timestamp, in UTC, as every record carries it twice (in the value and
//! the `ce_time` header): written by hand onto the stack, byte for byte what `time`'s `Rfc3339` writes.

use std::cell::Cell;
use std::fmt;
use std::io::Write;
use std::ops::Deref;

use time::{OffsetDateTime, UtcOffset};

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` is 30 bytes; the fallback (Unix seconds) at most 20.
const CAPACITY: usize = 30;

thread_local! {
    /// The Unix second last written on this thread and its `YYYY-MM-DDTHH:MM:SS`: the events of one
    /// request, and of every request in that second, share it (the calendar arithmetic was most of the
    /// cost of writing a timestamp).
    static LAST_SECOND: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) };
}

/// RFC 3339 text of an instant in UTC.
#[derive(Clone, Copy)]
pub struct Rfc3339Utc {
    bytes: [u8; CAPACITY],
    len: usize,
}

impl Rfc3339Utc {
    /// `t` in UTC as `time`'s `Rfc3339` formats it: fractional seconds without trailing zeros, and none
    /// when they are zero. A year outside 0-9999 cannot be written in RFC 3339: then the Unix seconds.
    pub fn new(t: OffsetDateTime) -> Self {
        let mut text = Self { bytes: [0; CAPACITY], len: 0 };
        let seconds = t.unix_timestamp();
        let b = &mut text.bytes;
        match LAST_SECOND.get() {
            (last, date_time) if last == seconds => b[..19].copy_from_slice(&date_time),
            _ => {
                let utc = t.to_offset(UtcOffset::UTC);
                let year = utc.year();
                if !(0..10_000).contains(&year) {
                    let mut rest = &mut b[..];
                    write!(rest, "{seconds}").expect("an i64 fits in 30 bytes");
                    text.len = CAPACITY - rest.len();
                    return text;
                }
                let (_, month, day) = utc.to_calendar_date();
                let (hour, minute, second) = utc.to_hms();
                b[..19].copy_from_slice(b"0000-00-00T00:00:00");
                put_digits(&mut b[0..4], year as u32);
                put_digits(&mut b[5..7], u8::from(month).into());
                put_digits(&mut b[8..10], day.into());
                put_digits(&mut b[11..13], hour.into());
                put_digits(&mut b[14..16], minute.into());
                put_digits(&mut b[17..19], second.into());
                LAST_SECOND.set((seconds, b[..19].try_into().expect("19 bytes")));
            }
        }
        let nanos = t.nanosecond();
        let mut len = 19;
        if nanos != 0 {
            b[19] = b'.';
            put_digits(&mut b[20..29], nanos);
            len = 29;
            while b[len - 1] == b'0' {
                len -= 1;
            }
        }
        b[len] = b'Z';
        text.len = len + 1;
        text
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("ASCII digits and punctuation")
    }
}

/// Writes `value` as decimal digits filling `out`, zero-padded (`value` must fit).
fn put_digits(out: &mut [u8], mut value: u32) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

impl Deref for Rfc3339Utc {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Rfc3339Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Rfc3339Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::format_description::well_known::Rfc3339;

    use super::*;

    /// What the record carried before this module: `time`'s formatter, or the Unix seconds.
    fn reference(t: OffsetDateTime) -> String {
        t.to_offset(UtcOffset::UTC).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
    }

    #[test]
    fn edges() {
        let at = |nanos: i128| Rfc3339Utc::new(OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap());
        assert_eq!(at(0).as_str(), "1970-01-01T00:00:00Z");
        assert_eq!(at(1).as_str(), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(at(-1).as_str(), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(at(1_709_251_199_100_000_000).as_str(), "2024-02-29T23:59:59.1Z");
        assert_eq!(at(253_402_300_799_999_999_999).as_str(), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(at(-62_167_219_200_000_000_000).as_str(), "0000-01-01T00:00:00Z");
        assert_eq!(at(-62_167_219_200_000_000_001).as_str(), "-62167219201");
        for t in [
            OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT),
            OffsetDateTime::new_utc(time::Date::MAX, time::Time::MAX),
        ] {
            assert_eq!(Rfc3339Utc::new(t).as_str(), reference(t));
        }
    }

    proptest! {
        #[test]
        fn same_text_as_time(
            nanos in (time::Date::MIN.midnight().assume_utc().unix_timestamp_nanos() + 86_400_000_000_000)
                ..=(time::Date::MAX.midnight().assume_utc().unix_timestamp_nanos() - 86_400_000_000_000),
            whole in any::<bool>(),
            millis in any::<bool>(),
            offset_minutes in -23 * 60i32 - 59..=23 * 60 + 59,
        ) {
            // Whole seconds and whole milliseconds are the common cases; random nanoseconds almost never are.
            let nanos = if whole { nanos - nanos.rem_euclid(1_000_000_000) } else if millis { nanos - nanos.rem_euclid(1_000_000) } else { nanos };
            let offset = UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap();
            let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap().to_offset(offset);
            prop_assert_eq!(Rfc3339Utc::new(t).to_string(), reference(t));
            // Another instant of the same second, written from what the first left on this thread.
            let same_second = t.replace_nanosecond((t.nanosecond() + 1) % 1_000_000_000).unwrap();
            prop_assert_eq!(Rfc3339Utc::new(same_second).to_string(), reference(same_second));
        }
    }
}
