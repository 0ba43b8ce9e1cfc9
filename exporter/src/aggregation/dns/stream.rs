//! DNS over TCP (RFC 7766): each message is preceded by a two-byte length, several may
//! share a connection, and one may span segments. The probe hands over each segment's
//! payload (cut at `PAYLOAD_MAX`) with its sequence number; this rebuilds the messages
//! of one direction of one connection.
//!
//! A retransmitted segment (its data already seen) is skipped. Bytes the probe cut off
//! are not invented: the message they belong to is returned short, and decoding it
//! fails or yields what its captured part holds. A gap in the sequence (a segment
//! never seen) loses the framing: the stream starts over at the next segment, and the
//! gap is reported so that the caller counts it.

/// Bytes of one message kept while it is incomplete: the largest DNS message.
const MESSAGE_MAX: usize = 65_535;
/// How far past a SYN a stream may be for the SYN to count as its own handshake again:
/// a new connection's initial sequence number falls this close by chance once in 4,096.
const SAME_CONNECTION_WITHIN: i32 = 1 << 20;

#[derive(Debug, Default)]
pub struct TcpStream {
    /// Sequence number of the next byte expected; `None` until the first segment.
    next_seq: Option<u32>,
    /// The length prefix, once both of its bytes are in.
    length: Option<usize>,
    prefix: Vec<u8>,
    /// Captured bytes of the current message.
    message: Vec<u8>,
    /// Bytes of the current message consumed so far, captured or not.
    consumed: usize,
}

/// One message of the stream, without its length prefix.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    /// The captured bytes: all of the message unless `cut`.
    pub bytes: Vec<u8>,
    /// Some of the message's bytes were not captured (the probe's copy cap).
    pub cut: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Segment {
    /// Messages completed by this segment (possibly none).
    Messages(Vec<Message>),
    /// A hole in the sequence: data was lost and the stream was reset.
    Gap,
}

impl TcpStream {
    /// A SYN with sequence number `seq`: the stream's data starts at the next one. One
    /// made by `default` and given no SYN starts at the first segment it is given. A SYN
    /// at or just before where the stream already is, is its own handshake again (a
    /// retransmission) and changes nothing; any other starts a new connection.
    pub fn syn(&mut self, seq: u32) {
        let start = seq.wrapping_add(1);
        if let Some(next) = self.next_seq
            && (0..SAME_CONNECTION_WITHIN).contains(&next.wrapping_sub(start).cast_signed())
        {
            return;
        }
        *self = Self { next_seq: Some(start), ..Self::default() };
    }

    /// Adds one segment: `captured` bytes of the `wire_len` the segment carried,
    /// starting at sequence number `seq`.
    pub fn push(&mut self, seq: u32, captured: &[u8], wire_len: u32) -> Segment {
        let expected = *self.next_seq.get_or_insert(seq);
        // Wrapping difference: where this segment starts relative to what we expect.
        let offset = seq.wrapping_sub(expected).cast_signed();
        if offset > 0 {
            *self = Self { next_seq: Some(seq.wrapping_add(wire_len)), ..Self::default() };
            return Segment::Gap;
        }
        let already_seen = offset.unsigned_abs();
        if already_seen >= wire_len {
            return Segment::Messages(Vec::new()); // a retransmission
        }
        self.next_seq = Some(seq.wrapping_add(wire_len));
        let skip = already_seen as usize;
        let captured = captured.get(skip..).unwrap_or_default();
        let missing = (wire_len as usize - skip).saturating_sub(captured.len());
        let mut done = Vec::new();
        self.feed(captured, &mut done);
        self.feed_missing(missing, &mut done);
        Segment::Messages(done)
    }

    fn feed(&mut self, mut bytes: &[u8], done: &mut Vec<Message>) {
        while !bytes.is_empty() {
            let Some(length) = self.length else {
                self.prefix.push(bytes[0]);
                bytes = &bytes[1..];
                if self.prefix.len() == 2 {
                    self.start_message(usize::from(u16::from_be_bytes([self.prefix[0], self.prefix[1]])), done);
                }
                continue;
            };
            let take = (length - self.consumed).min(bytes.len());
            if self.message.len() < MESSAGE_MAX {
                self.message.extend_from_slice(&bytes[..take]);
            }
            self.consumed += take;
            bytes = &bytes[take..];
            self.finish_if_complete(done);
        }
    }

