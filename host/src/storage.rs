//! The host's object store: datasets, checkpoints and artifacts under the data directory,
//! content-addressed (SHA-256 of the plaintext) and encrypted at rest.
//!
//! Envelope encryption with `ring`'s AES-256-GCM: each object has its own random data key; the
//! data key is stored wrapped (encrypted) by the host's master key in a small key file beside
//! the object, with the object's id and the format version as associated data, so a key file
//! moved to another object does not open. The object itself is a sequence of authenticated
//! chunks (1 MiB of plaintext each, nonce = chunk index, associated data = format version,
//! chunk index and a last-chunk flag), so it can be read as a stream, and a reordered,
//! truncated or extended object fails. A reader checks each chunk before handing out a byte and
//! the SHA-256 of the whole at the end: a flipped bit anywhere is an error, never data.
//!
//! Layout under the data directory:
//!
//! ```text
//! keys/master-<id>.key   master keys (32 bytes, mode 0600; sealed under `GANTRY_KEY_FILE`'s
//!                        key where it names one: [`sealing`]); keys/current names the one in use
//! keys/host.pk8          the host's Ed25519 signing key (audit checkpoints)
//! objects/ab/abcd...     an object's chunks      objects/ab/abcd....key  its wrapped data key
//! objects/tmp/           objects being written (never read)
//! ```
//!
//! Every file is written through a synced temporary file and a rename ([`crate::durable`]).
//! Rotating the master key re-wraps every data key (a few hundred bytes each) and rewrites no
//! object.

mod lock;
mod object;
mod sealing;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{Context, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::durable::{self, Mode};

pub use self::lock::{DirLock, Holder};
pub use self::object::ObjectReader;
use self::object::{aead_key, read_error, seal_into};
pub use self::sealing::KEY_FILE_ENV;

#[cfg(test)]
use self::object::TAG;
pub use self::object::{CHUNK, sealed_len};

/// The format of objects and key files (bound into every chunk and wrapped key).
const FORMAT: u32 = 1;

/// A store operation failed; messages name the file or object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// Not a Gantry data directory, or one missing its keys.
    #[error("{}: {message}", path.display())]
    Layout {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An object or its key failed authentication: it was changed, truncated or moved.
    #[error("object {id}: {message}")]
    Corrupt {
        /// The object.
        id: String,
        /// What failed.
        message: String,
    },
    /// No such object.
    #[error("no object {0}")]
    NotFound(String),
    /// The system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// Another process holds the data directory (the daemon, or an offline command).
    #[error("{}: in use by {holder}; stop it first (or make this change through the running daemon)", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// Who holds it, as its lock file says.
        holder: Holder,
    },
    /// A store opened to read was asked to write.
    #[error("{}: opened read-only; writing needs the data directory's lock", .0.display())]
    ReadOnly(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A master key and its id (a digest of the key, so files can name it without revealing it).
struct MasterKey {
    id: String,
    key: LessSafeKey,
}

impl MasterKey {
    fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, StoreError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| StoreError::Layout {
            path: path.to_path_buf(),
            message: format!("a master key is 32 bytes, this file has {}", bytes.len()),
        })?;
        let mut ctx = Context::new(&SHA256);
        ctx.update(b"gantry-master-key-id");
        ctx.update(bytes);
        let id = data_encoding::HEXLOWER.encode(&ctx.finish().as_ref()[..8]);
        Ok(Self {
            id,
            key: LessSafeKey::new(unbound),
        })
    }
}

/// A wrapped data key, as stored beside its object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: u32,
    /// The master key that wraps it.
    master: String,
    nonce: String,
    wrapped: String,
}

/// What [`Store::rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The master key now in use.
    pub new_master: String,
    /// Data keys re-wrapped.
    pub rewrapped: usize,
    /// Master keys removed (no data key needed them any more).
    pub retired: Vec<String>,
    /// Objects whose key file did not read (each with why): their keys were not re-wrapped,
    /// and no master key was removed.
    pub unreadable: Vec<(String, String)>,
}

/// An object as a store keeps it, still encrypted ([`Store::sealed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedObject {
    /// Its authenticated chunks.
    pub chunks: Vec<u8>,
    /// Its data key, wrapped by a master key.
    pub key: Vec<u8>,
}

/// The master keys a store knows, and which one new objects use.
struct Masters {
    keys: Vec<MasterKey>,
    current: usize,
}

impl Masters {
    fn position(&self, id: &str) -> Option<usize> {
        self.keys.iter().position(|m| m.id == id)
    }
}

/// Puts of one id are serialised by one of this many locks (chosen by the id's first byte).
const STRIPES: usize = 64;

