//! `BodyChecker`: the core's streaming body check ([`crate::check`]) for the local server.

use std::sync::{Mutex, MutexGuard};

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

use super::buffer::with_bytes;
use crate::check::{BodyCheck, BodyEncoding, BodyReport};
use crate::checksum::hex128;
use crate::Error;

/// Below this, checking a piece is cheaper than releasing and retaking the GIL.
const DETACH_THRESHOLD: usize = 16 * 1024;

#[pyclass(name = "BodyReport", module = "meshpipe._meshpipe", frozen, get_all)]
pub struct PyBodyReport {
    stored_size: u64,
    decoded_size: u64,
    xxh3_128: String,
    decoded: bool,
}

impl From<BodyReport> for PyBodyReport {
    fn from(r: BodyReport) -> Self {
        PyBodyReport {
            stored_size: r.stored_size,
            decoded_size: r.decoded_size,
            xxh3_128: hex128(r.xxh3_128),
            decoded: r.decoded,
        }
    }
}

#[pymethods]
impl PyBodyReport {
    fn __repr__(&self) -> String {
        format!(
            "BodyReport(stored_size={}, decoded_size={}, xxh3_128={:?}, decoded={})",
            self.stored_size,
            self.decoded_size,
            self.xxh3_128,
            if self.decoded { "True" } else { "False" }
        )
    }
}

#[pyclass(name = "BodyChecker", module = "meshpipe._meshpipe", frozen)]
pub struct PyBodyChecker {
    // None once finished.
    inner: Mutex<Option<BodyCheck>>,
}

impl PyBodyChecker {
    fn lock(&self) -> MutexGuard<'_, Option<BodyCheck>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn finished() -> Error {
    Error::State("the body check is finished".into())
}

#[pymethods]
impl PyBodyChecker {
    #[new]
    #[pyo3(signature = (encoding = "identity", *, limit = u64::MAX, window_log_max = 23))]
    fn new(encoding: &str, limit: u64, window_log_max: u32) -> PyResult<Self> {
        let encoding = match encoding {
            "identity" => BodyEncoding::Identity,
            "gzip" => BodyEncoding::Gzip,
            "sniff-zstd" => BodyEncoding::SniffZstd,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown body encoding {other:?}; use \"identity\", \"gzip\" or \"sniff-zstd\""
                ))
                .into())
            }
        };
        if !(10..=31).contains(&window_log_max) {
            return Err(Error::InvalidArgument(format!(
                "window_log_max {window_log_max} is outside 10..=31"
            ))
            .into());
        }
        Ok(PyBodyChecker {
            inner: Mutex::new(Some(BodyCheck::new(encoding, limit, window_log_max)?)),
        })
    }

    #[getter]
    fn stored_size(&self) -> u64 {
        self.lock().as_ref().map_or(0, BodyCheck::stored_size)
    }

    fn update(&self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<()> {
        Ok(with_bytes(py, &data, DETACH_THRESHOLD, |bytes| {
            self.lock().as_mut().ok_or_else(finished)?.update(bytes)
        })??)
    }

    fn finish(&self, py: Python<'_>) -> PyResult<PyBodyReport> {
        let check = self.lock().take().ok_or_else(finished)?;
        Ok(py.detach(|| check.finish())?.into())
    }
}
