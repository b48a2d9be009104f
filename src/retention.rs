//! Retention policies with restic's `forget` semantics, pure: given the dates
//! of one group's dumps, which to keep and why. Every rule looks at every
//! dump, newest first; a "bucket" rule (`--keep-daily 7`, ...) keeps the
//! newest dump of each of its N most recent periods that have a dump; a dump
//! is kept if any rule (or its protection) keeps it. Periods are calendar
//! hours, days, ISO weeks, months and years in the time zone the caller
//! converts the dates to (restic uses local time; so does `forget`).

use anyhow::{bail, Result};
use chrono::{DateTime, Datelike, Months, TimeZone, Timelike};
use std::fmt;

/// How many periods a rule keeps: a number, or every period (`-1`, as restic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    N(u32),
    Unlimited,
}

impl std::str::FromStr for Count {
    type Err = String;
    fn from_str(s: &str) -> Result<Count, String> {
        match s.trim() {
            "-1" | "unlimited" => Ok(Count::Unlimited),
            t => t
                .parse::<u32>()
                .map(Count::N)
                .map_err(|_| format!("{t:?} is not a count (a number, or -1 for unlimited)")),
        }
    }
}

/// `--keep-within`: restic's `1y2m3d4h` (years, months, days, hours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl std::str::FromStr for Within {
    type Err = String;
    fn from_str(s: &str) -> Result<Within, String> {
        let bad =
            || format!("invalid duration {s:?}: numbers with y, m, d or h, e.g. 7d, 36h, 1y6m");
        let mut w = Within::default();
        let mut num = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u32 = num.parse().map_err(|_| bad())?;
            num.clear();
            match c {
                'y' => w.years += n,
                'm' => w.months += n,
                'd' => w.days += n,
                'h' => w.hours += n,
                _ => return Err(bad()),
            }
        }
        if !num.is_empty() || w == Within::default() {
            return Err(bad());
        }
        Ok(w)
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, u) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n > 0 {
                write!(f, "{n}{u}")?;
            }
        }
        Ok(())
    }
}

/// The rules of one `forget`; all absent means "no policy" (refused by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Policy {
    #[serde(default, deserialize_with = "de_count")]
    pub keep_last: Option<Count>,
    #[serde(default, deserialize_with = "de_count")]
    pub keep_hourly: Option<Count>,
    #[serde(default, deserialize_with = "de_count")]
    pub keep_daily: Option<Count>,
    #[serde(default, deserialize_with = "de_count")]
    pub keep_weekly: Option<Count>,
    #[serde(default, deserialize_with = "de_count")]
    pub keep_monthly: Option<Count>,
    #[serde(default, deserialize_with = "de_count")]
    pub keep_yearly: Option<Count>,
    #[serde(default, deserialize_with = "de_within")]
    pub keep_within: Option<Within>,
}

fn de_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Count>, D::Error> {
    let n: i64 = serde::Deserialize::deserialize(d)?;
    match n {
        -1 => Ok(Some(Count::Unlimited)),
        0..=0xffff_ffff => Ok(Some(Count::N(n as u32))),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a count (a number, or -1 for unlimited)"
        ))),
    }
}

fn de_within<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Within>, D::Error> {
    let s: String = serde::Deserialize::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// The policy as its command-line flags, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (rule, c) in self.bucket_rules() {
            let n = match c {
                Count::N(n) => n.to_string(),
                Count::Unlimited => "-1".into(),
            };
            parts.push(format!("--keep-{} {n}", rule.name()));
        }
        if let Some(w) = self.keep_within {
            parts.push(format!("--keep-within {w}"));
        }
        parts.join(" ")
    }

    fn bucket_rules(&self) -> Vec<(Rule, Count)> {
        [
            (Rule::Last, self.keep_last),
            (Rule::Hourly, self.keep_hourly),
            (Rule::Daily, self.keep_daily),
            (Rule::Weekly, self.keep_weekly),
            (Rule::Monthly, self.keep_monthly),
            (Rule::Yearly, self.keep_yearly),
        ]
        .into_iter()
        .filter_map(|(r, c)| c.map(|c| (r, c)))
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    /// The period a date falls in; `nr` makes every dump its own period for `last`.
    fn period<Tz: TimeZone>(self, t: &DateTime<Tz>, nr: usize) -> i64 {
        let (y, yday) = (t.year() as i64, t.ordinal() as i64);
        match self {
            Rule::Last => nr as i64,
            Rule::Hourly => (y * 1000 + yday) * 100 + t.hour() as i64,
            Rule::Daily => y * 1000 + yday,
            Rule::Weekly => {
                let w = t.iso_week();
                w.year() as i64 * 100 + w.week() as i64
            }
            Rule::Monthly => y * 100 + t.month() as i64,
            Rule::Yearly => y,
        }
    }
}

