//! JSON text scanned byte by byte, without serde: the nesting check every body goes through, and a fast
//! path that finds the members of an ordinary envelope in one pass.
//!
//! The fast path gives up (`None`) on anything it does not expect (escapes, a member of the wrong type, an
//! unknown or repeated name, bad syntax), and serde then parses the text and words the error. It accepts
//! only what serde accepts, with the same members: the properties below check it against serde.

use std::borrow::Cow;

use super::envelope::{EventError, EventHeaders, HeadersMember, Members};

/// Rejects a JSON value whose nesting exceeds `max_depth` before it reaches serde (whose own recursion
/// limit is 128 and whose error would not say which limit was hit). Strings are skipped correctly.
pub fn check_depth(json: &[u8], max_depth: usize) -> Result<(), EventError> {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&b) = json.get(at) {
        at += 1;
        match b {
            b'"' => at += string_len(&json[at..]).unwrap_or(json.len() - at),
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(EventError {
                        code: "nesting_too_deep",
                        field: None,
                        message: format!("JSON nesting exceeds the limit of {max_depth} levels"),
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The length of the rest of a string after its opening quote, up to and including its closing quote;
/// `None` when it is unterminated.
fn string_len(rest: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        at += until_string_special(rest.get(at..)?);
        match rest.get(at)? {
            b'"' => return Some(at + 1),
            // A backslash and the byte it escapes, whatever that is.
            b'\\' => at += 2,
            // A control character: not valid in a string, but not the end of one either.
            _ => at += 1,
        }
    }
}

/// The index of the first `"`, `\` or control character (below 0x20) in `bytes` (its length when there is
/// none), eight bytes at a time. Most of a body is string content: stepping through it a byte at a time
/// made the nesting check alone cost a tenth of the whole parse.
fn until_string_special(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte below `bound` (and possibly of bytes after such a byte, never before it:
    // the borrow only runs upwards, so the lowest bit set is exact).
    let below = |word: u64, bound: u8| word.wrapping_sub(ONES * u64::from(bound)) & !word & HIGHS;
    let equal = |word: u64, byte: u8| below(word ^ (ONES * u64::from(byte)), 1);
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        let found = equal(word, b'"') | equal(word, b'\\') | below(word, 0x20);
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let tail = chunks.remainder();
    at + tail.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(tail.len())
}

/// Whether `s` can be written between quotes as a JSON string as it is: no `"`, `\` or control character.
pub(crate) fn is_plain(s: &str) -> bool {
    until_string_special(s.as_bytes()) == s.len()
}

/// The members of `json` when it is an ordinary envelope: an object of the known members, each at most
/// once, `id`, `type`, `timestamp` and `key` strings and `headers` an object of strings, all without escapes.
/// `None` for anything else. With the members, how deep the text nests, as `check_depth` counts it.
pub(crate) fn envelope(json: &str) -> Option<(Members<'_>, usize)> {
    let mut text = Cursor { text: json, at: 0, nesting: 1 };
    let mut m = Members::default();
    text.eat(b'{')?;
    if text.peek()? != b'}' {
        loop {
            let name = text.plain_string()?;
            text.eat(b':')?;
            match name {
                "id" if m.id.is_none() => m.id = Some(text.string_member()?),
                "type" if m.event_type.is_none() => m.event_type = Some(text.string_member()?),
                "timestamp" if m.timestamp.is_none() => m.timestamp = Some(text.string_member()?),
                "key" if m.key.is_none() => m.key = Some(text.string_member()?),
                "headers" if m.headers.is_none() => m.headers = Some(HeadersMember::Parsed(text.headers()?)),
                "payload" if m.payload.is_none() => m.payload = Some(text.value()?),
                _ => return None,
            }
            if text.peek()? != b',' {
                break;
            }
            text.at += 1;
        }
    }
    text.eat(b'}')?;
    text.skip_whitespace();
    (text.at == json.len()).then_some((m, text.nesting))
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
    /// The deepest nesting met so far, the envelope's own object being the first level.
    nesting: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.text.as_bytes()[self.at..]
    }

    /// JSON whitespace, as serde skips it.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.rest().first() {
            self.at += 1;
        }
    }

    /// The next byte after whitespace.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.rest().first().copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string without escapes or control characters (its value is then its text): that text.
    fn plain_string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = until_string_special(self.rest());
        (self.rest().get(len) == Some(&b'"')).then(|| {
            self.at += len + 1;
            &self.text[start..start + len]
        })
    }

    /// A member that must be a string, when it is a plain one.
    fn string_member(&mut self) -> Option<Option<Cow<'a, str>>> {
        self.plain_string().map(|s| Some(Cow::Borrowed(s)))
    }

    /// An object of plain strings.
    fn headers(&mut self) -> Option<EventHeaders> {
        self.eat(b'{')?;
        self.nesting = self.nesting.max(2);
        let mut headers = Vec::new();
        if self.peek()? != b'}' {
            loop {
                let name = self.plain_string()?;
                self.eat(b':')?;
                headers.push((name.to_owned(), self.plain_string()?.to_owned()));
                if self.peek()? != b',' {
                    break;
                }
                self.at += 1;
            }
        }
        self.eat(b'}')?;
        // A repeated name keeps its last value, as serde's map does.
        Some(headers.into_iter().collect())
    }

    /// Any JSON value, when it is valid and nests at most 64 deep: its text. The payload is the one member
    /// whose grammar is all of JSON; serde took more time over it than over all the rest of the event.
    fn value(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        let start = self.at;
        let (len, nesting) = value_len(self.rest())?;
        self.at += len;
        self.nesting = self.nesting.max(1 + nesting);
        Some(&self.text[start..self.at])
    }
}

