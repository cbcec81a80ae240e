//! TLS for the daemon (rustls on ring): the server configuration. Handshakes run per
//! connection, bounded in number and time, in [`super::serve`].

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;

use super::DaemonError;

/// A server configuration from a PEM certificate chain and its PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, DaemonError> {
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
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            setup(
                cert,
                format!("the certificate and key do not go together: {e}"),
            )
        })?;
    Ok(Arc::new(config))
}
