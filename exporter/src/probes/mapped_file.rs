//! A file mapped read-only, for reading an executable's or a library's ELF: its pages
//! come from the page cache as they are touched, so a 100 MB executable costs the few
//! pages its headers, symbol tables and the OpenSSL functions' code take, not a copy of
//! itself (reading whole files made the agent's start-up peak 75 MiB higher on a host
//! with a few large binaries running). As aya maps files to resolve symbols.
use std::{fs::File, io, os::fd::AsRawFd as _, path::Path, ptr::NonNull};

pub struct MappedFile {
    start: NonNull<libc::c_void>,
    len: usize,
}

impl MappedFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
        if len == 0 {
            return Err(io::Error::other("empty file"));
        }
        // SAFETY: a fresh private read-only mapping of an open file; the pointer is
        // checked before use and unmapped once, in Drop. (A file truncated while mapped
        // would fault on access: library and executable files are replaced by rename,
        // a new inode, which leaves this one whole.)
        let start =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
        if start == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = NonNull::new(start).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { start, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes are mapped at `start` until Drop.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe {
            libc::munmap(self.start.as_ptr(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MappedFile;

    #[test]
    fn a_mapped_file_reads_as_the_file_does() {
        let exe = std::env::current_exe().unwrap();
        let mapped = MappedFile::open(&exe).unwrap();
        assert_eq!(mapped.bytes(), std::fs::read(&exe).unwrap().as_slice());
        assert!(MappedFile::open(std::path::Path::new("/nonexistent/file")).is_err());
        assert!(MappedFile::open(std::path::Path::new("/dev/null")).is_err(), "empty");
    }
}
