//! Arbitrary bytes as the first frame a gateway reads on either port (an open request or a
//! probe), and as the open response the egress side relays back: decoded with the caps the
//! gateway uses, then classified and checked as the gateway does. Never a panic.
#![no_main]

use bytes::BytesMut;
use mesh_api::frame::decode_frame_eof;
use mesh_api::tunnel::{StreamHeader, TunnelOpenResponse};
use mesh_gateway::open::{
    MAX_OPEN_REQUEST_LEN, MAX_OPEN_RESPONSE_LEN, StreamRequest, classify, is_accepted,
    service_authority, target_cluster,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(header)) = decode_frame_eof::<StreamHeader>(&mut buf, MAX_OPEN_REQUEST_LEN) {
        if let Ok(StreamRequest::Open(open)) = classify(header) {
            let _ = target_cluster(&open);
            let _ = service_authority(&open);
        }
    }
    let mut buf = BytesMut::from(data);
    if let Ok(Some(response)) =
        decode_frame_eof::<TunnelOpenResponse>(&mut buf, MAX_OPEN_RESPONSE_LEN)
    {
        let _ = is_accepted(&response);
    }
});
