//! The events loadgen sends: every one tagged with a unique id `<run-id>-<sequence>`, so that each can be
//! found again in Kafka.

use std::io::Write as _;

use crate::common::Format;

/// Builds request bodies for one run.
#[derive(Clone)]
pub struct Payloads {
    pub run_id: String,
    pub batch: usize,
    pub format: Format,
    pub gzip: bool,
    pad: String,
}

impl Payloads {
    pub fn new(run_id: &str, batch: usize, format: Format, gzip: bool, payload_bytes: usize) -> Self {
        // Filler cycling through letters: some redundancy for lz4/gzip, like real JSON.
        let pad: String = (0..payload_bytes).map(|i| (b'a' + (i % 23) as u8) as char).collect();
        Payloads { run_id: run_id.to_string(), batch: batch.max(1), format, gzip, pad }
    }

    pub fn event_id(&self, seq: u64) -> String {
        format!("{}-{}", self.run_id, seq)
    }

    /// One event as the client sends it.
    pub fn write_event(&self, out: &mut Vec<u8>, seq: u64) {
        let _ = write!(
            out,
            r#"{{"id":"{}-{}","type":"loadgen.event","payload":{{"seq":{},"pad":"{}"}}}}"#,
            self.run_id, seq, seq, self.pad
        );
    }

    /// The normalized envelope the service would write to Kafka for the same event (raw-kafka target).
    pub fn write_record_value(&self, out: &mut Vec<u8>, seq: u64, timestamp: &str) {
        let _ = write!(
            out,
            r#"{{"id":"{}-{}","type":"loadgen.event","timestamp":"{}","payload":{{"seq":{},"pad":"{}"}}}}"#,
            self.run_id, seq, timestamp, seq, self.pad
        );
    }

    /// The body of request `index` (events `index*batch .. index*batch+batch`), possibly gzipped.
    #[cfg(test)]
    pub fn body(&self, index: u64) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_body(&mut out, index);
        out
    }

    /// The body of request `index` into `out` (emptied first), which a connection reuses request after request.
    pub fn write_body(&self, out: &mut Vec<u8>, index: u64) {
        let first = index * self.batch as u64;
        out.clear();
        out.reserve(self.batch * (self.pad.len() + 96) + 2);
        match (self.format, self.batch) {
            (Format::Json, 1) => self.write_event(out, first),
            (Format::Json, _) => {
                out.push(b'[');
                for j in 0..self.batch as u64 {
                    if j > 0 {
                        out.push(b',');
                    }
                    self.write_event(out, first + j);
                }
                out.push(b']');
            }
            (Format::Ndjson, _) => {
                for j in 0..self.batch as u64 {
                    self.write_event(out, first + j);
                    out.push(b'\n');
                }
            }
        }
        if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(out.len() / 3), flate2::Compression::fast());
            enc.write_all(out).expect("writing to a Vec cannot fail");
            *out = enc.finish().expect("writing to a Vec cannot fail");
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self.format {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    /// The sequence number of one of this run's ids, else None.
    pub fn parse_seq(&self, id: &str) -> Option<u64> {
        parse_seq(&self.run_id, id)
    }
}

pub fn parse_seq(run_id: &str, id: &str) -> Option<u64> {
    id.strip_prefix(run_id)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_and_tagged() {
        let p = Payloads::new("lgabc", 1, Format::Json, false, 10);
        let v: serde_json::Value = serde_json::from_slice(&p.body(7)).unwrap();
        assert_eq!(v["id"], "lgabc-7");
        assert_eq!(v["payload"]["pad"].as_str().unwrap().len(), 10);

        let p = Payloads::new("lgabc", 3, Format::Json, false, 5);
        let v: serde_json::Value = serde_json::from_slice(&p.body(2)).unwrap();
        let ids: Vec<_> = v.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids, ["lgabc-6", "lgabc-7", "lgabc-8"]);

        let p = Payloads::new("lgabc", 2, Format::Ndjson, false, 5);
        let body = String::from_utf8(p.body(0)).unwrap();
        let lines: Vec<_> = body.lines().collect();
        assert_eq!(lines.len(), 2);
        for (i, l) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(p.parse_seq(v["id"].as_str().unwrap()), Some(i as u64));
        }
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let p = Payloads::new("lgabc", 4, Format::Ndjson, true, 50);
        let gz = p.body(1);
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut plain).unwrap();
        assert_eq!(plain.lines().count(), 4);
        assert!(gz.len() < plain.len());
    }

    #[test]
    fn record_value_is_json() {
        let p = Payloads::new("lgabc", 1, Format::Json, false, 8);
        let mut out = Vec::new();
        p.write_record_value(&mut out, 42, "2024-01-01T00:00:00Z");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "lgabc-42");
        assert_eq!(parse_seq("lgabc", "lgabc-42"), Some(42));
        assert_eq!(parse_seq("lgabc", "lgabcd-42"), None);
        assert_eq!(parse_seq("lgabc", "other"), None);
    }
}
