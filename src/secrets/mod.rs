//! Secrets at rest (ENGINE.md §5): a master key, a data key per subject wrapped by it, and
//! secrets in events sealed with XChaCha20-Poly1305 under the subject's data key with the
//! stream name as associated data. Deleting a subject's data key (crypto-shredding) makes
//! its secrets unreadable while the log and its chain stay intact.

pub mod keystore;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use idledger_domain::{DataKeyId, SealedSecret, StreamId};
use rand::RngCore;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A secret value in memory: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A secret's text is wiped when it is dropped, so a password or client secret handled
/// here does not linger in freed memory (copies made outside, such as an answer's body,
/// are not ours to wipe).
impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the few places that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Read from request bodies; there is deliberately no `Serialize`, so a secret cannot be
/// written back out by accident. A value of another type is refused without being
/// repeated: serde's own message would quote a secret typed as a number into the error.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `any`: with `string`, serde_json refuses a number itself, quoting it.
        d.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl SecretVisitor {
    fn refused<E: serde::de::Error>() -> E {
        E::custom("expected a string (the value given is not repeated: it may be a secret)")
    }
}

impl serde::de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        Err(Self::refused())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
        Err(Self::refused())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
        Err(Self::refused())
    }
    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<Secret, E> {
        Err(Self::refused())
    }
    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<Secret, E> {
        Err(Self::refused())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        Err(Self::refused())
    }
    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(Self::refused())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why secrets could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The master key does not open the key store: another data dir's key, or a typo.
    #[error("the master key does not match this data dir's key store (wrong IDLEDGER_MASTER_KEY or master.key?)")]
    WrongMasterKey,
    /// The master key is not 32 bytes of base64.
    #[error("the master key must be 32 bytes, base64-encoded: {0}")]
    BadMasterKey(String),
    /// The subject's data key is gone (shredded) or never existed.
    #[error("the data key {0} is not in the key store (shredded?)")]
    MissingKey(DataKeyId),
    /// Decryption failed: wrong stream, or altered ciphertext.
    #[error("a sealed secret failed authentication")]
    Unseal,
    /// Reading or writing the key store or key file failed.
    #[error("key store: {0}")]
    Storage(String),
    /// The master key is missing, or kept where it must not be.
    #[error("{0}")]
    Placement(String),
}

/// `path` lies inside `dir` (both as they resolve; a file yet to be made by its parent).
fn inside(path: &Path, dir: &Path) -> bool {
    let resolve = |p: &Path| {
        std::fs::canonicalize(p).ok().or_else(|| {
            let parent = std::fs::canonicalize(p.parent()?).ok()?;
            Some(parent.join(p.file_name()?))
        })
    };
    match (resolve(path), std::fs::canonicalize(dir)) {
        (Some(p), Ok(d)) => p.starts_with(d),
        _ => false,
    }
}

/// Durable storage of wrapped data keys ([`crate::secrets::keystore::KeyFile`] in production).
pub trait KeyStorage: Send + Sync {
    /// Reads a value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SecretsError>;
    /// Writes values durably (on the device before returning).
    fn put_all(&self, entries: &[(&[u8], &[u8])]) -> Result<(), SecretsError>;
    /// Deletes values durably, leaving no readable copy in the storage's files; also
    /// carries out an earlier removal whose rewrite failed (so `&[]` retries it alone).
    fn remove_all(&self, keys: &[&[u8]]) -> Result<(), SecretsError>;
}

