//! TLS to Redis (`rediss://`, `rediss-cluster://`, `rediss-sentinel://`): the rustls client
//! configuration every Redis connection uses, and plain sentences for the ways a handshake
//! fails. The crypto provider is aws-lc-rs, the one the rest of the server's rustls already
//! uses (HTTPS to the LLM, MongoDB), so there is one TLS stack.
//!
//! Trusted: the system's CA certificates plus `REDIS_TLS_CA_FILE`. The server's name is
//! always checked against the host it is reached by (the one in `REDIS_URL`, a cluster node's
//! announced address, the master a sentinel names).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fred::rustls::pki_types::pem::PemObject;
use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use fred::rustls::{self, ClientConfig, RootCertStore};
use fred::types::config::{TlsConfig, TlsConnector};
use tokio::net::TcpStream;

use crate::config::redis_url::RedisTls;

/// The TLS configuration for `files`; the error is a sentence naming the variable and file
/// at fault (never a key's content).
pub fn client_config(files: &RedisTls) -> Result<TlsConfig, String> {
    let mut roots = RootCertStore::empty();
    // Unreadable or unparsable system certificates are skipped, as a browser would.
    let system = fred::rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = &files.ca_file {
        let certs = read_certificates(path, "REDIS_TLS_CA_FILE")?;
        for cert in certs {
            roots.add(cert).map_err(|error| {
                format!(
                    "REDIS_TLS_CA_FILE={}: a certificate in it is not a usable CA certificate ({error})",
                    path.display()
                )
            })?;
        }
    }
    if roots.is_empty() {
        return Err(
            "REDIS_URL asks for TLS but no CA certificate is trusted: install the \
                    system's CA certificates (Debian: ca-certificates) or set REDIS_TLS_CA_FILE"
                .to_string(),
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS to Redis: {error}"))?
        .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let chain = read_certificates(cert_path, "REDIS_TLS_CERT_FILE")?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| {
                let why = match error {
                    rustls::pki_types::pem::Error::Io(error) => format!("cannot read it ({error})"),
                    rustls::pki_types::pem::Error::NoItemsFound => {
                        "it holds no PEM private key".to_string()
                    }
                    // Other PEM errors may quote the file; it holds a key.
                    _ => "it is not a PEM private key".to_string(),
                };
                format!("REDIS_TLS_KEY_FILE={}: {why}", key_path.display())
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|error| {
                format!(
                    "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE are not a certificate and its \
                         private key ({error})"
                )
            })?
        }
    };
    Ok(TlsConfig::from(config))
}

/// Every certificate in the PEM file `path` (at least one), named by `variable` in errors.
fn read_certificates(path: &Path, variable: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let fail = |why: String| format!("{variable}={}: {why}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| match error {
            rustls::pki_types::pem::Error::Io(error) => fail(format!("cannot read it ({error})")),
            other => fail(format!("not a PEM file ({other})")),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| fail(format!("not a PEM file ({error})")))?;
    if certs.is_empty() {
        return Err(fail("it holds no PEM certificate".to_string()));
    }
    Ok(certs)
}

/// Why a TLS handshake with `host:port` under `tls` fails, as [`explain_failure`] says it;
/// `None` when it succeeds, or fails some other way (nothing listens, it takes over 2 s).
///
/// The Redis client drops the error of each sentinel it cannot reach and reports only
/// "Failed to connect to all sentinel nodes", so for Sentinel the server repeats one
/// handshake itself to tell an untrusted or misnamed certificate from a sentinel that is
/// down.
pub async fn probe(tls: &TlsConfig, host: &str, port: u16) -> Option<String> {
    #[allow(unreachable_patterns)] // another variant exists only with other fred features
    let connector = match &tls.connector {
        TlsConnector::Rustls(connector) => connector,
        _ => return None,
    };
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let limit = Duration::from_secs(2);
    let tcp = tokio::time::timeout(limit, TcpStream::connect((host, port)))
        .await
        .ok()?
        .ok()?;
    match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
        // The debug form, as the client reports it.
        Ok(Err(error)) => explain_failure(&format!("{error:?}")),
        _ => None,
    }
}

/// What a failed connection's error says about TLS, in a sentence for the operator; `None`
/// when it is not a TLS failure. The Redis client reports handshake errors by their debug
/// form (`Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }`).
pub fn explain_failure(details: &str) -> Option<String> {
    let sentence = if details.contains("UnknownIssuer") {
        "Redis's TLS certificate is not signed by a trusted CA (set REDIS_TLS_CA_FILE to the \
         CA certificate that signed it)"
            .to_string()
    } else if details.contains("NotValidForName") {
        "Redis's TLS certificate does not name the host it was reached by (the host in \
         REDIS_URL, or the address a cluster node or sentinel gave): connect by a name the \
         certificate lists, or give Redis a certificate for this one"
            .to_string()
    } else if details.contains("Expired") || details.contains("NotValidYet") {
        "Redis's TLS certificate has expired or is not valid yet".to_string()
    } else if details.contains("CertificateRequired") || details.contains("HandshakeFailure") {
        "Redis refused the TLS handshake; if it asks for a client certificate \
         (tls-auth-clients), set REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE"
            .to_string()
    } else if details.contains("InvalidCertificate") {
        let reason = details
            .split("InvalidCertificate(")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or("invalid");
        format!("Redis's TLS certificate was refused ({reason})")
    } else if details.contains("InvalidContentType") || details.contains("CorruptMessage") {
        "Redis did not answer in TLS: is the port in REDIS_URL its TLS port (tls-port)?".to_string()
    } else {
        return None;
    };
    Some(sentence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_become_sentences() {
        let unknown =
            "IO Error: Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }";
        assert!(explain_failure(unknown).is_some_and(
            |s| s.contains("not signed by a trusted CA") && s.contains("REDIS_TLS_CA_FILE")
        ));
        let name = "IO Error: Custom { kind: InvalidData, error: InvalidCertificate(NotValidForNameContext { expected: IpAddress(..), presented: [] }) }";
        assert!(explain_failure(name).is_some_and(|s| s.contains("does not name the host")));
        assert!(explain_failure("IO Error: Os { code: 111, kind: ConnectionRefused }").is_none());
    }

    #[test]
    fn missing_and_unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = client_config(&RedisTls {
            ca_file: Some(missing.clone()),
            client: None,
        })
        .unwrap_err();
        assert!(
            error.starts_with(&format!(
                "REDIS_TLS_CA_FILE={}: cannot read it",
                missing.display()
            )),
            "{error}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let error = client_config(&RedisTls {
            ca_file: Some(garbage),
            client: None,
        })
        .unwrap_err();
        assert!(error.contains("holds no PEM certificate"), "{error}");
    }
}