    /// Bytes the probe did not copy: they advance the current message without data. If
    /// they hide a length prefix, the stream cannot find its next message: it waits for
    /// the next segment and resumes at the prefix it can see, a best effort.
    fn feed_missing(&mut self, mut missing: usize, done: &mut Vec<Message>) {
        while missing > 0 {
            let Some(length) = self.length else {
                self.reset_framing();
                return;
            };
            let take = (length - self.consumed).min(missing);
            self.consumed += take;
            missing -= take;
            self.finish_if_complete(done);
        }
    }

    fn start_message(&mut self, length: usize, done: &mut Vec<Message>) {
        self.prefix.clear();
        self.length = Some(length);
        self.consumed = 0;
        self.message.clear();
        self.finish_if_complete(done);
    }

    fn finish_if_complete(&mut self, done: &mut Vec<Message>) {
        if let Some(length) = self.length
            && self.consumed == length
        {
            let bytes = std::mem::take(&mut self.message);
            done.push(Message { cut: bytes.len() < length, bytes });
            self.length = None;
            self.consumed = 0;
        }
    }

    fn reset_framing(&mut self) {
        self.length = None;
        self.prefix.clear();
        self.message.clear();
        self.consumed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.extend_from_slice(&u16::try_from(m.len()).unwrap().to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    /// Messages captured whole.
    fn whole(messages: &[&[u8]]) -> Segment {
        Segment::Messages(messages.iter().map(|m| Message { bytes: m.to_vec(), cut: false }).collect())
    }

    fn len(bytes: &[u8]) -> u32 {
        u32::try_from(bytes.len()).unwrap()
    }

    #[test]
    fn two_messages_in_one_segment_and_one_split_across_three() {
        let mut stream = TcpStream::default();
        let data = framed(&[b"first", b"second", b"third message"]);
        let (a, rest) = data.split_at(16); // both first messages and 1 byte of the third prefix
        assert_eq!(stream.push(1000, a, len(a)), whole(&[b"first", b"second"]));
        let (b, c) = rest.split_at(5);
        assert_eq!(stream.push(1016, b, len(b)), whole(&[]));
        assert_eq!(stream.push(1021, c, len(c)), whole(&[b"third message"]));
    }

    #[test]
    fn retransmission_is_skipped_and_overlap_trimmed() {
        let mut stream = TcpStream::default();
        let data = framed(&[b"abcdef"]);
        assert_eq!(stream.push(1, &data[..4], 4), whole(&[]));
        assert_eq!(stream.push(1, &data[..4], 4), whole(&[]));
        // Overlaps the first two bytes already seen.
        assert_eq!(stream.push(3, &data[2..], len(&data[2..])), whole(&[b"abcdef"]));
    }

    #[test]
    fn a_syn_starts_the_stream_and_its_retransmission_does_not() {
        let data = framed(&[b"abcdef"]);
        let mut stream = TcpStream::default();
        stream.syn(99);
        assert_eq!(stream.push(102, &data[2..], len(&data[2..])), Segment::Gap, "bytes 100..102 unseen");
        let mut stream = TcpStream::default();
        stream.syn(99);
        assert_eq!(stream.push(100, &data[..4], 4), whole(&[]));
        stream.syn(99); // the handshake again: the stream goes on
        assert_eq!(stream.push(104, &data[4..], len(&data[4..])), whole(&[b"abcdef"]));
        stream.syn(7_000_000); // a new connection on the same ends
        assert_eq!(stream.push(7_000_001, &data, len(&data)), whole(&[b"abcdef"]));
    }

    #[test]
    fn a_gap_resets_the_stream() {
        let mut stream = TcpStream::default();
        let data = framed(&[b"abcdef", b"gh"]);
        assert_eq!(stream.push(0, &data[..3], 3), whole(&[]));
        assert_eq!(stream.push(5, &data[5..], len(&data[5..])), Segment::Gap);
    }

    #[test]
    fn cut_payload_gives_a_short_message_and_keeps_framing() {
        let mut stream = TcpStream::default();
        let data = framed(&[b"0123456789", b"next"]);
        // The probe copied 6 of the first segment's 12 bytes.
        assert_eq!(
            stream.push(0, &data[..6], 12),
            Segment::Messages(vec![Message { bytes: b"0123".to_vec(), cut: true }])
        );
        assert_eq!(stream.push(12, &data[12..], len(&data[12..])), whole(&[b"next"]));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut stream = TcpStream::default();
        let data = framed(&[b"wrap"]);
        let start = u32::MAX - 1;
        assert_eq!(stream.push(start, &data[..3], 3), whole(&[]));
        assert_eq!(stream.push(start.wrapping_add(3), &data[3..], 3), whole(&[b"wrap"]));
    }
}
