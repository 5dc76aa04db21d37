//! Raw HTTP/1.1 over a `TcpStream`, for what reqwest will not send: broken
//! or conflicting framing, chunked bodies in chosen pieces, oversized
//! bodies whose early answer must still be read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "raw response body is not JSON ({e}): status {} head {:?} body {:?}",
                self.status, self.head, self.body
            )
        })
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&b[..nl]);
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        b = &b[nl + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// Send `head` (request line + headers, must end with an empty line) and
/// then each of `parts`, while a second thread reads the response, so an
/// early answer (e.g. 413) is captured even if the server stops reading.
pub fn raw_http(addr: &str, head: &str, parts: &[Vec<u8>]) -> RawResp {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let rh = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        buf
    });
    let mut w = stream;
    if w.write_all(head.as_bytes()).is_ok() {
        for p in parts {
            if w.write_all(p).is_err() {
                break;
            }
        }
        let _ = w.flush();
    }
    let bytes = rh.join().unwrap();
    drop(w);
    let Some(split) = bytes.windows(4).position(|x| x == b"\r\n\r\n") else {
        panic!(
            "no HTTP response head received; got {:?}",
            String::from_utf8_lossy(&bytes)
        );
    };
    let head_s = String::from_utf8_lossy(&bytes[..split]).to_string();
    let status: u16 = head_s
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = &bytes[split + 4..];
    let lower = head_s.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        rest[..cl.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    RawResp {
        status,
        head: head_s,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// Encode a body as HTTP/1.1 chunks of `size` bytes plus the last chunk.
pub fn chunked(body: &[u8], size: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for c in body.chunks(size) {
        let mut v = format!("{:x}\r\n", c.len()).into_bytes();
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
        out.push(v);
    }
    out.push(b"0\r\n\r\n".to_vec());
    out
}
