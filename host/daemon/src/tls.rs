//! TLS for the daemon (rustls on ring): the server configuration. Handshakes run per
//! connection, bounded in number and time, in [`super::serve`].

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;

use super::DaemonError;

/// A server configuration from a PEM certificate chain and its PEM private key; with
/// `client_ca` (PEM), clients are asked for a certificate, and one they present must be that
/// CA's (a client without one still connects: a node's requests need one, see
/// [`crate::Daemon::node_certs`]).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, DaemonError> {
    let setup = |path: &Path, m: String| DaemonError::Setup(format!("{}: {m}", path.display()));
    let read = |path: &Path| std::fs::read(path).map_err(|e| setup(path, e.to_string()));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(setup(cert, "no certificate in the file".into()));
    }
    let key_der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| setup(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| setup(key, "no private key in the file".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(cert, e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut read(ca)?.as_slice()) {
                let c = c.map_err(|e| setup(ca, format!("not a PEM certificate: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| setup(ca, format!("not a CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(setup(ca, "no certificate in the file".into()));
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| setup(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key_der).map_err(|e| {
        setup(
            cert,
            format!("the certificate and key do not go together: {e}"),
        )
    })?;
    Ok(Arc::new(config))
}
