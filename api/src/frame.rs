//! Length-delimited protobuf frames on a byte stream.
//!
//! Tunnel frames (`StreamHeader`, `TunnelOpenResponse`, `ProbeResponse`, `TransportHeader`) are
//! sent as prost's length-delimited form: a protobuf varint holding the message length, then the
//! message. This module owns that framing and nothing else.
//!
//! - The core is sans-IO: [`decode_frame`], [`decode_frame_eof`] and [`encode_frame`] work on a
//!   [`BytesMut`], so the gateway, the proxy and the fuzzer share one implementation.
//! - [`FrameCodec`] adapts it to `tokio_util::codec` for callers that want `Framed`.
//! - [`read_frame`] and [`write_frame`] exchange exactly one frame on a stream. They never read
//!   past the frame, because on a tunnel the raw application bytes follow the open frame on the
//!   same stream and belong to whoever reads next.
//!
//! Every length is checked against a cap before a body is buffered, so a peer cannot make us
//! allocate more than the cap by declaring a large frame. No input makes any of this panic.

use std::{any::type_name, fmt, marker::PhantomData};

use bytes::{Buf, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

/// The default cap on a frame's message length (the varint prefix is not counted): 64 KiB, far
/// above any tunnel frame, small enough that a hostile peer cannot pin much memory.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 * 1024;

/// The longest varint encoding of a `u64`.
const MAX_VARINT_LEN: usize = 10;

/// How much body buffer [`read_frame`] allocates up front: the body then grows only as bytes
/// arrive, so a declared length costs nothing until the peer actually sends it.
const INITIAL_BODY_CAPACITY: usize = 4 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame's declared (or, when encoding, actual) message length is over the cap. Detected
    /// from the length prefix alone, before any of the body is buffered.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// The message length the frame declares.
        len: u64,
        /// The cap in force.
        max: usize,
    },

    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame's {part}: expected {expected} bytes, had {had}")]
    Truncated {
        /// Which part of the frame was cut short.
        part: FramePart,
        /// For the body, its declared length. For the length prefix, whose length is only known
        /// once it is complete, a lower bound: one more byte than we had.
        expected: u64,
        /// How many bytes of that part had arrived.
        had: usize,
    },

    /// The length prefix is not a valid varint: longer than 10 bytes, or over 64 bits.
    #[error("malformed frame length prefix: not a varint of at most 10 bytes and 64 bits")]
    MalformedLength,

    /// The body is not a valid encoding of the expected message.
    #[error("malformed {message} frame: {source}")]
    MalformedMessage {
        /// The Rust type the body was decoded as, e.g. `mesh_api::tunnel::StreamHeader`.
        message: &'static str,
        /// What prost found wrong.
        source: prost::DecodeError,
    },

    /// Reading or writing the underlying stream failed.
    #[error("frame I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The two parts of a frame, to say where a stream was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramePart {
    /// The varint message length.
    LengthPrefix,
    /// The message.
    Body,
}

/// A [`tokio_util::codec`] codec for frames: decodes `M`, encodes any prost message (so one
/// `Framed` can read requests of one type and write responses of another).
///
/// `Framed` reads ahead into its buffer. On a tunnel, where raw bytes follow the open frame, take
/// them back with `Framed::into_parts().read_buf`, or use [`read_frame`] instead.
pub struct FrameCodec<M> {
    max_frame_len: usize,
    // `fn() -> M`: the codec produces `M`s but holds none, so it is `Send + Sync` whatever `M` is.
    _message: PhantomData<fn() -> M>,
}

/// Decodes one frame from the front of `buf`, consuming it.
///
/// Returns `Ok(None)` when `buf` holds only the start of a frame (including nothing at all); call
/// again once more bytes have arrived. Bytes after the frame stay in `buf`.
///
/// # Errors
///
/// [`FrameError::Oversized`] as soon as the prefix declares more than `max_len` bytes,
/// [`FrameError::MalformedLength`] for a bad prefix, [`FrameError::MalformedMessage`] for a bad
/// body. After an error the stream should be dropped: where the next frame starts is unknown.
pub fn decode_frame<M>(buf: &mut BytesMut, max_len: usize) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
{
    let Prefix::Complete { len, prefix_len } = parse_prefix(buf)? else {
        return Ok(None);
    };
    let len = check_len(len, max_len)?;
    let Some(frame_len) = prefix_len.checked_add(len) else {
        return Err(oversized(len, max_len));
    };
    if buf.len() < frame_len {
        return Ok(None);
    }

    buf.advance(prefix_len);
    let body = buf.split_to(len);
    M::decode(body)
        .map(Some)
        .map_err(|source| FrameError::MalformedMessage {
            message: type_name::<M>(),
            source,
        })
}

