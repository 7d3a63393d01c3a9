//! The one outgoing HTTP client: HTTP/1.1 over plain TCP or TLS (rustls
//! with Mozilla's root certificates built in, so nothing is needed from the
//! host), for webhooks and for fetching an identity provider's keys.

use std::sync::OnceLock;

use bytes::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// A client whose request bodies are `B`.
pub type HttpClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A new client (connections are pooled per client).
pub fn new_client<B>() -> HttpClient<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connector = HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A new client that trusts the certificates in `pem` (e.g. an operator's
/// own CA) besides the public roots.
pub fn new_client_trusting<B>(pem: &[u8]) -> anyhow::Result<HttpClient<B>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut added = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(certificate.map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?)
            .map_err(|e| anyhow::anyhow!("not a usable certificate: {e}"))?;
        added += 1;
    }
    anyhow::ensure!(added > 0, "holds no PEM certificate");
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The shared client for bodiless requests.
pub fn client() -> &'static HttpClient<http_body_util::Empty<Bytes>> {
    static CLIENT: OnceLock<HttpClient<http_body_util::Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(new_client)
}
