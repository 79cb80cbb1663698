//! Error messages that keep their causes.
//!
//! hyper's and hyper-util's errors say little in their own `Display` ("client error
//! (SendRequest)"); the cause that names the problem ("connection reset", "stream error
//! received: refused stream") is further down the source chain. Logs and error messages show
//! the whole chain.

use std::error::Error;
use std::fmt::Write as _;

/// `error` and each of its sources, joined by `": "`.
pub(crate) fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let _ = write!(text, ": {error}");
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_named() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&error), "outer: inner");
    }
}