/// One dump's verdict: kept (with the rules that keep it) or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub keep: bool,
    /// `daily snapshot`-style reasons, as restic prints them: "last", "daily",
    /// "within 7d", "protected".
    pub reasons: Vec<String>,
}

/// Applies `policy` to one group. `dates[i]` is dump i's date (any order)
/// and `protected[i]` whether it may never be removed. Returns one decision
/// per dump, in the input order.
pub fn apply<Tz: TimeZone>(
    policy: &Policy,
    dates: &[DateTime<Tz>],
    protected: &[bool],
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        bail!("no retention rule given (--keep-last, --keep-daily, ...): refusing to remove every dump");
    }
    assert_eq!(dates.len(), protected.len(), "one flag per dump");
    // Newest first; ties keep input order, so the result is deterministic.
    let mut order: Vec<usize> = (0..dates.len()).collect();
    order.sort_by(|&a, &b| dates[b].cmp(&dates[a]).then(a.cmp(&b)));
    let mut out = vec![
        Decision {
            keep: false,
            reasons: Vec::new()
        };
        dates.len()
    ];
    let mut buckets: Vec<(Rule, Count, Option<i64>)> = policy
        .bucket_rules()
        .into_iter()
        .map(|(r, c)| (r, c, None))
        .collect();
    let newest = order.first().map(|&i| dates[i].clone());
    let within_since = match (policy.keep_within, &newest) {
        (Some(w), Some(n)) => Some((w, subtract(n, w))),
        _ => None,
    };
    for (nr, &i) in order.iter().enumerate() {
        let t = &dates[i];
        let d = &mut out[i];
        if protected[i] {
            d.reasons.push("protected".into());
        }
        for (rule, count, last) in buckets.iter_mut() {
            if *count == Count::N(0) {
                continue;
            }
            let p = rule.period(t, nr);
            if *last != Some(p) {
                *last = Some(p);
                d.reasons.push(rule.name().into());
                if let Count::N(n) = count {
                    *n -= 1;
                }
            }
        }
        if let Some((w, since)) = &within_since {
            if t > since {
                d.reasons.push(format!("within {w}"));
            }
        }
        d.keep = !d.reasons.is_empty();
    }
    Ok(out)
}

