//! Reading an image to push: an OCI image layout directory, or a `docker save` archive (the
//! OCI layout Docker 25+ writes inside it, or the older `manifest.json` format, for which an OCI
//! manifest is built). Blobs are not loaded into memory: each is located (a file, or a byte range
//! of the archive) and streamed when it is uploaded.
//!
//! Architecture invariant: only files inside the source are read. Archive member names are
//! normalized within the archive; a directory's entries must be relative paths without `..`
//! whose real path (after symbolic links) stays inside the directory, else the source is refused
//! naming the entry. (`manifest.json` names its files, and a hostile one must not upload
//! `~/.config/rise/login.json`.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{CliError, describe_io};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and configs are small; anything larger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// The most descriptors (index entries, configs, layers; repeats included) one source may name.
/// Real images name dozens; a small hostile one naming the same child again and again must not
/// keep `rise push` busy for hours.
const MAX_DESCRIPTORS: usize = 10_000;

/// Where a blob's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    File(PathBuf),
    /// A byte range of a tar archive (tar stores members uncompressed and contiguous).
    Archive {
        archive: PathBuf,
        offset: u64,
    },
    Memory(bytes::Bytes),
}

/// A blob to upload.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    /// `layer`, `config` or `blob`, for progress lines.
    pub kind: &'static str,
    pub location: Location,
}

/// A manifest (or index) to upload, byte for byte as its digest was computed.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Everything one push uploads: blobs first, then child manifests (of an index), then the root
/// manifest under the tag.
#[derive(Debug)]
pub struct Image {
    pub blobs: Vec<Blob>,
    pub children: Vec<Manifest>,
    pub root: Manifest,
}

impl Image {
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// Read the image at `path`. `reference` picks one image when the source holds several (an
/// `org.opencontainers.image.ref.name` annotation, or a `RepoTags` entry of `docker save`).
pub fn open(path: &Path, reference: Option<&str>) -> Result<Image, CliError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        CliError::Input(format!(
            "cannot read image source {}: {}; give an OCI layout directory or a `docker save` archive",
            path.display(),
            describe_io(&e)
        ))
    })?;
    let store = if meta.is_dir() {
        Store::Dir(path.to_owned())
    } else {
        Store::Archive(Archive::index(path)?)
    };
    if store.exists("index.json") {
        if !store.exists("oci-layout") {
            return Err(
                store.invalid("has index.json but no oci-layout file; is it an OCI image layout?")
            );
        }
        return open_layout(&store, reference);
    }
    if store.exists("manifest.json") {
        return open_docker_archive(&store, reference);
    }
    Err(store.invalid(
        "is neither an OCI image layout (index.json, oci-layout) nor a `docker save` archive (manifest.json)",
    ))
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