/// The encrypted object store of one data directory.
///
/// Shared by reference between threads. Writing (puts, rotation) needs the data directory's
/// [`DirLock`] ([`Store::open_exclusive`], [`Store::init`]): one writing process at a time. Within
/// it, puts of one object are serialised (a striped lock) and published under it, so concurrent
/// puts of the same content are idempotent; the master keys sit behind a lock, so a rotation runs
/// while puts and reads go on. A store opened with [`Store::open`] only reads, and can read while
/// another process writes.
pub struct Store {
    root: PathBuf,
    masters: RwLock<Masters>,
    stripes: Vec<Mutex<()>>,
    /// Held for the whole of a rotation: one at a time.
    rotating: Mutex<()>,
    rng: SystemRandom,
    /// The directory's lock, when this store may write.
    lock: Option<Arc<DirLock>>,
    /// Objects just stored and not yet named by a record ([`Pinned`]): never removed.
    pins: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    /// Objects let go while pinned: asked about again by [`Store::deferred`]'s caller.
    deferred: Mutex<std::collections::HashSet<String>>,
    /// Shard directories (`objects/ab`) made, and their entry in `objects/` synced, by this
    /// store: each is made and synced once, under this lock, before any put in it is
    /// acknowledged (puts in one shard take different stripes).
    shards: Mutex<std::collections::HashSet<PathBuf>>,
}

/// An object just stored, which [`Store::remove_unused`] leaves in place until this is dropped:
/// held from the put until whatever names the object is recorded, since the store is
/// content-addressed and another owner of the same content may be letting it go meanwhile.
#[must_use = "the object is protected only while this is held"]
pub struct Pinned {
    id: String,
    created: bool,
    pins: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

impl Pinned {
    /// The object's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this put made the object (rather than finding its content stored already): what
    /// a writer whose record then fails may remove, and no other's (an operator's `store put`
    /// of the same bytes, say).
    pub fn created(&self) -> bool {
        self.created
    }
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pinned").field(&self.id).finish()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut pins = lock(&self.pins);
        if let Some(n) = pins.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("master", &self.master_id())
            .field("writable", &self.lock.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Creates a data directory at `root` (which must not hold one already): the layout (mode
    /// 0700), a master key (mode 0600) and the host's signing key. The store returned holds the
    /// directory's lock.
    pub fn init(root: &Path) -> Result<Store, StoreError> {
        let refuse = || StoreError::Layout {
            path: root.to_path_buf(),
            message: "already a Gantry data directory; refusing to replace its keys".into(),
        };
        if root.join("keys/current").exists() {
            return Err(refuse());
        }
        // Its key file checked before anything is made.
        let sealer = sealing::Sealer::from_env(root)?;
        make_private_dir(root)?;
        let lock = Arc::new(DirLock::acquire(root, "gantry init")?);
        // Again under the lock: another init may have finished meanwhile.
        if root.join("keys/current").exists() {
            return Err(refuse());
        }
        for dir in ["keys", "objects", "objects/tmp"] {
            make_private_dir(&root.join(dir))?;
        }
        // The layout's entries durable before the keys that rely on it are written.
        for dir in [root.join("objects"), root.to_path_buf()]
            .into_iter()
            .chain(
                root.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(Path::to_path_buf),
            )
        {
            durable::sync_dir(&dir).map_err(io(&dir))?;
        }
        let rng = SystemRandom::new();
        let master = new_master_with(root, &rng, sealer.as_ref())?;
        new_host_key(root, &rng, sealer.as_ref())?;
        set_current(root, &master.id)?;
        Ok(Store::new(root, vec![master], 0, Some(lock)))
    }

    fn new(root: &Path, keys: Vec<MasterKey>, current: usize, lock: Option<Arc<DirLock>>) -> Store {
        Store {
            root: root.to_path_buf(),
            masters: RwLock::new(Masters { keys, current }),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            rotating: Mutex::new(()),
            rng: SystemRandom::new(),
            lock,
            pins: Arc::default(),
            deferred: Mutex::default(),
            shards: Mutex::default(),
        }
    }

    /// Opens the data directory at `root` to read: no lock is taken, and puts and rotation are
    /// refused. Reads stay correct while another process (the daemon) writes and rotates.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let (keys, current) = read_masters(root)?;
        Ok(Store::new(root, keys, current, None))
    }

    /// Opens the data directory at `root` to read and write, taking its lock for the life of
    /// the store (`holder` says who holds it, for the error another process gets); fails at once,
    /// naming the holder, if another process holds it. Temporaries that a crash left behind
    /// (object uploads, key files being replaced) and key files of objects never published are
    /// removed: nobody else can be writing them.
    pub fn open_exclusive(root: &Path, holder: &str) -> Result<Store, StoreError> {
        // A directory that is not a data directory is reported as such, not locked.
        read_masters(root)?;
        let lock = Arc::new(DirLock::acquire(root, holder)?);
        Store::open_locked(lock)
    }

    /// [`Store::open_exclusive`] with a lock already taken.
    pub fn open_locked(lock: Arc<DirLock>) -> Result<Store, StoreError> {
        let root = lock.root().to_path_buf();
        let (keys, current) = read_masters(&root)?;
        let store = Store::new(&root, keys, current, Some(lock));
        let swept = store.sweep()?;
        if swept > 0 {
            tracing::warn!(
                root = %root.display(),
                files = swept,
                "removed files a crash left behind (partial uploads and key files)"
            );
        }
        Ok(store)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory's lock, when this store writes.
    pub fn dir_lock(&self) -> Option<&Arc<DirLock>> {
        self.lock.as_ref()
    }

    fn writable(&self) -> Result<(), StoreError> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(StoreError::ReadOnly(self.root.clone())),
        }
    }

