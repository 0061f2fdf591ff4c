//! Line framing: turning a byte stream into bounded UTF-8 lines and back.
//!
//! Invariants:
//! - a line is the bytes before `\n` (a trailing `\r` is dropped), at most `max_line`
//!   bytes long;
//! - the decoder never holds more than `max_line` bytes of a partial line: an over-long
//!   line is discarded up to its newline and reported once as [`Frame::TooLong`], so a
//!   peer sending megabytes without a newline costs neither memory nor a busy loop;
//! - complete lines inside one read are handed out straight from the caller's buffer;
//!   only a partial tail is copied, so an idle connection owns no buffer at all;
//! - a handler can refuse a frame for now ([`Flow::Pause`]): that frame and every byte
//!   after it are kept, in order, until [`LineDecoder::resume`]; nothing is dropped.
//!   The caller stops reading while paused, so what is held is bounded by one read.

/// What the decoder found in the stream.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Frame<'a> {
    /// A complete line, without its terminator.
    Line(&'a str),
    /// A line longer than the limit (already discarded).
    TooLong,
    /// A line that is not valid UTF-8 (already discarded).
    BadUtf8,
}

/// Incremental line decoder for one connection.
#[derive(Debug, Default)]
pub struct LineDecoder {
    partial: Vec<u8>,
    discarding: bool,
    /// The frame a handler paused on and the raw bytes that came after it, kept to be
    /// offered again first. Boxed: pauses are rare, and an idle connection's decoder
    /// stays small.
    stalled: Option<Box<(Stalled, Vec<u8>)>>,
}

#[derive(Debug)]
enum Stalled {
    Line(Vec<u8>),
    TooLong,
    BadUtf8,
}

/// What the frame handler wants next.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Flow {
    /// Handled; go on.
    Continue,
    /// Handled; drop the rest (the connection is closing).
    Stop,
    /// Not handled: keep this frame and everything after it until `resume`.
    Pause,
}

impl LineDecoder {
    /// Bytes held for an incomplete line.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Releases the partial-line buffer's memory when it is empty.
    pub fn shrink(&mut self) {
        if self.partial.is_empty() {
            self.partial = Vec::new();
        }
    }

    /// Whether a handler paused on a frame that is still waiting.
    pub fn is_paused(&self) -> bool {
        self.stalled.is_some()
    }