/// `t` minus a restic duration: calendar years and months, then days and hours.
fn subtract<Tz: TimeZone>(t: &DateTime<Tz>, w: Within) -> DateTime<Tz> {
    let months = w.years * 12 + w.months;
    let t = t.clone() - Months::new(months);
    t - chrono::Duration::days(w.days as i64) - chrono::Duration::hours(w.hours as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, Utc};

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, 0, 0)
            .unwrap()
            .and_utc()
    }

    fn kept(policy: &Policy, dates: &[DateTime<Utc>]) -> Vec<DateTime<Utc>> {
        let d = apply(policy, dates, &vec![false; dates.len()]).unwrap();
        let mut k: Vec<_> = dates
            .iter()
            .zip(&d)
            .filter(|(_, d)| d.keep)
            .map(|(t, _)| *t)
            .collect();
        k.sort();
        k
    }

    /// 40 daily dumps at 03:00, 2026-01-01 (a Thursday) .. 2026-02-09.
    fn forty_days() -> Vec<DateTime<Utc>> {
        (0..40)
            .map(|i| at(2026, 1, 1, 3) + chrono::Duration::days(i))
            .collect()
    }

    #[test]
    fn daily_and_weekly_as_restic() {
        // restic: keep-daily 7 keeps Feb 3..9; keep-weekly 4 keeps the newest
        // dump of the 4 most recent ISO weeks: Sun Feb 8 (W06), Sun Feb 1
        // (W05), Sun Jan 25 (W04) and Mon Feb 9 (W07, already daily).
        let p = Policy {
            keep_daily: Some(Count::N(7)),
            keep_weekly: Some(Count::N(4)),
            ..Policy::default()
        };
        let mut want: Vec<_> = (3..=9).map(|d| at(2026, 2, d, 3)).collect();
        want.insert(0, at(2026, 2, 1, 3));
        want.insert(0, at(2026, 1, 25, 3));
        assert_eq!(kept(&p, &forty_days()), want);
        let d = apply(&p, &forty_days(), &[false; 40]).unwrap();
        assert_eq!(d[39].reasons, ["daily", "weekly"]); // Feb 9
        assert_eq!(d[38].reasons, ["daily", "weekly"]); // Sun Feb 8
        assert_eq!(d[31].reasons, ["weekly"]); // Sun Feb 1
        assert!(!d[0].keep && d[0].reasons.is_empty());
    }

    #[test]
    fn each_rule_keeps_the_newest_of_its_periods_that_have_one() {
        // Two dumps a day on days 1, 2 and 5: keep-daily 2 keeps the newest
        // of day 5 and of day 2 (day 3 and 4 have none and do not count).
        let dates = vec![
            at(2026, 3, 1, 1),
            at(2026, 3, 1, 13),
            at(2026, 3, 2, 1),
            at(2026, 3, 2, 13),
            at(2026, 3, 5, 1),
            at(2026, 3, 5, 13),
        ];
        let p = Policy {
            keep_daily: Some(Count::N(2)),
            ..Policy::default()
        };
        assert_eq!(kept(&p, &dates), [at(2026, 3, 2, 13), at(2026, 3, 5, 13)]);
        let p = Policy {
            keep_last: Some(Count::N(3)),
            ..Policy::default()
        };
        assert_eq!(kept(&p, &dates), dates[3..]);
        let p = Policy {
            keep_hourly: Some(Count::Unlimited),
            ..Policy::default()
        };
        assert_eq!(kept(&p, &dates), dates);
    }

    #[test]
    fn monthly_yearly_and_within() {
        let dates: Vec<_> = (0..30)
            .map(|i| at(2024, 1, 15, 0) + Months::new(i))
            .collect(); // 2024-01-15 .. 2026-06-15
        let p = Policy {
            keep_monthly: Some(Count::N(3)),
            keep_yearly: Some(Count::N(10)),
            ..Policy::default()
        };
        assert_eq!(
            kept(&p, &dates),
            [
                at(2024, 12, 15, 0),
                at(2025, 12, 15, 0),
                at(2026, 4, 15, 0),
                at(2026, 5, 15, 0),
                at(2026, 6, 15, 0)
            ]
        );
        // Within is measured from the newest dump, not from now, and is strict.
        let p = Policy {
            keep_within: Some("2m".parse().unwrap()),
            ..Policy::default()
        };
        assert_eq!(kept(&p, &dates), [at(2026, 5, 15, 0), at(2026, 6, 15, 0)]);
        let d = apply(&p, &dates, &[false; 30]).unwrap();
        assert_eq!(d[29].reasons, ["within 2m"]);
    }

    #[test]
    fn protected_is_always_kept_and_still_counts_for_rules() {
        let dates = forty_days();
        let mut prot = vec![false; 40];
        prot[0] = true;
        prot[39] = true;
        let p = Policy {
            keep_last: Some(Count::N(1)),
            ..Policy::default()
        };
        let d = apply(&p, &dates, &prot).unwrap();
        assert_eq!(d[39].reasons, ["protected", "last"]);
        assert_eq!(d[0].reasons, ["protected"]);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 2);
    }

    #[test]
    fn no_rule_is_refused_and_parsing() {
        assert!(apply(&Policy::default(), &forty_days(), &[false; 40]).is_err());
        assert!(apply(
            &Policy {
                keep_last: Some(Count::N(0)),
                ..Policy::default()
            },
            &forty_days(),
            &[false; 40]
        )
        .unwrap()
        .iter()
        .all(|d| !d.keep));
        let w: Within = "1y2m3d4h".parse().unwrap();
        assert_eq!((w.years, w.months, w.days, w.hours), (1, 2, 3, 4));
        assert_eq!(w.to_string(), "1y2m3d4h");
        for bad in ["", "7", "d", "3w", "1.5d", "-1d"] {
            assert!(bad.parse::<Within>().is_err(), "{bad}");
        }
        assert_eq!("-1".parse::<Count>(), Ok(Count::Unlimited));
        assert_eq!("7".parse::<Count>(), Ok(Count::N(7)));
        assert!("x".parse::<Count>().is_err());
        let p: Policy = toml::from_str("keep-daily = 7\nkeep-within = \"1m\"").unwrap();
        assert_eq!(p.describe(), "--keep-daily 7 --keep-within 1m");
    }
}
