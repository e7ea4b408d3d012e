//! Zero-copy handoff of bytes between Rust and Python. All `unsafe` of the bindings is here.
//!
//! - [`PyChunk`] exports a chunk's payload through the buffer protocol: `memoryview(chunk)` and
//!   aiohttp's writes read the pooled buffer directly.
//! - [`BorrowedBytes`] lets a GIL-free section read a Python buffer the caller keeps exported.

use std::ffi::CString;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::checksum::hex128;
use crate::split::{PooledBuffer, ReadyChunk};

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

/// A read-only view of a Python buffer that a GIL-free section may read.
pub struct BorrowedBytes {
    pointer: *const u8,
    length: usize,
}

// SAFETY: the bytes are only read, and only while the `PyBuffer` they came from is alive (the
// caller holds it across the GIL-free section), which keeps the exporter from freeing them.
unsafe impl Send for BorrowedBytes {}

impl BorrowedBytes {
    /// Borrow a C-contiguous buffer of bytes; strided buffers are refused.
    pub fn from_buffer(buffer: &PyBuffer<u8>) -> PyResult<Self> {
        if !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "data must be a C-contiguous bytes-like object",
            ));
        }
        Ok(BorrowedBytes {
            pointer: buffer.buf_ptr() as *const u8,
            length: buffer.len_bytes(),
        })
    }

    pub fn len(&self) -> usize {
        self.length
    }

    /// # Safety
    /// The `PyBuffer` this came from must still be alive.
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.length == 0 {
            return &[];
        }
        // SAFETY: per the contract above, pointer and length describe a live export.
        unsafe { std::slice::from_raw_parts(self.pointer, self.length) }
    }
}
