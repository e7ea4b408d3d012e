//! Chunk codecs: `none`, `gzip` (one standard gzip member per chunk, by ISA-L) and `zstd` (one
//! standard frame per chunk, with content size and content checksum).
//!
//! Compression is one-shot into a reused buffer. Decompression is incremental: bytes are fed as
//! they arrive, and output is capped at a limit, so a decompression bomb stops at the limit.

use std::mem::MaybeUninit;
use std::os::raw::c_int;

use isal_sys::igzip_lib as isal;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use crate::error::{Error, LengthProblem, Result};
use crate::manifest::{self, Manifest, MAX_MANIFEST_TEXT};

/// The default gzip level (ISA-L level 1: ~340 MB/s per core, ratio ~2.3 on CSV).
pub const DEFAULT_GZIP_LEVEL: i32 = 1;
/// The default zstd level (level 1 is both faster and smaller than 3 on CSV extracts).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// The largest zstd window a decoder accepts by default: 2^27 = 128 MiB.
pub const DEFAULT_WINDOW_LOG_MAX: u32 = 27;

/// Size of the decoders' output buffer.
const DECODE_BUFFER: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecKind {
    None,
    Gzip,
    Zstd,
}

impl CodecKind {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(CodecKind::None),
            "gzip" => Ok(CodecKind::Gzip),
            "zstd" => Ok(CodecKind::Zstd),
            other => Err(Error::InvalidArgument(format!(
                "unknown codec {other:?}; use \"none\", \"gzip\" or \"zstd\""
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CodecKind::None => "none",
            CodecKind::Gzip => "gzip",
            CodecKind::Zstd => "zstd",
        }
    }
}

/// A codec and its compression level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    kind: CodecKind,
    level: i32,
}

impl Codec {
    pub fn none() -> Self {
        Codec {
            kind: CodecKind::None,
            level: 0,
        }
    }

    /// gzip at ISA-L level 0..=3 (ISA-L has no higher levels; 1 is the default).
    pub fn gzip(level: i32) -> Result<Self> {
        if !(0..=3).contains(&level) {
            return Err(Error::InvalidArgument(format!(
                "gzip level {level} is not available: meshpipe's gzip (ISA-L) has levels 0 to 3; \
                 use 1 (default, fastest with a good ratio) or 3 (smaller, slower)"
            )));
        }
        Ok(Codec {
            kind: CodecKind::Gzip,
            level,
        })
    }

    /// zstd at level 1..=19 (negative levels are the "fast" levels, down to -7).
    pub fn zstd(level: i32) -> Result<Self> {
        if !(-7..=19).contains(&level) || level == 0 {
            return Err(Error::InvalidArgument(format!(
                "zstd level {level} is not available; use 1 (default) to 19, or -1 to -7 for speed"
            )));
        }
        Ok(Codec {
            kind: CodecKind::Zstd,
            level,
        })
    }

    /// A codec by name, with its default level when `level` is None.
    pub fn from_name(name: &str, level: Option<i32>) -> Result<Self> {
        match CodecKind::parse(name)? {
            CodecKind::None => match level {
                None | Some(0) => Ok(Codec::none()),
                Some(l) => Err(Error::InvalidArgument(format!(
                    "codec \"none\" takes no level (got {l})"
                ))),
            },
            CodecKind::Gzip => Codec::gzip(level.unwrap_or(DEFAULT_GZIP_LEVEL)),
            CodecKind::Zstd => Codec::zstd(level.unwrap_or(DEFAULT_ZSTD_LEVEL)),
        }
    }