/// The length of the valid JSON value at the start of `text` and how deep it nests (0 for a scalar), or
/// `None`: serde's grammar (whitespace, literals, numbers, escapes, no trailing commas), but no more than
/// 64 open levels, so that one machine word can tell which kind of bracket each level has to close.
fn value_len(text: &[u8]) -> Option<(usize, usize)> {
    const MAX_NESTING: usize = 64;
    // Bit i is set when the i-th innermost open bracket is an object's.
    let mut objects = 0u64;
    let mut depth = 0;
    let mut deepest = 0;
    let mut at = 0;
    loop {
        // A value starts at `at`.
        at += whitespace_len(&text[at..]);
        let first = *text.get(at)?;
        match first {
            b'"' => at += 1 + valid_string_len(&text[at + 1..])?,
            b'-' | b'0'..=b'9' => at += number_len(&text[at..])?,
            b't' => at += literal_len(&text[at..], b"true")?,
            b'f' => at += literal_len(&text[at..], b"false")?,
            b'n' => at += literal_len(&text[at..], b"null")?,
            b'[' | b'{' => {
                let close = if first == b'[' { b']' } else { b'}' };
                at += 1;
                at += whitespace_len(&text[at..]);
                deepest = deepest.max(depth + 1);
                if text.get(at) == Some(&close) {
                    // Empty: a whole value already.
                    at += 1;
                } else if depth == MAX_NESTING {
                    return None;
                } else {
                    depth += 1;
                    objects = objects << 1 | u64::from(first == b'{');
                    if first == b'{' {
                        at += key_len(&text[at..])?;
                    }
                    continue;
                }
            }
            _ => return None,
        }
        // A value ended at `at`: the next one of its array or object, or the end of these.
        loop {
            if depth == 0 {
                return Some((at, deepest));
            }
            at += whitespace_len(&text[at..]);
            let in_object = objects & 1 == 1;
            match *text.get(at)? {
                b',' => {
                    at += 1;
                    if in_object {
                        at += key_len(&text[at..])?;
                    }
                    break;
                }
                b'}' if in_object => {}
                b']' if !in_object => {}
                _ => return None,
            }
            at += 1;
            objects >>= 1;
            depth -= 1;
        }
    }
}

fn whitespace_len(text: &[u8]) -> usize {
    text.iter().take_while(|b| matches!(b, b' ' | b'\n' | b'\t' | b'\r')).count()
}

