//! The keyring: where Rise keeps the key material it generates itself, and how it rotates it.
//!
//! A key *family* (the registry-token signing keys, the grant HMAC secrets) has three slots:
//! `current` signs, `next` is already trusted (published in the registry's certificate bundle,
//! accepted when checking grants) but signs nothing yet, and `previous` is the key `current`
//! replaced, kept trusted so that what it signed stays valid until it expires. A rotation moves
//! every slot one step (`previous ← current ← next ← fresh`), so no replica ever meets a
//! signature it does not trust: whatever a replica that has not reloaded yet signs with was
//! `current` or `next` before, and both are trusted by every replica before and after.
//!
//! Two places hold the slots:
//! - **Files** (the embedded default, one host): `<data_dir>/keys/`, one 0600 file per slot,
//!   created atomically first-writer-wins, so processes sharing the data directory agree.
//! - **The database** (PostgreSQL, several replicas): table `rise_keys`, one row per slot, each
//!   value sealed with AES-256-GCM under `[keys] sealing_key` (the row name is the associated
//!   data, so a value cannot be moved to another slot). A database dump alone yields no key.
//!
//! Replicas pick up a rotation by re-reading the slots every `[keys] reload_interval`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::store::Store;

/// Directory under the data dir that holds every key Rise generates.
pub const KEYS_DIR: &str = "keys";
/// Serialises rotations of file-backed keys on one host.
const ROTATE_LOCK_FILE: &str = ".rotate.lock";
/// Prefix of a sealed value in `rise_keys` (format version 1).
const SEALED_PREFIX: &str = "sealed:v1:";

/// `[keys]`: where generated keys live and how often replicas look for a rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// 32 random bytes, base64 (`openssl rand -base64 32`), that seal the keys stored in
    /// PostgreSQL. Required with a PostgreSQL database; unused with SQLite (keys stay in files).
    /// A secret: may be given as `sealing_key_file`.
    #[serde(default)]
    pub sealing_key: Option<SecretString>,
    /// The sealing key being replaced: values sealed with it still open, and
    /// `rise-backend keys reseal` seals them again with `sealing_key`. Remove it once that has
    /// run. A secret: may be given as `previous_sealing_key_file`.
    #[serde(default)]
    pub previous_sealing_key: Option<SecretString>,
    /// How often a running server re-reads its keys to pick up a rotation.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            sealing_key: None,
            previous_sealing_key: None,
            reload_interval: default_reload_interval(),
        }
    }
}

impl KeysConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&self.reload_interval)
        {
            return Err("keys.reload_interval must be between 100ms and 1h".into());
        }
        Ok(())
    }
}

/// A slot of a key family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Current,
    Next,
    Previous,
}

impl Slot {
    fn as_str(self) -> &'static str {
        match self {
            Slot::Current => "current",
            Slot::Next => "next",
            Slot::Previous => "previous",
        }
    }
}

/// A family of keys: its name, its file names, and how a fresh key is made.
#[derive(Debug, Clone, Copy)]
pub struct KeyFamily {
    /// Row names in `rise_keys` are `<name>/<slot>`.
    pub name: &'static str,
    /// File names under `<data_dir>/keys/` for `current`, `next` and `previous`.
    pub files: [&'static str; 3],
    /// A fresh key's stored form.
    pub generate: fn() -> anyhow::Result<Zeroizing<Vec<u8>>>,
}

impl KeyFamily {
    fn file(&self, slot: Slot) -> &'static str {
        match slot {
            Slot::Current => self.files[0],
            Slot::Next => self.files[1],
            Slot::Previous => self.files[2],
        }
    }

    fn row(&self, slot: Slot) -> String {
        format!("{}/{}", self.name, slot.as_str())
    }
}

/// The stored forms of one family's keys: `current` and `next` always exist (generated on first
/// use), `previous` once a rotation happened.
pub struct FamilyKeys {
    pub current: Zeroizing<Vec<u8>>,
    pub next: Zeroizing<Vec<u8>>,
    pub previous: Option<Zeroizing<Vec<u8>>>,
}

/// Where generated keys live; cheap to clone.
#[derive(Clone)]
pub struct Keyring {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    /// The data directory; keys are in its `keys/`, created on first use (`create_dir`) or,
    /// for a keyring that only reads, required to exist.
    Files {
        data_dir: PathBuf,
        create_dir: bool,
    },
    Database {
        store: Store,
        sealer: Sealer,
    },
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("location", &self.describe())
            .finish()
    }
}