fn open_layout(store: &Store, reference: Option<&str>) -> Result<Image, CliError> {
    let index_bytes = store.read_small("index.json")?;
    let index: IndexDoc = serde_json::from_slice(&index_bytes)
        .map_err(|e| store.invalid(&format!("has an unreadable index.json ({e})")))?;
    let names = |d: &Descriptor| -> Vec<String> {
        [REF_NAME, CONTAINERD_NAME]
            .iter()
            .filter_map(|k| d.annotations.get(*k).cloned())
            .collect()
    };
    let chosen: Vec<&Descriptor> = match reference {
        Some(r) => index
            .manifests
            .iter()
            .filter(|d| names(d).iter().any(|n| n == r))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    let root = match chosen.as_slice() {
        [one] => *one,
        [] if reference.is_some() => {
            let known: Vec<String> = index.manifests.iter().flat_map(names).collect();
            return Err(store.invalid(&format!(
                "holds no image named {:?}; it holds: {}",
                reference.unwrap_or_default(),
                if known.is_empty() {
                    "unnamed images only".into()
                } else {
                    known.join(", ")
                }
            )));
        }
        [] => return Err(store.invalid("lists no image in index.json")),
        many => {
            let known: Vec<String> = many.iter().flat_map(|d| names(d)).collect();
            return Err(CliError::Input(format!(
                "{} holds {} images: pick one with --ref NAME ({})",
                store.display(),
                many.len(),
                if known.is_empty() {
                    "they have no names".into()
                } else {
                    known.join(", ")
                }
            )));
        }
    };
    let mut image = Image {
        blobs: Vec::new(),
        children: Vec::new(),
        root: Manifest {
            digest: String::new(),
            media_type: String::new(),
            bytes: Vec::new(),
        },
    };
    let mut walk = Walk::default();
    walk.walked.insert(root.digest.clone());
    image.root = walk_manifest(store, root, &mut image, &mut walk, 0)?;
    Ok(image)
}

/// What a walk over an image's manifests has met so far.
#[derive(Default)]
struct Walk {
    /// Digests of the blobs and child manifests added to the image, each added once.
    seen: HashSet<String>,
    /// Digests of the manifests read (or being read), each read once however often it is named.
    walked: HashSet<String>,
    /// Descriptors met, repeats included (at most [`MAX_DESCRIPTORS`]).
    descriptors: usize,
}

impl Walk {
    /// Count one more descriptor.
    fn meet(&mut self, store: &Store) -> Result<(), CliError> {
        self.descriptors += 1;
        if self.descriptors > MAX_DESCRIPTORS {
            return Err(too_many_descriptors(store));
        }
        Ok(())
    }
}

fn too_many_descriptors(store: &Store) -> CliError {
    store.invalid(&format!(
        "names more than {MAX_DESCRIPTORS} manifests and blobs (repeats included): no image needs that many; check where it came from"
    ))
}

/// Read a manifest or index named by `d`, add its blobs (and children) to `image`.
fn walk_manifest(
    store: &Store,
    d: &Descriptor,
    image: &mut Image,
    walk: &mut Walk,
    depth: u8,
) -> Result<Manifest, CliError> {
    if depth > 4 {
        return Err(store.invalid("nests image indexes too deeply"));
    }
    let name = blob_path(&d.digest)
        .ok_or_else(|| store.invalid(&format!("names an unsupported digest {:?}", d.digest)))?;
    let bytes = store.read_small(&name)?;
    verify(store, &d.digest, d.size, &bytes)?;
    let doc: ManifestDoc = serde_json::from_slice(&bytes)
        .map_err(|e| store.invalid(&format!("has an unreadable manifest {} ({e})", d.digest)))?;
    let media_type = d
        .media_type
        .clone()
        .or(doc.media_type.clone())
        .unwrap_or_else(|| {
            if doc.manifests.is_some() {
                OCI_INDEX.into()
            } else {
                OCI_MANIFEST.into()
            }
        });
    if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        for child in doc.manifests.iter().flatten() {
            walk.meet(store)?;
            // A child named again was read (and its blobs added) the first time.
            if !walk.walked.insert(child.digest.clone()) {
                continue;
            }
            let m = walk_manifest(store, child, image, walk, depth + 1)?;
            if walk.seen.insert(m.digest.clone()) {
                image.children.push(m);
            }
        }
    } else if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
        let config = doc
            .config
            .as_ref()
            .ok_or_else(|| store.invalid(&format!("has a manifest {} without config", d.digest)))?;
        walk.meet(store)?;
        add_blob(store, config, "config", image, &mut walk.seen)?;
        for layer in &doc.layers {
            walk.meet(store)?;
            add_blob(store, layer, "layer", image, &mut walk.seen)?;
        }
    } else {
        return Err(store.invalid(&format!(
            "holds a manifest of unsupported media type {media_type:?}"
        )));
    }
    Ok(Manifest {
        digest: d.digest.clone(),
        media_type,
        bytes,
    })
}

