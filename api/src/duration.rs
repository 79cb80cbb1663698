//! Durations as flags, environment variables and generated manifests write them: a whole number
//! and a unit, `250ms`, `10s`, `5m`, `24h`, `365d`. One spelling for every binary, so that what
//! `mesh` and the charts write, `mesh-proxy` and `mesh-gateway` read.

use std::time::Duration;

/// Parses `<n><unit>`, unit `ms`, `s`, `m`, `h` or `d`, refusing anything longer than `max`.
/// Zero is accepted; callers for which zero means nothing refuse it themselves.
pub fn parse(input: &str, max: Duration) -> Result<Duration, String> {
    let input = input.trim();
    let split = input.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("{input:?} has no unit; write it like 250ms, 10s, 5m, 24h or 365d")
    })?;
    let (number, unit) = input.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{input:?} does not start with a whole number; write it like 10s"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {input:?}; use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .filter(|duration| *duration <= max)
        .ok_or_else(|| {
            format!(
                "{input:?} is longer than the {}d allowed",
                max.as_secs() / 86_400
            )
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const YEAR: Duration = Duration::from_secs(366 * 86_400);

    #[test]
    fn every_unit_and_the_cap() {
        assert_eq!(parse("250ms", YEAR), Ok(Duration::from_millis(250)));
        assert_eq!(parse(" 10s ", YEAR), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m", YEAR), Ok(Duration::from_secs(300)));
        assert_eq!(parse("24h", YEAR), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("366d", YEAR), Ok(YEAR));
        assert_eq!(parse("0s", YEAR), Ok(Duration::ZERO));
        for (bad, says) in [
            ("", "has no unit"),
            ("10", "has no unit"),
            ("s", "whole number"),
            ("1.5h", "unknown unit"),
            ("3w", "unknown unit"),
            ("367d", "366d allowed"),
            ("99999999999999999999d", "whole number"),
        ] {
            let err = parse(bad, YEAR).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
