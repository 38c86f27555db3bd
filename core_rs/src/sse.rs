//! Server-Sent Events, read incrementally as `engine/sse.py` reads them:
//! bytes in as they arrive, whole events out, each with its raw bytes so it
//! can be forwarded untouched.

/// One event: its data lines joined, and its bytes as they are forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    pub data: Vec<u8>,
    pub raw: Vec<u8>,
}

/// An event grew past the reader's limit without ending.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a stream event over {} bytes", self.0)
    }
}

pub struct Events {
    buffer: Vec<u8>,
    /// How much of `buffer` was searched for an event's end already: an
    /// event that arrives in many reads is not searched again from its start.
    searched: usize,
    max_event: usize,
}

impl Events {
    pub fn new(max_event: usize) -> Events {
        Events {
            buffer: Vec::new(),
            searched: 0,
            max_event,
        }
    }

    /// The events `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>, TooLarge> {
        // CRLF line ends as LF, within what one read brought (as sse.py does).
        if chunk.contains(&b'\r') {
            let mut i = 0;
            while i < chunk.len() {
                if chunk[i..].starts_with(b"\r\n") {
                    self.buffer.push(b'\n');
                    i += 2;
                } else {
                    self.buffer.push(chunk[i]);
                    i += 1;
                }
            }
        } else {
            self.buffer.extend_from_slice(chunk);
        }
        let mut events = Vec::new();
        let (mut start, mut from) = (0, self.searched.saturating_sub(1));
        while let Some(end) = find(&self.buffer[from..], b"\n\n") {
            let end = from + end;
            if let Some(event) = event(&self.buffer[start..end]) {
                events.push(event);
            }
            (start, from) = (end + 2, end + 2);
        }
        self.buffer.drain(..start);
        self.searched = self.buffer.len();
        if self.buffer.len() > self.max_event {
            return Err(TooLarge(self.max_event));
        }
        Ok(events)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The event one block of lines makes, if it has data or a name.
fn event(raw: &[u8]) -> Option<Event> {
    let whole = |data: Vec<u8>| {
        let mut bytes = raw.to_vec();
        bytes.extend_from_slice(b"\n\n");
        Event { data, raw: bytes }
    };
    if let Some(data) = raw.strip_prefix(b"data: ") {
        if !raw.contains(&b'\n') {
            return Some(whole(data.to_vec())); // the usual: one data line
        }
    }
    let (mut data, mut lines, mut named) = (Vec::new(), 0, false);
    for line in raw.split(|&b| b == b'\n') {
        if let Some(value) = line.strip_prefix(b"data:") {
            if lines > 0 {
                data.push(b'\n');
            }
            data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
            lines += 1;
        } else if let Some(name) = line.strip_prefix(b"event:") {
            // Python's `bytes.strip()` whitespace.
            named = !name.iter().all(|b| b" \t\n\r\x0b\x0c".contains(b));
        }
    }
    (lines > 0 || named).then(|| whole(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datas(events: Vec<Event>) -> Vec<String> {
        events
            .into_iter()
            .map(|e| String::from_utf8(e.data).unwrap())
            .collect()
    }

    #[test]
    fn events_split_across_reads_come_out_whole_with_their_bytes() {
        let mut events = Events::new(1024);
        assert_eq!(events.feed(b"data: {\"a\"").unwrap(), vec![]);
        let out = events.feed(b":1}\n\ndata: [DONE]\n\nda").unwrap();
        assert_eq!(out[0].raw, b"data: {\"a\":1}\n\n");
        assert_eq!(datas(out), ["{\"a\":1}", "[DONE]"]);
        assert_eq!(datas(events.feed(b"ta: x\n\n").unwrap()), ["x"]);
    }

    #[test]
    fn crlf_lines_multi_line_data_names_and_comments_read_as_sse_py_reads_them() {
        let mut events = Events::new(1024);
        let out = events
            .feed(b"event: ping\r\ndata:a\r\ndata: b\r\n\r\n: comment\n\nevent: \n\nid: 1\n\n")
            .unwrap();
        assert_eq!(out.len(), 1); // a comment, an empty name, an id alone: no event
        assert_eq!(out[0].data, b"a\nb");
        assert_eq!(out[0].raw, b"event: ping\ndata:a\ndata: b\n\n");
        assert_eq!(datas(events.feed(b"event: x\n\n").unwrap()), [""]);
    }

    #[test]
    fn an_event_whose_end_is_split_over_reads_or_that_comes_in_many_is_found_once_whole() {
        let mut events = Events::new(1 << 20);
        assert_eq!(events.feed(b"data: x\n").unwrap(), vec![]);
        assert_eq!(datas(events.feed(b"\ndata: y\n").unwrap()), ["x"]);
        assert_eq!(datas(events.feed(b"\n").unwrap()), ["y"]);
        // 4,000 reads of a 400 KB event: each read searched once.
        events.feed(b"data: ").unwrap();
        for _ in 0..4000 {
            assert_eq!(events.feed(&[b'a'; 100]).unwrap(), vec![]);
        }
        assert_eq!(events.feed(b"\n\n").unwrap()[0].data.len(), 400_000);
    }

    #[test]
    fn an_event_past_the_limit_is_refused() {
        let mut events = Events::new(8);
        assert_eq!(events.feed(b"data: 12").unwrap(), vec![]);
        assert_eq!(events.feed(b"345").unwrap_err(), TooLarge(8));
    }
}
