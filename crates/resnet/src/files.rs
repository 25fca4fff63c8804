//! Opening input files safely: only regular files are read.
//!
//! `open()` on a FIFO blocks until a writer appears, and reading a device such as
//! `/dev/zero` never ends, so a weights file, checkpoint, image or data-set file that is
//! not a regular file is refused with an error naming it, before it is opened.
//! (Symbolic links are followed: what matters is what they lead to.)

use std::fs::File;
use std::io::{Error, ErrorKind, Read, Result};
use std::path::Path;

/// `path`'s length in bytes, or an error when it is not a regular file.
pub fn regular_len(path: &Path) -> Result<u64> {
    let m = std::fs::metadata(path)?;
    if m.is_file() {
        return Ok(m.len());
    }
    let what = if m.is_dir() {
        "a folder"
    } else {
        "not a regular file (a FIFO, device or socket)"
    };
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!("{what}: only regular files are read"),
    ))
}

/// Opens `path` for reading, once it is known to be a regular file.
pub fn open_regular(path: &Path) -> Result<File> {
    regular_len(path)?;
    File::open(path)
}

/// Reads the whole of `path`, a regular file of at most `limit` bytes; a larger one is
/// an error giving both sizes, refused before any of it is read.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let len = regular_len(path)?;
    if len > limit {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("{len} bytes, more than the {limit} bytes such a file can hold"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The memory the system says is available (`MemAvailable` of `/proc/meminfo`), where
/// it says so (Linux).
pub fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("resnet-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.bin");
        std::fs::write(&f, [1u8, 2, 3]).unwrap();
        assert_eq!(read_regular(&f, 3).unwrap(), [1, 2, 3]);
        let e = read_regular(&f, 2).unwrap_err().to_string();
        assert!(e.contains("3 bytes") && e.contains("2 bytes"), "{e}");
        let e = read_regular(&dir, 10).unwrap_err().to_string();
        assert!(e.contains("folder"), "{e}");
        #[cfg(target_os = "linux")]
        {
            let e = open_regular(Path::new("/dev/zero"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