/// The length of an object's `"key" :` at the start of `text` (whitespace included), when it is valid.
fn key_len(text: &[u8]) -> Option<usize> {
    let mut at = whitespace_len(text);
    if text.get(at) != Some(&b'"') {
        return None;
    }
    at += 1 + valid_string_len(&text[at + 1..])?;
    at += whitespace_len(&text[at..]);
    (text.get(at) == Some(&b':')).then_some(at + 1)
}

/// The length of the rest of a valid string after its opening quote, through its closing quote. Escapes
/// are checked as serde checks them when it skips a string: `\u` takes any four hex digits.
fn valid_string_len(rest: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        at += until_string_special(rest.get(at..)?);
        match *rest.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' => {
                at += match *rest.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' if rest.get(at + 2..at + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                    _ => return None,
                }
            }
            // A control character.
            _ => return None,
        }
    }
}

/// The length of the number at the start of `text`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number_len(text: &[u8]) -> Option<usize> {
    let digits = |from: usize| text.get(from..).map_or(0, |t| t.iter().take_while(|b| b.is_ascii_digit()).count());
    let mut at = usize::from(text.first() == Some(&b'-'));
    at += match text.get(at)? {
        b'0' => 1,
        b'1'..=b'9' => digits(at),
        _ => return None,
    };
    if text.get(at) == Some(&b'.') {
        at += 1 + Some(digits(at + 1)).filter(|&n| n > 0)?;
    }
    if let Some(b'e' | b'E') = text.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = text.get(at) {
            at += 1;
        }
        at += Some(digits(at)).filter(|&n| n > 0)?;
    }
    Some(at)
}