/// Like [`decode_frame`], for when the stream has ended: no more bytes will come.
///
/// Returns `Ok(None)` only when `buf` is empty.
///
/// # Errors
///
/// Those of [`decode_frame`], and [`FrameError::Truncated`] when `buf` holds part of a frame.
pub fn decode_frame_eof<M>(buf: &mut BytesMut, max_len: usize) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
{
    match decode_frame(buf, max_len)? {
        Some(message) => Ok(Some(message)),
        None if buf.is_empty() => Ok(None),
        None => Err(truncated(buf)),
    }
}

/// Appends `message` to `dst` as one frame.
///
/// # Errors
///
/// [`FrameError::Oversized`] when the message is longer than `max_len`: the peer would refuse it,
/// so it is better refused here, where the caller can see why. `dst` is then left unchanged.
pub fn encode_frame<M>(message: &M, dst: &mut BytesMut, max_len: usize) -> Result<(), FrameError>
where
    M: Message,
{
    let len = message.encoded_len();
    if len > max_len {
        return Err(oversized(len, max_len));
    }
    dst.reserve(prost::length_delimiter_len(len) + len);
    // A `BytesMut` grows on demand, so prost's only failure (a full buffer) cannot happen; it is
    // still mapped rather than unwrapped.
    message
        .encode_length_delimited(dst)
        .map_err(|error| FrameError::Io(std::io::Error::other(error)))
}

/// Reads exactly one frame from `reader`.
///
/// Returns `Ok(None)` if the stream ends cleanly before the first byte of a frame. Never reads a
/// byte past the frame: the prefix is read one byte at a time and the body to its exact length,
/// so whatever follows on the stream is still there for the next reader. An unbuffered reader
/// therefore costs up to 10 small reads for the prefix, which is fine for the one or two frames
/// that open a stream; use [`FrameCodec`] for a stream made only of frames.
///
/// # Errors
///
/// Those of [`decode_frame_eof`], and [`FrameError::Io`] when reading fails.
pub async fn read_frame<M, R>(reader: &mut R, max_len: usize) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin + ?Sized,
{
    let Some(len) = read_prefix(reader).await? else {
        return Ok(None);
    };
    let len = check_len(len, max_len)?;

    // `take` bounds the read to the body, and the buffer grows only as bytes arrive.
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    let had = (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if had < len {
        return Err(FrameError::Truncated {
            part: FramePart::Body,
            expected: len as u64,
            had,
        });
    }
    M::decode(body.as_slice())
        .map(Some)
        .map_err(|source| FrameError::MalformedMessage {
            message: type_name::<M>(),
            source,
        })
}

/// Writes `message` to `writer` as one frame, then flushes, so that the peer sees the frame before
/// the caller starts waiting for its answer.
///
/// # Errors
///
/// Those of [`encode_frame`], and [`FrameError::Io`] when writing fails.
pub async fn write_frame<M, W>(
    writer: &mut W,
    message: &M,
    max_len: usize,
) -> Result<(), FrameError>
where
    M: Message,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = BytesMut::new();
    encode_frame(message, &mut buf, max_len)?;
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

// === impl FrameCodec ===

impl<M> FrameCodec<M> {
    /// A codec with the [`DEFAULT_MAX_FRAME_LEN`] cap.
    #[must_use]
    pub const fn new() -> Self {
        Self::with_max_frame_len(DEFAULT_MAX_FRAME_LEN)
    }

    /// A codec that refuses frames whose message is longer than `max_frame_len` bytes, both ways.
    #[must_use]
    pub const fn with_max_frame_len(max_frame_len: usize) -> Self {
        Self {
            max_frame_len,
            _message: PhantomData,
        }
    }

    /// The cap in force.
    #[must_use]
    pub const fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }
}

