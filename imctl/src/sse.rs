//! A server-sent events decoder: bytes in, in chunks cut anywhere, events out.
//!
//! It follows the event-stream rules of the HTML standard that imd's stream uses:
//! lines end in LF, CRLF or CR; `:` starts a comment (imd's keep-alives); `event:`
//! names the event; `data:` lines are joined with LF; a blank line dispatches; an event
//! with no data is dropped. It owns framing only, never what the data means, and it
//! does no I/O, so that it can be tested on any cut of the bytes.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:`, or `message` when the event named none.
    pub event: String,
    /// The `data:` lines, joined with LF.
    pub data: String,
    /// The last `id:` seen, if any.
    pub id: Option<String>,
}

/// Most bytes of one unfinished line held before the stream is refused: a server that
/// never ends a line must not grow memory without bound.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// The stream is not an event stream imctl can follow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A line grew past [`MAX_LINE`].
    #[error("an event-stream line is longer than {MAX_LINE} bytes")]
    LineTooLong,
}

/// The decoder's state between chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the unfinished line (kept as bytes: a chunk may cut a UTF-8 character).
    line: Vec<u8>,
    /// The previous chunk ended in CR, so an LF first in this one ends nothing.
    after_cr: bool,
    /// Whether the first line has begun (a leading BOM is dropped).
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
}

impl SseParser {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk; returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        for &b in chunk {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&line) {
                        out.push(ev);
                    }
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        let mut line = String::from_utf8_lossy(line).into_owned();
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_owned();
            }
        }
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            // `retry` and unknown fields: imctl reconnects on its own schedule.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: None,
        }
    }

    fn all(input: &[u8]) -> Vec<SseEvent> {
        SseParser::new().push(input).unwrap()
    }

    #[test]
    fn decodes_the_event_stream_grammar() {
        for (input, want) in [
            // imd's shape: a named event with JSON data.
            (
                "event: msg\ndata: {\"seq\":1}\n\n",
                vec![ev("msg", "{\"seq\":1}")],
            ),
            // Keep-alive comments and a blank line without data dispatch nothing.
            (":\n\n: ping\n\n", vec![]),
            // No event name: "message". No space after the colon: kept as is.
            ("data:x\n\n", vec![ev("message", "x")]),
            // Only one leading space is dropped.
            ("data:  two\n\n", vec![ev("message", " two")]),
            // Several data lines join with LF; an empty `data` line adds an empty line.
            ("data: a\ndata\ndata: b\n\n", vec![ev("message", "a\n\nb")]),
            // CRLF and bare CR end lines too.
            (
                "event: msg\r\ndata: 1\r\n\r\nevent: msg\rdata: 2\r\r",
                vec![ev("msg", "1"), ev("msg", "2")],
            ),
            // An event with a name but no data is dropped, and the name does not leak.
            ("event: msg\n\ndata: y\n\n", vec![ev("message", "y")]),
            // Unknown fields and `retry` are ignored.
            ("retry: 10\nfoo: bar\ndata: z\n\n", vec![ev("message", "z")]),
            // A leading BOM is dropped.
            ("\u{feff}data: b\n\n", vec![ev("message", "b")]),
            // An unfinished event is not dispatched.
            ("data: partial\n", vec![]),
        ] {
            assert_eq!(all(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn ids_carry_over_to_later_events() {
        let got = all(b"id: 7\ndata: a\n\ndata: b\n\n");
        assert_eq!(got[0].id.as_deref(), Some("7"));
        assert_eq!(got[1].id.as_deref(), Some("7"));
    }

    #[test]
    fn any_cut_of_the_bytes_gives_the_same_events() {
        let input = "event: msg\r\ndata: {\"t\":\"héllo ✓\"}\r\n\r\n: keep-alive\n\nevent: msg\ndata: 2\n\n";
        let whole = all(input.as_bytes());
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].data, "{\"t\":\"héllo ✓\"}");
        let bytes = input.as_bytes();
        for cut in 0..=bytes.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&bytes[..cut]).unwrap();
            got.extend(p.push(&bytes[cut..]).unwrap());
            assert_eq!(got, whole, "cut at {cut}");
        }
        // Byte by byte.
        let mut p = SseParser::new();
        let got: Vec<_> = bytes
            .iter()
            .flat_map(|b| p.push(std::slice::from_ref(b)).unwrap())
            .collect();
        assert_eq!(got, whole);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = SseParser::new();
        let chunk = vec![b'a'; 1024 * 1024];
        let mut res = Ok(Vec::new());
        for _ in 0..=MAX_LINE / chunk.len() {
            res = p.push(&chunk);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(SseError::LineTooLong));
    }
}
