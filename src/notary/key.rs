//! The log's signing key in `<data-dir>/tree/log-key`: its public key in the clear (so
//! `idledger log-key` needs no master key) and its seed sealed by the keyring, like every
//! other secret. Made once, at the first start.

use super::NotaryError;
use crate::secrets::{write_private, Keyring, Secret};
use base64::Engine;
use idledger_domain::{SealedSecret, StreamId};
use idledger_replay::tree::{LogPublicKey, LogSigningKey};
use std::path::{Path, PathBuf};

const HEADER: &str = "idledger log key v1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The keyring subject the seed is sealed under.
fn subject() -> StreamId {
    StreamId::new("log-signing-key").unwrap_or_else(|_| StreamId::tokens())
}

/// Where the key lives.
pub fn key_path(data_dir: &Path) -> PathBuf {
    crate::store::tree::tree_dir(data_dir).join("log-key")
}

/// The public key of a data dir's log, without unsealing anything.
pub fn public_key(data_dir: &Path) -> Result<LogPublicKey, NotaryError> {
    let text = std::fs::read_to_string(key_path(data_dir))
        .map_err(|e| NotaryError::Io(format!("{}: {e}", key_path(data_dir).display())))?;
    let (public, _) = parse(&text)?;
    Ok(public)
}

/// The public key in the bytes of a log key file (a backup's copy of one).
pub fn public_key_in(file: &[u8]) -> Result<LogPublicKey, NotaryError> {
    let text = std::str::from_utf8(file)
        .map_err(|_| NotaryError::Io("the log key file is malformed".into()))?;
    Ok(parse(text)?.0)
}

fn parse(text: &str) -> Result<(LogPublicKey, SealedSecret), NotaryError> {
    let mut lines = text.lines();
    let bad = || NotaryError::Io("the log key file is malformed".into());
    if lines.next() != Some(HEADER) {
        return Err(bad());
    }
    let public = LogPublicKey::parse(lines.next().ok_or_else(bad)?)
        .map_err(|e| NotaryError::Head(e.to_string()))?;
    let sealed = B64
        .decode(lines.next().ok_or_else(bad)?)
        .map_err(|_| bad())?;
    let sealed: SealedSecret = idledger_domain::codec::decode_exact(&sealed).map_err(|_| bad())?;
    Ok((public, sealed))
}

/// The data dir's signing key, made (and sealed) on first use.
pub fn load_or_create(data_dir: &Path, keyring: &Keyring) -> Result<LogSigningKey, NotaryError> {
    let path = key_path(data_dir);
    let seed = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (public, sealed) = parse(&text)?;
            let seed = keyring.unseal(&subject(), &sealed)?;
            let key = from_secret(public.name(), &seed)?;
            if key.public() != &public {
                return Err(NotaryError::Head(
                    "the sealed log key does not match its public key".into(),
                ));
            }
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
            Secret::new(B64.encode(seed))
        }
        Err(e) => return Err(NotaryError::Io(format!("{}: {e}", path.display()))),
    };
    // A name unique to this log: checkpoints of two logs never pass for each other.
    let origin = format!("idledger/{}", uuid::Uuid::new_v4().simple());
    let key = from_secret(&origin, &seed)?;
    let sealed = keyring.seal(&subject(), &seed)?;
    let mut encoded = Vec::new();
    idledger_domain::codec::encode_into(&sealed, &mut encoded)
        .map_err(|e| NotaryError::Io(e.to_string()))?;
    let sealed = encoded;
    let text = format!("{HEADER}\n{}\n{}\n", key.public(), B64.encode(sealed));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| NotaryError::Io(e.to_string()))?;
    }
    write_private(&path, text.as_bytes())?;
    tracing::info!(public_key = %key.public(), "made the log's signing key");
    Ok(key)
}

fn from_secret(origin: &str, seed: &Secret) -> Result<LogSigningKey, NotaryError> {
    let bytes = B64
        .decode(seed.expose())
        .map_err(|_| NotaryError::Head("the log key's seed is malformed".into()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| NotaryError::Head("the log key's seed is 32 bytes".into()))?;
    LogSigningKey::from_seed(origin, &seed).map_err(|e| NotaryError::Head(e.to_string()))
}
