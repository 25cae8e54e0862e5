//! INTERNALDATE (`17-Jul-1996 02:44:25 -0700`) to seconds since the epoch. Written by
//! hand: it is one fixed format, and a date crate would be a dependency for 40 lines.

/// Parses an IMAP date-time; `None` if it is not one.
pub fn parse_internaldate(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(' ')?;
    let (time, zone) = rest.trim_start().split_once(' ')?;
    let mut d = date.trim().split('-');
    let day: i64 = d.next()?.trim().parse().ok()?;
    let month = month_number(d.next()?)?;
    let year: i64 = d.next()?.parse().ok()?;
    if d.next().is_some() || !(1..=31).contains(&day) {
        return None;
    }
    let mut t = time.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let second: i64 = t.next()?.parse().ok()?;
    if t.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let zone = zone.trim();
    if zone.len() != 5 {
        return None;
    }
    let sign = match zone.get(..1)? {
        "+" => 1,
        "-" => -1,
        _ => return None,
    };
    let zh: i64 = zone.get(1..3)?.parse().ok()?;
    let zm: i64 = zone.get(3..5)?.parse().ok()?;
    let offset = sign * (zh * 3600 + zm * 60);
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn month_number(m: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    MONTHS
        .iter()
        .position(|n| n.eq_ignore_ascii_case(m))
        .map(|i| i as i64 + 1)
}

/// Formats seconds since the epoch as an IMAP date-time in UTC, for APPEND.
pub fn format_internaldate(secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:02}-{}-{:04} {:02}:{:02}:{:02} +0000",
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Formats seconds since the epoch as an RFC 5322 `Date:` in UTC
/// (`Mon, 07 Dec 2026 23:45:27 +0000`), for a message sent without one.
pub fn format_message_date(secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the inverse of
/// [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3501_examples() {
        assert_eq!(
            parse_internaldate("17-Jul-1996 02:44:25 -0700"),
            Some(837_596_665)
        );
        assert_eq!(parse_internaldate(" 1-Jan-1970 00:00:00 +0000"), Some(0));
        assert_eq!(
            parse_internaldate("29-Feb-2024 12:00:00 +0100"),
            Some(1_709_204_400)
        );
    }

    #[test]
    fn formats_a_message_date() {
        assert_eq!(format_message_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            format_message_date(1_796_687_127),
            "Mon, 07 Dec 2026 23:45:27 +0000"
        );
    }

    #[test]
    fn formats_what_it_parses() {
        assert_eq!(
            format_internaldate(837_596_665),
            "17-Jul-1996 09:44:25 +0000"
        );
        for secs in [0, 951_782_400, 1_709_204_400, 4_102_444_799, 1_796_000_123] {
            assert_eq!(parse_internaldate(&format_internaldate(secs)), Some(secs));
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for s in [
            "",
            "x",
            "17-Jul-1996",
            "17-Foo-1996 02:44:25 -0700",
            "17-Jul-1996 25:00:00 +0000",
            "17-Jul-1996 02:44:25 0700",
            "17-Jul-1996 02:44:25 +07",
            "ä-Jul-1996 02:44:25 +0000",
            "17-Jul-1996 02:44:25 +ää00",
            "17-Jul-1996 02:44:25 ä+00",
        ] {
            assert_eq!(parse_internaldate(s), None, "{s:?}");
        }
    }
}