impl Keyring {
    /// Keys in `<data_dir>/keys/` (created 0700 when a key is first needed).
    pub fn files(data_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            backend: Backend::Files {
                data_dir: data_dir.to_path_buf(),
                create_dir: true,
            },
        })
    }

    /// Keys in the database, sealed with `sealing_key` (base64 of 32 bytes); values sealed with
    /// `previous` (the sealing key being replaced) still open.
    pub fn database(
        store: Store,
        sealing_key: &SecretString,
        previous: Option<&SecretString>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            backend: Backend::Database {
                store,
                sealer: Sealer::new(sealing_key, previous)?,
            },
        })
    }

    /// The keyring a server with this store uses: the database when it is PostgreSQL (shared by
    /// the replicas), files in the data directory otherwise.
    pub fn for_store(store: &Store, data_dir: &Path, config: &KeysConfig) -> anyhow::Result<Self> {
        if store.is_shared() {
            let key = config.sealing_key.as_ref().context(
                "keys.sealing_key is required with a PostgreSQL database: replicas share their signing keys through the database, sealed with it. Generate one with `openssl rand -base64 32` and set it (or keys.sealing_key_file, or RISE_KEYS__SEALING_KEY)",
            )?;
            Self::database(store.clone(), key, config.previous_sealing_key.as_ref())
        } else {
            if let Some(key) = &config.sealing_key {
                // Checked anyway, so a malformed key is found before it is needed.
                Sealer::new(key, config.previous_sealing_key.as_ref())?;
                tracing::warn!(
                    "keys.sealing_key is set but unused: with SQLite the keys stay in files in the data directory"
                );
            } else if config.previous_sealing_key.is_some() {
                bail!(
                    "keys.previous_sealing_key is set without keys.sealing_key: it only opens keys while sealing_key takes over"
                );
            }
            Self::files(data_dir)
        }
    }

    /// This keyring for commands that only read (`keys show`): keys in files are read from the
    /// key directory a server (or `registry-config`) made, never from a new one. A missing key
    /// directory is an error naming it, so a mistyped data directory does not get fresh keys
    /// shown as if they were the server's. In an existing directory a missing slot is made as
    /// by every reader: that is how a rotation cut short is completed, and how the family
    /// `registry-config` did not need appears. Keys in PostgreSQL are unaffected: that database
    /// is configured explicitly, and whoever reads it first generates the keys every replica
    /// then shares.
    pub fn existing_key_dir_only(mut self) -> Self {
        if let Backend::Files { create_dir, .. } = &mut self.backend {
            *create_dir = false;
        }
        self
    }

    /// Where the keys are, for logs and messages.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Files { data_dir, .. } => {
                format!("files in {}", data_dir.join(KEYS_DIR).display())
            }
            Backend::Database { .. } => "the database (sealed)".to_owned(),
        }
    }

    /// The family's keys, generating `current` and `next` if they do not exist yet.
    pub async fn load(&self, family: &KeyFamily) -> anyhow::Result<FamilyKeys> {
        match &self.backend {
            Backend::Files {
                data_dir,
                create_dir,
            } => {
                let dir = if *create_dir {
                    keys_dir(data_dir)?
                } else {
                    existing_keys_dir(data_dir)?
                };
                let family = *family;
                off_the_runtime(move || load_files(&dir, &family)).await
            }
            Backend::Database { store, sealer } => {
                let rows = [
                    family.row(Slot::Current),
                    family.row(Slot::Next),
                    family.row(Slot::Previous),
                ];
                // One statement reads every slot: a rotation shows whole or not at all.
                let mut stored = store.key_get_all_of(&rows).await?;
                let holds = |stored: &[(String, String)], row: &str| {
                    stored.iter().any(|(name, _)| name == row)
                };
                let mut created = false;
                for row in &rows[..2] {
                    if !holds(&stored, row) {
                        let fresh = sealer.seal(row, &(family.generate)()?)?;
                        // First writer wins: every replica reads back the same row.
                        store.key_get_or_insert(row, &fresh).await?;
                        created = true;
                    }
                }
                if created {
                    stored = store.key_get_all_of(&rows).await?;
                }
                let open = |row: &str| {
                    stored
                        .iter()
                        .find(|(name, _)| name == row)
                        .map(|(_, value)| sealer.open(row, value))
                        .transpose()
                };
                let vanished = |row: &str| format!("key slot {row} vanished while being read");
                Ok(FamilyKeys {
                    current: open(&rows[0])?.with_context(|| vanished(&rows[0]))?,
                    next: open(&rows[1])?.with_context(|| vanished(&rows[1]))?,
                    previous: open(&rows[2])?,
                })
            }
        }
    }

    /// When the family was last rotated (`None`: never). Every rotation rewrites `previous`,
    /// so its write time is the rotation's.
    pub async fn last_rotation(&self, family: &KeyFamily) -> anyhow::Result<Option<SystemTime>> {
        match &self.backend {
            Backend::Files { data_dir, .. } => {
                let path = data_dir.join(KEYS_DIR).join(family.file(Slot::Previous));
                match fs::metadata(&path) {
                    Ok(meta) => Ok(Some(meta.modified().with_context(|| {
                        format!("reading the modification time of {}", path.display())
                    })?)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
                }
            }
            Backend::Database { store, .. } => Ok(store
                .key_updated_ms(&family.row(Slot::Previous))
                .await?
                .map(crate::audit::from_unix_ms)),
        }
    }

    /// Which key a rotation of `family` would promote now: a digest of the stored `next`
    /// value (never the key itself). Pass it to [`rotate_from`](Self::rotate_from) so the
    /// rotation promotes exactly the key that was checked, or fails.
    pub async fn next_key(&self, family: &KeyFamily) -> anyhow::Result<NextKey> {
        // Make sure current and next exist.
        self.load(family).await?;
        match &self.backend {
            Backend::Files { data_dir, .. } => {
                let path = keys_dir(data_dir)?.join(family.file(Slot::Next));
                off_the_runtime(move || {
                    let raw = read_private(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Ok(NextKey::of(&raw))
                })
                .await
            }
            Backend::Database { store, .. } => {
                let row = family.row(Slot::Next);
                let stored = store
                    .key_get(&row)
                    .await?
                    .with_context(|| format!("key slot {row} is empty"))?;
                Ok(NextKey::of(stored.as_bytes()))
            }
        }
    }

    /// Rotate the family: `previous ← current ← next ← a fresh key`, atomically with respect
    /// to other rotations. Running servers pick it up within their reload interval.
    pub async fn rotate(&self, family: &KeyFamily) -> anyhow::Result<()> {
        self.rotate_checked(family, None).await
    }

    /// [`rotate`](Self::rotate), only if `next` is still the key `expected` names: another
    /// rotation since (a second `keys rotate`) makes it fail and change nothing.
    pub async fn rotate_from(&self, family: &KeyFamily, expected: &NextKey) -> anyhow::Result<()> {
        self.rotate_checked(family, Some(expected.clone())).await
    }

    async fn rotate_checked(
        &self,
        family: &KeyFamily,
        expected: Option<NextKey>,
    ) -> anyhow::Result<()> {
        // Make sure current and next exist, so a rotation never promotes nothing.
        self.load(family).await?;
        match &self.backend {
            Backend::Files { data_dir, .. } => {
                let (dir, family) = (keys_dir(data_dir)?, *family);
                off_the_runtime(move || rotate_files(&dir, &family, expected.as_ref())).await
            }
            Backend::Database { store, sealer } => {
                let rows = [
                    family.row(Slot::Previous),
                    family.row(Slot::Current),
                    family.row(Slot::Next),
                ];
                let fresh = sealer.seal(&rows[2], &(family.generate)()?)?;
                let expected =
                    expected.map(|e| move |stored: &str| e == NextKey::of(stored.as_bytes()));
                store
                    .key_rotate(&rows, fresh, expected, |row, value| {
                        // Values are sealed to their row name: re-seal them for their new row.
                        let (from, to) = row;
                        let plain = sealer.open(from, value)?;
                        sealer.seal(to, &plain)
                    })
                    .await
            }
        }
    }
}

impl Keyring {
    /// Seal every stored key with `keys.sealing_key` that is still sealed with
    /// `keys.previous_sealing_key`. Each row is replaced only if it still holds what was read,
    /// so a rotation running at the same time is never undone (run again to finish). The
    /// rows' write times, which date the last rotation, are left alone.
    pub async fn reseal(&self) -> anyhow::Result<ResealReport> {
        let Backend::Database { store, sealer } = &self.backend else {
            bail!("keys in files are not sealed: `keys reseal` is for keys in PostgreSQL");
        };
        let mut report = ResealReport::default();
        let rows = store.key_all().await?;
        // Every row must open before any is rewritten: one that does not (sealed with neither
        // key) would otherwise stop the reseal half-way, with nothing said of what was done.
        let opened = rows
            .iter()
            .map(|(row, stored)| sealer.open_with(row, stored))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("nothing was resealed")?;
        for ((row, stored), (plain, sealed_with)) in rows.iter().zip(opened) {
            if sealed_with == SealedWith::Current {
                report.already += 1;
                continue;
            }
            let fresh = sealer.seal(row, &plain)?;
            if store.key_replace(row, stored, &fresh).await? {
                report.resealed += 1;
            } else {
                report.changed_meanwhile += 1;
            }
        }
        Ok(report)
    }

    /// How many stored keys each sealing key seals (`None` for keys in files).
    pub async fn sealing(&self) -> anyhow::Result<Option<ResealReport>> {
        let Backend::Database { store, sealer } = &self.backend else {
            return Ok(None);
        };
        let mut report = ResealReport::default();
        for (row, stored) in store.key_all().await? {
            match sealer.open_with(&row, &stored)?.1 {
                SealedWith::Current => report.already += 1,
                SealedWith::Previous => report.resealed += 1,
            }
        }
        Ok(Some(report))
    }
}

/// What [`Keyring::reseal`] did, or (from [`Keyring::sealing`]) would do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResealReport {
    /// Sealed with the previous key and now (or still, for `sealing`) to be sealed again.
    pub resealed: usize,
    /// Already sealed with `keys.sealing_key`.
    pub already: usize,
    /// Rewritten by someone else (a rotation) between reading and resealing.
    pub changed_meanwhile: usize,
}