    pub fn kind(&self) -> CodecKind {
        self.kind
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The largest payload a chunk of `len` uncompressed bytes can become.
    pub fn max_payload_size(&self, len: u64) -> u64 {
        match self.kind {
            CodecKind::None => len,
            // Stored deflate blocks cost 5 bytes per 64 KiB, plus gzip header and trailer; ISA-L
            // also needs headroom for its largest block header.
            CodecKind::Gzip => {
                len + 5 * (len / 65_535 + 1) + u64::from(isal::ISAL_DEF_MAX_HDR_SIZE) + 64
            }
            CodecKind::Zstd => zstd::zstd_safe::compress_bound(len as usize) as u64,
        }
    }
}

/// Compresses chunks one at a time; one per worker thread (it keeps the zstd context).
pub struct Compressor {
    codec: Codec,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    isal_level_buffer: Vec<u8>,
}

impl Compressor {
    pub fn new(codec: Codec) -> Result<Self> {
        let zstd = match codec.kind {
            CodecKind::Zstd => {
                let mut c = zstd::bulk::Compressor::new(codec.level)
                    .map_err(|e| Error::io("creating a zstd compressor", e))?;
                c.include_checksum(true)
                    .and_then(|_| c.include_contentsize(true))
                    .map_err(|e| Error::io("configuring zstd", e))?;
                Some(c)
            }
            _ => None,
        };
        let level_buffer_size = match (codec.kind, codec.level) {
            (CodecKind::Gzip, 1) => isal::ISAL_DEF_LVL1_DEFAULT,
            (CodecKind::Gzip, 2) => isal::ISAL_DEF_LVL2_DEFAULT,
            (CodecKind::Gzip, 3) => isal::ISAL_DEF_LVL3_DEFAULT,
            _ => 0,
        };
        Ok(Compressor {
            codec,
            zstd,
            isal_level_buffer: vec![0u8; level_buffer_size as usize],
        })
    }

    /// Compress `input` into `output` (cleared first; its capacity is reused).
    pub fn compress(&mut self, input: &[u8], output: &mut Vec<u8>) -> Result<()> {
        output.clear();
        let bound = self.codec.max_payload_size(input.len() as u64) as usize;
        output.reserve(bound);
        match self.codec.kind {
            CodecKind::None => output.extend_from_slice(input),
            CodecKind::Gzip => {
                let written = gzip_compress(
                    input,
                    output.spare_capacity_mut(),
                    self.codec.level,
                    &mut self.isal_level_buffer,
                )?;
                // SAFETY: gzip_compress initialised exactly `written` bytes of the spare capacity.
                unsafe { output.set_len(written) };
            }
            CodecKind::Zstd => {
                let compressor = self.zstd.as_mut().expect("zstd compressor");
                compressor
                    .compress_to_buffer(input, output)
                    .map_err(|e| Error::io("zstd compression", e))?;
            }
        }
        Ok(())
    }
}

/// One-shot gzip of `input` by ISA-L's stateless deflate; returns the bytes written.
fn gzip_compress(
    input: &[u8],
    output: &mut [MaybeUninit<u8>],
    level: i32,
    level_buffer: &mut [u8],
) -> Result<usize> {
    let input_len = u32::try_from(input.len())
        .map_err(|_| Error::InvalidArgument("a gzip chunk must be below 4 GiB".into()))?;
    let output_len = u32::try_from(output.len()).unwrap_or(u32::MAX);
    let mut stream = MaybeUninit::<isal::isal_zstream>::uninit();
    // SAFETY: isal_deflate_stateless_init fully initialises the stream struct it is given.
    let mut stream = unsafe {
        isal::isal_deflate_stateless_init(stream.as_mut_ptr());
        stream.assume_init()
    };
    stream.level = level as u32;
    stream.level_buf = if level_buffer.is_empty() {
        std::ptr::null_mut()
    } else {
        level_buffer.as_mut_ptr()
    };
    stream.level_buf_size = level_buffer.len() as u32;
    stream.gzip_flag = isal::IGZIP_GZIP as u16;
    stream.end_of_stream = 1;
    stream.flush = isal::NO_FLUSH as u16;
    stream.next_in = input.as_ptr() as *mut u8;
    stream.avail_in = input_len;
    stream.next_out = output.as_mut_ptr().cast::<u8>();
    stream.avail_out = output_len;
    // SAFETY: next_in/avail_in describe `input`, next_out/avail_out describe `output` and the
    // level buffer outlives the call; ISA-L reads and writes only within those bounds.
    let status = unsafe { isal::isal_deflate_stateless(&mut stream) };
    if status != isal::COMP_OK as c_int {
        return Err(Error::Codec {
            chunk: None,
            codec: "gzip",
            detail: format!("ISA-L deflate failed with status {status}"),
        });
    }
    Ok(stream.total_out as usize)
}

/// What a decoder could vouch for once a chunk is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Every gzip member's CRC-32 and ISIZE matched.
    GzipCrc32,
    /// Every zstd frame carried a content checksum, and it matched.
    ZstdChecksum,
    /// Nothing: raw bytes, or zstd frames without checksums.
    Unverified,
}

impl Integrity {
    pub fn name(self) -> &'static str {
        match self {
            Integrity::GzipCrc32 => "gzip-crc32",
            Integrity::ZstdChecksum => "zstd-checksum",
            Integrity::Unverified => "none",
        }
    }
}

