//! Python bindings: thin wrappers over the core, compiled only with the `python` feature.
//! Every heavy call releases the GIL; no Python object is touched while it is released.

mod assemble;
mod buffer;
mod check;
mod errors;
mod split;

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::checksum::{hash_file, hex128, hex_bytes};
use crate::codec::Codec;
use crate::plan::{
    ChunkPlan, Limits, DEFAULT_CHUNK_SIZE, GIB, KIB, MAX_FILE_SIZE, MAX_REQUEST_SIZE, MIB,
    MIN_CHUNK_SIZE,
};

/// Chunk boundaries for a file at a fixed uncompressed chunk size, validated on creation.
#[pyclass(name = "ChunkPlan", module = "meshpipe._meshpipe", frozen)]
pub struct PyChunkPlan {
    plan: ChunkPlan,
}

impl PyChunkPlan {
    fn index(&self, number: i64) -> PyResult<u32> {
        let count = self.plan.chunk_count();
        if number < 1 || number > i64::from(count) {
            return Err(crate::Error::ChunkNumber {
                chunk: number,
                count,
            }
            .into());
        }
        Ok(number as u32 - 1)
    }
}

#[pymethods]
impl PyChunkPlan {
    #[new]
    #[pyo3(signature = (file_size, chunk_size = DEFAULT_CHUNK_SIZE, *, codec = "none", max_file_size = MAX_FILE_SIZE, min_chunk_size = MIN_CHUNK_SIZE, max_request_size = MAX_REQUEST_SIZE))]
    fn new(
        file_size: u64,
        chunk_size: u64,
        codec: &str,
        max_file_size: u64,
        min_chunk_size: u64,
        max_request_size: u64,
    ) -> PyResult<Self> {
        let codec = Codec::from_name(codec, None)?;
        let limits = Limits {
            min_chunk_size,
            max_request_size,
            max_file_size,
        };
        Ok(PyChunkPlan {
            plan: ChunkPlan::new(file_size, chunk_size, codec, &limits)?,
        })
    }

    #[getter]
    fn file_size(&self) -> u64 {
        self.plan.file_size()
    }

    #[getter]
    fn chunk_size(&self) -> u64 {
        self.plan.chunk_size()
    }

    #[getter]
    fn chunk_count(&self) -> u32 {
        self.plan.chunk_count()
    }

    fn chunk_offset(&self, number: i64) -> PyResult<u64> {
        Ok(self.plan.chunk_offset(self.index(number)?))
    }

    fn chunk_length(&self, number: i64) -> PyResult<u64> {
        Ok(self.plan.chunk_length(self.index(number)?))
    }

    fn __repr__(&self) -> String {
        format!(
            "ChunkPlan(file_size={}, chunk_size={}, chunk_count={})",
            self.plan.file_size(),
            self.plan.chunk_size(),
            self.plan.chunk_count()
        )
    }
}

/// xxh3-128 of a file, as 32 hex digits (read in Rust, GIL released).
#[pyfunction]
fn xxh3_128_file(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let digest = py.detach(|| hash_file(&path, false))?;
    Ok(hex128(digest.xxh3_128))
}

/// SHA-256 of a file, as 64 hex digits (read in Rust, GIL released).
#[pyfunction]
fn sha256_file(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let digest = py.detach(|| hash_file(&path, true))?;
    Ok(hex_bytes(&digest.sha256.expect("requested")))
}

#[pymodule]
fn _meshpipe(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("KiB", KIB)?;
    m.add("MiB", MIB)?;
    m.add("GiB", GIB)?;
    m.add("DEFAULT_CHUNK_SIZE", DEFAULT_CHUNK_SIZE)?;
    m.add("MIN_CHUNK_SIZE", MIN_CHUNK_SIZE)?;
    m.add("MAX_REQUEST_SIZE", MAX_REQUEST_SIZE)?;
    m.add("MAX_FILE_SIZE", MAX_FILE_SIZE)?;
    m.add_class::<PyChunkPlan>()?;
    m.add_class::<buffer::PyChunk>()?;
    m.add_class::<split::PySplitter>()?;
    m.add_class::<split::PyFileDigest>()?;
    m.add_class::<assemble::PyAssembler>()?;
    m.add_class::<assemble::PyChunkWriter>()?;
    m.add_class::<assemble::PyChunkReport>()?;
    m.add_class::<assemble::PyAssemblyReport>()?;
    m.add_class::<check::PyBodyChecker>()?;
    m.add_class::<check::PyBodyReport>()?;
    m.add_function(wrap_pyfunction!(xxh3_128_file, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_file, m)?)?;
    Ok(())
}