impl<M> Default for FrameCodec<M> {
    fn default() -> Self {
        Self::new()
    }
}

// Written out rather than derived: derives would require `M: Clone` / `M: Debug`, and the codec
// holds no `M`.
impl<M> Clone for FrameCodec<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for FrameCodec<M> {}

impl<M> fmt::Debug for FrameCodec<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameCodec")
            .field("message", &type_name::<M>())
            .field("max_frame_len", &self.max_frame_len)
            .finish()
    }
}

impl<M> Decoder for FrameCodec<M>
where
    M: Message + Default,
{
    type Item = M;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<M>, FrameError> {
        decode_frame(src, self.max_frame_len)
    }

    // Overridden so that a cut stream reports a typed `Truncated` rather than tokio-util's generic
    // "bytes remaining on stream" I/O error.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<M>, FrameError> {
        decode_frame_eof(src, self.max_frame_len)
    }
}

impl<M, E> Encoder<E> for FrameCodec<M>
where
    E: Message,
{
    type Error = FrameError;

    fn encode(&mut self, item: E, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&item, dst, self.max_frame_len)
    }
}

// === length prefix ===

/// What the front of a buffer says about the next frame's length.
#[derive(Debug, PartialEq, Eq)]
enum Prefix {
    /// The varint is not finished yet.
    Incomplete,
    /// The varint is `prefix_len` bytes long and says the body is `len` bytes.
    Complete { len: u64, prefix_len: usize },
}

/// Parses the varint at the front of `buf`.
///
/// Hand-written rather than prost's `decode_length_delimiter` because that one cannot tell "not
/// enough bytes yet" from "invalid", and a stream decoder must wait on the first and fail on the
/// second. Non-canonical encodings (`0x80 0x00` for 0) are accepted, as prost accepts them.
fn parse_prefix(buf: &[u8]) -> Result<Prefix, FrameError> {
    let mut len = 0u64;
    for (i, &byte) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        // The tenth byte carries only bit 63: anything above 1 either overflows a u64 or has the
        // continuation bit set, making the varint longer than 10 bytes.
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(FrameError::MalformedLength);
        }
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Prefix::Complete {
                len,
                prefix_len: i + 1,
            });
        }
    }
    // Fewer than 10 bytes, all with the continuation bit: a 10th byte always decides above.
    Ok(Prefix::Incomplete)
}

/// Reads a varint prefix one byte at a time, so that nothing after it is consumed. `None` on a
/// clean end of stream before its first byte.
async fn read_prefix<R>(reader: &mut R) -> Result<Option<u64>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut prefix = [0u8; MAX_VARINT_LEN];
    for filled in 0..MAX_VARINT_LEN {
        if reader.read(&mut prefix[filled..=filled]).await? == 0 {
            return match filled {
                0 => Ok(None),
                _ => Err(truncated_prefix(filled)),
            };
        }
        if let Prefix::Complete { len, .. } = parse_prefix(&prefix[..=filled])? {
            return Ok(Some(len));
        }
    }
    // `parse_prefix` decides every 10-byte input (complete or malformed), so this is unreachable;
    // it is an error rather than a panic all the same.
    Err(FrameError::MalformedLength)
}

/// Checks a declared length against the cap, and converts it for indexing.
fn check_len(len: u64, max_len: usize) -> Result<usize, FrameError> {
    match usize::try_from(len) {
        Ok(len) if len <= max_len => Ok(len),
        _ => Err(FrameError::Oversized { len, max: max_len }),
    }
}

fn oversized(len: usize, max: usize) -> FrameError {
    FrameError::Oversized {
        len: len as u64,
        max,
    }
}

/// The error for a buffer that holds part of a frame and will get no more bytes.
fn truncated(buf: &[u8]) -> FrameError {
    match parse_prefix(buf) {
        Ok(Prefix::Complete { len, prefix_len }) => FrameError::Truncated {
            part: FramePart::Body,
            expected: len,
            had: buf.len().saturating_sub(prefix_len),
        },
        Ok(Prefix::Incomplete) => truncated_prefix(buf.len()),
        Err(error) => error,
    }
}