/// The 32-byte master key.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl Drop for MasterKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// Parses base64 text.
    pub fn from_base64(text: &str) -> Result<Self, SecretsError> {
        // The decoder's own words name the offending character and where it is.
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| SecretsError::BadMasterKey("not base64".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| SecretsError::BadMasterKey(format!("{} bytes", b.len())))?;
        Ok(MasterKey(key))
    }

    /// The master key: `IDLEDGER_MASTER_KEY` (base64) if set; else the file `file`, or
    /// `<data_dir>/master.key` when `allow_in_data_dir`, created (0600) when missing. A key
    /// file inside the data dir is refused unless allowed: whoever copies the data dir
    /// would have the key with what it protects. Returns the key and the path of a file
    /// just created.
    pub fn load(
        data_dir: &Path,
        file: Option<&Path>,
        allow_in_data_dir: bool,
    ) -> Result<(Self, Option<PathBuf>), SecretsError> {
        if let Ok(text) = std::env::var("IDLEDGER_MASTER_KEY") {
            return Ok((Self::from_base64(&text)?, None));
        }
        let path = match file {
            Some(f) => f.to_path_buf(),
            None if allow_in_data_dir => data_dir.join("master.key"),
            None => return Err(SecretsError::Placement(
                "no master key given: pass --master-key-file PATH (a file outside the data dir, created if missing) or IDLEDGER_MASTER_KEY, or --allow-master-key-in-data-dir to keep it at <data-dir>/master.key".into(),
            )),
        };
        if !allow_in_data_dir && inside(&path, data_dir) {
            return Err(SecretsError::Placement(format!(
                "the master key file {} is inside the data dir it protects; keep it elsewhere, or pass --allow-master-key-in-data-dir",
                path.display()
            )));
        }
        if path.exists() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| SecretsError::Storage(e.to_string()))?
                .permissions()
                .mode();
            // One other users may read is no secret any more (the owner's group may read
            // it, as a service's group does under a secrets manager, but not write it).
            if mode & 0o027 != 0 {
                return Err(SecretsError::Placement(format!(
                    "the master key file {} is open to other users (mode {:o}): chmod 600 (or 640) it",
                    path.display(),
                    mode & 0o777
                )));
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| SecretsError::Storage(e.to_string()))?;
            return Ok((Self::from_base64(&text)?, None));
        }
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        write_private(&path, format!("{}\n", B64.encode(key)).as_bytes())?;
        Ok((MasterKey(key), Some(path)))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

/// Writes a file readable by its owner only (0600), failing if it exists; a crash leaves
/// it whole or absent (see [`crate::durable::create_private`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    crate::durable::create_private(path, bytes)
        .map_err(|e| SecretsError::Storage(format!("{}: {e}", path.display())))
}

fn seal_with(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> ([u8; 24], Vec<u8>) {
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    // Encryption with a valid key and nonce size cannot fail.
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    (nonce, ct)
}

fn open_with(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8; 24],
    ct: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, SecretsError> {
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| SecretsError::Unseal)
}

const CHECK_KEY: &[u8] = b"master-check";

/// Locks subjects' key makings and shreds are spread over.
const SUBJECT_LOCKS: usize = 64;
const CHECK_TEXT: &[u8] = b"idledger master key check v1";

/// Seals and unseals secrets with per-subject data keys.
pub struct Keyring {
    master: MasterKey,
    storage: Arc<dyn KeyStorage>,
    /// Unsealed data keys, each in a box of its own that is wiped where it lies when the
    /// key is dropped (a shred, or the keyring's end).
    cache: Mutex<HashMap<DataKeyId, Box<zeroize::Zeroizing<[u8; 32]>>>>,
    /// Held (shared) by whatever makes or shreds a key, and alone by a reader that must
    /// see the key store unchanged ([`Keyring::with_keys_unchanged`]): makings and shreds
    /// of different subjects still run side by side.
    keys_changing: std::sync::RwLock<()>,
    /// One of these, by the subject's stream, held across a look-up in storage and the
    /// key made or shredded after it: two racing first seals would each make a key, and
    /// the first, sealed under, would outlive the shred.
    subject_locks: [Mutex<()>; SUBJECT_LOCKS],
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyring")
    }
}

/// HMAC-SHA-256 of `message` under a key derived from `data_key` for tags alone (the data
/// key itself only ever encrypts).
fn tag_with(data_key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    use ring::hmac;
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, data_key),
        b"idledger tags v1",
    );
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        message,
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn subject_key(stream: &StreamId) -> Vec<u8> {
    format!("subject:{stream}").into_bytes()
}

fn data_key_key(id: DataKeyId) -> Vec<u8> {
    format!("dk:{id}").into_bytes()
}

