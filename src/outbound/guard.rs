//! The SSRF guard: outbound calls connect only to public addresses (unless private
//! destinations are allowed, for tests and local development). The check is made on the
//! addresses a name resolves to at connect time — the resolver below is the HTTP client's
//! only way to turn a name into addresses — so a name that resolved to a public address at
//! registration and to a private one later (DNS rebinding) is refused too. Literal
//! addresses in a URL never reach a resolver; [`check_literal`] refuses those.

use std::{fmt, net::SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::webhook::is_public;

/// A destination refused because of where it points.
#[derive(Debug, Clone)]
pub struct AddressRefused;

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the destination resolves only to private, loopback, link-local or reserved addresses",
        )
    }
}

impl std::error::Error for AddressRefused {}

/// Resolves with the system resolver and keeps only addresses the policy allows.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.into_iter().filter(|a| allow_private || is_public(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(AddressRefused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Refuses a URL whose host is a literal address the policy does not allow.
pub fn check_literal(url: &url::Url, allow_private: bool) -> Result<(), AddressRefused> {
    if allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if is_public(ip) { Ok(()) } else { Err(AddressRefused) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_is_refused_at_resolution_unless_private_is_allowed() {
        let refused =
            GuardedResolver { allow_private: false }.resolve("localhost".parse().unwrap()).await;
        let err = refused.err().expect("localhost must be refused");
        assert!(err.downcast_ref::<AddressRefused>().is_some(), "{err}");
        let allowed = GuardedResolver { allow_private: true }
            .resolve("localhost".parse().unwrap())
            .await
            .expect("allowed");
        assert!(allowed.into_iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn literal_private_addresses_are_refused() {
        let url = url::Url::parse("http://169.254.169.254/latest").unwrap();
        assert!(check_literal(&url, false).is_err());
        assert!(check_literal(&url, true).is_ok());
        let url = url::Url::parse("https://hooks.example.com/").unwrap();
        assert!(check_literal(&url, false).is_ok());
    }
}