fn literal_len(text: &[u8], literal: &[u8]) -> Option<usize> {
    text.starts_with(literal).then_some(literal.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ingest::envelope::Wire;

    #[test]
    fn finds_the_first_special_byte_at_any_position() {
        // Bytes next to `"` (0x22), `\` (0x5c) and 0x20, or equal to them but for the high bit, must not
        // match.
        let fillers = [b'a', 0xa2, 0xdc, 0x21, 0x23, 0x5b, 0x5d, 0x20, 0x7f, 0x9f, 0xa0, 0xff];
        for len in 0..24 {
            for filler in fillers {
                let mut bytes = vec![filler; len];
                assert_eq!(until_string_special(&bytes), len);
                for at in 0..len {
                    for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                        bytes[at] = stop;
                        bytes[(at + 1..len).next().unwrap_or(at)] = 0x01;
                        assert_eq!(until_string_special(&bytes), at, "{bytes:?}");
                        bytes.fill(filler);
                    }
                }
            }
        }
    }

    #[test]
    fn depth_check_skips_strings() {
        assert!(check_depth(br#"{"a":"[[[[[[[[[["}"#, 2).is_ok());
        assert!(check_depth(b"[[[1]]]", 3).is_ok());
        assert_eq!(check_depth(b"[[[[1]]]]", 3).unwrap_err().code, "nesting_too_deep");
        // Escaped quotes and backslashes do not end a string; an escaped backslash does not escape the quote.
        assert!(check_depth(br#"{"a":"\"[[[[[[","b":"\\\"[[[["}"#, 1).is_ok());
        assert!(check_depth(br#"{"a":"\\",[[[1]]]}"#, 4).is_ok());
        assert!(check_depth(br#"{"a":"\\",[[[1]]]}"#, 3).is_err());
        // Nor do control characters, invalid as they are.
        assert!(check_depth(b"{\"a\":\"\n\x01[[[[\"}", 1).is_ok());
        // Unterminated strings and a trailing backslash end the scan without a panic.
        for text in [&br#"["[[[["#[..], br#"["\"#, br#"["\\"#, b"\\"] {
            assert!(check_depth(text, 1).is_ok());
        }
        // Multi-byte text inside and outside strings is passed over.
        assert!(check_depth(r#"{"é[":["ü"],"😀":{}}"#.as_bytes(), 2).is_ok());
        assert!(check_depth("[é[ü[".as_bytes(), 2).is_err());
    }

    /// What the members are, comparable: strings as `Option<Option<String>>`, headers (`None` when they
    /// are not an object of strings), the payload's text.
    type Comparable = ([Option<Option<String>>; 4], Option<Option<EventHeaders>>, Option<String>);

    fn comparable(m: Members<'_>) -> Comparable {
        let text = |v: Option<Option<Cow<'_, str>>>| v.map(|v| v.map(Cow::into_owned));
        let headers = m.headers.map(|h| match h {
            HeadersMember::Parsed(headers) => Some(headers),
            HeadersMember::Json(raw) => serde_json::from_str::<std::collections::BTreeMap<String, String>>(raw.get())
                .ok()
                .map(|map| map.into_iter().collect()),
        });
        ([text(m.id), text(m.event_type), text(m.timestamp), text(m.key)], headers, m.payload.map(str::to_owned))
    }

    fn by_serde(json: &str) -> Option<Comparable> {
        serde_json::from_str::<Wire<'_>>(json).ok().map(|w| comparable(w.into()))
    }

    #[test]
    fn ordinary_envelopes_take_the_fast_path() {
        for json in [
            r#"{"type":"t","payload":1}"#,
            " {\r\n\t\"id\" : \"é-1\" , \"type\":\"a b\",\"timestamp\":\"2024-01-01T00:00:00Z\",\"key\":\"k\",\
             \"headers\":{ \"b\":\"2\",\"a\":\"1\" ,\"b\":\"3\"},\"payload\": {\"a\":[1,-2.5e3,true,null,\"\\u00e9\"]} } ",
            r#"{"payload":"x","headers":{}}"#,
            r#"{"payload":[]}"#,
            r#"{}"#,
        ] {
            let fast = envelope(json).map(|(m, _)| comparable(m));
            assert!(fast.is_some(), "{json}");
            assert_eq!(fast, by_serde(json), "{json}");
        }
    }

    #[test]
    fn anything_else_is_left_to_serde() {
        for json in [
            r#"{"type":"t","payload":1,}"#,
            r#"{"type":"t","payload":01}"#,
            r#"{"type":"t","payload":1.}"#,
            r#"{"type":"t","payload":[1,]}"#,
            r#"{"type":"t","payload":{"a":1,}}"#,
            r#"{"type":"t","payload":{"a" 1}}"#,
            r#"{"type":"t","payload":[}"#,
            r#"{"type":"t","payload":tru}"#,
            r#"{"type":"t","payload":"\x"}"#,
            "{\"type\":\"t\",\"payload\":\"\x01\"}",
            r#"{"type":"t","payload":1}x"#,
            r#"{"type":"t","payload":1"#,
            r#"{"type":"t","payload":}"#,
            r#"{"type":"t","payload":1 2}"#,
            r#"{"type":"t\n","payload":1}"#,
            r#"{"type":"t","type":"t","payload":1}"#,
            r#"{"typ\u0065":"t","payload":1}"#,
            r#"{"type":5,"payload":1}"#,
            r#"{"type":"t","headers":{"a":1},"payload":1}"#,
            r#"{"type":"t","extra":1,"payload":1}"#,
            r#"["t",null,null,null,null,1]"#,
            "\u{feff}{\"type\":\"t\",\"payload\":1}",
            "",
        ] {
            assert!(envelope(json).is_none(), "{json}");
        }
    }

    #[test]
    fn values_follow_serdes_grammar() {
        let valid = [
            "0",
            "-0",
            "12",
            "-1.5",
            "1e5",
            "1E+5",
            "2.5e-3",
            "true",
            "false",
            "null",
            r#""""#,
            r#""\u00E9\n\/""#,
            "[]",
            "{}",
            "[ 1 , [ ] , { } ]",
            r#"{"a" : {"b":[null]} }"#,
        ];
        for text in valid {
            assert_eq!(value_len(text.as_bytes()).map(|(len, _)| len), Some(text.len()), "{text}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(), "{text}");
        }
        let invalid = [
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "[1,]",
            "[,1]",
            "{,}",
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            r#"{1:2}"#,
            "[1 2]",
            r#""\x""#,
            r#""\u12G4""#,
            "\"\u{1}\"",
            r#""abc"#,
            "[",
            "{",
            "]",
            "",
        ];
        for text in invalid {
            assert_ne!(value_len(text.as_bytes()).map(|(len, _)| len), Some(text.len()), "{text}");
        }
        assert_eq!(value_len(br#"[{}, [[]], {"a": [1]}]"#), Some((22, 3)));
        let deep = "[".repeat(64) + "1" + &"]".repeat(64);
        assert_eq!(value_len(deep.as_bytes()), Some((129, 64)));
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert_eq!(value_len(deep.as_bytes()), Some((130, 65)), "the innermost, empty, needs no bit");
        assert_eq!(value_len(format!("[{deep}]").as_bytes()), None, "deeper than a word: left to serde");
    }

    /// A valid envelope, as serde writes it.
    fn envelope_text() -> impl Strategy<Value = String> {
        // Mostly plain strings, which the fast path takes; some with what it leaves to serde.
        let text = || prop_oneof![3 => "[a-zé ]{0,6}", 1 => "[a-z\"\\\\\u{1}]{0,3}"];
        let scalar = prop_oneof![
            Just(serde_json::json!(null)),
            any::<i32>().prop_map(serde_json::Value::from),
            any::<f32>().prop_map(serde_json::Value::from),
            text().prop_map(serde_json::Value::from),
        ];
        let payload = scalar.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z\"]{0,3}", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        (
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(prop::collection::btree_map(text(), text(), 0..3)),
            prop::option::of(payload),
        )
            .prop_map(|(id, event_type, key, headers, payload)| {
                let mut m = serde_json::Map::new();
                let members =
                    [("id", id.map(Into::into)), ("type", event_type.map(Into::into)), ("key", key.map(Into::into))];
                for (name, value) in members
                    .into_iter()
                    .chain([("headers", headers.map(|h| serde_json::to_value(h).unwrap())), ("payload", payload)])
                {
                    if let Some(value) = value {
                        m.insert(name.to_string(), value);
                    }
                }
                serde_json::Value::Object(m).to_string()
            })
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let scalar = prop_oneof![
            Just(serde_json::json!(null)),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\\u{1}-\u{1f}é😀]{0,6}".prop_map(serde_json::Value::from),
        ];
        scalar.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z\"\\\\]{0,3}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Applies `edits` (position, insert / delete / replace, byte) to `text`.
    fn edited(text: String, edits: Vec<(prop::sample::Index, u8, u8)>) -> Vec<u8> {
        let mut bytes = text.into_bytes();
        for (at, op, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => {}
            }
        }
        bytes
    }

    fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
        let bytes = &b"{}[]\",:\\ 0123456789-+.eEntrufalsxu\n\x01"[..];
        prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(bytes)), 0..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any value serde writes is accepted whole; of texts a few edits away, what is accepted serde
        /// accepts too.
        #[test]
        fn values_agree_with_serde(value in json(), pretty in any::<bool>(), edits in edits()) {
            let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
            let (len, nesting) = value_len(text.as_bytes()).unwrap();
            prop_assert_eq!(len, text.len(), "{}", text);
            prop_assert!(check_depth(text.as_bytes(), nesting).is_ok() && (nesting == 0 || check_depth(text.as_bytes(), nesting - 1).is_err()), "{}", text);
            let bytes = edited(text, edits);
            if let (Some((len, _)), Ok(text)) = (value_len(&bytes), std::str::from_utf8(&bytes)) {
                prop_assert!(serde_json::from_str::<serde::de::IgnoredAny>(&text[..len]).is_ok(), "{}", text);
            }
        }

        /// Valid envelopes and texts one to three edits away from one: whatever the fast path accepts,
        /// serde accepts too, with the same members.
        #[test]
        fn the_fast_path_agrees_with_serde(text in envelope_text(), edits in edits()) {
            let Ok(json) = String::from_utf8(edited(text, edits)) else { return Ok(()) };
            if let Some((fast, nesting)) = envelope(&json) {
                prop_assert_eq!(Some(comparable(fast)), by_serde(&json), "{}", json);
                prop_assert!(check_depth(json.as_bytes(), nesting).is_ok(), "{}", json);
                prop_assert!(check_depth(json.as_bytes(), nesting - 1).is_err(), "{}", json);
            }
        }
    }
}
