//! The one mapping from the core's errors to Python's: engine errors become the classes of
//! `meshpipe.errors` (with their attributes), OS errors the matching built-in OSError subclass.

use std::io;

use pyo3::exceptions::{
    PyBlockingIOError, PyFileExistsError, PyFileNotFoundError, PyInterruptedError,
    PyIsADirectoryError, PyNotADirectoryError, PyOSError, PyPermissionError, PyRuntimeError,
    PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::error::Error;

impl From<Error> for PyErr {
    fn from(error: Error) -> PyErr {
        Python::attach(|py| convert(py, error))
    }
}

fn os_error(source: &io::Error, message: String) -> PyErr {
    if let Some(errno) = source.raw_os_error() {
        // OSError(errno, text) picks the subclass (FileNotFoundError, ...) from the errno.
        return PyOSError::new_err((errno, message));
    }
    match source.kind() {
        io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
        io::ErrorKind::AlreadyExists => PyFileExistsError::new_err(message),
        io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(message),
        io::ErrorKind::NotADirectory => PyNotADirectoryError::new_err(message),
        io::ErrorKind::Interrupted => PyInterruptedError::new_err(message),
        io::ErrorKind::WouldBlock => PyBlockingIOError::new_err(message),
        io::ErrorKind::TimedOut => PyTimeoutError::new_err(message),
        _ => PyOSError::new_err(message),
    }
}

fn convert(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    let mut attributes: Vec<(&str, Py<PyAny>)> = Vec::new();
    let class = match &error {
        Error::Io { source, .. } => return os_error(source, message),
        Error::InvalidArgument(_) => return PyValueError::new_err(message),
        Error::ChunkSize(_) => "ChunkSizeError",
        Error::FileTooLarge(_) => "FileTooLargeError",
        Error::SourceChanged(_) => "SourceChangedError",
        Error::State(_) => "StateError",
        Error::Codec { chunk, .. } => {
            attributes.push(("chunk", option_u32(py, *chunk)));
            "CodecError"
        }
        Error::ChecksumMismatch {
            chunk,
            algorithm,
            expected,
            actual,
        } => {
            attributes.push(("chunk", option_u32(py, *chunk)));
            attributes.push(("algorithm", str_object(py, algorithm)));
            attributes.push(("expected", str_object(py, expected)));
            attributes.push(("actual", str_object(py, actual)));
            "ChecksumMismatchError"
        }
        Error::ChunkLength {
            chunk,
            expected,
            actual,
            ..
        } => {
            attributes.push(("chunk", option_u32(py, *chunk)));
            attributes.push(("expected", u64_object(py, *expected)));
            attributes.push(("actual", u64_object(py, *actual)));
            "ChunkLengthError"
        }
        Error::ChunkNumber { chunk, .. } => {
            attributes.push(("chunk", i64_object(py, *chunk)));
            "ChunkNumberError"
        }
        Error::DuplicateChunk { chunk, .. } => {
            attributes.push(("chunk", option_u32(py, Some(*chunk))));
            "DuplicateChunkError"
        }
        Error::ChunkOrder { chunk, waiting_for } => {
            attributes.push(("chunk", option_u32(py, Some(*chunk))));
            attributes.push(("waiting_for", option_u32(py, Some(*waiting_for))));
            "ChunkOrderError"
        }
        Error::MissingChunks { missing, .. } => {
            let list = PyList::new(py, missing.iter().copied())
                .map(|l| l.into_any().unbind())
                .unwrap_or_else(|_| py.None());
            attributes.push(("missing", list));
            "MissingChunksError"
        }
    };
    build(py, class, message, attributes).unwrap_or_else(|e| e)
}

fn build(
    py: Python<'_>,
    class: &str,
    message: String,
    attributes: Vec<(&str, Py<PyAny>)>,
) -> PyResult<PyErr> {
    let module = py.import("meshpipe.errors").map_err(|e| {
        PyRuntimeError::new_err(format!("meshpipe.errors could not be imported: {e}"))
    })?;
    let instance = module.getattr(class)?.call1((message,))?;
    for (name, value) in attributes {
        instance.setattr(name, value)?;
    }
    Ok(PyErr::from_value(instance))
}

fn option_u32(py: Python<'_>, value: Option<u32>) -> Py<PyAny> {
    match value {
        Some(v) => v
            .into_pyobject(py)
            .map(|o| o.into_any().unbind())
            .unwrap_or_else(|_| py.None()),
        None => py.None(),
    }
}

fn i64_object(py: Python<'_>, value: i64) -> Py<PyAny> {
    value
        .into_pyobject(py)
        .map(|o| o.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

fn u64_object(py: Python<'_>, value: u64) -> Py<PyAny> {
    value
        .into_pyobject(py)
        .map(|o| o.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

fn str_object(py: Python<'_>, value: &str) -> Py<PyAny> {
    value
        .into_pyobject(py)
        .map(|o| o.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}
