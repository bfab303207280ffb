//! Host webhooks' vocabulary: the event types, an endpoint's URL (https and a public
//! address unless private destinations are allowed), the addresses no outbound call may
//! reach, and the signing secret (`whsec_` + base64 of random bytes, Standard Webhooks).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::{Engine, engine::general_purpose::STANDARD};

use super::{FieldError, text_enum::text_enum};

text_enum! {
    /// Where one delivery of an event to an endpoint is (`offboard.webhook_deliveries`):
    /// pending (due at its `next_attempt_at`), sending (claimed by a deliverer), succeeded,
    /// or failed for good (out of attempts, or the endpoint is gone).
    pub enum DeliveryStatus("delivery status") {
        Pending = "pending",
        Sending = "sending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

/// Every event type offboard sends.
pub const EVENT_TYPES: [&str; 7] = [
    "offboarding.succeeded",
    "offboarding.failed",
    "offboarding.canceled",
    "offboarding.step_dead",
    "private_emails.purged",
    "items.transferred",
    "app.uninstalled",
];

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// A URL an endpoint may deliver to: `https` (or `http` when private destinations are
/// allowed), with a host, without credentials; a literal address must be public unless
/// allowed. A name is checked again on every connection, against what it resolves to then.
pub fn parse_endpoint_url(raw: &str, allow_private: bool) -> Result<url::Url, FieldError> {
    let bad = |message: &str| FieldError::new("url", message);
    if raw.len() > MAX_URL_LEN {
        return Err(bad("is longer than 2048 characters"));
    }
    let url = url::Url::parse(raw.trim()).map_err(|_| bad("is not an absolute URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(bad("must use https")),
        _ => return Err(bad("must be an https URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    if url.fragment().is_some() {
        return Err(bad("must not have a fragment"));
    }
    match url.host() {
        None => return Err(bad("has no host")),
        Some(url::Host::Ipv4(ip)) if !allow_private && !is_public(IpAddr::V4(ip)) => {
            return Err(bad("points to a private, loopback, link-local or reserved address"));
        }
        Some(url::Host::Ipv6(ip)) if !allow_private && !is_public(IpAddr::V6(ip)) => {
            return Err(bad("points to a private, loopback, link-local or reserved address"));
        }
        Some(url::Host::Domain(name)) if !allow_private && is_local_name(name) => {
            return Err(bad("points to a local host name"));
        }
        _ => {}
    }
    Ok(url)
}

fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with(".local")
        || name.ends_with(".internal")
}

/// Whether an outbound call may connect to `ip`: not loopback, private, link-local (which
/// holds the cloud metadata address 169.254.169.254), shared (CGNAT), multicast,
/// documentation, benchmarking or otherwise reserved — in IPv4, in IPv6, or an IPv4
/// address carried inside IPv6.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, holds fd00:ec2::254 (metadata)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0 && s[1] == 0 && s[2..6] == [0, 0, 0, 0])) // IPv4-compatible, reserved
}

/// The secret an endpoint's deliveries are signed with: `whsec_` + base64 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl WebhookSecret {
    /// A fresh secret of 32 random bytes.
    pub fn generate() -> Self {
        Self { key: rand::random::<[u8; 32]>().to_vec() }
    }

    /// `whsec_<base64>`, as shown to the host once and stored.
    pub fn parse(raw: &str) -> Option<Self> {
        let key = STANDARD.decode(raw.strip_prefix("whsec_").unwrap_or(raw)).ok()?;
        (!key.is_empty()).then_some(Self { key })
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn expose(&self) -> String {
        format!("whsec_{}", STANDARD.encode(&self.key))
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// The event types an endpoint asks for: each known, no duplicates; empty means all.
pub fn parse_event_types(raw: &[String]) -> Result<Vec<String>, FieldError> {
    let mut types: Vec<String> = Vec::with_capacity(raw.len());
    for (i, t) in raw.iter().enumerate() {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(FieldError::new(
                format!("events[{i}]"),
                format!("unknown event type; one of {}", EVENT_TYPES.join(", ")),
            ));
        }
        if !types.contains(t) {
            types.push(t.clone());
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_not_public() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must be refused");
        }
        for s in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn endpoint_urls_must_be_https_to_a_public_host_unless_private_is_allowed() {
        assert!(parse_endpoint_url("https://hooks.example.com/offboard", false).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost:8443/x",
            "https://user:pw@hooks.example.com/x",
            "ftp://hooks.example.com/x",
            "hooks.example.com",
        ] {
            assert!(parse_endpoint_url(bad, false).is_err(), "{bad} must be refused");
        }
        assert!(parse_endpoint_url("http://127.0.0.1:9000/x", true).is_ok());
        assert!(parse_endpoint_url("ftp://127.0.0.1/x", true).is_err());
    }

    #[test]
    fn secrets_round_trip_and_never_show_in_debug() {
        let s = WebhookSecret::generate();
        assert_eq!(WebhookSecret::parse(&s.expose()), Some(s.clone()));
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(format!("{s:?}"), "WebhookSecret(***)");
        assert!(WebhookSecret::parse("whsec_!!").is_none());
    }

    #[test]
    fn event_types_are_checked_and_deduplicated() {
        let ok = parse_event_types(&["items.transferred".into(), "items.transferred".into()]);
        assert_eq!(ok.unwrap(), vec!["items.transferred".to_string()]);
        let err = parse_event_types(&["offboarding.succeeded".into(), "user.created".into()]);
        assert_eq!(err.unwrap_err().field, "events[1]");
    }
}
