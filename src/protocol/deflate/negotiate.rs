//! permessage-deflate negotiation (RFC 7692 §7.1), sans-IO: from the client's
//! `Sec-WebSocket-Extensions` offers to the one uringcast accepts and the response header.
//!
//! uringcast keeps no compression state between messages, so every acceptance says
//! `server_no_context_takeover` (the compressor is reset after each message, which is what
//! lets one compressed frame serve every subscriber) and `client_no_context_takeover` (which
//! RFC 7692 §7.1.1.2 lets a server add even unasked: no inflate window survives between a
//! client's messages either).
//!
//! Offers are tried in the client's order; the first one uringcast can honour is accepted and
//! the rest declined (§5.1). An offer is declined when it has an unknown, repeated or invalid
//! parameter (§7.1).
//!
//! `server_max_window_bits=8` is accepted, but zlib's raw deflate cannot use a 256-byte window
//! (it silently uses 512), so uringcast keeps that promise by never compressing what it sends
//! on such a connection: a message with RSV1 clear is an uncompressed message (§6), which is
//! always allowed, and the client's own compressed messages are still inflated. That serves
//! the client better than declining the offer, which §7.1.2.1 would also allow.
//!
//! A client's side ([`parse_response`]) is the mirror: the server's answer to an offer of
//! [`CLIENT_OFFER`].

/// The extension's registered name.
pub const EXTENSION: &str = "permessage-deflate";

/// The smallest LZ77 window (bits) uringcast's compressor can honour: zlib's raw deflate
/// turns 8 into 9. A connection agreed at 8 gets uncompressed messages.
pub const MIN_SERVER_WINDOW_BITS: u8 = 9;
/// The smallest window RFC 7692 allows.
pub const MIN_WINDOW_BITS: u8 = 8;

/// What uringcast's client side offers: no context takeover on the server's side (so one
/// inflater can serve every connection of a thread, as on the server), and any client window.
pub const CLIENT_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_max_window_bits";
/// The largest window RFC 7692 allows (and zlib's default).
pub const MAX_WINDOW_BITS: u8 = 15;

/// What an accepted offer binds both sides to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The window the server's compressor uses (the client asked for at most this).
    pub server_window_bits: u8,
    /// The largest window the client may use; the server inflates with it.
    pub client_window_bits: u8,
}

impl Agreed {
    /// Whether the server compresses what it sends: not at a window of 8 bits, which zlib
    /// cannot keep to (see the module's documentation).
    pub fn server_compresses(&self) -> bool {
        self.server_window_bits >= MIN_SERVER_WINDOW_BITS
    }

    /// The `Sec-WebSocket-Extensions` value of the response.
    pub fn response(&self) -> String {
        let mut value =
            format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if self.server_window_bits != MAX_WINDOW_BITS {
            value.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_window_bits
            ));
        }
        if self.client_window_bits != MAX_WINDOW_BITS {
            value.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_window_bits
            ));
        }
        value
    }
}

/// Picks the first permessage-deflate offer uringcast can honour from the values of every
/// `Sec-WebSocket-Extensions` header of a request (in order); `None` declines them all.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    for header in headers {
        let Ok(text) = std::str::from_utf8(header) else {
            continue;
        };
        for offer in split_outside_quotes(text, ',') {
            let mut parts = split_outside_quotes(offer, ';');
            let name = parts.next().map(str::trim).unwrap_or_default();
            if !name.eq_ignore_ascii_case(EXTENSION) {
                continue;
            }
            if let Some(agreed) = accept(parts) {
                return Some(agreed);
            }
        }
    }
    None
}

/// The client's side: checks the server's `Sec-WebSocket-Extensions` values (every header, in
/// order) against an offer of [`CLIENT_OFFER`] (RFC 7692 §7.1). `Ok(None)`: the server
/// declined, and messages go uncompressed.
///
/// # Errors
///
/// What the response breaks: another extension, more than one, an unknown, repeated or invalid
/// parameter, or no `server_no_context_takeover` although the offer asked for it (§7.1.1.1).
/// The client must then fail the connection (§7.1).
pub fn parse_response<'a>(
    headers: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Agreed>, &'static str> {
    let mut agreed = None;
    for header in headers {
        let text = std::str::from_utf8(header).map_err(|_| "extension header is not text")?;
        for entry in split_outside_quotes(text, ',') {
            if entry.trim().is_empty() {
                continue;
            }
            let mut parts = split_outside_quotes(entry, ';');
            let name = parts.next().map(str::trim).unwrap_or_default();
            if !name.eq_ignore_ascii_case(EXTENSION) {
                return Err("the server selected an extension that was not offered");
            }
            if agreed.is_some() {
                return Err("the server selected permessage-deflate twice");
            }
            agreed = Some(accepted(parts)?);
        }
    }
    Ok(agreed)
}

