//! API Gateway HTTP API (payload format 2.0) events, as API Gateway sends them to Lambda.

use serde_json::{Value, json};

/// An event for `method path` with these headers and body; `base64` sends the body base64-encoded
/// with `isBase64Encoded`, as API Gateway does for non-text content types.
pub fn event(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], base64: bool) -> Value {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), Value::String(value.to_string())))
        .collect();
    let body = if base64 {
        encode_base64(body)
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "sophonsapi",
            "domainName": "sophonsapi.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "sophonsapi",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "192.30.252.1",
                "userAgent": "GitHub-Hookshot/044aadd"
            },
            "requestId": "request-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "28/Nov/2026:06:00:00 +0000",
            "timeEpoch": 1795500000000u64
        },
        "body": body,
        "isBase64Encoded": base64
    })
}

/// A signed GitHub delivery of `payload` for `event`.
pub fn delivery(event_name: &str, delivery_id: &str, signature: &str, payload: &[u8]) -> Value {
    event(
        "POST",
        "/webhook",
        &[
            ("content-type", "application/json"),
            ("x-github-event", event_name),
            ("x-github-delivery", delivery_id),
            ("x-hub-signature-256", signature),
        ],
        payload,
        false,
    )
}

fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::encode_base64(plain.as_bytes()), encoded);
        }
    }
}
