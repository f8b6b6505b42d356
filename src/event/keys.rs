//! Ed25519 key files: Laniakea keyfiles (`metadata.id`, `ed.verify-key`, `ed.signing-key`)
//! and python-signedjson's one-line `ed25519 <version> <base64 seed>` format, plus the
//! lenient base64 both ecosystems expect.
//!
//! Keys written by `hark keygen` are Laniakea keyfiles, so `lk-keytool` output and hark
//! output are interchangeable in both directions.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};

/// Decode base64 the way Laniakea and Matrix do: padding optional, URL-safe alphabet when
/// `-` or `_` appears, non-zero trailing bits ignored.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let config = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if text.contains(['-', '_']) {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config).decode(text.trim())
}

/// Encode as standard, unpadded base64 (what every peer writes).
pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

/// A key file that could not be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl KeyError {
    fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        KeyError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// A secret key with the signer name it signs as.
#[derive(Clone)]
pub struct SigningKey {
    pub name: String,
    pub version: String,
    pub key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} ed25519:{})", self.name, self.version)
    }
}

/// A public key with the signer name it verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyKey {
    pub name: String,
    pub version: String,
    pub key: ed25519_dalek::VerifyingKey,
}

impl SigningKey {
    pub fn from_seed(name: &str, version: &str, seed: &[u8]) -> Result<Self, String> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| format!("an Ed25519 seed is 32 bytes, this one has {}", seed.len()))?;
        Ok(SigningKey {
            name: name.to_string(),
            version: version.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    pub fn generate(name: &str) -> Self {
        SigningKey {
            name: name.to_string(),
            version: "0".to_string(),
            key: ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// `ed25519:<version>`, the key id under which signatures are stored.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey {
            name: self.name.clone(),
            version: self.version.clone(),
            key: self.key.verifying_key(),
        }
    }
}

impl VerifyKey {
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }
}

/// Parse a Laniakea keyfile into `section -> key -> value`.
fn parse_keyfile(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            current = trimmed.to_string();
            continue;
        }
        if let Some((key, value)) = trimmed.split_once('=') {
            sections.entry(current.clone()).or_default().insert(
                key.trim().to_string(),
                value.trim().trim_matches('"').to_string(),
            );
        }
    }
    sections
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The signedjson line format names no signer; the file name (up to the first dot) does.
fn name_from_file(path: &Path) -> String {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("hark");
    file.split('.').next().unwrap_or(file).to_string()
}

fn signedjson_line(text: &str) -> Option<(String, String)> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "ed25519" {
        return None;
    }
    let version = parts.next()?.to_string();
    let key = parts.next()?.to_string();
    Some((version, key))
}

/// Read a secret key: a Laniakea secret keyfile or a signedjson `ed25519 <ver> <seed>` file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = read_text(path)?;
    warn_if_exposed(path);
    if let Some((version, seed)) = signedjson_line(&text) {
        let seed = decode_base64(&seed)
            .map_err(|e| KeyError::invalid(path, format!("seed is not base64: {e}")))?;
        return SigningKey::from_seed(&name_from_file(path), &version, &seed)
            .map_err(|e| KeyError::invalid(path, e));
    }
    let sections = parse_keyfile(&text);
    let id = keyfile_id(&sections, path)?;
    let seed = sections
        .get("ed")
        .and_then(|m| m.get("signing-key"))
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            KeyError::invalid(
                path,
                "no `signing-key` in the `ed` section (is this the public .key file rather than .key_secret?)",
            )
        })?;
    let seed = decode_base64(seed)
        .map_err(|e| KeyError::invalid(path, format!("signing-key is not base64: {e}")))?;
    SigningKey::from_seed(id, "0", &seed).map_err(|e| KeyError::invalid(path, e))
}

/// A secret key others can read is a key others can sign with: say so, as ssh does (but
/// go on: refusing would stop a relay over a permission). Group read is how the package
/// lets the `hark` group use root's key (0640 root:hark), so only more than that warns.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        tracing::warn!(
            "secret key {} is {} (mode {mode:04o}): anyone who can read it signs as its owner; chmod 600 it (or 640 with a group only hark is in)",
            path.display(),
            if mode & 0o007 != 0 { "open to every user" } else { "writable by its group" }
        );
    }
}

