//! Lifetimes on the command line: a whole number and a unit, `90s`, `30m`, `24h`, `365d`.

use std::time::Duration;

/// The longest lifetime: a hundred years.
const MAX: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses `<n><unit>` as [`mesh_api::duration`] writes durations, for a lifetime: longer than
/// zero, at most a hundred years.
pub fn parse(input: &str) -> Result<Duration, String> {
    let duration = mesh_api::duration::parse(input, MAX)?;
    if duration.is_zero() {
        return Err("a lifetime must be longer than zero".into());
    }
    Ok(duration)
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