fn add_blob(
    store: &Store,
    d: &Descriptor,
    kind: &'static str,
    image: &mut Image,
    seen: &mut HashSet<String>,
) -> Result<(), CliError> {
    if !seen.insert(d.digest.clone()) {
        return Ok(());
    }
    let name = blob_path(&d.digest)
        .ok_or_else(|| store.invalid(&format!("names an unsupported digest {:?}", d.digest)))?;
    let (location, size) = store.find(&name)?.ok_or_else(|| {
        store.invalid(&format!(
            "lacks {kind} {} (blobs/{})",
            d.digest,
            name.trim_start_matches("blobs/")
        ))
    })?;
    if size != d.size {
        return Err(store.invalid(&format!(
            "has {kind} {} of {size} bytes where the manifest says {}",
            d.digest, d.size
        )));
    }
    image.blobs.push(Blob {
        digest: d.digest.clone(),
        size,
        kind,
        location,
    });
    Ok(())
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The pre-OCI `docker save` format: build an OCI manifest over its config and layer tars.
fn open_docker_archive(store: &Store, reference: Option<&str>) -> Result<Image, CliError> {
    let bytes = store.read_small("manifest.json")?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| store.invalid(&format!("has an unreadable manifest.json ({e})")))?;
    let tags = |e: &DockerManifestEntry| e.repo_tags.clone().unwrap_or_default();
    let chosen: Vec<&DockerManifestEntry> = entries
        .iter()
        .filter(|e| reference.is_none_or(|r| tags(e).iter().any(|t| t == r)))
        .collect();
    let entry = match chosen.as_slice() {
        [one] => *one,
        [] => {
            return Err(store.invalid(&format!(
                "holds no image tagged {:?}",
                reference.unwrap_or_default()
            )));
        }
        many => {
            let known: Vec<String> = many.iter().flat_map(|e| tags(e)).collect();
            return Err(CliError::Input(format!(
                "{} holds {} images: pick one with --ref TAG ({})",
                store.display(),
                many.len(),
                known.join(", ")
            )));
        }
    };
    if entry.layers.len() >= MAX_DESCRIPTORS {
        return Err(too_many_descriptors(store));
    }
    let mut blobs = Vec::new();
    let mut seen = HashSet::new();
    let (config_location, config_size) = store.locate(&entry.config)?;
    let config_digest = store.hash(&entry.config, &config_location, config_size)?;
    seen.insert(config_digest.clone());
    blobs.push(Blob {
        digest: config_digest.clone(),
        size: config_size,
        kind: "config",
        location: config_location,
    });
    let mut layers = Vec::new();
    // A file named again (under any of its names) is hashed once.
    let mut hashed: HashMap<Location, (String, &str)> = HashMap::new();
    for name in &entry.layers {
        let (location, size) = store.locate(name)?;
        let (digest, media_type) = match hashed.get(&location) {
            Some(known) => known.clone(),
            None => {
                let digest = store.hash(name, &location, size)?;
                let media_type = if store.starts_with_gzip_magic(&location)? {
                    OCI_LAYER_TAR_GZIP
                } else {
                    OCI_LAYER_TAR
                };
                hashed.insert(location.clone(), (digest.clone(), media_type));
                (digest, media_type)
            }
        };
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
        if seen.insert(digest.clone()) {
            blobs.push(Blob {
                digest,
                size,
                kind: "layer",
                location,
            });
        }
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| CliError::Other(format!("cannot encode the manifest: {e}")))?;
    Ok(Image {
        blobs,
        children: Vec::new(),
        root: Manifest {
            digest: sha256_digest(&bytes),
            media_type: OCI_MANIFEST.into(),
            bytes,
        },
    })
}

/// `sha256:abc` -> `blobs/sha256/abc`, for well-formed sha256 digests only.
fn blob_path(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Some(format!("blobs/sha256/{hex}"))
    } else {
        None
    }
}

