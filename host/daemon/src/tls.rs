//! TLS for the daemon (rustls on ring): the server configuration. Handshakes run per
//! connection, bounded in number and time, in [`super::serve`].

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;

use super::DaemonError;

/// The most a PEM file given here may hold (a chain of a few certificates, a key, a bundle of
/// CAs): a bound before it is read whole.
pub const MAX_PEM: u64 = 4 << 20;

/// A server configuration from a PEM certificate chain and its PEM private key (which only its
/// owner may read: [`gantry::durable::read_private`]); with
/// `client_ca` (PEM), clients are asked for a certificate, and one they present must be that
/// CA's (a client without one still connects: a node's requests need one, see
/// [`crate::Daemon::node_certs`]).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, DaemonError> {
    let setup = |path: &Path, m: String| DaemonError::Setup(format!("{}: {m}", path.display()));
    let read = |path: &Path| {
        gantry::durable::read_bounded(path, MAX_PEM).map_err(|e| setup(path, e.to_string()))
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(setup(cert, "no certificate in the file".into()));
    }
    // The key alone is secret: on a node whose command jobs run as other uids, one they may
    // read is theirs.
    let secret =
        gantry::durable::read_private(key, MAX_PEM).map_err(|e| setup(key, e.to_string()))?;
    let key_der = rustls_pemfile::private_key(&mut secret.as_slice())
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// The daemon read its TLS key whatever its mode: on a node whose command jobs run as other
    /// uids, a key written as the umask left it (0644) was every job's to read, and with it the
    /// daemon's identity. Refused, naming the file; its owner's alone, it serves.
    #[test]
    fn a_tls_key_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
        std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&key_pem, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = super::server_config(&cert_pem, &key_pem, None).unwrap_err();
            assert!(
                e.to_string().contains("read by others") && e.to_string().contains("key.pem"),
                "{mode:o}: {e}"
            );
        }
        std::fs::set_permissions(&key_pem, std::fs::Permissions::from_mode(0o600)).unwrap();
        super::server_config(&cert_pem, &key_pem, None).unwrap();
    }
}
