//! `Assembler` and `ChunkWriter`: the core assembler for Python callers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::buffer::with_bytes;
use crate::assemble::{
    AssembleOptions, Assembler, AssemblyReport, ChunkReport, ChunkWriter, DEFAULT_MAX_CHUNK_SIZE,
};
use crate::checksum::{hex128, hex_bytes, parse_hex128, parse_hex256};
use crate::codec::CodecKind;

/// Below this, decoding a write is cheaper than releasing and retaking the GIL.
const DETACH_THRESHOLD: usize = 16 * 1024;

#[pyclass(name = "ChunkReport", module = "meshpipe._meshpipe", frozen, get_all)]
pub struct PyChunkReport {
    number: u32,
    length: u64,
    xxh3_128: String,
    verified_by: &'static str,
    /// The last chunk's whole-file manifest: (xxh3-128 hex, size).
    manifest: Option<(String, u64)>,
}

impl From<ChunkReport> for PyChunkReport {
    fn from(r: ChunkReport) -> Self {
        PyChunkReport {
            number: r.number,
            length: r.length,
            xxh3_128: hex128(r.xxh3_128),
            verified_by: r.verified_by.name(),
            manifest: r.manifest.map(|m| (hex128(m.xxh3_128), m.size)),
        }
    }
}

#[pymethods]
impl PyChunkReport {
    fn __repr__(&self) -> String {
        format!(
            "ChunkReport(number={}, length={}, verified_by={:?})",
            self.number, self.length, self.verified_by
        )
    }
}

#[pyclass(
    name = "AssemblyReport",
    module = "meshpipe._meshpipe",
    frozen,
    get_all
)]
pub struct PyAssemblyReport {
    path: String,
    size: u64,
    chunk_count: u32,
    xxh3_128: String,
    sha256: Option<String>,
    verified: Vec<String>,
}

impl From<AssemblyReport> for PyAssemblyReport {
    fn from(r: AssemblyReport) -> Self {
        PyAssemblyReport {
            path: r.path.display().to_string(),
            size: r.size,
            chunk_count: r.chunk_count,
            xxh3_128: hex128(r.xxh3_128),
            sha256: r.sha256.map(|s| hex_bytes(&s)),
            verified: r.verified,
        }
    }
}

#[pymethods]
impl PyAssemblyReport {
    fn __repr__(&self) -> String {
        format!(
            "AssemblyReport(path={:?}, size={}, chunk_count={}, verified={:?})",
            self.path, self.size, self.chunk_count, self.verified
        )
    }
}

#[pyclass(name = "Assembler", module = "meshpipe._meshpipe", frozen)]
pub struct PyAssembler {
    inner: Assembler,
}