fn verify(store: &Store, digest: &str, size: u64, bytes: &[u8]) -> Result<(), CliError> {
    if bytes.len() as u64 != size || sha256_digest(bytes) != digest {
        return Err(store.invalid(&format!(
            "has a corrupt blob {digest} (its content does not match its digest)"
        )));
    }
    Ok(())
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory or an indexed tar archive.
enum Store {
    Dir(PathBuf),
    Archive(Archive),
}

struct Archive {
    path: PathBuf,
    /// Member path -> (offset of its data, size).
    members: BTreeMap<String, (u64, u64)>,
}

impl Archive {
    fn index(path: &Path) -> Result<Self, CliError> {
        let invalid = |why: String| {
            CliError::Input(format!(
                "image source {} {why}; give an OCI layout directory or a `docker save` archive",
                path.display()
            ))
        };
        let mut file =
            File::open(path).map_err(|e| CliError::file("open image source", path, &e))?;
        let mut magic = [0u8; 2];
        if file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b] {
            return Err(CliError::Input(format!(
                "image source {} is gzip-compressed: decompress it first (`gunzip`), `rise push` reads plain `docker save` archives",
                path.display()
            )));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| CliError::file("read image source", path, &e))?;
        let mut archive = tar::Archive::new(file);
        let mut members = BTreeMap::new();
        let mut links = Vec::new();
        let entries = archive
            .entries()
            .map_err(|e| invalid(format!("is not a tar archive ({})", describe_io(&e))))?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                invalid(format!(
                    "is not a readable tar archive ({})",
                    describe_io(&e)
                ))
            })?;
            let name = match entry.path() {
                Ok(p) => normalize_member(&p.to_string_lossy()),
                Err(_) => continue,
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            } else if (kind.is_symlink() || kind.is_hard_link())
                && let Ok(Some(target)) = entry.link_name()
            {
                links.push((
                    name,
                    kind.is_symlink(),
                    target.to_string_lossy().into_owned(),
                ));
            }
        }
        // Older `docker save` links repeated layers to their first copy.
        for (name, symbolic, target) in links {
            let resolved = if symbolic {
                let base = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                normalize_member(&format!("{base}/{target}"))
            } else {
                normalize_member(&target)
            };
            if let Some(&data) = members.get(&resolved) {
                members.insert(name, data);
            }
        }
        Ok(Self {
            path: path.to_owned(),
            members,
        })
    }
}

