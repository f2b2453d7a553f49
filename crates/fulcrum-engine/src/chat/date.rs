//! Today's date for templates' `strftime_now(format)`, without a date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    /// 0 = Monday
    weekday: usize,
    seconds_of_day: u32,
}

impl Date {
    /// The current UTC date (the Unix epoch if the clock is before 1970).
    pub fn today() -> Date {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Date::from_unix_seconds(seconds)
    }

    /// The UTC date of a Unix timestamp.
    pub fn from_unix_seconds(seconds: u64) -> Date {
        let days = (seconds / 86_400) as i64;
        // Civil-from-days over 400-year eras of 146097 days, with years starting in March so
        // the leap day comes last (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
        let shifted = days + 719_468;
        let era = shifted.div_euclid(146_097);
        let day_of_era = shifted.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
        let month = if month_from_march < 10 {
            month_from_march + 3
        } else {
            month_from_march - 9
        } as u32;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Date {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (index 3).
            weekday: (days + 3).rem_euclid(7) as usize,
            seconds_of_day: (seconds % 86_400) as u32,
        }
    }

    /// Formats with the common strftime codes (%Y %y %m %d %e %B %b %A %a %H %M %S %%);
    /// unknown codes are written as they are.
    pub fn format(&self, format: &str) -> String {
        let month_name = MONTHS[self.month as usize - 1];
        let weekday_name = WEEKDAYS[self.weekday];
        let mut out = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('Y') => out.push_str(&self.year.to_string()),
                Some('y') => out.push_str(&format!("{:02}", self.year.rem_euclid(100))),
                Some('m') => out.push_str(&format!("{:02}", self.month)),
                Some('d') => out.push_str(&format!("{:02}", self.day)),
                Some('e') => out.push_str(&format!("{:2}", self.day)),
                Some('B') => out.push_str(month_name),
                Some('b') => out.push_str(&month_name[..3]),
                Some('A') => out.push_str(weekday_name),
                Some('a') => out.push_str(&weekday_name[..3]),
                Some('H') => out.push_str(&format!("{:02}", self.seconds_of_day / 3600)),
                Some('M') => out.push_str(&format!("{:02}", self.seconds_of_day / 60 % 60)),
                Some('S') => out.push_str(&format!("{:02}", self.seconds_of_day % 60)),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_format_like_python() {
        // date -u -d @0 / @951782400 / @1735689599
        let epoch = Date::from_unix_seconds(0);
        assert_eq!(epoch.format("%Y-%m-%d %a %A"), "1970-01-01 Thu Thursday");
        let leap_day = Date::from_unix_seconds(951_782_400);
        assert_eq!(leap_day.format("%d %b %Y"), "29 Feb 2000");
        let new_year_eve = Date::from_unix_seconds(1_735_689_599);
        assert_eq!(
            new_year_eve.format("%d %B %y, %H:%M:%S %e%%"),
            "31 December 24, 23:59:59 31%"
        );
        assert_eq!(new_year_eve.format("%a %q %"), "Tue %q %");
    }
}
