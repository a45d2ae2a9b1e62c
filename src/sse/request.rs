//! What a request for an event stream asks for.

use crate::protocol::handshake::Request;

/// Whether `request` asks for an event stream: a `GET` whose `Accept` names
/// `text/event-stream`, which is what every browser's `EventSource` sends.
pub fn is_event_stream(request: &Request) -> bool {
    request.method() == "GET"
        && request
            .header("accept")
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|accept| {
                accept.split(',').any(|media| {
                    media
                        .split(';')
                        .next()
                        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
                })
            })
}

/// The position a stream request resumes from, as text: `Last-Event-ID` (which
/// `EventSource` sends by itself when it reconnects) wins over `?since=` (for a first
/// request). `None` when it names none.
pub fn resume_from(request: &Request) -> Option<&str> {
    if let Some(id) = request
        .header("last-event-id")
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|id| !id.is_empty())
    {
        return Some(id);
    }
    query_value(request.query()?, "since")
}

/// The value of `name` in a query string (not percent-decoded: positions and limits need
/// no escaping).
pub fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::ServerHandshake;

    fn request(head: &str) -> Request {
        let mut handshake = ServerHandshake::new(8192);
        handshake.feed(head.as_bytes()).unwrap().1.unwrap()
    }

    #[test]
    fn event_stream_requests_are_told_by_method_and_accept() {
        let yes = request("GET /t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
        assert!(is_event_stream(&yes));
        let listed = request(
            "GET /t HTTP/1.1\r\nHost: x\r\nAccept: text/html, TEXT/Event-Stream;q=0.9\r\n\r\n",
        );
        assert!(is_event_stream(&listed));
        let post = request("POST /t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n");
        assert!(!is_event_stream(&post));
        let html = request("GET /t HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n\r\n");
        assert!(!is_event_stream(&html));
    }

    #[test]
    fn last_event_id_wins_over_since() {
        let both = request("GET /t?since=a:1 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: b:2\r\n\r\n");
        assert_eq!(resume_from(&both), Some("b:2"));
        let since = request("GET /t?x=1&since=a:1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(resume_from(&since), Some("a:1"));
        let none = request("GET /t HTTP/1.1\r\nHost: x\r\nLast-Event-ID:  \r\n\r\n");
        assert_eq!(resume_from(&none), None);
    }
}
