//! Encryption per handle (ARCHITECTURE.md): which keyring a scope seals and opens with. The
//! keys and the sealing itself are in `base::crypto`.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::base::codec::Envelope;
use crate::base::crypto::{EncryptionKey, Keyring};
use crate::base::error::Result;
use crate::engine::Handle;

impl Handle {
    pub(crate) fn with_encryption(&self, key: EncryptionKey) -> Handle {
        let old = self
            .scope
            .encryption
            .as_ref()
            .map(|k| k.old_keys().to_vec())
            .unwrap_or_default();
        self.with_keyring(Some(Keyring::new(key, old)))
    }

    pub(crate) fn with_old_encryption_keys(
        &self,
        old: impl IntoIterator<Item = EncryptionKey>,
    ) -> Handle {
        let keyring = self
            .scope
            .encryption
            .as_ref()
            .map(|k| Keyring::clone(k).with_old_keys(old));
        self.with_keyring(keyring)
    }

    pub(crate) fn without_encryption(&self) -> Handle {
        self.with_keyring(None)
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.scope.encryption.is_some()
    }

    fn with_keyring(&self, keyring: Option<Keyring>) -> Handle {
        Handle {
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
