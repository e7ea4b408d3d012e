//! Zero-copy handoff of bytes and descriptors between Rust and Python. All `unsafe` of the
//! bindings is in this module; the other binding modules call only its safe functions.
//!
//! - [`PyChunk`] exports a chunk's payload through the buffer protocol: `memoryview(chunk)` and
//!   aiohttp's writes read the pooled buffer directly.
//! - [`with_bytes`] lets a (possibly GIL-free) section read a Python buffer in place.
//! - [`duplicate_descriptor`] turns a caller's file descriptor into a file of our own.
//!
//! # Soundness
//! - A chunk's payload is a `Vec<u8>` owned by the `PyChunk`, behind a mutex. `__getbuffer__`
//!   hands out its pointer only while the payload is present, counts the export, and stores a
//!   strong reference to the chunk in the view; `release()` refuses to drop the payload while
//!   any export is counted, and nothing else moves or resizes the Vec. So the pointer is valid
//!   for as long as any view lives, and the memory is read-only to Python (`readonly = 1`,
//!   writable requests are refused).
//! - [`with_bytes`] builds a slice from a `PyBuffer` borrowed for the whole call: the export
//!   (and so the exporter's memory) outlives the slice, which never escapes the closure. The
//!   slice may be read with the GIL released; Python code could still write to a mutable
//!   exporter (a `bytearray`) from another thread meanwhile, which can change the bytes read but
//!   not their validity (a `u8` has no invalid values, and a `bytearray` cannot be resized while
//!   exported).
//! - [`duplicate_descriptor`] only borrows the raw descriptor for the duration of a `dup`, and
//!   owns the duplicate; a closed or invalid descriptor makes `dup` fail (an error), it is never
//!   closed or used afterwards.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::buffers::PooledBuffer;
use crate::checksum::hex128;
use crate::split::ReadyChunk;

/// One chunk's payload, as a read-only buffer; its pooled memory goes back on release or GC.
#[pyclass(name = "Chunk", module = "meshpipe._meshpipe", frozen)]
pub struct PyChunk {
    number: u32,
    count: u32,
    offset: u64,
    length: u64,
    payload_size: usize,
    xxh3_128: u128,
    payload: Mutex<Option<PooledBuffer>>,
    exports: AtomicUsize,
}

impl PyChunk {
    pub fn new(chunk: ReadyChunk, count: u32) -> Self {
        PyChunk {
            number: chunk.index + 1,
            count,
            offset: chunk.offset,
            length: chunk.length,
            payload_size: chunk.payload.as_slice().len(),
            xxh3_128: chunk.xxh3_128,
            payload: Mutex::new(Some(chunk.payload)),
            exports: AtomicUsize::new(0),
        }
    }
}

#[pymethods]
impl PyChunk {
    #[getter]
    fn number(&self) -> u32 {
        self.number
    }

    #[getter]
    fn count(&self) -> u32 {
        self.count
    }

    #[getter]
    fn offset(&self) -> u64 {
        self.offset
    }

    #[getter]
    fn length(&self) -> u64 {
        self.length
    }

    #[getter]
    fn payload_size(&self) -> usize {
        self.payload_size
    }

    #[getter]
    fn xxh3_128(&self) -> String {
        hex128(self.xxh3_128)
    }

    fn __len__(&self) -> usize {
        self.payload_size
    }

    /// Give the buffer back to the pool now.
    fn release(&self) -> PyResult<()> {
        let mut payload = self.payload.lock().unwrap_or_else(|p| p.into_inner());
        if self.exports.load(Ordering::Acquire) > 0 {
            return Err(PyBufferError::new_err(
                "chunk payload is still exported (a memoryview of it is alive); release that first",
            ));
        }
        payload.take();
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "Chunk(number={}, count={}, offset={}, length={}, payload_size={})",
            self.number, self.count, self.offset, self.length, self.payload_size
        )
    }

    /// # Safety
    /// `view` comes from the interpreter's buffer machinery (valid or null).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("buffer view is null"));
        }
        if (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("chunk payloads are read-only"));
        }
        let this = slf.get();
        let payload = this.payload.lock().unwrap_or_else(|p| p.into_inner());
        let Some(buffer) = payload.as_ref() else {
            return Err(PyBufferError::new_err("chunk payload was already released"));
        };
        let data = buffer.as_slice();
        this.exports.fetch_add(1, Ordering::AcqRel);
        // SAFETY: `view` is non-null and ours to fill. The pointer stays valid while the view
        // lives: `view.obj` holds a strong reference to this chunk, and `release()` refuses to
        // drop the payload while `exports` > 0, so the Vec is neither freed nor moved.
        unsafe {
            (*view).obj = slf.clone().into_any().into_ptr();
            (*view).buf = data.as_ptr() as *mut c_void;
            (*view).len = data.len() as isize;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
                CString::new("B").expect("no NUL").into_raw()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND {
                &mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if (flags & ffi::PyBUF_STRIDES) == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }

    /// # Safety
    /// `view` was filled by `__getbuffer__` above.
    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
        // SAFETY: a non-null format was made by CString::into_raw in __getbuffer__.
        unsafe {
            if !(*view).format.is_null() {
                drop(CString::from_raw((*view).format));
            }
        }
    }
}

/// A read-only view of a Python buffer, sendable into a GIL-free section of [`with_bytes`].
struct BorrowedBytes {
    pointer: *const u8,
    length: usize,
}

// SAFETY: the bytes are only read, and only inside `with_bytes`, while the `PyBuffer` they came
// from is borrowed (see the module's soundness notes).
unsafe impl Send for BorrowedBytes {}

impl BorrowedBytes {
    fn slice(&self) -> &[u8] {
        if self.length == 0 {
            return &[];
        }
        // SAFETY: built in `with_bytes` from a live, C-contiguous export of `length` bytes,
        // which outlives `self` (it is dropped before `with_bytes` returns).
        unsafe { std::slice::from_raw_parts(self.pointer, self.length) }
    }
}

/// Call `read` with the bytes of a C-contiguous Python buffer, in place (no copy); strided
/// buffers are refused. From `detach_from` bytes on, the GIL is released around `read`.
pub fn with_bytes<R: Send>(
    py: Python<'_>,
    buffer: &PyBuffer<u8>,
    detach_from: usize,
    read: impl FnOnce(&[u8]) -> R + Send,
) -> PyResult<R> {
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "data must be a C-contiguous bytes-like object",
        ));
    }
    let bytes = BorrowedBytes {
        pointer: buffer.buf_ptr() as *const u8,
        length: buffer.len_bytes(),
    };
    Ok(if bytes.length < detach_from {
        read(bytes.slice())
    } else {
        py.detach(move || read(bytes.slice()))
    })
}

/// A file of our own from a file descriptor the caller keeps open (and keeps owning).
pub fn duplicate_descriptor(fd: RawFd) -> crate::Result<File> {
    if fd < 0 {
        return Err(crate::Error::InvalidArgument(format!(
            "file descriptor {fd} is not valid"
        )));
    }
    // SAFETY: the descriptor is only borrowed for the `dup` below (see the module's notes).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed
        .try_clone_to_owned()
        .map_err(|e| crate::Error::io(format!("duplicating file descriptor {fd}"), e))?;
    Ok(File::from(owned))
}