fn truncated_prefix(had: usize) -> FrameError {
    FrameError::Truncated {
        part: FramePart::LengthPrefix,
        expected: had as u64 + 1,
        had,
    }
}

// === impl FramePart ===

impl fmt::Display for FramePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LengthPrefix => "length prefix",
            Self::Body => "body",
        })
    }
}

// === fuzzing ===

/// The body of the `frame_decode` fuzz target, here so that unit tests run the same checks
/// without cargo-fuzz. Panics when an invariant breaks: that is what the fuzzer looks for.
///
/// For each tunnel message type and for a default and a tiny cap, `data` is decoded three ways
/// (the whole buffer at once, one byte at a time through [`FrameCodec`], and frame by frame with
/// [`read_frame`]); all three must agree on the frames, on where each frame ends and on the error
/// that stops them. Every decoded message must survive an encode/decode round trip, and
/// [`write_frame`] must produce the same bytes as [`encode_frame`].
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    use crate::tunnel::{StreamHeader, TunnelOpenResponse};

    // The tiny cap makes the fuzzer reach the oversized paths without building 64 KiB inputs.
    for max_len in [DEFAULT_MAX_FRAME_LEN, 16] {
        fuzz::check::<StreamHeader>(data, max_len);
        fuzz::check::<TunnelOpenResponse>(data, max_len);
    }
}

mod fuzz {
    use std::{
        fmt,
        future::Future,
        pin::pin,
        task::{Context, Poll, Waker},
    };

    use bytes::{BufMut, BytesMut};
    use prost::Message;
    use tokio_util::codec::Decoder;

    use super::{
        FrameCodec, decode_frame, decode_frame_eof, encode_frame, read_frame, write_frame,
    };

    /// What decoding a whole input gave: each frame with the input offset just past it, then the
    /// error that stopped decoding, if any (as text, since `io::Error` is not comparable).
    #[derive(Debug, PartialEq)]
    struct Outcome<M> {
        frames: Vec<(M, usize)>,
        error: Option<String>,
    }

    pub(super) fn check<M>(data: &[u8], max_len: usize)
    where
        M: Message + Default + PartialEq + fmt::Debug,
    {
        let whole = whole_buffer::<M>(data, max_len);
        assert_eq!(
            byte_by_byte::<M>(data, max_len),
            whole,
            "byte-by-byte decoding disagrees with whole-buffer decoding"
        );
        assert_eq!(
            frame_by_frame::<M>(data, max_len),
            whole,
            "read_frame disagrees with whole-buffer decoding"
        );
        for (message, _) in &whole.frames {
            round_trip(message);
        }
    }

