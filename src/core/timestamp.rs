//! RFC 3339 timestamps (`2027-01-01T00:00:00Z`) as milliseconds since the Unix epoch.
//!
//! Hand-written because the filter needs exactly one format and a date crate would
//! triple the size of the `.wasm`. Millisecond precision is plenty for key validity.

/// Parses an RFC 3339 `date-time` into Unix milliseconds, or says what is wrong.
pub fn parse_rfc3339(s: &str) -> Result<i64, &'static str> {
    const EXPECTED: &str = "expected an RFC 3339 timestamp such as 2027-01-01T00:00:00Z";
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(EXPECTED);
    }
    let sep_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !sep_ok {
        return Err(EXPECTED);
    }
    let num = |from: usize, to: usize| -> Result<i64, &'static str> {
        b[from..to].iter().try_fold(0i64, |acc, &c| {
            if c.is_ascii_digit() {
                Ok(acc * 10 + i64::from(c - b'0'))
            } else {
                Err(EXPECTED)
            }
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("date out of range");
    }
    // Second 60 is a leap second, which RFC 3339 allows.
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time of day out of range");
    }

    let mut rest = &b[19..];
    let mut millis = 0i64;
    if let Some((b'.', frac)) = rest.split_first() {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(EXPECTED);
        }
        for (i, &c) in frac[..digits].iter().take(3).enumerate() {
            millis += i64::from(c - b'0') * [100, 10, 1][i];
        }
        rest = &frac[digits..];
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digit = |c: u8| -> Result<i64, &'static str> {
                if c.is_ascii_digit() {
                    Ok(i64::from(c - b'0'))
                } else {
                    Err(EXPECTED)
                }
            };
            let (h, m) = (digit(*h1)? * 10 + digit(*h2)?, digit(*m1)? * 10 + digit(*m2)?);
            if h > 23 || m > 59 {
                return Err("time zone offset out of range");
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return Err(EXPECTED),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1_000 + millis)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Ok(1_798_761_600_000));
        assert_eq!(parse_rfc3339("2027-01-01T01:00:00+01:00"), Ok(1_798_761_600_000));
        assert_eq!(parse_rfc3339("2026-12-31T23:00:00-01:00"), Ok(1_798_761_600_000));
        assert_eq!(parse_rfc3339("2000-02-29T12:34:56.789z"), Ok(951_827_696_789));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Ok(-1_000));
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Ok(253_402_300_799_000));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for bad in [
            "",
            "2027-01-01",
            "2027-01-01T00:00:00",
            "2027-13-01T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "2027-01-01T24:00:00Z",
            "2027-01-01T00:00:00.Z",
            "2027-01-01T00:00:00+0100",
            "2027-01-01T00:00:00+24:00",
            "２027-01-01T00:00:00Z",
            "2027-01-01T00:00:00Zjunk",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
