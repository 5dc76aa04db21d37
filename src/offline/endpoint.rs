//! Outbound safety: where the puller may send a portal's tokens.
//!
//! A portal's REST endpoint is the `client_endpoint` of its verified
//! install, and it must be `https://` on the portal's own domain: an
//! install event naming another host would otherwise make b24-journal
//! hand its access tokens to that host. The OAuth server must be `https`
//! too. `http://` is accepted only on loopback addresses and only with the
//! test-only switch (`--offline-allow-http-loopback`), for the fake portal.

use std::net::IpAddr;

use reqwest::Url;

/// An endpoint that may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL.
    #[error("the endpoint is not a URL")]
    NotAUrl,
    /// Not `https` (and not an allowed loopback `http`).
    #[error("the endpoint is not https")]
    NotHttps,
    /// Its host is not the portal's domain.
    #[error("the endpoint's host is not the portal's domain {0}")]
    OtherHost(String),
    /// It carries credentials, a query or a fragment.
    #[error("the endpoint has user info, a query or a fragment")]
    Extras,
}

/// Whether `url` may be called over plain `http`: a loopback host, and the
/// test-only switch on.
fn http_allowed(url: &Url, allow_http_loopback: bool) -> bool {
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    allow_http_loopback && loopback
}

fn scheme_ok(url: &Url, allow_http_loopback: bool) -> Result<(), EndpointError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if http_allowed(url, allow_http_loopback) => Ok(()),
        _ => Err(EndpointError::NotHttps),
    }
}

/// Checks `client_endpoint` against the portal's `domain` (`host` or
/// `host:port`); returns the base URL that REST method names are joined to.
pub fn rest_endpoint(
    client_endpoint: &str,
    domain: &str,
    allow_http_loopback: bool,
) -> Result<Url, EndpointError> {
    let mut url = Url::parse(client_endpoint).map_err(|_| EndpointError::NotAUrl)?;
    scheme_ok(&url, allow_http_loopback)?;
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(EndpointError::Extras);
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let domain = domain.to_ascii_lowercase();
    if authority != domain && host != domain {
        return Err(EndpointError::OtherHost(domain));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Checks the OAuth server's base URL; returns its token endpoint.
pub fn oauth_token_url(
    oauth_server: &str,
    allow_http_loopback: bool,
) -> Result<Url, EndpointError> {
    let url = Url::parse(oauth_server).map_err(|_| EndpointError::NotAUrl)?;
    scheme_ok(&url, allow_http_loopback)?;
    url.join("/oauth/token/")
        .map_err(|_| EndpointError::NotAUrl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_on_the_portal_domain() {
        let ok = rest_endpoint("https://a.bitrix24.com/rest/", "a.bitrix24.com", false).unwrap();
        assert_eq!(
            ok.join("event.offline.get.json").unwrap().as_str(),
            "https://a.bitrix24.com/rest/event.offline.get.json"
        );
        assert_eq!(
            rest_endpoint("https://evil.example/rest/", "a.bitrix24.com", false),
            Err(EndpointError::OtherHost("a.bitrix24.com".into()))
        );
        assert_eq!(
            rest_endpoint("http://a.bitrix24.com/rest/", "a.bitrix24.com", true),
            Err(EndpointError::NotHttps)
        );
        assert_eq!(
            rest_endpoint("https://u:p@a.bitrix24.com/rest/", "a.bitrix24.com", false),
            Err(EndpointError::Extras)
        );
        assert_eq!(
            rest_endpoint("http://127.0.0.1:9000/rest/", "127.0.0.1:9000", false),
            Err(EndpointError::NotHttps)
        );
        assert!(rest_endpoint("http://127.0.0.1:9000/rest/", "127.0.0.1:9000", true).is_ok());
        assert!(oauth_token_url("http://oauth.bitrix.info", true).is_err());
        assert_eq!(
            oauth_token_url("https://oauth.bitrix.info", false)
                .unwrap()
                .as_str(),
            "https://oauth.bitrix.info/oauth/token/"
        );
    }
}
