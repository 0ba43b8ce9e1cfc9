//! Request and response heads from the captured bytes, with `httparse`. The capture
//! may stop inside the head (`truncated`); a head cut before its request line ends is
//! unusable and counted by the caller.
use std::borrow::Cow;

use httparse::{EMPTY_HEADER, Request, Response, Status};

/// Headers looked at, at most; more is a truncated head for our purposes.
const MAX_HEADERS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Borrowed for the standard methods (no allocation per request), owned otherwise.
    pub method: Cow<'static, str>,
    /// The request target's path (an absolute-form target keeps only its path).
    pub path: String,
    pub query: Option<String>,
    /// "1.0" or "1.1".
    pub version: &'static str,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub traceparent: Option<String>,
    /// The capture ended before the head did.
    pub truncated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub version: &'static str,
}

#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// Heads, in order (several when requests are pipelined in one write).
    Heads(Vec<T>),
    /// Not HTTP after all (the kernel's sniff looks at eight bytes only).
    Garbage,
}

fn version_name(minor: Option<u8>) -> &'static str {
    if minor == Some(0) { "1.0" } else { "1.1" }
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).and_then(|h| std::str::from_utf8(h.value).ok())
}

fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    header(headers, "content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Every request head in `bytes`; bodies with a Content-Length are skipped to find the
/// next pipelined request. A body or head that runs past the capture ends the list.
#[cfg(test)]
pub fn requests(bytes: &[u8]) -> Parsed<RequestHead> {
    let mut heads = Vec::new();
    if requests_into(bytes, &mut heads) { Parsed::Heads(heads) } else { Parsed::Garbage }
}

/// [`requests`] into `heads` (empty, reused: no allocation per chunk); false for garbage.
pub fn requests_into(bytes: &[u8], heads: &mut Vec<RequestHead>) -> bool {
    let mut rest = bytes;
    while !rest.is_empty() {
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        let mut request = Request::new(&mut headers);
        let (complete, consumed) = match request.parse(rest) {
            Ok(Status::Complete(n)) => (true, n),
            Ok(Status::Partial) | Err(httparse::Error::TooManyHeaders) => (false, 0),
            Err(_) if !heads.is_empty() => break,
            Err(_) => return partial_request(rest).map(|h| heads.push(h)).is_some(),
        };
        let (Some(method), Some(target)) = (request.method, request.path) else {
            // Cut inside the request line: only usable when it is the first head.
            if heads.is_empty() {
                return partial_request(rest).map(|h| heads.push(h)).is_some();
            }
            break;
        };
        let (path, query) = split_target(target);
        heads.push(RequestHead {
            method: method_name(method),
            path,
            query,
            version: version_name(request.version),
            host: header(request.headers, "host").map(str::to_owned),
            user_agent: header(request.headers, "user-agent").map(str::to_owned),
            traceparent: header(request.headers, "traceparent").map(str::to_owned),
            truncated: !complete,
        });
        if !complete {
            break;
        }
        let body = content_length(request.headers);
        rest = rest.get(consumed.saturating_add(body)..).unwrap_or_default();
    }
    !heads.is_empty()
}

/// A request line that httparse refuses only because the headers after it are cut or
/// oversized: method, target and version are still good.
fn partial_request(bytes: &[u8]) -> Option<RequestHead> {
    let line_end = bytes.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[..line_end]).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let minor = version.strip_prefix("HTTP/1.")?.parse::<u8>().ok()?;
    if parts.next().is_some() || method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let (path, query) = split_target(target);
    Some(RequestHead {
        method: method_name(method),
        path,
        query,
        version: version_name(Some(minor)),
        host: None,
        user_agent: None,
        traceparent: None,
        truncated: true,
    })
}

/// The standard methods as static text, others as they came.
fn method_name(method: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = ["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
    KNOWN
        .iter()
        .find(|known| **known == method)
        .map_or_else(|| Cow::Owned(method.to_owned()), |known| Cow::Borrowed(*known))
}

fn split_target(target: &str) -> (String, Option<String>) {
    // An absolute-form target (to a proxy): keep the path part.
    let target = match target.find("://") {
        Some(scheme_end) => target[scheme_end + 3..].find('/').map_or("/", |i| &target[scheme_end + 3 + i..]),
        None => target,
    };
    match target.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (target.to_owned(), None),
    }
}

/// Every response head in `bytes`, skipping bodies with a Content-Length to find the
/// next (pipelined) response; 1xx interim responses are left out.
#[cfg(test)]
pub fn responses(bytes: &[u8]) -> Parsed<ResponseHead> {
    let mut heads = Vec::new();
    if responses_into(bytes, &mut heads) { Parsed::Heads(heads) } else { Parsed::Garbage }
}

/// [`responses`] into `heads` (empty, reused); false for garbage.
pub fn responses_into(bytes: &[u8], heads: &mut Vec<ResponseHead>) -> bool {
    // A 1xx alone parses to no head, yet is a response; `HTTP/1.1 abc` is neither.
    let mut any_status = false;
    let mut rest = bytes;
    while !rest.is_empty() {
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        let mut response = Response::new(&mut headers);
        let parsed = response.parse(rest);
        let (Some(status), true) =
            (response.code, parsed.is_ok() || matches!(parsed, Err(httparse::Error::TooManyHeaders)))
        else {
            break;
        };
        if !(100..=599).contains(&status) {
            break;
        }
        any_status = true;
        if status >= 200 {
            heads.push(ResponseHead { status, version: version_name(response.version) });
        }
        let Ok(Status::Complete(consumed)) = parsed else { break };
        // No body after 1xx, 204 and 304 (and HEAD's, which we cannot tell here: a HEAD
        // response rarely shares a write with the next one).
        let body = if status < 200 || status == 204 || status == 304 { 0 } else { content_length(response.headers) };
        rest = rest.get(consumed.saturating_add(body)..).unwrap_or_default();
    }
    any_status
}