/// Incremental decoder with an output cap.
pub struct Decoder {
    inner: Inner,
    output: Output,
}

enum Inner {
    Raw,
    Gzip(Box<GzipInflater>),
    Zstd(ZstdInflater),
}

/// Decoded bytes on their way to the sink, counted against the cap.
struct Output {
    buffer: Vec<u8>,
    limit: u64,
    produced: u64,
    exact: bool,
}

/// The sink receives decoded bytes in order.
pub type Sink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;

/// One step of a streaming decompressor: (bytes consumed, bytes written).
trait Inflate {
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize)>;
    fn stalled(&self) -> Error;
}

impl Output {
    /// Count `bytes` against the cap, then pass them on.
    fn emit(&mut self, bytes: &[u8], sink: &mut Sink<'_>) -> Result<()> {
        let total = self.produced + bytes.len() as u64;
        if total > self.limit {
            return Err(Error::ChunkLength {
                chunk: None,
                expected: self.limit,
                actual: total,
                problem: LengthProblem::Over,
                exact: self.exact,
            });
        }
        self.produced = total;
        sink(bytes)
    }

    /// Run `inflater` over `input`. Output is asked for at most one byte past the cap, so a
    /// bomb is caught after at most one buffer of work.
    fn pump(
        &mut self,
        inflater: &mut dyn Inflate,
        mut input: &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = loop {
            let room = usize::try_from((self.limit - self.produced).saturating_add(1))
                .unwrap_or(usize::MAX);
            let window = buffer.len().min(room);
            let (consumed, written) = match inflater.step(input, &mut buffer[..window]) {
                Ok(step) => step,
                Err(e) => break Err(e),
            };
            input = &input[consumed..];
            if written > 0 {
                if let Err(e) = self.emit(&buffer[..written], sink) {
                    break Err(e);
                }
            }
            if input.is_empty() && written < window {
                break Ok(());
            }
            if consumed == 0 && written == 0 {
                break Err(inflater.stalled());
            }
        };
        self.buffer = buffer;
        result
    }
}

impl Decoder {
    /// A decoder that refuses to produce more than `limit` bytes. `exact` says whether `limit` is
    /// the planned length (for the error message); a shorter result is checked by the caller.
    pub fn new(kind: CodecKind, limit: u64, exact: bool) -> Result<Self> {
        Self::with_window_log_max(kind, limit, exact, DEFAULT_WINDOW_LOG_MAX)
    }

    /// As [`Decoder::new`], refusing zstd frames whose window exceeds `2^window_log_max`
    /// bytes (the decoder's memory for one stream), e.g. 23 (8 MiB: every level up to 19).
    pub fn with_window_log_max(
        kind: CodecKind,
        limit: u64,
        exact: bool,
        window_log_max: u32,
    ) -> Result<Self> {
        let inner = match kind {
            CodecKind::None => Inner::Raw,
            CodecKind::Gzip => Inner::Gzip(Box::new(GzipInflater::new())),
            CodecKind::Zstd => Inner::Zstd(ZstdInflater::new(window_log_max)?),
        };
        let buffer = match kind {
            CodecKind::None => Vec::new(),
            _ => vec![0u8; DECODE_BUFFER],
        };
        Ok(Decoder {
            inner,
            output: Output {
                buffer,
                limit,
                produced: 0,
                exact,
            },
        })
    }

    /// Uncompressed bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.output.produced
    }

    /// The whole-file manifest found in the stream so far (gzip FEXTRA 'MP' of a member header,
    /// or a zstd skippable frame), if any.
    pub fn manifest(&self) -> Option<Manifest> {
        match &self.inner {
            Inner::Raw => None,
            Inner::Gzip(inflater) => inflater.manifests.found,
            Inner::Zstd(inflater) => inflater.manifests.found,
        }
    }

    /// Feed compressed bytes; decoded bytes go to `sink` in order.
    pub fn feed(&mut self, input: &[u8], sink: &mut Sink<'_>) -> Result<()> {
        match &mut self.inner {
            Inner::Raw => self.output.emit(input, sink),
            Inner::Gzip(inflater) => self.output.pump(inflater.as_mut(), input, sink),
            Inner::Zstd(inflater) => self.output.pump(inflater, input, sink),
        }
    }

    /// The stream must be complete; returns what its own checks verified.
    pub fn finish(&mut self) -> Result<Integrity> {
        match &mut self.inner {
            Inner::Raw => Ok(Integrity::Unverified),
            Inner::Gzip(inflater) => {
                if !inflater.finished {
                    return Err(gzip_error(if inflater.members == 0 && !inflater.started {
                        "no data"
                    } else {
                        "truncated: the stream ends before its last member is complete"
                    }));
                }
                Ok(Integrity::GzipCrc32)
            }
            Inner::Zstd(inflater) => inflater.finish(),
        }
    }
}

