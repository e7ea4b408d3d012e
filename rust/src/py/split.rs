//! `Splitter`: the core split pipeline as a Python iterator of `Chunk`s.

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::buffer::{duplicate_descriptor, PyChunk};
use crate::checksum::parse_hex128;
use crate::checksum::{hex128, hex_bytes, FileDigest};
use crate::codec::Codec;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::plan::{Limits, DEFAULT_CHUNK_SIZE, MAX_FILE_SIZE, MIN_CHUNK_SIZE};
use crate::split::{
    default_threads, default_window, ChunkSelection, SplitOptions, Splitter, Trailer,
};

use super::PyChunkPlan;

/// A path or an open file descriptor.
#[derive(FromPyObject)]
pub enum Source {
    Descriptor(RawFd),
    Path(PathBuf),
}

#[pyclass(name = "FileDigest", module = "meshpipe._meshpipe", frozen, get_all)]
pub struct PyFileDigest {
    size: u64,
    xxh3_128: String,
    sha256: Option<String>,
}

impl From<FileDigest> for PyFileDigest {
    fn from(d: FileDigest) -> Self {
        PyFileDigest {
            size: d.size,
            xxh3_128: hex128(d.xxh3_128),
            sha256: d.sha256.map(|s| hex_bytes(&s)),
        }
    }
}

#[pymethods]
impl PyFileDigest {
    fn __repr__(&self) -> String {
        format!(
            "FileDigest(size={}, xxh3_128={:?}, sha256={:?})",
            self.size, self.xxh3_128, self.sha256
        )
    }
}

#[pyclass(name = "Splitter", module = "meshpipe._meshpipe", frozen)]
pub struct PySplitter {
    inner: Mutex<Option<Splitter>>,
    plan: Py<PyChunkPlan>,
    codec: Codec,
    count: u32,
}

impl PySplitter {
    fn lock(&self) -> MutexGuard<'_, Option<Splitter>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Chunk numbers from any iterable of ints (a range, a list, a set); duplicates collapse.
fn chunk_numbers(numbers: &Bound<'_, PyAny>) -> PyResult<BTreeSet<u32>> {
    let mut selected = BTreeSet::new();
    for number in numbers.try_iter()? {
        let number: i64 = number?.extract()?;
        let number = u32::try_from(number).map_err(|_| {
            Error::InvalidArgument(format!(
                "chunks: {number} is not a chunk number (they count from 1)"
            ))
        })?;
        selected.insert(number);
    }
    Ok(selected)
}

fn closed() -> Error {
    Error::State("the splitter is closed".into())
}

#[pymethods]
impl PySplitter {
    #[new]
    #[pyo3(signature = (source, *, codec = "none", level = None, chunk_size = DEFAULT_CHUNK_SIZE, threads = None, window = None, sha256 = false, max_file_size = MAX_FILE_SIZE, min_chunk_size = MIN_CHUNK_SIZE, chunks = None, trailer = false, trailer_xxh3_128 = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        source: Source,
        codec: &str,
        level: Option<i32>,
        chunk_size: u64,
        threads: Option<usize>,
        window: Option<usize>,
        sha256: bool,
        max_file_size: u64,
        min_chunk_size: u64,
        chunks: Option<Bound<'_, PyAny>>,
        trailer: bool,
        trailer_xxh3_128: Option<&str>,
    ) -> PyResult<Self> {
        let codec = Codec::from_name(codec, level)?;
        let chunks = match chunks {
            None => ChunkSelection::All,
            Some(numbers) => ChunkSelection::Only(chunk_numbers(&numbers)?),
        };
        let threads = threads.unwrap_or_else(default_threads);
        let limits = Limits {
            max_file_size,
            min_chunk_size,
            ..Limits::default()
        };
        let trailer = match (trailer, trailer_xxh3_128) {
            (false, None) => Trailer::None,
            (true, None) => Trailer::FromDigest,
            (true, Some(hex)) => {
                // A subset's manifest: the file's hash as checked by the caller, its size now
                // (the split refuses a file whose size differs from the plan's).
                let size = match &source {
                    Source::Path(path) => std::fs::metadata(path).map(|m| m.len()).ok(),
                    Source::Descriptor(_) => None,
                }
                .ok_or_else(|| {
                    Error::InvalidArgument("trailer_xxh3_128 needs a path as the source".into())
                })?;
                Trailer::Given(Manifest {
                    xxh3_128: parse_hex128(hex)?,
                    size,
                })
            }
            (false, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "trailer_xxh3_128 is the manifest's hash: pass trailer=True with it".into(),
                )
                .into())
            }
        };
        let options = SplitOptions {
            codec,
            chunk_size,
            threads,
            window: window.unwrap_or_else(|| default_window(threads)),
            sha256,
            limits,
            chunks,
            trailer,
        };
        let splitter = match source {
            Source::Path(path) => py.detach(|| Splitter::open(&path, options))?,
            Source::Descriptor(fd) => {
                let file = duplicate_descriptor(fd)?;
                Splitter::from_file(file, format!("file descriptor {fd}"), options)?
            }
        };
        let plan = Py::new(
            py,
            PyChunkPlan {
                plan: *splitter.plan(),
            },
        )?;
        let count = splitter.plan().chunk_count();
        Ok(PySplitter {
            inner: Mutex::new(Some(splitter)),
            plan,
            codec,
            count,
        })
    }

    #[getter]
    fn plan(&self, py: Python<'_>) -> Py<PyChunkPlan> {
        self.plan.clone_ref(py)
    }

    #[getter]
    fn codec(&self) -> &'static str {
        self.codec.name()
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyChunk>> {
        let next = py.detach(|| match self.lock().as_mut() {
            Some(splitter) => splitter.next_chunk(),
            None => Err(closed()),
        })?;
        Ok(next.map(|chunk| PyChunk::new(chunk, self.count)))
    }

    fn digest(&self, py: Python<'_>) -> PyResult<PyFileDigest> {
        let digest = py.detach(|| match self.lock().as_mut() {
            Some(splitter) => splitter.digest(),
            None => Err(closed()),
        })?;
        Ok(digest.into())
    }

    /// Stop the worker threads; chunks already taken stay valid.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            if let Some(mut splitter) = self.lock().take() {
                splitter.close();
            }
        });
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) {
        self.close(py);
    }

    fn __repr__(&self) -> String {
        format!(
            "Splitter(codec={:?}, chunk_count={})",
            self.codec.name(),
            self.count
        )
    }
}