/// `./a/../b//c` -> `b/c`.
fn normalize_member(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

impl Store {
    fn display(&self) -> String {
        match self {
            Store::Dir(p) => p.display().to_string(),
            Store::Archive(a) => a.path.display().to_string(),
        }
    }

    fn invalid(&self, why: &str) -> CliError {
        CliError::Input(format!("image source {} {why}", self.display()))
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir(d) => matches!(self.confined(d, name), Ok(Some(p)) if p.is_file()),
            Store::Archive(a) => a.members.contains_key(name),
        }
    }

    fn locate(&self, name: &str) -> Result<(Location, u64), CliError> {
        self.find(name)?
            .ok_or_else(|| self.invalid(&format!("lacks {name}")))
    }

    /// Where `name` is and its size; `None` when the source has no such file. An entry that
    /// would lead outside the source is an error naming it (see the module docs).
    fn find(&self, name: &str) -> Result<Option<(Location, u64)>, CliError> {
        match self {
            Store::Dir(d) => {
                let Some(path) = self.confined(d, name)? else {
                    return Ok(None);
                };
                let meta =
                    std::fs::metadata(&path).map_err(|e| CliError::file("read", &path, &e))?;
                if !meta.is_file() {
                    return Ok(None);
                }
                Ok(Some((Location::File(path), meta.len())))
            }
            Store::Archive(a) => {
                Ok(a.members
                    .get(&normalize_member(name))
                    .map(|&(offset, size)| {
                        (
                            Location::Archive {
                                archive: a.path.clone(),
                                offset,
                            },
                            size,
                        )
                    }))
            }
        }
    }

    /// The real path of entry `name` of directory `dir`, `None` when it does not exist; an error
    /// when `name` is absolute, has `..`, or resolves (through symbolic links) outside `dir`.
    fn confined(&self, dir: &Path, name: &str) -> Result<Option<PathBuf>, CliError> {
        let outside = |how: &str| {
            self.invalid(&format!(
                "names {name:?}, {how}: only files inside the image source are uploaded; check where this image came from"
            ))
        };
        let relative = Path::new(name);
        if name.is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(outside(
                "which is not a plain path inside it (absolute, or with ..)",
            ));
        }
        let base =
            std::fs::canonicalize(dir).map_err(|e| CliError::file("read image source", dir, &e))?;
        let real = match std::fs::canonicalize(base.join(relative)) {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CliError::file("read", &base.join(relative), &e)),
        };
        if !real.starts_with(&base) {
            return Err(outside("a symbolic link leading outside it"));
        }
        Ok(Some(real))
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>, CliError> {
        let (location, size) = self.locate(name)?;
        count_whole_read();
        if size > MAX_MANIFEST_BYTES {
            return Err(self.invalid(&format!(
                "has a {name} of {size} bytes, too large for a manifest"
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        open_reader(&location, size)
            .and_then(|mut r| r.read_to_end(&mut buf))
            .map_err(|e| self.invalid(&format!("cannot be read ({name}: {})", describe_io(&e))))?;
        Ok(buf)
    }

    /// The digest of member `name` (`size` bytes at `location`), hashing it by streaming.
    fn hash(&self, name: &str, location: &Location, size: u64) -> Result<String, CliError> {
        count_whole_read();
        let mut hasher = Sha256::new();
        let mut reader = open_reader(location, size)
            .map_err(|e| self.invalid(&format!("cannot be read ({name}: {})", describe_io(&e))))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(|e| {
                self.invalid(&format!("cannot be read ({name}: {})", describe_io(&e)))
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("sha256:{}", hex(&hasher.finalize())))
    }

    fn starts_with_gzip_magic(&self, location: &Location) -> Result<bool, CliError> {
        let mut magic = [0u8; 2];
        let ok = open_reader(location, 2)
            .and_then(|mut r| r.read_exact(&mut magic))
            .is_ok();
        Ok(ok && magic == [0x1f, 0x8b])
    }
}

#[cfg(test)]
thread_local! {
    static WHOLE_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tests count the files read whole (manifests read, blobs hashed) on their thread, to check
/// that a file named many times is read once.
fn count_whole_read() {
    #[cfg(test)]
    WHOLE_READS.with(|n| n.set(n.get() + 1));
}

/// A reader over exactly `size` bytes at `location` (blocking; small reads and hashing only).
fn open_reader(location: &Location, size: u64) -> std::io::Result<Box<dyn Read>> {
    match location {
        Location::File(path) => Ok(Box::new(File::open(path)?.take(size))),
        Location::Archive { archive, offset } => {
            let mut f = File::open(archive)?;
            f.seek(SeekFrom::Start(*offset))?;
            Ok(Box::new(f.take(size)))
        }
        Location::Memory(bytes) => Ok(Box::new(std::io::Cursor::new(bytes.clone()).take(size))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write an OCI layout with `layers` and return the manifest digest.
    fn layout(dir: &Path, layers: &[&[u8]]) -> String {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        let put = |bytes: &[u8]| {
            let d = sha256_digest(bytes);
            std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).expect("write");
            (d, bytes.len())
        };
        let (cd, cs) = put(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let ls: Vec<_> = layers
            .iter()
            .map(|l| {
                let (d, s) = put(l);
                serde_json::json!({"mediaType": OCI_LAYER_TAR, "digest": d, "size": s})
            })
            .collect();
        let m = serde_json::to_vec(
            &serde_json::json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
            "config":{"mediaType":OCI_CONFIG,"digest":cd,"size":cs},"layers":ls}),
        )
        .expect("json");
        let (md, ms) = put(&m);
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion":2,"manifests":[
                {"mediaType":OCI_MANIFEST,"digest":md,"size":ms,"annotations":{REF_NAME:"v1"}}]}))
            .expect("json"),
        )
        .expect("write");
        md
    }

    #[test]
    fn reads_an_oci_layout_directory_and_the_same_layout_in_a_tar() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("img");
        let digest = layout(&root, &[b"layer-one", b"layer-two", b"layer-one"]);
        let image = open(&root, None).expect("layout");
        assert_eq!(image.root.digest, digest);
        assert_eq!(sha256_digest(&image.root.bytes), digest);
        let kinds: Vec<&str> = image.blobs.iter().map(|b| b.kind).collect();
        assert_eq!(
            kinds,
            ["config", "layer", "layer"],
            "duplicate layers are uploaded once"
        );
        assert!(open(&root, Some("v2")).is_err());
        assert_eq!(
            open(&root, Some("v1")).expect("by name").root.digest,
            digest
        );

        let tar_path = dir.path().join("img.tar");
        let mut builder = tar::Builder::new(File::create(&tar_path).expect("create"));
        builder.append_dir_all(".", &root).expect("append");
        builder.finish().expect("finish");
        drop(builder);
        let image = open(&tar_path, None).expect("tar");
        assert_eq!(image.root.digest, digest);
        let layer = &image.blobs[1];
        let mut buf = Vec::new();
        open_reader(&layer.location, layer.size)
            .expect("open")
            .read_to_end(&mut buf)
            .expect("read");
        assert_eq!(buf, b"layer-one");
    }

    #[test]
    fn corrupt_and_foreign_sources_are_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("img");
        let digest = layout(&root, &[b"abc"]);
        std::fs::write(
            root.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
            b"tampered",
        )
        .expect("write");
        let err = open(&root, None).expect_err("corrupt").to_string();
        assert!(err.contains("corrupt blob"), "{err}");
        let err = open(dir.path(), None)
            .expect_err("not an image")
            .to_string();
        assert!(err.contains("neither an OCI image layout"), "{err}");
        let gz = dir.path().join("x.tar.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0]).expect("write");
        let err = open(&gz, None).expect_err("gzip").to_string();
        assert!(err.contains("gunzip"), "{err}");
        let err = open(&dir.path().join("missing"), None)
            .expect_err("missing")
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn builds_an_oci_manifest_for_a_legacy_docker_save_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar_path = dir.path().join("legacy.tar");
        let mut b = tar::Builder::new(File::create(&tar_path).expect("create"));
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).expect("append");
        };
        add("cfg.json", br#"{"os":"linux"}"#);
        add("aaa/layer.tar", b"first layer");
        add(
            "manifest.json",
            br#"[{"Config":"cfg.json","RepoTags":["app:1"],"Layers":["aaa/layer.tar"]}]"#,
        );
        b.finish().expect("finish");
        drop(b);
        let image = open(&tar_path, Some("app:1")).expect("legacy");
        assert_eq!(image.blobs.len(), 2);
        assert_eq!(image.blobs[1].digest, sha256_digest(b"first layer"));
        let m: serde_json::Value = serde_json::from_slice(&image.root.bytes).expect("json");
        assert_eq!(m["layers"][0]["mediaType"], OCI_LAYER_TAR);
        assert_eq!(m["config"]["digest"], sha256_digest(br#"{"os":"linux"}"#));
        assert_eq!(image.root.digest, sha256_digest(&image.root.bytes));
    }

    /// What `f` returns, and how many files it read whole on this thread.
    fn whole_reads<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = WHOLE_READS.with(std::cell::Cell::get);
        let out = f();
        (out, WHOLE_READS.with(std::cell::Cell::get) - before)
    }

    /// Write an image index naming `child` `times` times; its descriptor.
    fn index_naming(root: &Path, child: &serde_json::Value, times: usize) -> serde_json::Value {
        let doc = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": vec![child; times],
        }))
        .expect("json");
        let digest = sha256_digest(&doc);
        std::fs::write(
            root.join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
            &doc,
        )
        .expect("write");
        serde_json::json!({"mediaType": OCI_INDEX, "digest": digest, "size": doc.len()})
    }

    fn point_index_json_at(root: &Path, d: &serde_json::Value) {
        std::fs::write(
            root.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [d]}))
                .expect("json"),
        )
        .expect("write");
    }

    #[test]
    fn children_named_again_and_again_are_read_once_up_to_a_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("img");
        let manifest = layout(&root, &[b"layer"]);
        let size = std::fs::metadata(
            root.join("blobs/sha256")
                .join(manifest.trim_start_matches("sha256:")),
        )
        .expect("manifest")
        .len();
        let mut d =
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": manifest, "size": size});
        // Four indexes, each naming its child 150 times: 150^4 walks if each name were walked.
        for _ in 0..4 {
            d = index_naming(&root, &d, 150);
        }
        point_index_json_at(&root, &d);
        let (image, reads) = whole_reads(|| open(&root, None));
        let image = image.expect("opens");
        assert_eq!(image.root.digest, d["digest"]);
        let kinds: Vec<&str> = image.blobs.iter().map(|b| b.kind).collect();
        assert_eq!(kinds, ["config", "layer"]);
        assert_eq!(image.children.len(), 4, "three indexes and the manifest");
        assert_eq!(reads, 6, "index.json, four indexes and the manifest");

        let manifest_d =
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": manifest, "size": size});
        let d = index_naming(&root, &manifest_d, MAX_DESCRIPTORS + 1);
        point_index_json_at(&root, &d);
        let err = open(&root, None).expect_err("too many").to_string();
        assert!(
            err.contains("names more than 10000 manifests and blobs"),
            "{err}"
        );
    }

    #[test]
    fn a_docker_save_layer_named_again_and_again_is_hashed_once_up_to_a_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("img");
        let names = ["layer.tar", "./layer.tar", "././layer.tar"].repeat(300);
        docker_dir(&root, "cfg.json", &names);
        let (image, reads) = whole_reads(|| open(&root, None));
        let image = image.expect("opens");
        let kinds: Vec<&str> = image.blobs.iter().map(|b| b.kind).collect();
        assert_eq!(kinds, ["config", "layer"]);
        let m: serde_json::Value = serde_json::from_slice(&image.root.bytes).expect("json");
        assert_eq!(m["layers"].as_array().map(Vec::len), Some(900));
        assert_eq!(reads, 3, "manifest.json, the config and the layer");

        docker_dir(&root, "cfg.json", &vec!["layer.tar"; MAX_DESCRIPTORS]);
        let err = open(&root, None).expect_err("too many").to_string();
        assert!(
            err.contains("names more than 10000 manifests and blobs"),
            "{err}"
        );
    }

    /// A `docker save` directory whose manifest.json names `config` and `layers`.
    fn docker_dir(root: &Path, config: &str, layers: &[&str]) {
        std::fs::create_dir_all(root).expect("mkdir");
        std::fs::write(root.join("cfg.json"), br#"{"os":"linux"}"#).expect("write");
        std::fs::write(root.join("layer.tar"), b"layer").expect("write");
        std::fs::write(
            root.join("manifest.json"),
            serde_json::to_vec(&serde_json::json!([{"Config": config, "Layers": layers}]))
                .expect("json"),
        )
        .expect("write");
    }

    #[test]
    fn a_docker_save_directory_cannot_reach_files_outside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret.txt"), b"do not upload").expect("write");
        let secret = dir.path().join("secret.txt").display().to_string();
        let root = dir.path().join("img");
        docker_dir(&root, "cfg.json", &["layer.tar", "./layer.tar"]);
        let image = open(&root, None).expect("a well-behaved directory");
        assert_eq!(image.blobs.len(), 2);
        for (config, layers) in [
            ("../secret.txt", vec!["layer.tar"]),
            (secret.as_str(), vec!["layer.tar"]),
            ("cfg.json", vec!["sub/../../secret.txt"]),
            ("cfg.json", vec![secret.as_str()]),
            ("", vec!["layer.tar"]),
        ] {
            docker_dir(&root, config, &layers);
            let err = open(&root, None).expect_err("escapes");
            assert!(matches!(err, CliError::Input(_)), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("only files inside the image source"), "{msg}");
            let named = if config == "cfg.json" {
                layers[0]
            } else {
                config
            };
            assert!(msg.contains(&format!("{named:?}")), "{msg}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symbolic_links_out_of_an_image_directory_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("secret.txt"), b"do not upload").expect("write");
        let root = dir.path().join("img");
        docker_dir(&root, "cfg.json", &["link.tar"]);
        std::os::unix::fs::symlink("../secret.txt", root.join("link.tar")).expect("symlink");
        let err = open(&root, None).expect_err("escapes").to_string();
        assert!(
            err.contains("\"link.tar\", a symbolic link leading outside it"),
            "{err}"
        );
        // A link that stays inside is fine.
        std::fs::remove_file(root.join("link.tar")).expect("rm");
        std::os::unix::fs::symlink("layer.tar", root.join("link.tar")).expect("symlink");
        open(&root, None).expect("inside");

        // The same for an OCI layout's blobs.
        let oci = dir.path().join("oci");
        let digest = layout(&oci, &[b"abc"]);
        let _ = digest;
        let layer = oci
            .join("blobs/sha256")
            .join(sha256_digest(b"abc").trim_start_matches("sha256:"));
        std::fs::copy(&layer, dir.path().join("outside")).expect("copy");
        std::fs::remove_file(&layer).expect("rm");
        std::os::unix::fs::symlink(dir.path().join("outside"), &layer).expect("symlink");
        let err = open(&oci, None).expect_err("escapes").to_string();
        assert!(err.contains("symbolic link leading outside"), "{err}");
    }
}