    /// Offers the stalled frame again, then the bytes held after it, as `feed` would.
    pub fn resume(&mut self, max_line: usize, mut on_frame: impl FnMut(Frame<'_>) -> Flow) {
        let Some(stalled) = self.stalled.take() else {
            return;
        };
        let flow = match &stalled.0 {
            Stalled::Line(raw) => on_frame(classify(raw, max_line)),
            Stalled::TooLong => on_frame(Frame::TooLong),
            Stalled::BadUtf8 => on_frame(Frame::BadUtf8),
        };
        match flow {
            Flow::Pause => self.stalled = Some(stalled),
            Flow::Stop => {}
            Flow::Continue => {
                let (_, held) = *stalled;
                self.feed(&held, max_line, on_frame);
            }
        }
    }

    /// Keeps `frame` (from `raw`) and `rest` for `resume`.
    fn stall(&mut self, frame: &Frame<'_>, raw: &[u8], rest: &[u8]) {
        let frame = match frame {
            Frame::Line(_) => Stalled::Line(raw.to_vec()),
            Frame::TooLong => Stalled::TooLong,
            Frame::BadUtf8 => Stalled::BadUtf8,
        };
        self.stalled = Some(Box::new((frame, rest.to_vec())));
    }

    /// Feeds `data` and calls `on_frame` for every complete frame, in order.
    ///
    /// Stops early (dropping the rest of `data`) when `on_frame` returns [`Flow::Stop`],
    /// which is what a connection that is closing wants.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        max_line: usize,
        mut on_frame: impl FnMut(Frame<'_>) -> Flow,
    ) {
        if let Some(stalled) = &mut self.stalled {
            stalled.1.extend_from_slice(data);
            return;
        }
        while !data.is_empty() {
            let newline = memchr::memchr(b'\n', data);
            if self.discarding {
                match newline {
                    Some(i) => {
                        self.discarding = false;
                        data = &data[i + 1..];
                        match on_frame(Frame::TooLong) {
                            Flow::Continue => {}
                            Flow::Stop => return,
                            Flow::Pause => return self.stall(&Frame::TooLong, &[], data),
                        }
                        continue;
                    }
                    None => return,
                }
            }
            let Some(i) = newline else {
                if self.partial.len() + data.len() > max_line + 1 {
                    // `+ 1` leaves room for a `\r` that may precede the coming `\n`.
                    self.partial = Vec::new();
                    self.discarding = true;
                } else {
                    self.partial.extend_from_slice(data);
                }
                return;
            };
            let rest = &data[i + 1..];
            let flow = if self.partial.is_empty() {
                let frame = classify(&data[..i], max_line);
                let flow = on_frame(frame);
                if flow == Flow::Pause {
                    return self.stall(&frame, &data[..i], rest);
                }
                flow
            } else {
                self.partial.extend_from_slice(&data[..i]);
                let line = std::mem::take(&mut self.partial);
                let frame = classify(&line, max_line);
                let flow = on_frame(frame);
                if flow == Flow::Pause {
                    return self.stall(&frame, &line, rest);
                }
                // Keep the allocation for the next partial line only if it is small.
                if line.capacity() <= 1024 {
                    self.partial = line;
                    self.partial.clear();
                }
                flow
            };
            data = rest;
            if flow == Flow::Stop {
                return;
            }
        }
    }
}

fn classify(line: &[u8], max_line: usize) -> Frame<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_line {
        return Frame::TooLong;
    }
    match std::str::from_utf8(line) {
        Ok(s) => Frame::Line(s),
        Err(_) => Frame::BadUtf8,
    }
}

/// An output queue: bytes appended at the back, written from the front.
///
/// Writing advances a cursor instead of shifting bytes; the buffer is reset when it
/// empties and compacted only when the written prefix dominates.
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    pos: usize,
    /// The last frame appended by [`OutBuf::push_list`]: where it starts and where it
    /// ends (its prefix is read back from the buffer). It can take more names while it
    /// is the last thing buffered.
    list: Option<(u32, u32)>,
}

/// Longest list line [`OutBuf::push_list`] builds (peers' line limits are 8 KiB).
pub const MAX_LIST_LINE: usize = 4096;