    fn whole_buffer<M: Message + Default>(data: &[u8], max_len: usize) -> Outcome<M> {
        let mut buf = BytesMut::from(data);
        let mut frames = Vec::new();
        loop {
            match decode_frame_eof::<M>(&mut buf, max_len) {
                Ok(Some(message)) => frames.push((message, data.len() - buf.len())),
                Ok(None) => {
                    return Outcome {
                        frames,
                        error: None,
                    };
                }
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error.to_string()),
                    };
                }
            }
        }
    }

    fn byte_by_byte<M: Message + Default>(data: &[u8], max_len: usize) -> Outcome<M> {
        let mut codec = FrameCodec::<M>::with_max_frame_len(max_len);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut fed = 0;
        for &byte in data {
            buf.put_u8(byte);
            fed += 1;
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(message)) => frames.push((message, fed - buf.len())),
                    Ok(None) => break,
                    Err(error) => {
                        return Outcome {
                            frames,
                            error: Some(error.to_string()),
                        };
                    }
                }
            }
        }
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(message)) => frames.push((message, fed - buf.len())),
                Ok(None) => {
                    return Outcome {
                        frames,
                        error: None,
                    };
                }
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error.to_string()),
                    };
                }
            }
        }
    }

    fn frame_by_frame<M: Message + Default>(data: &[u8], max_len: usize) -> Outcome<M> {
        let mut reader = data;
        let mut frames = Vec::new();
        loop {
            match ready(read_frame::<M, _>(&mut reader, max_len)) {
                // What is left unread tells where `read_frame` stopped: it must be the frame end.
                Ok(Some(message)) => frames.push((message, data.len() - reader.len())),
                Ok(None) => {
                    return Outcome {
                        frames,
                        error: None,
                    };
                }
                Err(error) => {
                    return Outcome {
                        frames,
                        error: Some(error.to_string()),
                    };
                }
            }
        }
    }

    fn round_trip<M: Message + Default + PartialEq>(message: &M) {
        // No cap here: re-encoding may legitimately grow a message (a negative enum value sent
        // as a 5-byte varint is re-encoded in 10 bytes), and only equality is being checked.
        let mut encoded = BytesMut::new();
        let encoded_ok = encode_frame(message, &mut encoded, usize::MAX);
        assert!(encoded_ok.is_ok(), "re-encoding failed: {encoded_ok:?}");

        let mut written = Vec::new();
        let written_ok = ready(write_frame(&mut written, message, usize::MAX));
        assert!(written_ok.is_ok(), "write_frame failed: {written_ok:?}");
        assert_eq!(written, encoded, "write_frame and encode_frame disagree");

        match decode_frame::<M>(&mut encoded, usize::MAX) {
            Ok(Some(decoded)) => assert!(decoded == *message, "round trip changed the message"),
            other => panic!(
                "a re-encoded message did not decode: {:?}",
                other.map(|_| ())
            ),
        }
        assert!(encoded.is_empty(), "a re-encoded frame left bytes behind");
    }

    /// Runs a future that never waits, as reads from a slice and writes to a `Vec` do, without a
    /// runtime (the fuzz target has none).
    fn ready<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("in-memory I/O returned Pending"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::{Decoder, Framed};

    use super::*;
    use crate::{
        common::ProtocolHint,
        tunnel::{OpenStatus, Probe, StreamHeader, TunnelOpen, TunnelOpenResponse, stream_header},
    };

    fn open() -> StreamHeader {
        StreamHeader {
            kind: Some(stream_header::Kind::Open(TunnelOpen {
                target_cluster: "east".into(),
                authority: "web.default.svc.cluster.local:80".into(),
                protocol_hint: ProtocolHint::Http.into(),
                caller_identity: "spiffe://west/ns/default/sa/web".into(),
            })),
        }
    }

    fn probe(nonce: u64) -> StreamHeader {
        StreamHeader {
            kind: Some(stream_header::Kind::Probe(Probe {
                nonce,
                sent_at_unix_micros: 1_700_000_000_000_000,
                target_cluster: String::new(),
            })),
        }
    }

    fn encoded(message: &impl Message) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(message, &mut buf, DEFAULT_MAX_FRAME_LEN).unwrap();
        buf
    }

    #[test]
    fn round_trip() {
        let mut buf = encoded(&open());
        // The wire form is prost's own length-delimited form.
        assert_eq!(
            buf.as_ref(),
            open().encode_length_delimited_to_vec().as_slice()
        );
        let decoded = decode_frame::<StreamHeader>(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(decoded, Some(open()));
        assert!(buf.is_empty());
    }

    #[test]
    fn empty_message_is_a_one_byte_frame() {
        let mut buf = encoded(&StreamHeader::default());
        assert_eq!(buf.as_ref(), [0]);
        let decoded = decode_frame::<StreamHeader>(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(decoded, Some(StreamHeader::default()));
    }

    #[test]
    fn partial_input_yields_none_then_the_frame() {
        let whole = encoded(&open());
        let mut codec = FrameCodec::<StreamHeader>::new();
        let mut buf = BytesMut::new();
        for (i, &byte) in whole.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            let decoded = codec.decode(&mut buf).unwrap();
            if i + 1 < whole.len() {
                assert_eq!(
                    decoded,
                    None,
                    "a frame decoded from {} of {} bytes",
                    i + 1,
                    whole.len()
                );
            } else {
                assert_eq!(decoded, Some(open()));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut buf = encoded(&open());
        buf.extend_from_slice(&encoded(&probe(1)));
        buf.extend_from_slice(&encoded(&probe(2)));
        let mut codec = FrameCodec::<StreamHeader>::new();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(open()));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(probe(1)));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(probe(2)));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn oversized_is_rejected_from_the_prefix_alone() {
        // A prefix declaring 64 KiB + 1 and no body at all.
        let mut buf = BytesMut::new();
        prost::encode_length_delimiter(DEFAULT_MAX_FRAME_LEN + 1, &mut buf).unwrap();
        let error = decode_frame::<StreamHeader>(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap_err();
        assert!(
            matches!(error, FrameError::Oversized { len, max } if len == 65_537 && max == 65_536),
            "{error:?}"
        );
        assert!(error.to_string().contains("65537"), "{error}");

        // The largest varint there is: still only a size problem, not a malformed prefix.
        let mut buf =
            BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        let error = decode_frame::<StreamHeader>(&mut buf, usize::MAX).unwrap_err();
        assert!(
            matches!(error, FrameError::Oversized { len: u64::MAX, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn encoding_refuses_oversized_messages() {
        let big = TunnelOpenResponse {
            status: OpenStatus::Forbidden.into(),
            endpoint_identity: String::new(),
            message: "x".repeat(100),
        };
        let mut buf = BytesMut::new();
        let error = encode_frame(&big, &mut buf, 64).unwrap_err();
        assert!(
            matches!(error, FrameError::Oversized { max: 64, .. }),
            "{error:?}"
        );
        assert!(buf.is_empty());

        let mut codec = FrameCodec::<StreamHeader>::with_max_frame_len(64);
        assert!(matches!(
            codec.encode(big, &mut buf),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn truncated_at_eof_is_a_typed_error() {
        let whole = encoded(&open());

        let mut body_cut = BytesMut::from(&whole[..whole.len() - 3]);
        let error =
            decode_frame_eof::<StreamHeader>(&mut body_cut, DEFAULT_MAX_FRAME_LEN).unwrap_err();
        let expected = (whole.len() - 1) as u64;
        let had = whole.len() - 4;
        assert!(
            matches!(error, FrameError::Truncated { part: FramePart::Body, expected: e, had: h } if e == expected && h == had),
            "{error:?}"
        );

        // A two-byte prefix cut after its first byte.
        let mut prefix_cut = BytesMut::from(&[0x80][..]);
        let error = FrameCodec::<StreamHeader>::new()
            .decode_eof(&mut prefix_cut)
            .unwrap_err();
        assert!(
            matches!(
                error,
                FrameError::Truncated {
                    part: FramePart::LengthPrefix,
                    expected: 2,
                    had: 1
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "stream ended inside a frame's length prefix: expected 2 bytes, had 1"
        );
    }

    #[test]
    fn garbage_body_is_a_malformed_message() {
        // Field 1, length-delimited, declaring 5 bytes that are not there.
        let mut buf = BytesMut::from(&[0x02, 0x0a, 0x05][..]);
        let error = decode_frame::<StreamHeader>(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap_err();
        assert!(
            matches!(error, FrameError::MalformedMessage { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("StreamHeader"), "{error}");

        // Wire type 7 does not exist.
        let mut buf = BytesMut::from(&[0x01, 0x0f][..]);
        let error =
            decode_frame::<TunnelOpenResponse>(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap_err();
        assert!(
            matches!(error, FrameError::MalformedMessage { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("TunnelOpenResponse"), "{error}");
    }

    #[test]
    fn over_long_varint_is_rejected() {
        // Ten bytes with the continuation bit: the varint would need an eleventh.
        let mut buf = BytesMut::from(&[0x80; 10][..]);
        let error = decode_frame::<StreamHeader>(&mut buf, usize::MAX).unwrap_err();
        assert!(matches!(error, FrameError::MalformedLength), "{error:?}");

        // Ten bytes whose last carries more than bit 63.
        let mut buf =
            BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..]);
        let error = decode_frame::<StreamHeader>(&mut buf, usize::MAX).unwrap_err();
        assert!(matches!(error, FrameError::MalformedLength), "{error:?}");

        // Nine continuation bytes are still only an incomplete prefix.
        let mut buf = BytesMut::from(&[0x80; 9][..]);
        assert_eq!(
            decode_frame::<StreamHeader>(&mut buf, usize::MAX).unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn read_frame_leaves_trailing_raw_bytes_unread() {
        let mut stream = encoded(&open()).to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut reader = stream.as_slice();

        let header = read_frame::<StreamHeader, _>(&mut reader, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap();
        assert_eq!(header, Some(open()));
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn read_frame_over_a_stream() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let response = TunnelOpenResponse {
            status: OpenStatus::Ok.into(),
            endpoint_identity: "spiffe://east/ns/default/sa/web".into(),
            message: String::new(),
        };
        write_frame(&mut client, &open(), DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap();
        let got = read_frame::<StreamHeader, _>(&mut server, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap();
        assert_eq!(got, Some(open()));

        write_frame(&mut server, &response, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap();
        drop(server);
        let got = read_frame::<TunnelOpenResponse, _>(&mut client, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap();
        assert_eq!(got, Some(response));
        // Clean end of stream between frames.
        let got = read_frame::<TunnelOpenResponse, _>(&mut client, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap();
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn read_frame_errors() {
        let mut reader: &[u8] = &[0x05, 0x01];
        let error = read_frame::<StreamHeader, _>(&mut reader, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                FrameError::Truncated {
                    part: FramePart::Body,
                    expected: 5,
                    had: 1
                }
            ),
            "{error:?}"
        );

        // Oversized is refused before the body is read: the body bytes stay in the reader.
        let mut reader: &[u8] = &[0x11, 0xaa, 0xbb];
        let error = read_frame::<StreamHeader, _>(&mut reader, 16)
            .await
            .unwrap_err();
        assert!(
            matches!(error, FrameError::Oversized { len: 17, max: 16 }),
            "{error:?}"
        );
        assert_eq!(reader, [0xaa, 0xbb]);

        let mut reader: &[u8] = &[0x80; 11];
        let error = read_frame::<StreamHeader, _>(&mut reader, DEFAULT_MAX_FRAME_LEN)
            .await
            .unwrap_err();
        assert!(matches!(error, FrameError::MalformedLength), "{error:?}");
    }

    #[tokio::test]
    async fn framed_reads_one_type_and_writes_another() {
        let (client, server) = tokio::io::duplex(1024);
        let mut client = Framed::new(client, FrameCodec::<TunnelOpenResponse>::new());
        let mut server = Framed::new(server, FrameCodec::<StreamHeader>::new());

        client.send(open()).await.unwrap();
        assert_eq!(server.next().await.unwrap().unwrap(), open());
        let response = TunnelOpenResponse {
            status: OpenStatus::NotExported.into(),
            endpoint_identity: String::new(),
            message: "web.default is not exported".into(),
        };
        server.send(response.clone()).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), response);

        // A stream cut inside a frame surfaces as a typed error, not a generic I/O one.
        let mut raw = server.into_inner();
        tokio::io::AsyncWriteExt::write_all(&mut raw, &[0x05, 0x01])
            .await
            .unwrap();
        drop(raw);
        let error = client.next().await.unwrap().unwrap_err();
        assert!(
            matches!(
                error,
                FrameError::Truncated {
                    part: FramePart::Body,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn fuzz_body_survives_hostile_seeds() {
        let mut seeds: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x00],
            vec![0x00; 64],
            vec![0x80; 9],
            vec![0x80; 10],
            vec![0x80; 11],
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            vec![0x80, 0x00],
            vec![0x11],
            vec![0x02, 0x0a, 0x05],
            vec![0x01, 0x0f],
            // A TunnelOpenResponse whose status is -1 sent as a 5-byte varint: it grows when
            // re-encoded, which the round trip must allow.
            vec![0x06, 0x08, 0xff, 0xff, 0xff, 0xff, 0x0f],
            // StreamHeader with both oneof members: the last one wins.
            vec![0x06, 0x0a, 0x00, 0x12, 0x02, 0x08, 0x01],
        ];
        seeds.push(encoded(&open()).to_vec());
        let mut frames = encoded(&open());
        frames.extend_from_slice(&encoded(&probe(7)));
        frames.extend_from_slice(&[0x7f, 0x01]);
        seeds.push(frames.to_vec());

        for seed in &seeds {
            fuzz_decode(seed);
        }
    }
}