/// The signer name of a parsed Laniakea keyfile: `metadata.id`.
fn keyfile_id<'a>(
    sections: &'a BTreeMap<String, BTreeMap<String, String>>,
    path: &Path,
) -> Result<&'a String, KeyError> {
    sections
        .get("metadata")
        .and_then(|m| m.get("id"))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| KeyError::invalid(path, "no `id` in the `metadata` section"))
}

/// Read a public key from a Laniakea keyfile (public or secret).
pub fn read_verify_key(path: &Path) -> Result<VerifyKey, KeyError> {
    let text = read_text(path)?;
    if signedjson_line(&text).is_some() {
        return read_signing_key(path).map(|k| k.verify_key());
    }
    let sections = parse_keyfile(&text);
    let id = keyfile_id(&sections, path)?;
    let raw = sections
        .get("ed")
        .and_then(|m| m.get("verify-key"))
        .filter(|k| !k.is_empty())
        .ok_or_else(|| KeyError::invalid(path, "no `verify-key` in the `ed` section"))?;
    let bytes = decode_base64(raw)
        .map_err(|e| KeyError::invalid(path, format!("verify-key is not base64: {e}")))?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        KeyError::invalid(
            path,
            format!("verify-key must be 32 bytes, got {}", bytes.len()),
        )
    })?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| {
        KeyError::invalid(
            path,
            format!("verify-key is not a valid Ed25519 point: {e}"),
        )
    })?;
    Ok(VerifyKey {
        name: id.clone(),
        version: "0".to_string(),
        key,
    })
}

/// Files that package managers and editors leave behind, which must never be read as config.
pub fn is_ignored_file_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.contains(".dpkg-")
        || name.contains(".ucf-")
}

/// The trusted signers: signer name to public key.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<String, VerifyKey>,
}

impl Keyring {
    pub fn insert(&mut self, key: VerifyKey) {
        self.keys.insert(key.name.clone(), key);
    }

    /// Add `other`'s keys; where both hold a name, this keyring's key stays.
    pub fn merge(&mut self, other: Keyring) {
        for (name, key) in other.keys {
            self.keys.entry(name).or_insert(key);
        }
    }

    pub fn get(&self, name: &str) -> Option<&VerifyKey> {
        self.keys.get(name)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Load every public keyfile in `dir`. Unreadable files are returned as errors next to
    /// the keys that did load, so one bad file never hides the others.
    pub fn load_dir(dir: &Path) -> Result<(Keyring, Vec<KeyError>), KeyError> {
        let entries = fs::read_dir(dir).map_err(|source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !is_ignored_file_name(n))
            })
            .collect();
        paths.sort();
        let mut ring = Keyring::default();
        let mut errors = Vec::new();
        for path in paths {
            match read_verify_key(&path) {
                Ok(key) => ring.insert(key),
                Err(e) => errors.push(e),
            }
        }
        Ok((ring, errors))
    }
}

/// Details written into a new keyfile's `metadata` section.
#[derive(Debug, Clone, Default)]
pub struct KeyMetadata {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

fn keyfile_text(meta: &KeyMetadata, key: &SigningKey, secret: bool) -> String {
    let header = if secret {
        "#\n# Laniakea Messaging **Secret** Certificate\n# DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n#\n"
    } else {
        "#\n# Laniakea Messaging Public Certificate\n#\n"
    };
    let mut text = format!("{header}\nmetadata\n    id = \"{}\"\n", meta.id);
    if let Some(name) = &meta.name {
        text.push_str(&format!("    name = \"{name}\"\n"));
    }
    if let Some(email) = &meta.email {
        text.push_str(&format!("    email = \"{email}\"\n"));
    }
    text.push_str("    created-by = \"hark keygen\"\n");
    text.push_str(&format!(
        "    date-created = \"{}\"\n",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S%.6f")
    ));
    // pyzmq's certificate loader insists on a public-key line, even for sign-only keys.
    text.push_str("curve\n    public-key = \"\"\n");
    text.push_str(&format!(
        "ed\n    verify-key = \"{}\"\n",
        encode_base64(key.key.verifying_key().as_bytes())
    ));
    if secret {
        text.push_str(&format!(
            "    signing-key = \"{}\"\n",
            encode_base64(key.key.as_bytes())
        ));
    }
    text
}

/// Write `DIR/ID.key` (public) and `DIR/ID.key_secret` (mode 0600), refusing to overwrite.
/// Returns (public path, secret path).
pub fn write_keypair(
    dir: &Path,
    meta: &KeyMetadata,
    key: &SigningKey,
) -> Result<(PathBuf, PathBuf), KeyError> {
    let public = dir.join(format!("{}.key", meta.id));
    let secret = dir.join(format!("{}.key_secret", meta.id));
    for path in [&public, &secret] {
        if path.exists() {
            return Err(KeyError::invalid(
                path,
                "already exists; hark never overwrites a key (move it away first)",
            ));
        }
    }
    write_new(&secret, &keyfile_text(meta, key, true), 0o600)?;
    write_new(&public, &keyfile_text(meta, key, false), 0o644)?;
    Ok((public, secret))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATRIX_SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

    #[test]
    fn lenient_base64_accepts_trailing_bits_padding_and_urlsafe() {
        let seed = decode_base64(MATRIX_SEED).unwrap();
        assert_eq!(
            seed,
            decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA0=").unwrap()
        );
        assert_eq!(
            encode_base64(&seed),
            "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA0"
        );
        assert_eq!(decode_base64("-_8").unwrap(), vec![0xfb, 0xff]);
        for (plain, b64) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foob", "Zm9vYg"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode_base64(plain.as_bytes()), b64);
        }
    }

