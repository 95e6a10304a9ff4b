//! Progress reporting hooks, so the library stays free of any terminal code.

/// Receives transfer progress. Implementations must be cheap: `advance` is called for every
/// buffer moved.
pub trait Progress: Send + Sync {
    /// A file transfer begins: `total` bytes, of which `already` are done (resume).
    fn start_file(&self, _name: &str, _total: u64, _already: u64) {}
    /// `n` more bytes moved.
    fn advance(&self, _n: u64) {}
    /// The current file is done (verified or failed).
    fn finish_file(&self, _name: &str, _ok: bool) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