/// One response's parameters.
fn accepted<'a>(params: impl Iterator<Item = &'a str>) -> Result<Agreed, &'static str> {
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        server_window_bits: MAX_WINDOW_BITS,
        client_window_bits: MAX_WINDOW_BITS,
    };
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (
                name.trim(),
                Some(unquote(value.trim()).ok_or("a badly quoted value")?),
            ),
            None => (param.trim(), None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err("an unknown parameter"),
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err("a repeated parameter");
        }
        match (index, value) {
            (0 | 1, None) => {}
            (2, Some(bits)) => {
                agreed.server_window_bits = window_bits(bits).ok_or("an invalid window size")?
            }
            (3, Some(bits)) => {
                agreed.client_window_bits = window_bits(bits).ok_or("an invalid window size")?
            }
            _ => return Err("a parameter with a missing or unexpected value"),
        }
    }
    if !seen[0] {
        return Err("no server_no_context_takeover, which the offer asked for");
    }
    Ok(agreed)
}

/// One offer's parameters: the agreement, or `None` to decline it.
fn accept<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreed> {
    let mut seen = [false; 4];
    let mut server_window_bits = MAX_WINDOW_BITS;
    let mut client_window_bits = MAX_WINDOW_BITS;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param.trim(), None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None, // an unknown parameter (§7.1)
        };
        if std::mem::replace(&mut seen[index], true) {
            return None; // a repeated parameter (§7.1)
        }
        match (index, value) {
            (0 | 1, None) => {}
            (0 | 1, Some(_)) => return None, // these take no value
            (2, Some(bits)) => {
                // 8 is taken and kept by sending uncompressed (see the module's documentation).
                server_window_bits = window_bits(bits)?;
            }
            (2, None) => return None, // a value is required in an offer (§7.1.2.1)
            (3, Some(bits)) => client_window_bits = window_bits(bits)?,
            (3, None) => {} // the client supports the parameter; we do not need to limit it
            _ => return None,
        }
    }
    Some(Agreed {
        server_window_bits,
        client_window_bits,
    })
}

/// A window size: a decimal integer from 8 to 15 without leading zeros (§7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.len() > 2 || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=MAX_WINDOW_BITS).contains(&bits).then_some(bits)
}

/// A token or a quoted-string (RFC 7230 §3.2.6); the value inside the quotes must itself be a
/// token (RFC 6455 §9.1), here a window size, so escapes are refused.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            (!inner.contains(['"', '\\'])).then_some(inner)
        }
        None => Some(value),
    }
}