#[pymethods]
impl PyAssembler {
    #[new]
    #[pyo3(signature = (destination, *, chunk_count, codec = "none", chunk_size = None, file_size = None, xxh3_128 = None, sha256 = None, compute_sha256 = false, max_chunk_size = DEFAULT_MAX_CHUNK_SIZE, overwrite = false, partial_path = None, completed = None, keep_partial = false, trailer = false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        destination: PathBuf,
        chunk_count: u32,
        codec: &str,
        chunk_size: Option<u64>,
        file_size: Option<u64>,
        xxh3_128: Option<&str>,
        sha256: Option<&str>,
        compute_sha256: bool,
        max_chunk_size: u64,
        overwrite: bool,
        partial_path: Option<PathBuf>,
        completed: Option<Bound<'_, PyAny>>,
        keep_partial: bool,
        trailer: bool,
    ) -> PyResult<Self> {
        let mut options = AssembleOptions::new(chunk_count, CodecKind::parse(codec)?);
        options.chunk_size = chunk_size;
        options.file_size = file_size;
        options.xxh3_128 = xxh3_128.map(parse_hex128).transpose()?;
        options.sha256 = sha256.map(parse_hex256).transpose()?;
        options.compute_sha256 = compute_sha256;
        options.max_chunk_size = max_chunk_size;
        options.overwrite = overwrite;
        options.partial_path = partial_path;
        options.keep_partial = keep_partial;
        options.trailer = trailer;
        if let Some(completed) = completed {
            options.completed = completed_chunks(&completed, chunk_count)?;
        }
        let inner = py.detach(|| Assembler::create(&destination, options))?;
        Ok(PyAssembler { inner })
    }

    #[getter]
    fn destination(&self) -> String {
        self.inner.destination().display().to_string()
    }

    #[getter]
    fn temporary_path(&self) -> String {
        self.inner.temporary_path().display().to_string()
    }

    #[getter]
    fn chunk_count(&self) -> u32 {
        self.inner.chunk_count()
    }

    #[getter]
    fn missing(&self) -> Vec<u32> {
        self.inner.missing()
    }

    #[getter]
    fn accepted(&self) -> Vec<u32> {
        self.inner.resumed().accepted.clone()
    }

    #[getter]
    fn rejected(&self) -> Vec<u32> {
        self.inner.resumed().rejected.clone()
    }

    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.inner.sync())?)
    }

    #[pyo3(signature = (number, *, xxh3_128 = None))]
    fn open_chunk(&self, number: i64, xxh3_128: Option<&str>) -> PyResult<PyChunkWriter> {
        let expected = xxh3_128.map(parse_hex128).transpose()?;
        let number = u32::try_from(number).map_err(|_| crate::Error::ChunkNumber {
            chunk: number,
            count: self.inner.chunk_count(),
        })?;
        let writer = self.inner.open_chunk(number, expected)?;
        Ok(PyChunkWriter {
            number,
            inner: Mutex::new(writer),
        })
    }

    fn assume_fixed_chunk_size(&self) -> PyResult<u64> {
        Ok(self.inner.assume_fixed_chunk_size()?)
    }

    fn finish(&self, py: Python<'_>) -> PyResult<PyAssemblyReport> {
        let report = py.detach(|| self.inner.finish())?;
        Ok(report.into())
    }

    fn abort(&self) {
        self.inner.abort();
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Leaving the block without finish() (or on an exception) aborts: the partial file is
    /// deleted unless keep_partial was set.
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {
        self.inner.abort();
    }

    fn __repr__(&self) -> String {
        format!(
            "Assembler(destination={:?}, chunk_count={})",
            self.inner.destination().display().to_string(),
            self.inner.chunk_count()
        )
    }
}

#[pyclass(name = "ChunkWriter", module = "meshpipe._meshpipe", frozen)]
pub struct PyChunkWriter {
    number: u32,
    inner: Mutex<ChunkWriter>,
}

impl PyChunkWriter {
    fn lock(&self) -> MutexGuard<'_, ChunkWriter> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl PyChunkWriter {
    #[getter]
    fn number(&self) -> u32 {
        self.number
    }

    #[getter]
    fn written(&self) -> u64 {
        self.lock().written()
    }

    fn write(&self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<()> {
        Ok(with_bytes(py, &data, DETACH_THRESHOLD, |bytes| {
            self.lock().write(bytes)
        })??)
    }

    #[pyo3(signature = (*, sync = false))]
    fn finish(&self, py: Python<'_>, sync: bool) -> PyResult<PyChunkReport> {
        let report = py.detach(|| {
            let mut writer = self.lock();
            if sync {
                writer.finish_synced()
            } else {
                writer.finish()
            }
        })?;
        Ok(report.into())
    }

    fn abort(&self) {
        self.lock().abort();
    }

    fn __repr__(&self) -> String {
        format!("ChunkWriter(number={})", self.number)
    }
}

/// Chunk number → xxh3-128 hex (any mapping), as recorded by an earlier run, checked and parsed.
fn completed_chunks(completed: &Bound<'_, PyAny>, count: u32) -> PyResult<BTreeMap<u32, u128>> {
    let mut chunks = BTreeMap::new();
    for item in completed.call_method0("items")?.try_iter()? {
        let (number, digest): (i64, String) = item?.extract()?;
        let chunk = u32::try_from(number).map_err(|_| crate::Error::ChunkNumber {
            chunk: number,
            count,
        })?;
        let digest = parse_hex128(&digest)
            .map_err(|e| crate::Error::InvalidArgument(format!("completed chunk {number}: {e}")))?;
        chunks.insert(chunk, digest);
    }
    Ok(chunks)
}