/// The family's keys from the files in `dir` (the keys directory), generating `current` and
/// `next` if they do not exist yet.
pub fn load_files(dir: &Path, family: &KeyFamily) -> anyhow::Result<FamilyKeys> {
    // Shared with other readers, excluded by a rotation: the slots read are one state, never
    // half of a rotation.
    let _lock = rotate_lock_shared(dir, ROTATION_WAIT)?;
    let path = |slot| dir.join(family.file(slot));
    let current = read_or_create(&path(Slot::Current), family.generate)?;
    let next = read_or_create(&path(Slot::Next), family.generate)?;
    let previous = match read_private(&path(Slot::Previous)) {
        Ok(content) => Some(content),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", path(Slot::Previous).display()));
        }
    };
    Ok(FamilyKeys {
        current,
        next,
        previous,
    })
}

/// Run file work that may block (reads, writes, waiting for the rotation lock) on Tokio's
/// blocking pool, so that it never holds up the async workers serving requests.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("the key file task stopped")?
}

/// The lock file that rotations hold exclusively and readers shared (not locked yet).
fn rotate_lock(dir: &Path) -> anyhow::Result<fs::File> {
    let path = dir.join(ROTATE_LOCK_FILE);
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// How long a read waits for a rotation to finish: one takes milliseconds.
const ROTATION_WAIT: Duration = Duration::from_secs(2);

/// The rotation lock, shared, waiting at most `wait` for a rotation to let go of it: a
/// rotation stuck while holding it (a stopped process) costs a reload an error, not a server
/// thread blocked for good.
fn rotate_lock_shared(dir: &Path, wait: Duration) -> anyhow::Result<fs::File> {
    let lock = rotate_lock(dir)?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match lock.try_lock_shared() {
            Ok(()) => return Ok(lock),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => bail!(
                "a key rotation has held {} for over {}: the keys were not read (the loaded ones stay in use); if no `keys rotate` is running, a stopped one may hold it",
                dir.join(ROTATE_LOCK_FILE).display(),
                humantime::format_duration(wait)
            ),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e)
                    .with_context(|| format!("locking {}", dir.join(ROTATE_LOCK_FILE).display()));
            }
        }
    }
}