    fn masters(&self) -> std::sync::RwLockReadGuard<'_, Masters> {
        self.masters.read().unwrap_or_else(|e| e.into_inner())
    }

    fn masters_mut(&self) -> std::sync::RwLockWriteGuard<'_, Masters> {
        self.masters.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of the master key new objects are wrapped with.
    pub fn master_id(&self) -> String {
        let m = self.masters();
        m.keys[m.current].id.clone()
    }

    fn stripe(&self, id: &str) -> MutexGuard<'_, ()> {
        let byte = u8::from_str_radix(id.get(..2).unwrap_or("00"), 16).unwrap_or(0);
        lock(&self.stripes[usize::from(byte) % STRIPES])
    }

    /// Makes shard directory `dir` (owner-only) and syncs its entry in `objects/`, once per
    /// store: a put acknowledged in a shard another put had just made (and not yet synced) was
    /// lost with it at a power cut.
    fn make_shard(&self, dir: &Path) -> Result<(), StoreError> {
        let mut made = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        if made.contains(dir) {
            return Ok(());
        }
        make_private_dir(dir)?;
        let objects = self.root.join("objects");
        durable::sync_dir(&objects).map_err(io(&objects))?;
        made.insert(dir.to_path_buf());
        Ok(())
    }

    fn object_path(&self, id: &str) -> PathBuf {
        self.root.join("objects").join(&id[..2]).join(id)
    }

    fn key_path(&self, id: &str) -> PathBuf {
        self.root
            .join("objects")
            .join(&id[..2])
            .join(format!("{id}.key"))
    }

    /// Stores `bytes`; returns the object's id.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String, StoreError> {
        self.put(bytes)
    }

    /// Stores everything `reader` yields, encrypting as it streams (plaintext never touches the
    /// disk); returns the object's id once the object is durable. Idempotent under any
    /// concurrency: storing content already present (and readable) changes nothing; concurrent
    /// puts of one content all return its id, and it reads.
    pub fn put(&self, reader: impl Read) -> Result<String, StoreError> {
        self.put_pinned(reader).map(|pinned| pinned.id.clone())
    }

    /// [`Store::put`], the object kept from [`Store::remove_unused`] while the [`Pinned`] lives:
    /// what a writer that records the object somewhere uses, holding it until the record is made.
    pub fn put_pinned(&self, reader: impl Read) -> Result<Pinned, StoreError> {
        self.writable()?;
        let mut key_bytes = [0u8; 32];
        self.rng
            .fill(&mut key_bytes)
            .map_err(|_| StoreError::Random("no data key".into()))?;
        let mut name = [0u8; 12];
        self.rng
            .fill(&mut name)
            .map_err(|_| StoreError::Random("no temporary name".into()))?;
        let tmp = self
            .root
            .join("objects/tmp")
            .join(data_encoding::HEXLOWER.encode(&name));
        // The expensive part, outside every lock: encrypt into a temporary of this put's own.
        let id = match seal_into(&tmp, reader, &key_bytes) {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let published = self.publish(&id, &tmp, &key_bytes);
        let _ = std::fs::remove_file(&tmp);
        published
    }

    /// Pins object `id` (made by this put: `created`); under its stripe lock, like every
    /// removal.
    fn pin(&self, id: &str, created: bool) -> Pinned {
        *lock(&self.pins).entry(id.to_string()).or_insert(0) += 1;
        Pinned {
            id: id.to_string(),
            created,
            pins: self.pins.clone(),
        }
    }

    /// The objects [`Store::remove_unused`] kept because they were pinned then and are not now:
    /// for the caller to ask about again (each is handed out once).
    pub fn deferred(&self) -> Vec<String> {
        let pins = lock(&self.pins);
        let mut deferred = lock(&self.deferred);
        let free: Vec<String> = deferred
            .iter()
            .filter(|id| !pins.contains_key(*id))
            .cloned()
            .collect();
        for id in &free {
            deferred.remove(id);
        }
        free
    }

    /// Removes object `id` unless it is pinned ([`Store::put_pinned`]) or `in_use` says something
    /// still names it; asked under the object's lock, so no put of the same content can slip
    /// between the question and the removal. `Ok(true)` when removed (or already gone). The
    /// object goes before its key file: a crash between leaves an orphan key, swept on open.
    pub fn remove_unused<E: std::fmt::Display>(
        &self,
        id: &str,
        in_use: impl FnOnce() -> Result<bool, E>,
    ) -> Result<bool, StoreError> {
        check_id(id)?;
        self.writable()?;
        let _stripe = self.stripe(id);
        if lock(&self.pins).contains_key(id) {
            // Its put may yet fail to be recorded: asked about again later.
            lock(&self.deferred).insert(id.to_string());
            return Ok(false);
        }
        match in_use() {
            Ok(false) => {}
            Ok(true) => return Ok(false),
            Err(e) => {
                return Err(StoreError::Layout {
                    path: self.object_path(id),
                    message: format!("kept: whether anything still names it is unknown: {e}"),
                });
            }
        }
        for path in [self.object_path(id), self.key_path(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        let object = self.object_path(id);
        let dir = object.parent().expect("objects/ab");
        durable::sync_dir(dir).map_err(io(dir))?;
        Ok(true)
    }

    /// Makes the sealed temporary `tmp` object `id`, unless a readable object `id` is already
    /// there. Under the id's stripe lock, so the check and the publication are one step for
    /// every thread; the key file is written before the object is renamed into place (an object
    /// without its key would be unreadable; a key without its object is an orphan, swept).
    fn publish(&self, id: &str, tmp: &Path, key_bytes: &[u8; 32]) -> Result<Pinned, StoreError> {
        let _stripe = self.stripe(id);
        let path = self.object_path(id);
        if path.exists() || self.key_path(id).exists() {
            match self.authenticate(id) {
                Ok(()) => return Ok(self.pin(id, false)),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => tracing::warn!(
                    object = %id,
                    error = %e,
                    "an unreadable copy of this object is replaced by a new upload of its content"
                ),
            }
        }
        let dir = path.parent().expect("objects/ab");
        self.make_shard(dir)?;
        // Wrapped with the current master under the masters' read lock, held until the object
        // is in place: a rotation switches masters only between publications, so it sees every
        // published object wrapped by a master it knows.
        let masters = self.masters();
        self.write_key(id, key_bytes, &masters, masters.current)?;
        std::fs::rename(tmp, &path).map_err(io(&path))?;
        durable::sync_dir(dir).map_err(io(dir))?;
        Ok(self.pin(id, true))
    }

    /// Reads object `id` whole, checking every chunk and its digest.
    fn authenticate(&self, id: &str) -> Result<(), StoreError> {
        let mut reader = self.reader(id)?;
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| read_error(id, e))?;
        Ok(())
    }

    fn write_key(
        &self,
        id: &str,
        key_bytes: &[u8; 32],
        masters: &Masters,
        master: usize,
    ) -> Result<(), StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Random("no nonce".into()))?;
        let mut wrapped = key_bytes.to_vec();
        masters.keys[master]
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_aad(id)),
                &mut wrapped,
            )
            .map_err(|_| StoreError::Random("wrapping a data key".into()))?;
        let file = KeyFile {
            format: FORMAT,
            master: masters.keys[master].id.clone(),
            nonce: data_encoding::HEXLOWER.encode(&nonce),
            wrapped: data_encoding::HEXLOWER.encode(&wrapped),
        };
        let path = self.key_path(id);
        let json = serde_json::to_vec(&file).expect("a key file serialises");
        durable::write(&path, &json, Mode::Private).map_err(io(&path))
    }

    /// Object `id`'s key file, parsed (not unwrapped).
    fn key_file(&self, id: &str) -> Result<KeyFile, StoreError> {
        let path = self.key_path(id);
        let bytes = durable::read_bounded(&path, 4096).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(id.to_string()),
            _ => io(&path)(e),
        })?;
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            message: format!("unreadable key file: {e}"),
        })?;
        if file.format != FORMAT {
            return Err(StoreError::Corrupt {
                id: id.to_string(),
                message: format!("key file format {}", file.format),
            });
        }
        Ok(file)
    }

    /// The data key of object `id`, unwrapped, and the id of the master key that wraps it.
    fn unwrap_key(&self, id: &str) -> Result<([u8; 32], String), StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            id: id.to_string(),
            message,
        };
        let file = self.key_file(id)?;
        if self.masters().position(&file.master).is_none() {
            // Another process may have rotated since this store was opened.
            self.reload_masters()?;
        }
        let masters = self.masters();
        let master = masters.position(&file.master).ok_or_else(|| {
            corrupt(format!(
                "wrapped by master key {}, which is not in keys/",
                file.master
            ))
        })?;
        let hex = |s: &str| data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes());
        let nonce: [u8; NONCE_LEN] = hex(&file.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| corrupt("bad nonce in key file".into()))?;
        let mut wrapped = hex(&file.wrapped).map_err(|_| corrupt("bad wrapped key".into()))?;
        let key = masters.keys[master]
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_aad(id)),
                &mut wrapped,
            )
            .map_err(|_| {
                corrupt(
                    "its data key does not authenticate (changed, or moved from another object)"
                        .into(),
                )
            })?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| corrupt("data key of the wrong length".into()))?;
        Ok((key, file.master))
    }

    /// Adds master keys that appeared in keys/ since the store was opened.
    fn reload_masters(&self) -> Result<(), StoreError> {
        let (found, _) = read_masters(&self.root)?;
        let mut masters = self.masters_mut();
        for key in found {
            if masters.position(&key.id).is_none() {
                masters.keys.push(key);
            }
        }
        Ok(())
    }

    /// Whether object `id` is in the store (its file is there; not read, not checked).
    pub fn has(&self, id: &str) -> bool {
        check_id(id).is_ok() && self.object_path(id).exists()
    }

    /// A reader over object `id` that checks every chunk before returning its bytes and the
    /// whole object's digest at the end; any failure is an `InvalidData` error naming it.
    pub fn reader(&self, id: &str) -> Result<ObjectReader, StoreError> {
        check_id(id)?;
        let key = aead_key(&self.unwrap_key(id)?.0);
        let path = self.object_path(id);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(id.to_string()),
            _ => io(&path)(e),
        })?;
        ObjectReader::open(id, key, file)
    }

    /// Object `id` as it is stored, still encrypted: its sealed chunks and its wrapped data
    /// key, for another store holding the same master keys (a replica of a control plane) to
    /// [`Store::put_sealed`]. `NotFound` when it is not here, `Corrupt` when its chunks are over
    /// `max` bytes.
    pub fn sealed(&self, id: &str, max: u64) -> Result<SealedObject, StoreError> {
        check_id(id)?;
        let read = |path: PathBuf, limit: u64| {
            durable::read_bounded(&path, limit).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StoreError::NotFound(id.to_string()),
                std::io::ErrorKind::InvalidData => StoreError::Corrupt {
                    id: id.to_string(),
                    message: format!("over {limit} bytes"),
                },
                _ => io(&path)(e),
            })
        };
        Ok(SealedObject {
            key: read(self.key_path(id), 4096)?,
            chunks: read(self.object_path(id), max)?,
        })
    }

    /// Keeps `sealed`, object `id` as another store with the same master keys sealed it, unless
    /// a readable object `id` is here already. It must read as object `id` (every chunk, its
    /// digest, its key unwrapped by a master this store knows), or nothing of it is kept.
    pub fn put_sealed(&self, id: &str, sealed: &SealedObject) -> Result<(), StoreError> {
        check_id(id)?;
        self.writable()?;
        let _stripe = self.stripe(id);
        match self.authenticate(id) {
            Ok(()) => return Ok(()),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => tracing::warn!(object = %id, error = %e,
                "an unreadable copy of this object is replaced by a sealed copy"),
        }
        let path = self.object_path(id);
        self.make_shard(path.parent().expect("objects/ab"))?;
        let key = self.key_path(id);
        durable::write(&key, &sealed.key, Mode::Private).map_err(io(&key))?;
        durable::write(&path, &sealed.chunks, Mode::Private).map_err(io(&path))?;
        if let Err(e) = self.authenticate(id) {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&key);
            return Err(e);
        }
        Ok(())
    }

    /// The whole of object `id`.
    pub fn get(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.reader(id)?
            .read_to_end(&mut out)
            .map_err(|e| read_error(id, e))?;
        Ok(out)
    }

    /// Every stored object's id.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for shard in self.shards()? {
            for entry in std::fs::read_dir(&shard).map_err(io(&shard))? {
                let name = entry.map_err(io(&shard))?.file_name();
                let name = name.to_string_lossy();
                if check_id(&name).is_ok() {
                    ids.push(name.into_owned());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The shard directories `objects/ab`.
    fn shards(&self) -> Result<Vec<PathBuf>, StoreError> {
        let objects = self.root.join("objects");
        let mut shards = Vec::new();
        for shard in std::fs::read_dir(&objects).map_err(io(&objects))? {
            let shard = shard.map_err(io(&objects))?.path();
            if shard.file_name().is_some_and(|n| n == "tmp") || !shard.is_dir() {
                continue;
            }
            shards.push(shard);
        }
        Ok(shards)
    }

    /// Reads and authenticates every object: what [`Store::verify`] found.
    pub fn verify(&self) -> Result<StoreReport, StoreError> {
        let ids = self.list()?;
        let mut failed = Vec::new();
        let mut gone = 0;
        for id in &ids {
            match self.authenticate(id) {
                Ok(()) => {}
                // Removed since it was listed, by the daemon this runs beside (a checkpoint
                // replaced, a job's end): not a failure. A CI run failed on one.
                Err(StoreError::NotFound(_)) if !self.has(id) => gone += 1,
                Err(e) => failed.push((id.clone(), e.to_string())),
            }
        }
        Ok(StoreReport {
            objects: ids.len() - gone,
            failed,
        })
    }

    /// Removes what a crash of a writer left behind: partial uploads in `objects/tmp`, the
    /// temporaries of key files and master keys being replaced, and key files whose object was
    /// never renamed into place. Only under the directory's lock. Returns how many it removed.
    fn sweep(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        let tmp = self.root.join("objects/tmp");
        make_private_dir(&tmp)?;
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
            let path = entry.map_err(io(&tmp))?.path();
            if path.is_file() {
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
        let now = std::time::Duration::ZERO;
        let keys = self.root.join("keys");
        removed += durable::sweep(&keys, now).map_err(io(&keys))?.len();
        for shard in self.shards()? {
            // Earlier versions made the shards with the process's umask (0755).
            private_dir(&shard)?;
            removed += durable::sweep(&shard, now).map_err(io(&shard))?.len();
            for entry in std::fs::read_dir(&shard).map_err(io(&shard))? {
                let path = entry.map_err(io(&shard))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if let Some(id) = name.strip_suffix(".key")
                    && check_id(id).is_ok()
                    && !self.object_path(id).exists()
                {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Makes a new master key current and re-wraps every data key under it, then removes the
    /// master keys that no key file names any more. Objects are not rewritten. Runs while puts
    /// and reads go on (each key file is re-wrapped under its object's lock; new puts use the
    /// new master from the moment it is current). A crash at any point loses nothing: the new
    /// master is on disk before it is current, each key file is replaced atomically, and a
    /// master key is removed only after every key file has been read again and none names it;
    /// re-running finishes the job.
    pub fn rotate(&self) -> Result<Rotation, StoreError> {
        self.writable()?;
        let _one = lock(&self.rotating);
        let new_id = {
            let mut masters = self.masters_mut();
            let master = new_master(&self.root, &self.rng)?;
            set_current(&self.root, &master.id)?;
            let id = master.id.clone();
            masters.keys.push(master);
            masters.current = masters.keys.len() - 1;
            id
        };
        let mut rewrapped = 0;
        let mut unreadable = Vec::new();
        for id in self.list()? {
            let _stripe = self.stripe(&id);
            let (key_bytes, used) = match self.unwrap_key(&id) {
                Ok(k) => k,
                // Removed since the listing: nothing to re-wrap.
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => {
                    unreadable.push((id.clone(), e.to_string()));
                    continue;
                }
            };
            if used == new_id {
                continue;
            }
            let masters = self.masters();
            let current = masters.current;
            self.write_key(&id, &key_bytes, &masters, current)?;
            rewrapped += 1;
        }
        let retired = if unreadable.is_empty() {
            self.retire_unused()?
        } else {
            // A key file that does not read may name any master: keep them all.
            tracing::warn!(
                unreadable = unreadable.len(),
                "some key files do not read; no master key is removed"
            );
            Vec::new()
        };
        Ok(Rotation {
            new_master: new_id,
            rewrapped,
            retired,
            unreadable,
        })
    }

    /// Removes every master key but the current one that no key file names, after reading every
    /// key file again.
    fn retire_unused(&self) -> Result<Vec<String>, StoreError> {
        let mut named = std::collections::HashSet::new();
        for id in self.list()? {
            match self.key_file(&id) {
                Ok(file) => named.insert(file.master),
                // Removed since the listing ([`Store::remove_unused`]).
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
        }
        let mut masters = self.masters_mut();
        let current_id = masters.keys[masters.current].id.clone();
        let (keep, retire): (Vec<MasterKey>, Vec<MasterKey>) = std::mem::take(&mut masters.keys)
            .into_iter()
            .partition(|m| m.id == current_id || named.contains(&m.id));
        masters.keys = keep;
        masters.current = masters
            .position(&current_id)
            .expect("the current key is kept");
        drop(masters);
        // Also master files on disk this store never loaded (a crashed rotation's new key).
        let mut retired: Vec<String> = retire.into_iter().map(|m| m.id).collect();
        let (on_disk, _) = read_masters(&self.root)?;
        for m in on_disk {
            if m.id != current_id && !named.contains(&m.id) && !retired.contains(&m.id) {
                retired.push(m.id);
            }
        }
        let keys = self.root.join("keys");
        for id in &retired {
            let path = keys.join(format!("master-{id}.key"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        durable::sync_dir(&keys).map_err(io(&keys))?;
        retired.sort();
        Ok(retired)
    }
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreReport {
    /// Objects read.
    pub objects: usize,
    /// Those that failed, with why.
    pub failed: Vec<(String, String)>,
}

/// Every master key in `root/keys`, and the index of the current one.
fn read_masters(root: &Path) -> Result<(Vec<MasterKey>, usize), StoreError> {
    let sealer = sealing::Sealer::from_env(root)?;
    read_masters_with(root, sealer.as_ref(), false)
}

/// [`read_masters`] with `sealer` for sealed keys; unsealed ones refused while it is given
/// unless `allow_unsealed`.
fn read_masters_with(
    root: &Path,
    sealer: Option<&sealing::Sealer>,
    allow_unsealed: bool,
) -> Result<(Vec<MasterKey>, usize), StoreError> {
    let current_path = root.join("keys/current");
    let current_id = std::fs::read_to_string(&current_path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::Layout {
                path: root.to_path_buf(),
                message: "not a Gantry data directory (run `gantry init`)".into(),
            },
            _ => io(&current_path)(e),
        })?
        .trim()
        .to_string();
    let keys = root.join("keys");
    let mut masters = Vec::new();
    for entry in std::fs::read_dir(&keys).map_err(io(&keys))? {
        let path = entry.map_err(io(&keys))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(id) = name
            .strip_prefix("master-")
            .and_then(|n| n.strip_suffix(".key"))
        {
            let file = durable::read_bounded(&path, 128).map_err(io(&path))?;
            let label = sealing::master_label(id);
            let bytes = sealing::key_bytes(&file, &label, &path, sealer, allow_unsealed)?;
            let master = MasterKey::from_bytes(&bytes, &path)?;
            if master.id != id {
                return Err(StoreError::Layout {
                    path: path.clone(),
                    message: format!("holds master key {}, not the one it names", master.id),
                });
            }
            masters.push(master);
        }
    }
    let current = masters
        .iter()
        .position(|m| m.id == current_id)
        .ok_or_else(|| StoreError::Layout {
            path: current_path.clone(),
            message: format!("names master key {current_id}, which is not in keys/"),
        })?;
    Ok((masters, current))
}

/// Creates `dir` and any parent it lacks, each owner-only (0700), and makes `dir` owner-only
/// if it was there: every directory of a data directory is made through here (the objects'
/// shards were once made with the process's umask, 0755).
pub fn make_private_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    private_dir(dir)
}

/// Makes `dir` owner-only (0700).
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    Ok(())
}

fn check_id(id: &str) -> Result<(), StoreError> {
    if id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(StoreError::NotFound(id.to_string()))
    }
}

fn key_aad(id: &str) -> Vec<u8> {
    format!("gantry-data-key:v{FORMAT}:{id}").into_bytes()
}

/// A new master key, written into `root/keys` (sealed where `GANTRY_KEY_FILE` names a key).
fn new_master(root: &Path, rng: &SystemRandom) -> Result<MasterKey, StoreError> {
    let sealer = sealing::Sealer::from_env(root)?;
    new_master_with(root, rng, sealer.as_ref())
}

fn new_master_with(
    root: &Path,
    rng: &SystemRandom,
    sealer: Option<&sealing::Sealer>,
) -> Result<MasterKey, StoreError> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)
        .map_err(|_| StoreError::Random("no master key".into()))?;
    let path = root.join("keys/new-master.key");
    let master = MasterKey::from_bytes(&bytes, &path)?;
    let path = root.join("keys").join(format!("master-{}.key", master.id));
    let file = match sealer {
        Some(sealer) => sealer.seal(&sealing::master_label(&master.id), &bytes, rng)?,
        None => bytes.to_vec(),
    };
    durable::write(&path, &file, Mode::Private).map_err(io(&path))?;
    Ok(master)
}

/// Seals every unsealed master key of the data directory at `root` under the key
/// `GANTRY_KEY_FILE` names (it must name one), holding the directory's lock (`holder`); returns
/// how many it sealed. Each file is replaced atomically: a crash leaves every key readable.
pub fn seal_master_keys(root: &Path, holder: &str) -> Result<usize, StoreError> {
    let sealer = sealing::Sealer::from_env(root)?.ok_or_else(|| StoreError::Layout {
        path: root.to_path_buf(),
        message: format!("{KEY_FILE_ENV} names no key file to seal the master keys with"),
    })?;
    read_masters_with(root, Some(&sealer), true)?;
    let _lock = DirLock::acquire(root, holder)?;
    seal_unsealed(root, &sealer, &SystemRandom::new())
}

fn seal_unsealed(
    root: &Path,
    sealer: &sealing::Sealer,
    rng: &SystemRandom,
) -> Result<usize, StoreError> {
    let (masters, _) = read_masters_with(root, Some(sealer), true)?;
    let mut sealed = 0;
    for master in masters {
        let path = root.join("keys").join(format!("master-{}.key", master.id));
        let file = durable::read_bounded(&path, 128).map_err(io(&path))?;
        if sealing::is_sealed(&file) {
            continue;
        }
        let file = sealer.seal(&sealing::master_label(&master.id), &file, rng)?;
        durable::write(&path, &file, Mode::Private).map_err(io(&path))?;
        sealed += 1;
    }
    let path = root.join(HOST_KEY);
    let file = durable::read_bounded(&path, 4096).map_err(io(&path))?;
    if !sealing::is_sealed(&file) {
        host_key_from(&file, &path)?;
        let file = sealer.seal(sealing::HOST_KEY_LABEL, &file, rng)?;
        durable::write(&path, &file, Mode::Private).map_err(io(&path))?;
        sealed += 1;
    }
    Ok(sealed)
}

/// The host's audit signing key, in the data directory.
const HOST_KEY: &str = "keys/host.pk8";

/// The key that authenticates the rows (users, tokens, jobs, datasets) of the data directory at
/// `root` (and of its control plane in etcd): derived from the key file `GANTRY_KEY_FILE` names,
/// `None` when it names none. With it, a writer of the directory who lacks the key file cannot
/// give a user roles, add a token, plant a job or lower a dataset's classification.
pub fn rows_key(root: &Path) -> Result<Option<[u8; 32]>, StoreError> {
    Ok(sealing::Sealer::from_env(root)?.map(|s| s.rows))
}

/// The host's signing key (audit checkpoints) of the data directory at `root`: opened with the
/// key file `GANTRY_KEY_FILE` names where it is sealed (and refused unsealed while it names one).
pub fn host_key(root: &Path) -> Result<ring::signature::Ed25519KeyPair, StoreError> {
    let sealer = sealing::Sealer::from_env(root)?;
    host_key_with(root, sealer.as_ref())
}

fn host_key_with(
    root: &Path,
    sealer: Option<&sealing::Sealer>,
) -> Result<ring::signature::Ed25519KeyPair, StoreError> {
    let path = root.join(HOST_KEY);
    // A PKCS#8 Ed25519 key is 83-85 bytes (sealed, 32 more): anything much larger is not one.
    let file = durable::read_bounded(&path, 4096).map_err(io(&path))?;
    let bytes = sealing::key_bytes(&file, sealing::HOST_KEY_LABEL, &path, sealer, false)?;
    host_key_from(&bytes, &path)
}

fn host_key_from(bytes: &[u8], path: &Path) -> Result<ring::signature::Ed25519KeyPair, StoreError> {
    ring::signature::Ed25519KeyPair::from_pkcs8(bytes).map_err(|e| StoreError::Layout {
        path: path.to_path_buf(),
        message: format!("not an Ed25519 PKCS#8 private key ({e})"),
    })
}

/// Writes a new host signing key into `root` (sealed under `sealer` where given).
fn new_host_key(
    root: &Path,
    rng: &SystemRandom,
    sealer: Option<&sealing::Sealer>,
) -> Result<(), StoreError> {
    let path = root.join(HOST_KEY);
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(rng)
        .map_err(|_| StoreError::Random("no host signing key".into()))?;
    let file = match sealer {
        Some(sealer) => sealer.seal(sealing::HOST_KEY_LABEL, pkcs8.as_ref(), rng)?,
        None => pkcs8.as_ref().to_vec(),
    };
    durable::write(&path, &file, Mode::Private).map_err(io(&path))
}

fn set_current(root: &Path, id: &str) -> Result<(), StoreError> {
    let path = root.join("keys/current");
    durable::write(&path, format!("{id}\n").as_bytes(), Mode::Private).map_err(io(&path))
}

#[cfg(test)]
mod tests;