impl OutBuf {
    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// The unwritten bytes.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The vector to append to (callers encode frames straight into it).
    pub fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Marks `n` bytes as written.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.list = None;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.list = None;
        }
    }

    /// Appends `name` to a `<prefix> a b c` list frame: into the last frame if that is
    /// an unwritten list with the same prefix and room left, else as a new frame. This
    /// is how a burst of presence changes becomes one line per recipient, not one per
    /// change, without reordering anything (only the very last frame is ever extended).
    pub fn push_list(&mut self, prefix: &'static [u8], name: &[u8]) {
        let start = match self.list.map(|(start, end)| (start as usize, end as usize)) {
            Some((start, end))
                if end == self.buf.len()
                    && end > self.pos
                    && end - start + name.len() < MAX_LIST_LINE
                    && self.buf[start..].starts_with(prefix)
                    && self.buf.get(start + prefix.len()) == Some(&b' ') =>
            {
                // The last byte is the frame's unwritten newline.
                self.buf.pop();
                self.buf.push(b' ');
                start
            }
            _ => {
                let start = self.buf.len();
                self.buf.extend_from_slice(prefix);
                self.buf.push(b' ');
                start
            }
        };
        self.buf.extend_from_slice(name);
        self.buf.push(b'\n');
        // (A queue past 4 GiB simply stops coalescing.)
        self.list = u32::try_from(start)
            .ok()
            .zip(u32::try_from(self.buf.len()).ok());
    }

    /// Memory held, written or not.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives memory back when nothing is pending and more than `keep` bytes are held.
    pub fn shrink(&mut self, keep: usize) {
        if self.is_empty() && self.buf.capacity() > keep {
            self.buf = Vec::new();
            self.pos = 0;
            self.list = None;
        }
    }

    /// Drops everything pending.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
        self.list = None;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn list_frames_coalesce_only_at_the_unwritten_tail() {
        let mut o = OutBuf::default();
        o.push_list(b"*LOGIN", b"a");
        o.push_list(b"*LOGIN", b"b");
        assert_eq!(o.pending(), b"*LOGIN a b\n");
        o.push_list(b"*LOGOUT", b"a");
        o.push_list(b"*LOGIN", b"c");
        assert_eq!(o.pending(), b"*LOGIN a b\n*LOGOUT a\n*LOGIN c\n");
        // Anything else appended in between starts a new frame.
        o.tail().extend_from_slice(b"*MSG 1 a hi\n");
        o.push_list(b"*LOGIN", b"d");
        assert!(o.pending().ends_with(b"*MSG 1 a hi\n*LOGIN d\n"));
        // Once written, a frame is never touched again.
        let n = o.len();
        o.consume(n);
        o.push_list(b"*LOGIN", b"e");
        assert_eq!(o.pending(), b"*LOGIN e\n");
        // Lines stay under the cap.
        let mut o = OutBuf::default();
        for _ in 0..2000 {
            o.push_list(b"*LOGIN", b"name");
        }
        let text = String::from_utf8(o.pending().to_vec()).unwrap();
        assert!(text.lines().all(|l| l.len() < MAX_LIST_LINE));
        let names: usize = text
            .lines()
            .map(|l| l.strip_prefix("*LOGIN ").unwrap().split(' ').count())
            .sum();
        assert_eq!(names, 2000);
    }

    use super::*;

    fn collect(dec: &mut LineDecoder, chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in chunks {
            dec.feed(chunk, max, |f| {
                out.push(match f {
                    Frame::Line(s) => format!("L:{s}"),
                    Frame::TooLong => "TOO_LONG".to_string(),
                    Frame::BadUtf8 => "BAD_UTF8".to_string(),
                });
                Flow::Continue
            });
        }
        out
    }

    #[test]
    fn a_paused_frame_and_everything_after_it_wait_in_order() {
        let mut dec = LineDecoder::default();
        let mut seen = Vec::new();
        let mut gate = true;
        let label = |f: Frame<'_>| match f {
            Frame::Line(s) => s.to_string(),
            Frame::TooLong => "TOO_LONG".into(),
            Frame::BadUtf8 => "BAD_UTF8".into(),
        };
        let long = format!("{}\n", "x".repeat(20));
        let handler = |f: Frame<'_>, seen: &mut Vec<String>, gate: bool| {
            let l = label(f);
            if gate && l == "b" {
                return Flow::Pause;
            }
            seen.push(l);
            Flow::Continue
        };
        dec.feed(b"a\nb\nc\npar", 10, |f| handler(f, &mut seen, gate));
        assert_eq!(seen, ["a"]);
        assert!(dec.is_paused());
        // More input while paused is held, not handed out.
        dec.feed(b"tial\n", 10, |f| handler(f, &mut seen, gate));
        dec.feed(long.as_bytes(), 10, |f| handler(f, &mut seen, gate));
        dec.feed(b"\xff\nz", 10, |f| handler(f, &mut seen, gate));
        assert_eq!(seen, ["a"]);
        // Still refused: still held.
        dec.resume(10, |f| handler(f, &mut seen, gate));
        assert_eq!(seen, ["a"]);
        gate = false;
        dec.resume(10, |f| handler(f, &mut seen, gate));
        assert_eq!(seen, ["a", "b", "c", "partial", "TOO_LONG", "BAD_UTF8"]);
        assert!(!dec.is_paused());
        dec.feed(b"\n", 10, |f| handler(f, &mut seen, gate));
        assert_eq!(seen.last().map(String::as_str), Some("z"));
    }

    #[test]
    fn coalesced_lines_in_one_read() {
        let mut d = LineDecoder::default();
        let got = collect(&mut d, &[b"a\nbb\r\nccc\n"], 100);
        assert_eq!(got, ["L:a", "L:bb", "L:ccc"]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn split_reads_including_crlf_and_utf8_boundaries() {
        let mut d = LineDecoder::default();
        let text = "héllo wörld\r\nnext\n".as_bytes();
        // Feed one byte at a time: splits land inside multi-byte characters and CRLF.
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        let got = collect(&mut d, &chunks, 100);
        assert_eq!(got, ["L:héllo wörld", "L:next"]);
    }

    #[test]
    fn empty_lines_are_frames() {
        let mut d = LineDecoder::default();
        assert_eq!(collect(&mut d, &[b"\n\r\n"], 10), ["L:", "L:"]);
    }

    #[test]
    fn overlong_line_is_reported_once_and_the_stream_recovers() {
        let mut d = LineDecoder::default();
        let long = vec![b'x'; 50];
        let got = collect(&mut d, &[&long, &long, b"yy\nok\n"], 16);
        assert_eq!(got, ["TOO_LONG", "L:ok"]);
        // Within one chunk as well.
        let mut one = vec![b'z'; 40];
        one.extend_from_slice(b"\nfine\n");
        assert_eq!(collect(&mut d, &[&one], 16), ["TOO_LONG", "L:fine"]);
    }

    #[test]
    fn exact_limit_is_accepted_with_or_without_cr() {
        let mut d = LineDecoder::default();
        let mut line = vec![b'a'; 16];
        line.extend_from_slice(b"\r\n");
        let got = collect(&mut d, &[&line[..10], &line[10..]], 16);
        assert_eq!(got, [format!("L:{}", "a".repeat(16))]);
        let mut over = vec![b'a'; 17];
        over.push(b'\n');
        assert_eq!(collect(&mut d, &[&over], 16), ["TOO_LONG"]);
    }

    #[test]
    fn megabytes_without_newline_hold_bounded_memory() {
        let mut d = LineDecoder::default();
        let chunk = vec![b'q'; 64 * 1024];
        for _ in 0..64 {
            assert!(collect(&mut d, &[&chunk], 8192).is_empty());
            assert!(d.buffered() <= 8193);
        }
        assert_eq!(collect(&mut d, &[b"\nhi\n"], 8192), ["TOO_LONG", "L:hi"]);
    }

    #[test]
    fn invalid_utf8_is_one_bad_frame() {
        let mut d = LineDecoder::default();
        assert_eq!(
            collect(&mut d, &[b"ok\n\xff\xfe\nafter\n"], 100),
            ["L:ok", "BAD_UTF8", "L:after"]
        );
    }

    #[test]
    fn stop_drops_the_rest_of_the_batch() {
        let mut d = LineDecoder::default();
        let mut seen = 0;
        d.feed(b"a\nb\nc\n", 10, |_| {
            seen += 1;
            Flow::Stop
        });
        assert_eq!(seen, 1);
    }

    #[test]
    fn outbuf_cursor_and_compaction() {
        let mut o = OutBuf::default();
        o.tail().extend_from_slice(b"hello world");
        o.consume(6);
        assert_eq!(o.pending(), b"world");
        o.consume(5);
        assert!(o.is_empty());
        assert_eq!(o.len(), 0);
        o.tail().extend_from_slice(&vec![1u8; 200_000]);
        o.consume(150_000);
        assert_eq!(o.len(), 50_000);
        o.shrink(0);
        assert_eq!(o.len(), 50_000, "shrink never drops pending bytes");
        o.consume(50_000);
        o.shrink(0);
        assert_eq!(o.capacity(), 0);
    }
}