fn gzip_error(detail: impl Into<String>) -> Error {
    Error::Codec {
        chunk: None,
        codec: "gzip",
        detail: detail.into(),
    }
}

fn zstd_error(detail: impl Into<String>) -> Error {
    Error::Codec {
        chunk: None,
        codec: "zstd",
        detail: detail.into(),
    }
}

/// ISA-L's streaming inflate over gzip members. The header is parsed here (ISA-L's own header
/// parser fails on some headers fed a few bytes at a time); ISA-L checks each trailer.
struct GzipInflater {
    state: isal::inflate_state,
    /// Header bytes of the current member, until the header is complete (None after).
    header: Option<Vec<u8>>,
    /// The current member is complete (trailer verified).
    finished: bool,
    /// Bytes of the current member have been fed.
    started: bool,
    members: u32,
    manifests: Manifests,
}

/// A gzip header longer than this is refused (names and comments are short in practice).
const MAX_GZIP_HEADER: usize = 64 * 1024;

/// The length of the gzip header at the start of `bytes` and where its FEXTRA field is (if it
/// has one), None if more bytes are needed.
#[allow(clippy::type_complexity)]
fn gzip_header_length(bytes: &[u8]) -> Result<Option<(usize, Option<(usize, usize)>)>> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    if bytes.len() >= 2 && bytes[..2] != [0x1f, 0x8b] {
        return Err(gzip_error("not a gzip stream (bad magic number)"));
    }
    if bytes.len() >= 3 && bytes[2] != 8 {
        return Err(gzip_error("unsupported gzip compression method"));
    }
    if bytes.len() < 10 {
        return Ok(None);
    }
    let flags = bytes[3];
    if flags & 0xe0 != 0 {
        return Err(gzip_error("reserved gzip header flags are set"));
    }
    let mut at = 10;
    let mut extra = None;
    if flags & FEXTRA != 0 {
        let Some(len) = bytes.get(at..at + 2) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        extra = Some((at + 2, len));
        at += 2 + len;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            match bytes
                .get(at..)
                .and_then(|rest| rest.iter().position(|&b| b == 0))
            {
                Some(end) => at += end + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    Ok((bytes.len() >= at).then_some((at, extra)))
}

// SAFETY: the raw pointers inside inflate_state only ever point into buffers passed to a single
// `step` call; between calls they are dangling but never dereferenced, so moving the state to
// another thread is sound.
unsafe impl Send for GzipInflater {}

impl GzipInflater {
    fn new() -> Self {
        let mut state = MaybeUninit::<isal::inflate_state>::uninit();
        // SAFETY: isal_inflate_init initialises the whole state.
        let mut state = unsafe {
            isal::isal_inflate_init(state.as_mut_ptr());
            state.assume_init()
        };
        state.crc_flag = isal::ISAL_GZIP_NO_HDR_VER;
        GzipInflater {
            state,
            header: Some(Vec::new()),
            finished: false,
            started: false,
            members: 0,
            manifests: Manifests::default(),
        }
    }

    fn start_member(&mut self) {
        // SAFETY: the state was initialised by isal_inflate_init.
        unsafe { isal::isal_inflate_reset(&mut self.state) };
        self.state.crc_flag = isal::ISAL_GZIP_NO_HDR_VER;
        self.header = Some(Vec::new());
        self.finished = false;
        self.started = false;
    }
}

impl Inflate for GzipInflater {
    fn stalled(&self) -> Error {
        gzip_error("the stream makes no progress")
    }

    /// Inflate from `input` into `output`; returns (bytes consumed, bytes written).
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize)> {
        if self.finished {
            if input.is_empty() {
                return Ok((0, 0));
            }
            // Another member follows (concatenated gzip members are one valid gzip stream).
            self.start_member();
        }
        if !input.is_empty() {
            self.started = true;
        }
        if let Some(header) = self.header.as_mut() {
            let before = header.len();
            let take = input.len().min(MAX_GZIP_HEADER + 1 - before);
            header.extend_from_slice(&input[..take]);
            return match gzip_header_length(header)? {
                Some((length, extra)) => {
                    if let Some((start, len)) = extra {
                        let found = manifest::from_gzip_extra(&header[start..start + len])?;
                        self.manifests.take(found)?;
                    }
                    self.header = None;
                    Ok((length - before, 0))
                }
                None if header.len() > MAX_GZIP_HEADER => {
                    Err(gzip_error("gzip header longer than 64 KiB"))
                }
                None => Ok((take, 0)),
            };
        }
        let in_len = u32::try_from(input.len()).unwrap_or(u32::MAX);
        let out_len = u32::try_from(output.len()).unwrap_or(u32::MAX);
        self.state.next_in = input.as_ptr() as *mut u8;
        self.state.avail_in = in_len;
        self.state.next_out = output.as_mut_ptr();
        self.state.avail_out = out_len;
        // SAFETY: next_in/avail_in and next_out/avail_out describe live slices for this call.
        let status = unsafe { isal::isal_inflate(&mut self.state) };
        let consumed = (in_len - self.state.avail_in) as usize;
        let written = (out_len - self.state.avail_out) as usize;
        self.state.next_in = std::ptr::null_mut();
        self.state.next_out = std::ptr::null_mut();
        match status {
            s if s == isal::ISAL_DECOMP_OK as c_int => {}
            s if s == isal::ISAL_INCORRECT_CHECKSUM => {
                return Err(gzip_error(
                    "CRC-32 or length in the gzip trailer does not match the data",
                ))
            }
            s if s == isal::ISAL_INVALID_WRAPPER || s == isal::ISAL_UNSUPPORTED_METHOD => {
                return Err(gzip_error("not a gzip stream (bad header)"))
            }
            s if s == isal::ISAL_NAME_OVERFLOW as c_int
                || s == isal::ISAL_COMMENT_OVERFLOW as c_int
                || s == isal::ISAL_EXTRA_OVERFLOW as c_int =>
            {
                return Err(gzip_error("gzip header field too long"))
            }
            s => {
                return Err(gzip_error(format!(
                    "invalid deflate data (ISA-L status {s})"
                )))
            }
        }
        if self.state.block_state == isal::isal_block_state_ISAL_BLOCK_FINISH {
            self.finished = true;
            self.members += 1;
        }
        Ok((consumed, written))
    }
}