/// `previous ← current ← next ← fresh`, under an exclusive lock file: readers, which hold it
/// shared, see the slots before or after, never between steps. Every step is an atomic rename,
/// so a crash mid-way leaves complete files (a missing `next` is created on the next read).
fn rotate_files(dir: &Path, family: &KeyFamily, expected: Option<&NextKey>) -> anyhow::Result<()> {
    let lock = rotate_lock(dir)?;
    lock.lock()
        .with_context(|| format!("locking {}", dir.join(ROTATE_LOCK_FILE).display()))?;
    let path = |slot| dir.join(family.file(slot));
    if let Some(expected) = expected {
        let next = read_private(&path(Slot::Next))
            .with_context(|| format!("reading {}", path(Slot::Next).display()))?;
        if NextKey::of(&next) != *expected {
            bail!(ROTATED_MEANWHILE);
        }
    }
    let current = read_private(&path(Slot::Current))
        .with_context(|| format!("reading {}", path(Slot::Current).display()))?;
    write_private_replacing(&path(Slot::Previous), &current)?;
    fs::rename(path(Slot::Next), path(Slot::Current)).with_context(|| {
        format!(
            "promoting {} to {}",
            path(Slot::Next).display(),
            path(Slot::Current).display()
        )
    })?;
    read_or_create(&path(Slot::Next), family.generate)?;
    sync_dir(dir);
    drop(lock);
    Ok(())
}

/// A digest of a family's stored `next` key: which key a rotation is to promote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextKey([u8; 32]);

impl NextKey {
    fn of(stored: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(stored).into())
    }
}

/// Why a rotation that expected another `next` key did nothing.
pub const ROTATED_MEANWHILE: &str = "another rotation changed the keys since they were checked (a second `keys rotate`?): nothing was rotated; run `keys show` and rotate again if still needed";

/// AES-256-GCM under the configured sealing key; the row name is the associated data. Opening
/// also tries the previous sealing key, while one is configured.
#[derive(Clone)]
struct Sealer {
    key: std::sync::Arc<LessSafeKey>,
    previous: Option<std::sync::Arc<LessSafeKey>>,
}