    #[test]
    fn matrix_seed_gives_known_verify_key() {
        let key = SigningKey::from_seed("x", "0", &decode_base64(MATRIX_SEED).unwrap()).unwrap();
        assert_eq!(
            encode_base64(key.key.verifying_key().as_bytes()),
            "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
        );
    }

    #[test]
    fn keypair_round_trips_and_secret_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("archive-master");
        let meta = KeyMetadata {
            id: "archive-master".into(),
            ..Default::default()
        };
        let (public, secret) = write_keypair(dir.path(), &meta, &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let read = read_signing_key(&secret).unwrap();
        assert_eq!(read.name, "archive-master");
        assert_eq!(read.key.as_bytes(), key.key.as_bytes());
        assert_eq!(read_verify_key(&public).unwrap(), key.verify_key());
        assert!(read_signing_key(&public).is_err());
        assert!(
            write_keypair(dir.path(), &meta, &key).is_err(),
            "must not overwrite"
        );
    }

    #[test]
    fn reads_laniakea_keytool_and_signedjson_formats() {
        let dir = tempfile::tempdir().unwrap();
        let lk = dir.path().join("test-signer.key_secret");
        fs::write(
            &lk,
            "#\n# Laniakea Messaging **Secret** Certificate\n#\n\nmetadata\n    id = \"test-signer\"\n    name = \"Test Signer\"\ncurve\n    public-key = \"\"\ned\n    verify-key = \"XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI\"\n    signing-key = \"YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA0\"\n",
        )
        .unwrap();
        assert_eq!(read_signing_key(&lk).unwrap().name, "test-signer");
        assert_eq!(read_verify_key(&lk).unwrap().name, "test-signer");
        let sj = dir.path().join("domain.signing.key");
        fs::write(&sj, format!("ed25519 1 {MATRIX_SEED}\n")).unwrap();
        let key = read_signing_key(&sj).unwrap();
        assert_eq!(
            (key.name.as_str(), key.key_id().as_str()),
            ("domain", "ed25519:1")
        );
    }

    #[test]
    fn trusted_dir_skips_leftovers_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("good");
        write_keypair(
            dir.path(),
            &KeyMetadata {
                id: "good".into(),
                ..Default::default()
            },
            &key,
        )
        .unwrap();
        fs::remove_file(dir.path().join("good.key_secret")).unwrap();
        fs::write(
            dir.path().join("broken.key"),
            "metadata\n    id = \"broken\"\n",
        )
        .unwrap();
        fs::write(dir.path().join("old.key.dpkg-old"), "garbage").unwrap();
        fs::write(dir.path().join(".hidden"), "garbage").unwrap();
        fs::write(dir.path().join("good.key~"), "garbage").unwrap();
        let (ring, errors) = Keyring::load_dir(dir.path()).unwrap();
        assert_eq!(ring.names().collect::<Vec<_>>(), vec!["good"]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("broken.key"));
    }
}
