//! Encryption per handle (ARCHITECTURE.md): which keyring a scope seals and opens with. The
//! keys and the sealing itself are in `base::crypto`.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::base::crypto::{EncryptionKey, Keyring};
use crate::base::codec::Envelope;
use crate::base::error::Result;
use crate::engine::Cache;

impl Cache {
    /// A handle on the same scope that encrypts the values it writes with `key` and reads only
    /// values encrypted with it (or with the old keys of
    /// [`with_old_encryption_keys`](Cache::with_old_encryption_keys)); anything else under
    /// its keys is a miss. Handles made from it ([`namespace`](Cache::namespace),
    /// [`tenant`](Cache::tenant)) encrypt too. See the README's "Encryption" section.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKey};
    /// let cache = Cache::in_memory();
    /// let pii = cache.namespace("pii").with_encryption(EncryptionKey::generate()?);
    /// pii.set("user:1:email", &"ann@example.com", None).await?;
    /// assert_eq!(pii.get::<String>("user:1:email").await?.as_deref(), Some("ann@example.com"));
    /// assert!(pii.is_encrypted() && !cache.is_encrypted());
    /// # Ok(()) }
    /// ```
    pub fn with_encryption(&self, key: EncryptionKey) -> Cache {
        let old = self
            .scope
            .encryption
            .as_ref()
            .map(|k| k.old_keys().to_vec())
            .unwrap_or_default();
        self.with_keyring(Some(Keyring::new(key, old)))
    }

    /// A handle on the same scope that also reads values encrypted with `old` keys (writing
    /// with its own key): what a key rotation needs. Without an encryption key on the handle,
    /// it is the same handle.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKey};
    /// let (old, new) = (EncryptionKey::generate()?, EncryptionKey::generate()?);
    /// let cache = Cache::in_memory();
    /// cache.with_encryption(old.clone()).set("k", &1u8, None).await?;
    /// let rotated = cache.with_encryption(new).with_old_encryption_keys([old]);
    /// assert_eq!(rotated.get::<u8>("k").await?, Some(1));
    /// # Ok(()) }
    /// ```
    pub fn with_old_encryption_keys(&self, old: impl IntoIterator<Item = EncryptionKey>) -> Cache {
        let keyring = self
            .scope
            .encryption
            .as_ref()
            .map(|k| Keyring::clone(k).with_old_keys(old));
        self.with_keyring(keyring)
    }

    /// A handle on the same scope that neither encrypts nor reads encrypted values (for data
    /// that needs no encryption under an encrypted root, say).
    ///
    /// ```
    /// # fn main() -> Result<(), cache_core::Error> {
    /// use cache_core::{Cache, EncryptionKey};
    /// let cache = Cache::builder().encryption_key(EncryptionKey::generate()?).build()?;
    /// assert!(cache.is_encrypted());
    /// assert!(!cache.namespace("public").without_encryption().is_encrypted());
    /// # Ok(()) }
    /// ```
    pub fn without_encryption(&self) -> Cache {
        self.with_keyring(None)
    }

    /// Whether this handle encrypts the values it writes.
    ///
    /// ```
    /// assert!(!cache_core::Cache::in_memory().is_encrypted());
    /// ```
    pub fn is_encrypted(&self) -> bool {
        self.scope.encryption.is_some()
    }

    fn with_keyring(&self, keyring: Option<Keyring>) -> Cache {
        Cache {
            shared: self.shared.clone(),
            scope: Arc::new(crate::engine::Scope {
                encryption: keyring.map(Arc::new),
                ..crate::engine::Scope::clone(&self.scope)
            }),
        }
    }

    /// Encrypts an encoded envelope when this handle has a key.
    pub(crate) fn seal(&self, full: &str, envelope: Vec<u8>) -> Result<Vec<u8>> {
        match &self.scope.encryption {
            None => Ok(envelope),
            Some(keyring) => keyring.seal(full, envelope),
        }
    }

    /// The value of a parsed entry: decrypted first if the handle encrypts. A handle with a key
    /// reads only encrypted entries (a plain one could have been put there by anyone with
    /// access to Redis); a handle without one cannot read encrypted ones.
    pub(crate) fn open_value<T: DeserializeOwned + 'static>(
        &self,
        full: &str,
        bytes: &[u8],
        env: &Envelope<'_>,
        fingerprint: u64,
    ) -> std::result::Result<T, String> {
        match (&self.scope.encryption, env.is_encrypted()) {
            (None, _) => env.value(fingerprint),
            (Some(keyring), true) => {
                let plaintext = keyring.open(full, bytes, env)?;
                env.value_from(plaintext, fingerprint)
            }
            (Some(_), false) => {
                Err("not encrypted, and this handle reads only encrypted values".to_owned())
            }
        }
    }
}

