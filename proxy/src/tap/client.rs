//! The watcher's side: connect to a proxy's tap port and stream its events.

use std::time::Duration;

use mesh_api::tap::tap_client::TapClient;
use mesh_api::tap::{ObserveRequest, TapEvent};
use tonic::transport::Endpoint;
use tonic::{Status, Streaming};

/// How long connecting to the tap may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive pings on a watch that may be quiet for long, through a port-forward that may die.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why [`observe`] could not start a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    #[error("tap endpoint {endpoint:?} is not an address to reach; write http://host:port")]
    Endpoint { endpoint: String },
    #[error(
        "cannot connect to the tap at {endpoint} (is the proxy running, and the port forwarded?): {source}"
    )]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the tap at {endpoint} refused to stream: {} ({:?})", .status.message(), .status.code())]
    Refused { endpoint: String, status: Status },
}

/// Streams the events of the tap at `endpoint` (`http://ip:port`) that match `request`.
///
/// The stream ends after the request's limit, or with an error when the proxy shuts down or the
/// connection fails. An `EventsLost` item means this side read too slowly and some events were
/// discarded.
pub async fn observe(
    endpoint: &str,
    request: ObserveRequest,
) -> Result<Streaming<TapEvent>, ObserveError> {
    let bad_endpoint = || ObserveError::Endpoint {
        endpoint: endpoint.to_owned(),
    };
    let uri: http::Uri = endpoint.parse().map_err(|_| bad_endpoint())?;
    // The tap speaks plain-text HTTP/2 only; anything but http://host[:port][/] is a mistake.
    if uri.scheme_str() != Some("http")
        || uri.authority().is_none()
        || !matches!(uri.path(), "" | "/")
        || uri.query().is_some()
    {
        return Err(bad_endpoint());
    }
    let channel = Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|source| ObserveError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let response = TapClient::new(channel)
        .observe(request)
        .await
        .map_err(|status| ObserveError::Refused {
            endpoint: endpoint.to_owned(),
            status,
        })?;
    Ok(response.into_inner())
}

impl ObserveError {
    /// The status the tap answered with, when it did answer.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Refused { status, .. } => Some(status),
            Self::Endpoint { .. } | Self::Connect { .. } => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_must_be_plain_http_addresses() {
        for bad in [
            "127.0.0.1:4190",
            "https://127.0.0.1:4190",
            "http://",
            "http://127.0.0.1:4190/tap",
            "http://127.0.0.1:4190/?x=1",
            "not a uri",
        ] {
            let error = observe(bad, ObserveRequest::default()).await.unwrap_err();
            assert!(
                matches!(error, ObserveError::Endpoint { .. }),
                "{bad}: {error}"
            );
            assert!(error.to_string().contains("http://host:port"));
        }
    }
}
