//! The one error type of the core. Every message says what was wrong and what to do.

use std::io;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a chunk produced too many or too few uncompressed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthProblem {
    /// More than allowed: decoding stopped at the limit (a decompression bomb is never expanded).
    Over,
    /// Fewer than the plan says.
    Under,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The chunk size breaks a MESH rule (minimum, per-request maximum).
    #[error("{0}")]
    ChunkSize(String),

    /// The file is above the configured maximum message size.
    #[error("{0}")]
    FileTooLarge(String),

    /// The source file changed size while being split.
    #[error("{0}")]
    SourceChanged(String),

    /// Compressed data is corrupt or truncated.
    #[error("{}corrupt {codec} data: {detail}", chunk_prefix(*.chunk))]
    Codec {
        chunk: Option<u32>,
        codec: &'static str,
        detail: String,
    },

    /// A checksum did not match (chunk = None: the whole file).
    #[error("{}: {algorithm} mismatch: expected {expected}, got {actual}; the data is corrupt, fetch it again", chunk.map_or_else(|| "whole file".to_string(), |n| format!("chunk {n}")))]
    ChecksumMismatch {
        chunk: Option<u32>,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },

    /// A chunk decompressed to more (bomb, stopped at the limit) or fewer bytes than planned.
    #[error("{}", describe_length(*.chunk, *.expected, *.actual, *.problem, *.exact))]
    ChunkLength {
        chunk: Option<u32>,
        expected: u64,
        actual: u64,
        problem: LengthProblem,
        /// Whether `expected` is the exact planned length (else it is an upper limit).
        exact: bool,
    },

    /// A chunk number outside the plan.
    #[error("chunk {chunk} is outside this message's chunks 1..={count}")]
    ChunkNumber { chunk: i64, count: u32 },

    /// A repeated chunk that differs, or a chunk opened twice at once.
    #[error("chunk {chunk}: {detail}")]
    DuplicateChunk { chunk: u32, detail: String },

    /// A chunk whose offset is not known yet.
    #[error("chunk {chunk} cannot be written yet: the chunk size is unknown and chunk {waiting_for} has not arrived; write chunks in order, or call assume_fixed_chunk_size() after chunk 1")]
    ChunkOrder { chunk: u32, waiting_for: u32 },

    /// finish() before every chunk arrived.
    #[error("{} of {count} chunks missing: {}", missing.len(), list_numbers(missing))]
    MissingChunks { missing: Vec<u32>, count: u32 },

    /// An object used after it was finished, aborted or closed.
    #[error("{0}")]
    State(String),

    /// A bad argument (unknown codec, bad level, malformed hex digest...).
    #[error("{0}")]
    InvalidArgument(String),

    /// An operating-system error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn chunk_prefix(chunk: Option<u32>) -> String {
    chunk.map(|n| format!("chunk {n}: ")).unwrap_or_default()
}

fn describe_length(
    chunk: Option<u32>,
    expected: u64,
    actual: u64,
    problem: LengthProblem,
    exact: bool,
) -> String {
    let who = chunk.map_or_else(|| "chunk".to_string(), |n| format!("chunk {n}"));
    match problem {
        LengthProblem::Over => format!(
            "{who} decompresses to more than {} {expected} bytes (stopped at {actual}); refusing it as corrupt or a decompression bomb",
            if exact { "its planned" } else { "the limit of" }
        ),
        LengthProblem::Under => format!(
            "{who} decompressed to {actual} bytes but the plan says {expected}; the chunk is truncated, fetch it again"
        ),
    }
}

fn list_numbers(numbers: &[u32]) -> String {
    const SHOWN: usize = 20;
    let mut text = numbers
        .iter()
        .take(SHOWN)
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if numbers.len() > SHOWN {
        text.push_str(&format!(", ... ({} more)", numbers.len() - SHOWN));
    }
    text
}

impl Error {
    /// An I/O error with context ("reading /path/to/file").
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Attach a chunk number to errors raised before the chunk was known (codec, length).
    pub fn for_chunk(self, number: u32) -> Self {
        match self {
            Error::Codec { codec, detail, .. } => Error::Codec {
                chunk: Some(number),
                codec,
                detail,
            },
            Error::ChunkLength {
                expected,
                actual,
                problem,
                exact,
                ..
            } => Error::ChunkLength {
                chunk: Some(number),
                expected,
                actual,
                problem,
                exact,
            },
            Error::ChecksumMismatch {
                algorithm,
                expected,
                actual,
                ..
            } => Error::ChecksumMismatch {
                chunk: Some(number),
                algorithm,
                expected,
                actual,
            },
            other => other,
        }
    }
}
