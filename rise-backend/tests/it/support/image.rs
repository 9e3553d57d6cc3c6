//! OCI image layouts on disk (image-spec v1.1 `oci-layout` + `index.json` + `blobs/sha256`),
//! for `skopeo copy oci:DIR docker://...`.
//!
//! Layers are gzip'd tar archives (`application/vnd.oci.image.layer.v1.tar+gzip`, like real
//! images), each holding one small file of random content, both formats written by hand:
//! - tar: a 512-byte ustar header (checksum = sum of the header bytes with the checksum field
//!   as spaces, written as 6 octal digits, NUL, space), the data padded to 512 bytes, two zero
//!   blocks;
//! - gzip: a 10-byte header, DEFLATE "stored" (uncompressed) blocks, CRC-32 and size.
//!
//! Fact: skopeo (containers/image) compresses *uncompressed* layers when pushing to a registry
//! and rewrites the manifest, so an image with `...layer.v1.tar` layers arrives with another
//! manifest digest. Already-gzip'd layers are pushed as they are: the digest is preserved.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// The `org.opencontainers.image.ref.name` of the one manifest in `index.json`, so both
/// `oci:DIR` and `oci:DIR:latest` name it.
pub const REF_NAME: &str = "latest";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn to_json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// An image written as an OCI layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    pub dir: PathBuf,
    /// `sha256:<hex>` of the manifest: what a registry reports as the image digest.
    pub manifest_digest: String,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// `sha256:<hex>` of each uncompressed layer (the config's `rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
}

impl OciLayout {
    /// Writes an image with `layers` random layers into `dir` (created if needed; it should be
    /// empty). Every call produces different layers, hence a different manifest digest.
    pub fn create(dir: &Path, layers: usize) -> Result<Self> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;

        let mut layer_descriptors = Vec::with_capacity(layers);
        let mut diff_ids = Vec::with_capacity(layers);
        for index in 0..layers {
            let id = uuid::Uuid::new_v4();
            let content = format!("layer {index} of a Rise test image: {id}\n");
            let tar = tar_with_file(&format!("rise-test/layer-{index}.txt"), content.as_bytes());
            diff_ids.push(sha256_digest(&tar));
            layer_descriptors.push(write_blob(&blobs, LAYER_MEDIA_TYPE, &gzip_stored(&tar))?);
        }

        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": { "Labels": { "org.example.rise-test": uuid::Uuid::new_v4().to_string() } },
            "rootfs": {
                "type": "layers",
                "diff_ids": diff_ids,
            },
            "history": layer_descriptors.iter().map(|_| json!({ "created_by": "rise tests" })).collect::<Vec<_>>(),
        });
        let config = write_blob(&blobs, CONFIG_MEDIA_TYPE, &serde_json::to_vec(&config)?)?;

        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.to_json(),
            "layers": layer_descriptors.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let manifest = write_blob(&blobs, MANIFEST_MEDIA_TYPE, &serde_json::to_vec(&manifest)?)?;

        let mut in_index = manifest.to_json();
        in_index["annotations"] = json!({ "org.opencontainers.image.ref.name": REF_NAME });
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [in_index],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;

        Ok(Self {
            dir: dir.to_path_buf(),
            manifest_digest: manifest.digest.clone(),
            manifest,
            config,
            layers: layer_descriptors,
            diff_ids,
        })
    }

    /// Reads the manifest digest named by `index.json` of an existing layout (e.g. one that
    /// `skopeo copy docker://... oci:DIR` wrote).
    pub fn read_manifest_digest(dir: &Path) -> Result<String> {
        let index: Value = serde_json::from_slice(
            &std::fs::read(dir.join("index.json"))
                .with_context(|| format!("reading {}/index.json", dir.display()))?,
        )?;
        index["manifests"][0]["digest"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no manifest in {index}"))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
    )
}

fn write_blob(blobs: &Path, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
    let digest = sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    let path = blobs.join(hex);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size: bytes.len() as u64,
    })
}

/// A POSIX ustar archive holding one regular file.
pub fn tar_with_file(name: &str, data: &[u8]) -> Vec<u8> {
    assert!(name.len() < 100, "tar member name too long: {name}");
    let mut header = [0u8; 512];
    let mut put = |offset: usize, bytes: &[u8]| {
        header[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, name.as_bytes()); // name[100]
    put(100, b"0000644\0"); // mode[8]
    put(108, b"0000000\0"); // uid[8]
    put(116, b"0000000\0"); // gid[8]
    put(124, format!("{:011o}\0", data.len()).as_bytes()); // size[12]
    put(136, b"14544400200\0"); // mtime[12]: 2024-01-01T00:00:00Z
    put(148, b"        "); // chksum[8]: spaces while summing
    put(156, b"0"); // typeflag: regular file
    put(257, b"ustar\0"); // magic[6]
    put(263, b"00"); // version[2]
    put(265, b"root"); // uname[32]
    put(297, b"root"); // gname[32]
    let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());

    let padded = data.len().div_ceil(512) * 512;
    let mut tar = Vec::with_capacity(512 + padded + 1024);
    tar.extend_from_slice(&header);
    tar.extend_from_slice(data);
    tar.resize(512 + padded + 1024, 0); // data padding + two zero blocks
    tar
}

/// `data` as a gzip member made of DEFLATE stored blocks (valid gzip, no compression).
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    const MAX_BLOCK: usize = 0xffff;
    let blocks = data.len().div_ceil(MAX_BLOCK).max(1);
    let mut out = Vec::with_capacity(10 + data.len() + 5 * blocks + 8);
    // ID1 ID2, CM = deflate, FLG = 0, MTIME = 0, XFL = 0, OS = 255 (unknown)
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    for index in 0..blocks {
        let chunk =
            &data[(index * MAX_BLOCK).min(data.len())..((index + 1) * MAX_BLOCK).min(data.len())];
        let last = index + 1 == blocks;
        // BFINAL (1 bit), BTYPE = 00 (stored), then padding to the byte boundary.
        out.push(u8::from(last));
        let len = u16::try_from(chunk.len()).expect("block length fits u16");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    // ISIZE: the input size modulo 2^32.
    out.extend_from_slice(&((data.len() as u64 & 0xffff_ffff) as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, as in gzip).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffff_u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::{crc32, gzip_stored, tar_with_file};

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    /// The system's gzip and tar read what we write.
    #[test]
    fn gzip_and_tar_are_readable_by_the_real_tools() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let tar = tar_with_file("dir/file.bin", &data);
        let gz = dir.path().join("layer.tar.gz");
        std::fs::write(&gz, gzip_stored(&tar)).expect("write");
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&gz)
            .output()
            .expect("running gzip");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, tar);
        let list = std::process::Command::new("tar")
            .arg("-tvzf")
            .arg(&gz)
            .output()
            .expect("running tar");
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let listing = String::from_utf8_lossy(&list.stdout);
        assert!(
            listing.contains("dir/file.bin") && listing.contains("200000"),
            "{listing}"
        );
    }

    #[test]
    fn tar_header_checksum_and_layout() {
        let tar = tar_with_file("a.txt", b"hello\n");
        assert_eq!(tar.len(), 512 * 4);
        let stored = std::str::from_utf8(&tar[148..154]).expect("octal digits");
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(stored, 8).expect("octal"), sum);
        assert_eq!(&tar[512..518], b"hello\n");
    }
}