impl Keyring {
    /// Opens the key store with `master`; a store made under another master key is refused.
    pub fn open(master: MasterKey, storage: Arc<dyn KeyStorage>) -> Result<Self, SecretsError> {
        let cipher = master.cipher();
        match storage.get(CHECK_KEY)? {
            None => {
                let (nonce, ct) = seal_with(&cipher, CHECK_TEXT, CHECK_KEY);
                storage.put_all(&[(CHECK_KEY, &[&nonce[..], &ct].concat())])?;
            }
            Some(v) if v.len() > 24 => {
                let nonce: [u8; 24] = v[..24]
                    .try_into()
                    .map_err(|_| SecretsError::WrongMasterKey)?;
                let text = open_with(&cipher, &nonce, &v[24..], CHECK_KEY)
                    .map_err(|_| SecretsError::WrongMasterKey)?;
                if text != CHECK_TEXT {
                    return Err(SecretsError::WrongMasterKey);
                }
            }
            Some(_) => return Err(SecretsError::WrongMasterKey),
        }
        Ok(Keyring {
            master,
            storage,
            cache: Mutex::new(HashMap::new()),
            keys_changing: std::sync::RwLock::new(()),
            subject_locks: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    fn load(&self, id: DataKeyId) -> Result<[u8; 32], SecretsError> {
        if let Some(k) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(***k);
        }
        let wrapped = self
            .storage
            .get(&data_key_key(id))?
            .ok_or(SecretsError::MissingKey(id))?;
        if wrapped.len() <= 24 {
            return Err(SecretsError::MissingKey(id));
        }
        let nonce: [u8; 24] = wrapped[..24].try_into().map_err(|_| SecretsError::Unseal)?;
        let mut opened = open_with(
            &self.master.cipher(),
            &nonce,
            &wrapped[24..],
            id.0.as_bytes(),
        )?;
        let key: Result<[u8; 32], _> = opened.as_slice().try_into();
        zeroize::Zeroize::zeroize(&mut opened);
        let key = key.map_err(|_| SecretsError::Unseal)?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Box::new(zeroize::Zeroizing::new(key)));
        // A shred between the read above and the insert would be undone by it: a shred
        // removes the key from storage before the cache, so looking again settles it.
        if self.storage.get(&data_key_key(id))?.is_none() {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(SecretsError::MissingKey(id));
        }
        Ok(key)
    }

    /// The lock of `stream`'s subject.
    fn subject_lock(&self, stream: &StreamId) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        stream.as_str().hash(&mut h);
        self.subject_locks[(h.finish() as usize) % SUBJECT_LOCKS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The data key of `stream`'s subject, created (and stored durably) on first use.
    fn key_for(&self, stream: &StreamId) -> Result<(DataKeyId, [u8; 32]), SecretsError> {
        let existing = |v: Vec<u8>| {
            uuid::Uuid::from_slice(&v)
                .map(DataKeyId)
                .map_err(|e| SecretsError::Storage(e.to_string()))
        };
        if let Some(v) = self.storage.get(&subject_key(stream))? {
            let id = existing(v)?;
            return Ok((id, self.load(id)?));
        }
        let changing = self.keys_changing.read().unwrap_or_else(|e| e.into_inner());
        let subject = self.subject_lock(stream);
        // Another seal may have made the key while this one waited.
        if let Some(v) = self.storage.get(&subject_key(stream))? {
            let id = existing(v)?;
            drop((subject, changing));
            return Ok((id, self.load(id)?));
        }
        let id = DataKeyId(uuid::Uuid::new_v4());
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let (nonce, ct) = seal_with(&self.master.cipher(), &key, id.0.as_bytes());
        // Both in one durable write: a subject never points at a missing key.
        self.storage.put_all(&[
            (&data_key_key(id), &[&nonce[..], &ct].concat()),
            (&subject_key(stream), id.0.as_bytes()),
        ])?;
        Ok((id, key))
    }

    /// A tag of `message` under `stream`'s key (made now if it has none): how this server
    /// recognises, without storing them, tokens it issued for that subject. Shredding the
    /// key ends every tag of it.
    pub fn tag(&self, stream: &StreamId, message: &[u8]) -> Result<[u8; 32], SecretsError> {
        let (_, key) = self.key_for(stream)?;
        Ok(tag_with(&key, message))
    }

    /// [`Keyring::tag`] when `stream` has a key already; `None` when it has none (no key is
    /// made: what anyone may ask for must not grow the key store).
    pub fn tag_existing(&self, stream: &StreamId, message: &[u8]) -> Option<[u8; 32]> {
        self.existing_key(stream).map(|key| tag_with(&key, message))
    }

    fn existing_key(&self, stream: &StreamId) -> Option<[u8; 32]> {
        match self.storage.get(&subject_key(stream)) {
            Ok(Some(v)) => uuid::Uuid::from_slice(&v)
                .ok()
                .and_then(|id| self.load(DataKeyId(id)).ok()),
            _ => None,
        }
    }

    /// Whether `tag` begins `stream`'s tag of `message` (at least 16 bytes of it); false
    /// when the subject has no key.
    pub fn tag_verifies(&self, stream: &StreamId, message: &[u8], tag: &[u8]) -> bool {
        let Some(expected) = self.tag_existing(stream, message) else {
            return false;
        };
        tag.len() >= 16
            && tag.len() <= expected.len()
            && expected
                .iter()
                .zip(tag)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }

    /// Runs `f` while no data key is made or shredded: a backup reads the log's head and
    /// the key store under it, so the keys it carries are exactly those of its records
    /// (every shred follows its deletion's append, and is then at or before that head).
    /// `f` must not seal or shred: it would wait for itself.
    pub fn with_keys_unchanged<T>(&self, f: impl FnOnce() -> T) -> T {
        let _unchanged = self
            .keys_changing
            .write()
            .unwrap_or_else(|e| e.into_inner());
        f()
    }

    /// Seals `plaintext` for an event of `stream`.
    pub fn seal(
        &self,
        stream: &StreamId,
        plaintext: &Secret,
    ) -> Result<SealedSecret, SecretsError> {
        let (key_id, key) = self.key_for(stream)?;
        let cipher = XChaCha20Poly1305::new((&key).into());
        let (nonce, ciphertext) = seal_with(
            &cipher,
            plaintext.expose().as_bytes(),
            stream.as_str().as_bytes(),
        );
        Ok(SealedSecret {
            key_id,
            nonce,
            ciphertext,
        })
    }

    /// Opens a secret sealed for `stream`.
    pub fn unseal(&self, stream: &StreamId, sealed: &SealedSecret) -> Result<Secret, SecretsError> {
        let key = self.load(sealed.key_id)?;
        let cipher = XChaCha20Poly1305::new((&key).into());
        let bytes = open_with(
            &cipher,
            &sealed.nonce,
            &sealed.ciphertext,
            stream.as_str().as_bytes(),
        )?;
        String::from_utf8(bytes)
            .map(Secret)
            .map_err(|_| SecretsError::Unseal)
    }

    /// Carries out every shred whose rewrite of the key store failed (a no-op, and cheap,
    /// when none is owed).
    pub fn finish_shreds(&self) -> Result<(), SecretsError> {
        let _changing = self.keys_changing.read().unwrap_or_else(|e| e.into_inner());
        self.storage.remove_all(&[])
    }

    /// Crypto-shreds `stream`'s subject: every secret sealed for it becomes unreadable,
    /// and its data key is in no file of the data dir any more.
    pub fn shred(&self, stream: &StreamId) -> Result<(), SecretsError> {
        let _changing = self.keys_changing.read().unwrap_or_else(|e| e.into_inner());
        let _subject = self.subject_lock(stream);
        if let Some(id) = shred_in(&*self.storage, stream)? {
            // Dropped from the cache, the key is wiped in its box, not only forgotten.
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        Ok(())
    }
}

/// Removes `stream`'s subject and its data key from `storage` (no master key needed);
/// answers the data key's id when there was one.
fn shred_in(
    storage: &dyn KeyStorage,
    stream: &StreamId,
) -> Result<Option<DataKeyId>, SecretsError> {
    let Some((gone, id)) = subject_entries(storage, stream)? else {
        // Gone from the store's memory, maybe not from its file: an earlier shred whose
        // rewrite failed is retried (a no-op when none is pending).
        storage.remove_all(&[&subject_key(stream)])?;
        return Ok(None);
    };
    let keys: Vec<&[u8]> = gone.iter().map(Vec::as_slice).collect();
    storage.remove_all(&keys)?;
    Ok(id)
}

/// The entries that hold `stream`'s key (its subject and data key), if it has one.
type SubjectEntries = (Vec<Vec<u8>>, Option<DataKeyId>);

fn subject_entries(
    storage: &dyn KeyStorage,
    stream: &StreamId,
) -> Result<Option<SubjectEntries>, SecretsError> {
    let subject = subject_key(stream);
    let Some(v) = storage.get(&subject)? else {
        return Ok(None);
    };
    let id = uuid::Uuid::from_slice(&v).ok().map(DataKeyId);
    let mut entries = vec![subject];
    entries.extend(id.map(data_key_key));
    Ok(Some((entries, id)))
}

/// Whether `storage` holds the data key `id`: what opening a secret sealed under it needs.
pub fn holds_data_key(storage: &dyn KeyStorage, id: DataKeyId) -> Result<bool, SecretsError> {
    Ok(storage.get(&data_key_key(id))?.is_some())
}

/// Shreds every one of `streams` whose key `storage` still holds, in one rewrite; for
/// the users the log says are deleted, after a crash between a deletion's append and its
/// shred, or with a keystore restored from before the shred. Answers how many were
/// shredded.
pub fn shred_all(
    storage: &dyn KeyStorage,
    streams: impl IntoIterator<Item = StreamId>,
) -> Result<usize, SecretsError> {
    let mut gone = Vec::new();
    let mut shredded = 0;
    for stream in streams {
        if let Some((entries, _)) = subject_entries(storage, &stream)? {
            gone.extend(entries);
            shredded += 1;
        }
    }
    if shredded > 0 {
        let keys: Vec<&[u8]> = gone.iter().map(Vec::as_slice).collect();
        storage.remove_all(&keys)?;
    }
    Ok(shredded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(b: u8) -> MasterKey {
        MasterKey([b; 32])
    }

    #[test]
    fn seal_unseal_bind_the_stream_and_shred() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::secrets::keystore::KeyFile::open(dir.path()).unwrap());
        let ring = Keyring::open(master(1), storage.clone()).unwrap();
        let d = StreamId::domain(idledger_domain::DomainId(uuid::Uuid::from_u128(1)));
        let other = StreamId::domain(idledger_domain::DomainId(uuid::Uuid::from_u128(2)));
        let sealed = ring.seal(&d, &Secret::new("s3cret")).unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(ring.unseal(&d, &sealed).unwrap().expose(), "s3cret");
        assert!(
            matches!(ring.unseal(&other, &sealed), Err(SecretsError::Unseal)),
            "stream is bound"
        );
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(ring.unseal(&d, &altered).is_err());
        // The same subject keeps one data key.
        assert_eq!(
            ring.seal(&d, &Secret::new("x")).unwrap().key_id,
            sealed.key_id
        );
        ring.shred(&d).unwrap();
        assert!(matches!(
            ring.unseal(&d, &sealed),
            Err(SecretsError::MissingKey(_))
        ));
        // A wrong master key is refused up front.
        assert!(matches!(
            Keyring::open(master(2), storage.clone()),
            Err(SecretsError::WrongMasterKey)
        ));
        assert!(Keyring::open(master(1), storage).is_ok());
        assert!(!format!("{:?} {:?}", master(1), Secret::new("s3cret")).contains("s3cret"));
    }

    /// Seals racing for a subject's first key share one, so the shred leaves none behind.
    #[test]
    fn racing_first_seals_of_a_subject_share_one_key_and_the_shred_ends_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::secrets::keystore::KeyFile::open(dir.path()).unwrap());
        let ring = Arc::new(Keyring::open(master(1), storage).unwrap());
        let user = StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(9)));
        let start = Arc::new(std::sync::Barrier::new(8));
        let sealed: Vec<SealedSecret> = (0..8)
            .map(|_| {
                let (ring, user, start) = (ring.clone(), user.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    ring.seal(&user, &Secret::new("pw")).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(
            sealed.iter().all(|s| s.key_id == sealed[0].key_id),
            "one key for the subject"
        );
        ring.shred(&user).unwrap();
        for s in &sealed {
            assert!(matches!(
                ring.unseal(&user, s),
                Err(SecretsError::MissingKey(_))
            ));
        }
    }

    /// A tag verifies under its subject's key only, in any prefix of 16 bytes or more,
    /// and never once the key is shredded.
    #[test]
    fn tags_verify_for_their_subject_until_its_key_is_shredded() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::secrets::keystore::KeyFile::open(dir.path()).unwrap());
        let ring = Keyring::open(master(1), storage).unwrap();
        let adele = StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(1)));
        let alex = StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(2)));
        assert!(!ring.tag_verifies(&adele, b"m", &[0; 16]), "no key yet");
        assert_eq!(ring.tag_existing(&adele, b"m"), None, "none made");
        assert!(!ring.tag_verifies(&adele, b"m", &[0; 16]), "still none");
        let tag = ring.tag(&adele, b"m").unwrap();
        assert_eq!(ring.tag_existing(&adele, b"m"), Some(tag));
        assert!(ring.tag_verifies(&adele, b"m", &tag));
        assert!(ring.tag_verifies(&adele, b"m", &tag[..16]));
        assert!(!ring.tag_verifies(&adele, b"m", &tag[..15]), "too short");
        assert!(
            !ring.tag_verifies(&adele, b"n", &tag[..16]),
            "another message"
        );
        ring.tag(&alex, b"m").unwrap();
        assert!(
            !ring.tag_verifies(&alex, b"m", &tag[..16]),
            "another subject"
        );
        let mut flipped = tag;
        flipped[3] ^= 1;
        assert!(!ring.tag_verifies(&adele, b"m", &flipped[..16]));
        ring.shred(&adele).unwrap();
        assert!(!ring.tag_verifies(&adele, b"m", &tag[..16]), "shredded");
    }

    /// A shred whose rewrite failed is done by the next shred of the subject, though the
    /// key is gone from memory already.
    #[test]
    fn a_shred_retried_after_a_failed_rewrite_leaves_no_key_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::secrets::keystore::KeyFile::open(dir.path()).unwrap());
        let ring = Keyring::open(master(1), storage).unwrap();
        let user = StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(5)));
        let sealed = ring.seal(&user, &Secret::new("pw")).unwrap();
        let file = crate::secrets::keystore::path_in(dir.path());
        let wrapped = |text: &str| text.contains(&B64.encode(data_key_key(sealed.key_id)));
        assert!(wrapped(&std::fs::read_to_string(&file).unwrap()));
        // The rewrite's temporary file cannot be made where a directory stands.
        let tmp = file.with_extension("tmp");
        std::fs::create_dir(&tmp).unwrap();
        assert!(ring.shred(&user).is_err());
        std::fs::remove_dir(&tmp).unwrap();
        ring.shred(&user).unwrap();
        assert!(!wrapped(&std::fs::read_to_string(&file).unwrap()));
    }

    /// What a backup reads under `with_keys_unchanged` no shred can change meanwhile.
    #[test]
    fn a_shred_waits_for_a_read_of_unchanged_keys() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::secrets::keystore::KeyFile::open(dir.path()).unwrap());
        let ring = Arc::new(Keyring::open(master(1), storage.clone()).unwrap());
        let user = StreamId::user(idledger_domain::UserId(uuid::Uuid::from_u128(4)));
        let sealed = ring.seal(&user, &Secret::new("pw")).unwrap();
        let (read, shredder) = ring.with_keys_unchanged(|| {
            let shredder = {
                let (ring, user) = (ring.clone(), user.clone());
                std::thread::spawn(move || ring.shred(&user).unwrap())
            };
            std::thread::sleep(std::time::Duration::from_millis(100));
            (storage.get(&subject_key(&user)).unwrap(), shredder)
        });
        assert!(read.is_some(), "the key was still there for the whole read");
        shredder.join().unwrap();
        assert!(ring.unseal(&user, &sealed).is_err());
    }

    #[test]
    fn master_keys_parse_from_base64_only_at_32_bytes() {
        assert!(MasterKey::from_base64(&B64.encode([7u8; 32])).is_ok());
        assert!(MasterKey::from_base64(&B64.encode([7u8; 16])).is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
    }
}