/// Splits on `separator` outside double quotes.
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut start = 0;
    let mut done = false;
    let mut chars = text.char_indices();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        for (i, c) in chars.by_ref() {
            match c {
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    let part = &text[start..i];
                    start = i + c.len_utf8();
                    return Some(part);
                }
                _ => {}
            }
        }
        done = true;
        Some(&text[start..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(header: &str) -> Option<Agreed> {
        negotiate([header.as_bytes()])
    }

    fn agreed(server: u8, client: u8) -> Option<Agreed> {
        Some(Agreed {
            server_window_bits: server,
            client_window_bits: client,
        })
    }

    /// RFC 7692 §7.1's parameters, alone and together, as a browser and others send them.
    #[test]
    fn the_negotiation_table() {
        let cases: &[(&str, Option<Agreed>)] = &[
            ("permessage-deflate", agreed(15, 15)),
            // What Chrome and Firefox offer.
            ("permessage-deflate; client_max_window_bits", agreed(15, 15)),
            (
                "permessage-deflate; server_no_context_takeover",
                agreed(15, 15),
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                agreed(15, 15),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                agreed(10, 15),
            ),
            (
                "permessage-deflate; server_max_window_bits=9",
                agreed(9, 15),
            ),
            (
                "permessage-deflate; server_max_window_bits=15",
                agreed(15, 15),
            ),
            (
                "permessage-deflate; client_max_window_bits=12",
                agreed(15, 12),
            ),
            (
                "permessage-deflate; client_max_window_bits=8",
                agreed(15, 8),
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=11; client_max_window_bits=13",
                agreed(11, 13),
            ),
            (
                "PerMessage-Deflate; Server_Max_Window_Bits=\"12\"",
                agreed(12, 15),
            ),
            // Accepted; kept by sending uncompressed.
            (
                "permessage-deflate; server_max_window_bits=8",
                agreed(8, 15),
            ),
            // Malformed: declined, never guessed at.
            ("permessage-deflate; server_max_window_bits", None),
            ("permessage-deflate; server_max_window_bits=16", None),
            ("permessage-deflate; server_max_window_bits=7", None),
            ("permessage-deflate; server_max_window_bits=010", None),
            ("permessage-deflate; server_max_window_bits=1x", None),
            ("permessage-deflate; client_max_window_bits=0", None),
            ("permessage-deflate; client_max_window_bits=\"1\\5\"", None),
            ("permessage-deflate; client_max_window_bits=\"15", None),
            ("permessage-deflate; server_no_context_takeover=1", None),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                None,
            ),
            (
                "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
                None,
            ),
            ("permessage-deflate; mystery_parameter", None),
            ("x-webkit-deflate-frame", None),
            ("", None),
        ];
        for (offer, expected) in cases {
            assert_eq!(one(offer), *expected, "{offer:?}");
        }
    }

    /// The first offer uringcast can honour wins, across commas and across headers; the ones
    /// before it are declined.
    #[test]
    fn offers_are_tried_in_order() {
        assert_eq!(
            one("permessage-deflate; server_max_window_bits=7, permessage-deflate; server_max_window_bits=10"),
            agreed(10, 15)
        );
        assert_eq!(
            one("foo, permessage-deflate; bogus, permessage-deflate; client_max_window_bits"),
            agreed(15, 15)
        );
        assert_eq!(
            negotiate([
                b"permessage-deflate; server_max_window_bits=16".as_slice(),
                b"permessage-deflate; client_max_window_bits=9".as_slice(),
            ]),
            agreed(15, 9)
        );
        assert_eq!(negotiate([b"\xff\xfe".as_slice()]), None);
    }

    #[test]
    fn responses_say_no_context_takeover_both_ways() {
        assert_eq!(
            agreed(15, 15).unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            agreed(10, 12).unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
    }

    /// A client's view: what a server may answer to [`CLIENT_OFFER`].
    #[test]
    fn responses_to_the_client_offer() {
        let parse = |h: &str| parse_response([h.as_bytes()]);
        let ok = |s, c| {
            Ok(Some(Agreed {
                server_window_bits: s,
                client_window_bits: c,
            }))
        };
        assert_eq!(parse_response(std::iter::empty()), Ok(None));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(
            parse("permessage-deflate; server_no_context_takeover"),
            ok(15, 15)
        );
        assert_eq!(
            parse(&agreed(10, 12).unwrap().response()),
            ok(10, 12),
            "uringcast's own answer"
        );
        // What Node's ws answers (it adds client_max_window_bits when offered one).
        assert_eq!(
            parse("permessage-deflate; server_no_context_takeover; client_max_window_bits=15"),
            ok(15, 15)
        );
        for bad in [
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; x=1",
            "permessage-deflate; server_no_context_takeover, permessage-deflate; server_no_context_takeover",
            "x-webkit-deflate-frame",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // The client offer is one a uringcast server takes.
        assert_eq!(one(CLIENT_OFFER), agreed(15, 15));
    }

    #[test]
    fn quotes_protect_separators() {
        let parts: Vec<&str> = split_outside_quotes("a; b=\"x;y\", c", ',').collect();
        assert_eq!(parts, ["a; b=\"x;y\"", " c"]);
    }

    use proptest::prelude::*;

    /// One parameter of an offer as a client might write it, valid or not.
    fn parameter() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("server_no_context_takeover"),
            Just("client_no_context_takeover"),
            Just("server_max_window_bits"),
            Just("client_max_window_bits"),
            Just("bogus"),
        ];
        let value = prop_oneof![
            Just(None),
            (0u8..20).prop_map(|b| Some(b.to_string())),
            (0u8..20).prop_map(|b| Some(format!("\"{b}\""))),
            Just(Some("010".to_string())),
        ];
        (name, value).prop_map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name.to_string(),
        })
    }

    proptest! {
        /// Every combination of §7.1's parameters (and some that are not): an accepted offer
        /// is one a reading of the RFC accepts, and what is agreed is within the offer.
        #[test]
        fn every_combination_is_accepted_only_when_valid(
            params in proptest::collection::vec(parameter(), 0..5)
        ) {
            let offer = std::iter::once(EXTENSION.to_string())
                .chain(params.iter().cloned())
                .collect::<Vec<_>>()
                .join("; ");
            let result = one(&offer);
            // The independent reading: each name at most once, known, with a value exactly
            // where one is allowed, and values 8..=15 without leading zeros.
            let mut names = std::collections::HashSet::new();
            let mut valid = true;
            let (mut server, mut client) = (MAX_WINDOW_BITS, MAX_WINDOW_BITS);
            for param in &params {
                let (name, value) = match param.split_once('=') {
                    Some((n, v)) => (n, Some(v.trim_matches('"'))),
                    None => (param.as_str(), None),
                };
                valid &= names.insert(name);
                let bits = value.and_then(|v| {
                    (!v.starts_with('0')).then(|| v.parse::<u8>().ok()).flatten()
                });
                match (name, value) {
                    ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
                    ("server_max_window_bits", Some(_)) => match bits {
                        Some(b @ 8..=15) => server = b,
                        _ => valid = false,
                    },
                    ("client_max_window_bits", None) => {}
                    ("client_max_window_bits", Some(_)) => match bits {
                        Some(b @ 8..=15) => client = b,
                        _ => valid = false,
                    },
                    _ => valid = false,
                }
            }
            let expected = valid.then_some(Agreed {
                server_window_bits: server,
                client_window_bits: client,
            });
            prop_assert_eq!(result, expected, "{}", offer);
            if let Some(agreed) = result {
                let response = agreed.response();
                prop_assert!(response.contains("server_no_context_takeover"));
                prop_assert!(response.contains("client_no_context_takeover"));
                // The response is itself an offer uringcast would take, with the same terms.
                prop_assert_eq!(one(&response), Some(agreed));
            }
        }
    }
}
