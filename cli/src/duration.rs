//! Durations on the command line: a whole number and a unit, `90s`, `30m`, `24h`, `365d`.

use std::time::Duration;

const MAX_SECS: u64 = 36_500 * 86_400;

/// Parses `<n><unit>` with unit `s`, `m`, `h` or `d`.
pub fn parse(input: &str) -> Result<Duration, String> {
    let input = input.trim();
    let split = input
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{input:?} has no unit; write it like 90s, 30m, 24h or 365d"))?;
    let (number, unit) = input.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{input:?} does not start with a whole number; write it like 24h"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {input:?}; use s, m, h or d"
            ));
        }
    };
    let secs = n
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("{input:?} is too long a duration"))?;
    if secs == 0 {
        return Err("a lifetime must be longer than zero".into());
    }
    if secs > MAX_SECS {
        return Err(format!(
            "{input:?} is longer than the 36500d (100 years) allowed"
        ));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_the_rest() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        for bad in [
            "",
            "24",
            "h",
            "1.5h",
            "3w",
            "0s",
            "99999999999999999999d",
            "4000000d",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