/// The whole-file manifest a chunk carried, if any; a second one is refused.
#[derive(Default)]
struct Manifests {
    found: Option<Manifest>,
}

impl Manifests {
    fn take(&mut self, found: Option<Manifest>) -> Result<()> {
        if let Some(manifest) = found {
            if self.found.is_some() {
                return Err(Error::Codec {
                    chunk: None,
                    codec: "manifest",
                    detail: "the chunk carries two whole-file manifests; a sender writes one"
                        .into(),
                });
            }
            self.found = Some(manifest);
        }
        Ok(())
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Where the zstd decoder is in the stream.
enum ZstdPhase {
    /// Between frames: collecting the next frame's first bytes (`head`).
    Boundary,
    /// Inside a zstd frame: libzstd decodes.
    Frame,
    /// Inside a skippable frame: `remaining` bytes of its content still to pass; the content is
    /// kept (as a possible manifest) when it is short enough.
    Skippable {
        remaining: u64,
        content: Option<Vec<u8>>,
    },
}

/// libzstd's streaming decoder; tracks whether every frame carried a checksum. Skippable frames
/// are passed over here (they decode to nothing), and a manifest in one is kept.
struct ZstdInflater {
    decoder: zstd::stream::raw::Decoder<'static>,
    phase: ZstdPhase,
    /// The first bytes of the current frame: 5 of a zstd frame (magic and header descriptor,
    /// handed to libzstd once complete), 8 of a skippable one (magic and length).
    head: Vec<u8>,
    frames: u32,
    skippable_frames: u32,
    all_checksummed: bool,
    manifests: Manifests,
}

impl ZstdInflater {
    fn new(window_log_max: u32) -> Result<Self> {
        let mut decoder = zstd::stream::raw::Decoder::new()
            .map_err(|e| Error::io("creating a zstd decoder", e))?;
        // Cap the window so a hostile frame cannot demand more memory.
        decoder
            .set_parameter(zstd::stream::raw::DParameter::WindowLogMax(window_log_max))
            .map_err(|e| Error::io("configuring zstd", e))?;
        Ok(ZstdInflater {
            decoder,
            phase: ZstdPhase::Boundary,
            head: Vec::with_capacity(8),
            frames: 0,
            skippable_frames: 0,
            all_checksummed: true,
            manifests: Manifests::default(),
        })
    }

    fn finish(&mut self) -> Result<Integrity> {
        match self.phase {
            ZstdPhase::Boundary if self.head.is_empty() => {}
            _ => return Err(zstd_error("truncated: the stream ends inside a frame")),
        }
        if self.frames == 0 {
            return Err(zstd_error(if self.skippable_frames == 0 {
                "no data"
            } else {
                "no data frame, only skippable frames"
            }));
        }
        Ok(if self.all_checksummed {
            Integrity::ZstdChecksum
        } else {
            Integrity::Unverified
        })
    }

    /// Collect the next frame's first bytes from `input`; returns the bytes taken. Once enough
    /// are in, the phase becomes the frame's.
    fn read_head(&mut self, input: &[u8]) -> Result<usize> {
        let wanted = if self.head.len() >= 4 && self.skippable() {
            8
        } else if self.head.len() >= 4 {
            5
        } else {
            4
        };
        let take = (wanted - self.head.len()).min(input.len());
        self.head.extend_from_slice(&input[..take]);
        if self.head.len() == 4 && !self.skippable() && self.head[..] != ZSTD_MAGIC {
            return Err(zstd_error("not a zstd frame (bad magic number)"));
        }
        if self.head.len() == 5 && !self.skippable() {
            // Frame header descriptor, bit 2: Content_Checksum_flag.
            if self.head[4] & 0b100 == 0 {
                self.all_checksummed = false;
            }
            self.phase = ZstdPhase::Frame;
        } else if self.head.len() == 8 {
            let remaining = u64::from(u32::from_le_bytes([
                self.head[4],
                self.head[5],
                self.head[6],
                self.head[7],
            ]));
            let content = (remaining as usize <= MAX_MANIFEST_TEXT)
                .then(|| Vec::with_capacity(remaining as usize));
            self.head.clear();
            self.phase = ZstdPhase::Skippable { remaining, content };
            self.end_of_skippable()?;
        }
        Ok(take)
    }

    fn skippable(&self) -> bool {
        self.head.len() >= 4
            && manifest::is_skippable_magic(u32::from_le_bytes([
                self.head[0],
                self.head[1],
                self.head[2],
                self.head[3],
            ]))
    }

    /// If the skippable frame is complete: look at its content, and go back to a boundary.
    fn end_of_skippable(&mut self) -> Result<()> {
        if let ZstdPhase::Skippable {
            remaining: 0,
            content,
        } = &mut self.phase
        {
            let found = match content.take() {
                Some(text) => Manifest::parse(&text)?,
                None => None,
            };
            self.manifests.take(found)?;
            self.skippable_frames += 1;
            self.phase = ZstdPhase::Boundary;
        }
        Ok(())
    }

    /// Run libzstd over `input`; returns (bytes consumed, bytes written, frame ended).
    fn run(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize, bool)> {
        let mut source = InBuffer::around(input);
        let mut sink = OutBuffer::around(output);
        let hint = self
            .decoder
            .run(&mut source, &mut sink)
            .map_err(|e| zstd_error(e.to_string()))?;
        Ok((source.pos(), sink.pos(), hint == 0))
    }
}

impl Inflate for ZstdInflater {
    fn stalled(&self) -> Error {
        zstd_error("the stream makes no progress")
    }

    fn step(&mut self, input: &[u8], output: &mut [u8]) -> Result<(usize, usize)> {
        match &mut self.phase {
            ZstdPhase::Boundary => {
                if input.is_empty() {
                    return Ok((0, 0));
                }
                let taken = self.read_head(input)?;
                if !matches!(self.phase, ZstdPhase::Frame) {
                    return Ok((taken, 0));
                }
                // The frame's first bytes go to libzstd (a frame header never decodes to
                // output on its own), then whatever input remains.
                let head = std::mem::take(&mut self.head);
                let (used, written, ended) = self.run(&head, output)?;
                if used < head.len() || written > 0 || ended {
                    return Err(zstd_error("invalid zstd frame header"));
                }
                Ok((taken, 0))
            }
            ZstdPhase::Frame => {
                let (consumed, written, ended) = self.run(input, output)?;
                if ended {
                    self.phase = ZstdPhase::Boundary;
                    self.frames += 1;
                }
                Ok((consumed, written))
            }
            ZstdPhase::Skippable { remaining, content } => {
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if let Some(content) = content {
                    content.extend_from_slice(&input[..take]);
                }
                *remaining -= take as u64;
                self.end_of_skippable()?;
                Ok((take, 0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn sample(len: usize) -> Vec<u8> {
        let line = b"0123456789,SMITH,19550109,A12345\n";
        (0..len).map(|i| line[i % line.len()]).collect()
    }

    fn decode_all(kind: CodecKind, data: &[u8], limit: u64, piece: usize) -> Result<Vec<u8>> {
        decode_with_manifest(kind, data, limit, piece).map(|(out, _)| out)
    }

    fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Compressor::new(codec)
            .unwrap()
            .compress(data, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn gzip_chunks_are_standard_gzip() {
        for level in 0..=3 {
            let data = sample(1_000_003);
            let packed = compress(Codec::gzip(level).unwrap(), &data);
            let mut unpacked = Vec::new();
            flate2::read::GzDecoder::new(&packed[..])
                .read_to_end(&mut unpacked)
                .unwrap();
            assert_eq!(unpacked, data, "level {level}");
            assert_eq!(
                decode_all(CodecKind::Gzip, &packed, data.len() as u64, 4093).unwrap(),
                data
            );
        }
    }

    #[test]
    fn incompressible_and_empty_inputs_fit_the_bound() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..300_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        for codec in [
            Codec::gzip(1).unwrap(),
            Codec::gzip(0).unwrap(),
            Codec::zstd(1).unwrap(),
        ] {
            for data in [&random[..], &[][..], &[7u8][..]] {
                let packed = compress(codec, data);
                assert!(packed.len() as u64 <= codec.max_payload_size(data.len() as u64));
                assert_eq!(
                    decode_all(codec.kind(), &packed, data.len() as u64, 1000).unwrap(),
                    data
                );
            }
        }
    }

    #[test]
    fn gzip_from_other_encoders_with_header_fields() {
        let data = sample(200_000);
        let mut encoder = flate2::GzBuilder::new()
            .filename("extract.csv")
            .comment("made elsewhere")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::best());
        encoder.write_all(&data).unwrap();
        let packed = encoder.finish().unwrap();
        assert_eq!(
            decode_all(CodecKind::Gzip, &packed, data.len() as u64, 3).unwrap(),
            data
        );
        // Two concatenated members are one valid gzip stream.
        let mut twice = packed.clone();
        twice.extend_from_slice(&packed);
        let out = decode_all(CodecKind::Gzip, &twice, 2 * data.len() as u64, 65536).unwrap();
        assert_eq!(out.len(), 2 * data.len());
    }

    #[test]
    fn gzip_corruption_is_detected() {
        let data = sample(100_000);
        let packed = compress(Codec::gzip(1).unwrap(), &data);
        // Trailer CRC
        let mut bad = packed.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        assert!(matches!(
            decode_all(CodecKind::Gzip, &bad, data.len() as u64, 1000),
            Err(Error::Codec { .. })
        ));
        // Truncated
        let err =
            decode_all(CodecKind::Gzip, &packed[..n - 3], data.len() as u64, 1000).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        // Not gzip at all
        assert!(decode_all(CodecKind::Gzip, b"hello world, not gzip", 100, 5).is_err());
        // Empty
        assert!(decode_all(CodecKind::Gzip, b"", 100, 5).is_err());
    }

    #[test]
    fn zstd_frames_carry_checksums_and_concatenate() {
        let data = sample(500_000);
        let packed = compress(Codec::zstd(1).unwrap(), &data);
        assert_eq!(zstd::decode_all(&packed[..]).unwrap(), data);
        let mut decoder = Decoder::new(CodecKind::Zstd, data.len() as u64, true).unwrap();
        decoder.feed(&packed, &mut |_| Ok(())).unwrap();
        assert_eq!(decoder.finish().unwrap(), Integrity::ZstdChecksum);
        // A frame without a checksum decodes but is reported unverified.
        let plain = zstd::encode_all(&data[..], 3).unwrap();
        let mut decoder = Decoder::new(CodecKind::Zstd, data.len() as u64, true).unwrap();
        decoder.feed(&plain, &mut |_| Ok(())).unwrap();
        assert_eq!(decoder.finish().unwrap(), Integrity::Unverified);
        // Corrupt checksum
        let mut bad = packed.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert!(decode_all(CodecKind::Zstd, &bad, data.len() as u64, 999).is_err());
        assert!(decode_all(CodecKind::Zstd, &packed[..n - 5], data.len() as u64, 999).is_err());
    }

    fn decode_with_manifest(
        kind: CodecKind,
        data: &[u8],
        limit: u64,
        piece: usize,
    ) -> Result<(Vec<u8>, Option<Manifest>)> {
        let mut decoder = Decoder::new(kind, limit, true)?;
        let mut out = Vec::new();
        for part in data.chunks(piece.max(1)) {
            decoder.feed(part, &mut |bytes| {
                out.extend_from_slice(bytes);
                Ok(())
            })?;
        }
        decoder.finish()?;
        Ok((out, decoder.manifest()))
    }

    #[test]
    fn a_manifest_after_the_chunk_decodes_to_nothing_and_is_captured() {
        let data = sample(300_000);
        let manifest = Manifest {
            xxh3_128: 0xfeed_beef,
            size: 123_456_789,
        };
        for codec in [Codec::gzip(1).unwrap(), Codec::zstd(1).unwrap()] {
            let mut packed = compress(codec, &data);
            let before = packed.len();
            manifest.append_to(codec.kind(), &mut packed).unwrap();
            assert!((packed.len() - before) as u64 <= crate::manifest::MAX_MANIFEST_BYTES);
            for piece in [1, 3, 7, 4096, 1 << 20] {
                let (out, found) =
                    decode_with_manifest(codec.kind(), &packed, data.len() as u64, piece).unwrap();
                assert_eq!(out, data, "{} in pieces of {piece}", codec.name());
                assert_eq!(
                    found,
                    Some(manifest),
                    "{} in pieces of {piece}",
                    codec.name()
                );
            }
            // Without one, there is none.
            let plain = compress(codec, &data);
            let (_, found) =
                decode_with_manifest(codec.kind(), &plain, data.len() as u64, 999).unwrap();
            assert_eq!(found, None);
            // Two are refused.
            let mut twice = packed.clone();
            manifest.append_to(codec.kind(), &mut twice).unwrap();
            let err =
                decode_with_manifest(codec.kind(), &twice, data.len() as u64, 999).unwrap_err();
            assert!(
                err.to_string().contains("two whole-file manifests"),
                "{err}"
            );
            // A manifest cut short is a truncated stream.
            let err =
                decode_with_manifest(codec.kind(), &packed[..packed.len() - 3], u64::MAX, 999)
                    .unwrap_err();
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    #[test]
    fn other_skippable_frames_are_skipped_whatever_their_size() {
        let data = sample(10_000);
        let mut packed = compress(Codec::zstd(1).unwrap(), &data);
        for (magic, length) in [(0x184D_2A50u32, 5usize), (0x184D_2A5F, 100_000)] {
            packed.extend_from_slice(&magic.to_le_bytes());
            packed.extend_from_slice(&(length as u32).to_le_bytes());
            packed.extend(std::iter::repeat_n(b'x', length));
        }
        assert_eq!(zstd::decode_all(&packed[..]).unwrap(), data);
        let (out, found) =
            decode_with_manifest(CodecKind::Zstd, &packed, data.len() as u64, 777).unwrap();
        assert_eq!((out, found), (data, None));
        // A stream of nothing but a skippable frame has no data.
        let mut only = Vec::new();
        Manifest {
            xxh3_128: 1,
            size: 0,
        }
        .append_to(CodecKind::Zstd, &mut only)
        .unwrap();
        let err = decode_with_manifest(CodecKind::Zstd, &only, 10, 3).unwrap_err();
        assert!(err.to_string().contains("no data frame"), "{err}");
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 64 << 20];
        for codec in [Codec::gzip(1).unwrap(), Codec::zstd(3).unwrap()] {
            let packed = compress(codec, &zeros);
            assert!(packed.len() < 1 << 20);
            let mut decoder = Decoder::new(codec.kind(), 1 << 20, true).unwrap();
            let mut seen = 0u64;
            let err = decoder
                .feed(&packed, &mut |b| {
                    seen += b.len() as u64;
                    Ok(())
                })
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::ChunkLength {
                        problem: LengthProblem::Over,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(seen <= 1 << 20, "{} bytes escaped the limit", seen);
        }
    }

    #[test]
    fn codec_names_and_levels() {
        assert_eq!(
            Codec::from_name("gzip", None).unwrap(),
            Codec::gzip(1).unwrap()
        );
        assert!(Codec::from_name("brotli", None).is_err());
        assert!(Codec::gzip(9).is_err());
        assert!(Codec::zstd(0).is_err());
        assert!(Codec::from_name("none", Some(3)).is_err());
    }
}