/// Which sealing key opened a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SealedWith {
    Current,
    Previous,
}

impl Sealer {
    fn new(sealing_key: &SecretString, previous: Option<&SecretString>) -> anyhow::Result<Self> {
        let current = sealing_key_bytes("keys.sealing_key", sealing_key)?;
        let previous = previous
            .map(|p| sealing_key_bytes("keys.previous_sealing_key", p))
            .transpose()?;
        if previous.as_ref().is_some_and(|p| **p == *current) {
            bail!(
                "keys.previous_sealing_key equals keys.sealing_key: set sealing_key to the new key"
            );
        }
        let aead = |bytes: &[u8]| -> anyhow::Result<std::sync::Arc<LessSafeKey>> {
            let key = UnboundKey::new(&AES_256_GCM, bytes)
                .map_err(|_| anyhow::anyhow!("a sealing key is not a valid AES-256 key"))?;
            Ok(std::sync::Arc::new(LessSafeKey::new(key)))
        };
        Ok(Self {
            key: aead(&current)?,
            previous: previous.as_deref().map(|p| aead(p)).transpose()?,
        })
    }

    fn seal(&self, row: &str, plain: &[u8]) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let mut buf = Zeroizing::new(plain.to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(row.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| anyhow::anyhow!("sealing key {row} failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{SEALED_PREFIX}{}", STANDARD.encode(out)))
    }

    fn open(&self, row: &str, stored: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        self.open_with(row, stored).map(|(plain, _)| plain)
    }

    fn open_with(
        &self,
        row: &str,
        stored: &str,
    ) -> anyhow::Result<(Zeroizing<Vec<u8>>, SealedWith)> {
        let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else {
            bail!("key {row} in the database is not sealed: refusing to use it");
        };
        let raw = Zeroizing::new(
            STANDARD
                .decode(b64)
                .ok()
                .filter(|r| r.len() > NONCE_LEN)
                .with_context(|| format!("key {row} in the database is malformed"))?,
        );
        if raw.len() <= NONCE_LEN {
            bail!("key {row} in the database is malformed");
        }
        let candidates = std::iter::once((&self.key, SealedWith::Current))
            .chain(self.previous.iter().map(|p| (p, SealedWith::Previous)));
        for (key, which) in candidates {
            // Opening works in place: try each key on its own copy.
            let mut attempt = Zeroizing::new(raw.to_vec());
            let (nonce, sealed) = attempt.split_at_mut(NONCE_LEN);
            let nonce = Nonce::try_assume_unique_for_key(nonce)
                .map_err(|_| anyhow::anyhow!("key {row} in the database is malformed"))?;
            if let Ok(plain) = key.open_in_place(nonce, Aad::from(row.as_bytes()), sealed) {
                return Ok((Zeroizing::new(plain.to_vec()), which));
            }
        }
        let keys = if self.previous.is_some() {
            "neither keys.sealing_key nor keys.previous_sealing_key is the key it was sealed with"
        } else {
            "keys.sealing_key differs from the one it was sealed with (set the old one as keys.previous_sealing_key to change keys)"
        };
        bail!("key {row} in the database cannot be opened: {keys}, or the row was altered")
    }
}

/// The 32 bytes of a configured sealing key.
fn sealing_key_bytes(name: &str, key: &SecretString) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(
        STANDARD
            .decode(key.expose_secret().trim())
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| {
                format!("{name} must be 32 random bytes in base64 (`openssl rand -base64 32`)")
            })?,
    ))
}

/// `<data_dir>/keys`, created 0700 if missing.
pub fn keys_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join(KEYS_DIR);
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(&dir)
        .with_context(|| format!("creating key directory {}", dir.display()))?;
    Ok(dir)
}

/// `<data_dir>/keys`, which must exist: for commands that only read.
fn existing_keys_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join(KEYS_DIR);
    match fs::metadata(&dir) {
        Ok(_) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "there is no key directory {}: check server.data_dir (and --config); `serve` generates the keys on first start, if the server signs grants or tokens",
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Read a secret file, or create it with `make`'s content if it does not exist. Creation is
/// atomic and first-writer-wins: the content is written to a private temporary file which is then
/// hard-linked to `path`; if another process linked first, its file is the one read back.
pub fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> anyhow::Result<Zeroizing<Vec<u8>>>,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    match read_private(path) {
        Ok(content) => return Ok(content),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let content = make()?;
    let tmp = temp_path(path);
    let created = (|| -> io::Result<()> {
        write_new_private(&tmp, &content)?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            // Another process created it between our read and our link: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    created.with_context(|| format!("creating {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    read_private(path).with_context(|| format!("reading {}", path.display()))
}

/// Make a directory's entries (a new link, a rename) durable, so a power loss cannot undo them
/// after the caller went on (a rotation recorded in the audit log, say). Best effort: not every
/// filesystem can sync a directory, and the files themselves were synced when written.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Replace `path` atomically with a new 0600 file holding `content`.
fn write_private_replacing(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    let written = write_new_private(&tmp, content).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

fn write_new_private(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    f.write_all(content)?;
    f.sync_all()
}

/// Read a file that must be private to its owner.
pub fn read_private(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    let content = Zeroizing::new(fs::read(path)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is readable by other users, or writable by them (mode {:o}): run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ),
            ));
        }
    }
    Ok(content)
}

/// A unique temporary name beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter_family() -> KeyFamily {
        fn generate() -> anyhow::Result<Zeroizing<Vec<u8>>> {
            Ok(Zeroizing::new(
                uuid::Uuid::new_v4().to_string().into_bytes(),
            ))
        }
        KeyFamily {
            name: "test",
            files: ["test-current", "test-next", "test-previous"],
            generate,
        }
    }

    #[tokio::test]
    async fn file_rotation_moves_every_slot_one_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = Keyring::files(dir.path()).expect("keyring");
        let family = counter_family();
        let first = ring.load(&family).await.expect("load");
        assert!(first.previous.is_none());
        assert_ne!(*first.current, *first.next);
        let again = ring.load(&family).await.expect("load again");
        assert_eq!(
            *again.current, *first.current,
            "loading twice changes nothing"
        );

        assert_eq!(ring.last_rotation(&family).await.expect("never"), None);
        ring.rotate(&family).await.expect("rotate");
        let rotated = ring
            .last_rotation(&family)
            .await
            .expect("when")
            .expect("rotated");
        assert!(rotated.elapsed().unwrap_or_default() < Duration::from_secs(60));
        let second = ring.load(&family).await.expect("load after rotation");
        assert_eq!(
            second.previous.as_deref().map(|p| p.to_vec()),
            Some(first.current.to_vec())
        );
        assert_eq!(*second.current, *first.next);
        assert_ne!(*second.next, *first.next);
        assert_ne!(*second.next, *first.current);
    }

    /// Loads running beside rotations see each family before or after a rotation, never
    /// between its steps: the three slots always hold three different keys.
    async fn reads_never_see_half_a_rotation(ring: Keyring) {
        let family = counter_family();
        ring.load(&family).await.expect("load");
        ring.rotate(&family).await.expect("rotate");
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Rotates until both sides have done plenty: however fast either is, they overlap.
        let rotator = {
            let (ring, family, reads) = (ring.clone(), counter_family(), reads.clone());
            tokio::spawn(async move {
                let mut rotations = 0;
                while rotations < 150 || reads.load(std::sync::atomic::Ordering::Relaxed) < 300 {
                    ring.rotate(&family).await.expect("rotate");
                    rotations += 1;
                    // A point where a failed test's runtime can drop this task.
                    tokio::task::yield_now().await;
                }
            })
        };
        while !rotator.is_finished() {
            let keys = ring.load(&family).await.expect("load");
            let previous = keys.previous.expect("rotated already");
            let read = reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            assert_ne!(*keys.current, *keys.next, "read {read}");
            assert_ne!(*previous, *keys.current, "read {read}");
            assert_ne!(*previous, *keys.next, "read {read}");
        }
        rotator.await.expect("rotations");
    }

    /// A rotation that never lets go of the lock (a stopped `keys rotate`) makes a read fail
    /// after a bounded wait, saying why; once it is released, reads work again.
    #[test]
    fn a_read_waits_for_a_stuck_rotation_only_so_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = keys_dir(dir.path()).expect("keys dir");
        load_files(&keys, &counter_family()).expect("first load");
        let rotation = rotate_lock(&keys).expect("lock file");
        rotation.lock().expect("held as a rotation holds it");
        // On a thread of its own, so that a read that waited for ever fails this test.
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let keys = keys.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let read = load_files(&keys, &counter_family()).map(|_| ());
                let _ = tx.send((read, started.elapsed()));
            })
        };
        let (read, waited) = rx
            .recv_timeout(ROTATION_WAIT * 5)
            .expect("the read gave up in bounded time");
        reader.join().expect("reader");
        let err = read.expect_err("refused while the rotation holds the lock");
        assert!(waited >= ROTATION_WAIT, "{waited:?}");
        let message = format!("{err:#}");
        assert!(message.contains("a key rotation has held"), "{message}");
        assert!(message.contains(ROTATE_LOCK_FILE), "{message}");
        drop(rotation);
        load_files(&keys, &counter_family()).expect("load after the rotation let go");
    }

    /// A read of key files waits for a rotation's lock off the async workers: on a one-thread
    /// runtime, the task holding the lock still runs and lets go, and the read then succeeds.
    #[tokio::test(flavor = "current_thread")]
    async fn a_file_read_waiting_for_a_rotation_leaves_the_runtime_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = Keyring::files(dir.path()).expect("keyring");
        ring.load(&counter_family()).await.expect("first load");
        let rotation = rotate_lock(&keys_dir(dir.path()).expect("keys dir")).expect("lock file");
        rotation.lock().expect("held as a rotation holds it");
        let read = tokio::spawn({
            let ring = ring.clone();
            async move { ring.load(&counter_family()).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!read.is_finished(), "the read waits for the rotation");
        drop(rotation);
        read.await
            .expect("reader")
            .expect("read once the rotation let go");
    }

    /// Two `keys rotate` at once: both note the key to promote and check it; the second to
    /// rotate finds it already promoted and changes nothing, instead of promoting a fresh key
    /// nobody checked.
    async fn a_rotation_promotes_only_the_key_it_checked(ring: Keyring) {
        let family = counter_family();
        let noted = ring.next_key(&family).await.expect("next");
        let before = ring.load(&family).await.expect("load");
        ring.rotate_from(&family, &noted)
            .await
            .expect("the first rotates");
        let after = ring.load(&family).await.expect("load");
        assert_eq!(*after.current, *before.next, "promoted the noted key");

        let err = ring
            .rotate_from(&family, &noted)
            .await
            .expect_err("the second finds next changed");
        assert!(err.to_string().contains("another rotation"), "{err:#}");
        let unchanged = ring.load(&family).await.expect("load");
        assert_eq!(*unchanged.current, *after.current);
        assert_eq!(*unchanged.next, *after.next);
        assert_eq!(
            unchanged.previous.as_deref().map(|p| p.to_vec()),
            after.previous.as_deref().map(|p| p.to_vec())
        );
    }

    #[tokio::test]
    async fn file_rotation_promotes_only_the_key_it_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        a_rotation_promotes_only_the_key_it_checked(Keyring::files(dir.path()).expect("keyring"))
            .await;
    }

    #[tokio::test]
    async fn database_rotation_promotes_only_the_key_it_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("rise.db"), true)
            .await
            .expect("store");
        let key = SecretString::from(STANDARD.encode([6u8; 32]));
        a_rotation_promotes_only_the_key_it_checked(
            Keyring::database(store, &key, None).expect("keyring"),
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_reads_never_see_half_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        reads_never_see_half_a_rotation(Keyring::files(dir.path()).expect("keyring")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_reads_never_see_half_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("rise.db"), true)
            .await
            .expect("store");
        let key = SecretString::from(STANDARD.encode([5u8; 32]));
        reads_never_see_half_a_rotation(Keyring::database(store, &key, None).expect("keyring"))
            .await;
    }

    #[test]
    fn sealed_values_open_only_under_their_row_and_key() {
        let key = SecretString::from(STANDARD.encode([9u8; 32]));
        let sealer = Sealer::new(&key, None).expect("sealer");
        let sealed = sealer.seal("a/current", b"secret key").expect("seal");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("secret key"));
        assert_eq!(
            sealer.open("a/current", &sealed).expect("open").as_slice(),
            b"secret key"
        );
        let moved = sealer.open("a/next", &sealed).expect_err("another row");
        assert!(moved.to_string().contains("cannot be opened"), "{moved}");
        let other =
            Sealer::new(&SecretString::from(STANDARD.encode([8u8; 32])), None).expect("other");
        assert!(other.open("a/current", &sealed).is_err());
        let plain = sealer
            .open("a/current", "-----BEGIN")
            .expect_err("unsealed");
        assert!(plain.to_string().contains("not sealed"), "{plain}");
    }

    #[tokio::test]
    async fn an_unused_sealing_key_is_still_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("rise.db"), true)
            .await
            .expect("store");
        let config = |key: &str| KeysConfig {
            sealing_key: Some(SecretString::from(key.to_owned())),
            ..KeysConfig::default()
        };
        let err = Keyring::for_store(&store, dir.path(), &config("short"))
            .expect_err("a malformed key is refused");
        assert!(err.to_string().contains("32 random bytes"), "{err}");
        let ring = Keyring::for_store(&store, dir.path(), &config(&STANDARD.encode([3u8; 32])))
            .expect("a well-formed key is accepted");
        let orphan = KeysConfig {
            previous_sealing_key: Some(SecretString::from(STANDARD.encode([4u8; 32]))),
            ..KeysConfig::default()
        };
        let err = Keyring::for_store(&store, dir.path(), &orphan)
            .expect_err("a previous key without a current one is refused");
        assert!(
            err.to_string().contains("without keys.sealing_key"),
            "{err}"
        );
        assert!(
            ring.describe().starts_with("files in"),
            "SQLite keeps files"
        );
    }

    /// Changing the sealing key: the old one as `previous_sealing_key` keeps every key open,
    /// `reseal` moves them to the new one, and then the old key is no longer needed (nor
    /// enough). The keys themselves and the rotation time do not change.
    #[tokio::test]
    async fn a_new_sealing_key_takes_over_through_reseal() {
        let db_dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&db_dir.path().join("rise.db"), true)
            .await
            .expect("store");
        let old = SecretString::from(STANDARD.encode([1u8; 32]));
        let new = SecretString::from(STANDARD.encode([2u8; 32]));
        let ring = |key: &SecretString, previous: Option<&SecretString>| {
            Keyring::database(store.clone(), key, previous).expect("keyring")
        };
        let family = counter_family();
        let before_ring = ring(&old, None);
        before_ring.load(&family).await.expect("load");
        before_ring.rotate(&family).await.expect("rotate");
        let before = before_ring.load(&family).await.expect("load");
        // A rotation time far from now, so that a reseal touching it could not go unseen.
        sqlx::query("UPDATE rise_keys SET updated_ms = 1000")
            .execute(store.sqlite_pool().expect("SQLite"))
            .await
            .expect("date the rotation");
        let rotated_at = Some(crate::audit::from_unix_ms(1000));
        assert_eq!(
            before_ring.last_rotation(&family).await.expect("when"),
            rotated_at
        );
        let same = |keys: &FamilyKeys| {
            *keys.current == *before.current
                && *keys.next == *before.next
                && keys.previous.as_deref() == before.previous.as_deref()
        };

        let err = ring(&new, None)
            .load(&family)
            .await
            .err()
            .expect("the new key alone opens nothing yet");
        assert!(err.to_string().contains("previous_sealing_key"), "{err}");

        let both = ring(&new, Some(&old));
        assert!(same(&both.load(&family).await.expect("either key opens")));
        let pending = both.sealing().await.expect("sealing").expect("database");
        assert_eq!((pending.already, pending.resealed), (0, 3));
        let done = both.reseal().await.expect("reseal");
        assert_eq!(
            (done.resealed, done.already, done.changed_meanwhile),
            (3, 0, 0)
        );
        let again = both.reseal().await.expect("reseal again");
        assert_eq!(
            (again.resealed, again.already),
            (0, 3),
            "nothing left to do"
        );

        let after = ring(&new, None);
        assert!(same(&after.load(&family).await.expect("the new key alone")));
        assert_eq!(
            after.last_rotation(&family).await.expect("when"),
            rotated_at
        );
        assert!(ring(&old, None).load(&family).await.is_err());

        let err =
            Keyring::database(store.clone(), &new, Some(&new)).expect_err("the same key twice");
        assert!(err.to_string().contains("equals"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Keyring::files(dir.path()).expect("files");
        assert!(files.reseal().await.is_err(), "files are not sealed");
        assert_eq!(files.sealing().await.expect("sealing"), None);
    }

    /// A key sealed with neither the sealing key nor the previous one stops `reseal` before it
    /// rewrites anything: the keys it could open stay as they were, under the previous key.
    #[tokio::test]
    async fn reseal_rewrites_nothing_when_a_key_does_not_open() {
        let db_dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&db_dir.path().join("rise.db"), true)
            .await
            .expect("store");
        let key = |byte: u8| SecretString::from(STANDARD.encode([byte; 32]));
        let (old, new, stray) = (key(1), key(2), key(3));
        let ring = |key: &SecretString, previous: Option<&SecretString>| {
            Keyring::database(store.clone(), key, previous).expect("keyring")
        };
        let family = counter_family();
        let before = ring(&old, None).load(&family).await.expect("load");
        // A family whose rows sort after the first one's, sealed with a third key.
        let later = KeyFamily {
            name: "zz-test",
            ..family
        };
        ring(&stray, None).load(&later).await.expect("load");

        let err = ring(&new, Some(&old))
            .reseal()
            .await
            .expect_err("a key opens under neither");
        assert!(
            format!("{err:#}").contains("nothing was resealed"),
            "{err:#}"
        );
        let after = ring(&old, None)
            .load(&family)
            .await
            .expect("still sealed with the previous key");
        assert_eq!(*after.current, *before.current);
        assert_eq!(*after.next, *before.next);
    }

    #[test]
    fn sealing_key_must_be_32_bytes_of_base64() {
        for bad in ["", "not base64!", &STANDARD.encode([1u8; 16])] {
            let err = Sealer::new(&SecretString::from(bad.to_owned()), None)
                .err()
                .expect("refused");
            assert!(err.to_string().contains("32 random bytes"), "{err}");
            assert!(bad.is_empty() || !err.to_string().contains(bad));
        }
    }
}
