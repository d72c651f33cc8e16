//! Errors of filesystem operations, and their errno: the one place where the mapping lives.

use crate::index::IndexError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("file name too long")]
    NameTooLong,
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute value does not fit the buffer")]
    Range,
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    #[error("bad file handle")]
    BadHandle,
    #[error("too many links")]
    TooManyLinks,
    #[error("text file busy: {0}")]
    TextBusy(&'static str),
    #[error("stored data of {what} is corrupt or unreadable: {why}")]
    Corrupt { what: String, why: String },
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::NoAttr => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::BadHandle => libc::EBADF,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::TextBusy(_) => libc::ETXTBSY,
            FsError::Corrupt { .. } => libc::EIO,
            FsError::Index(IndexError::Io(e)) | FsError::Io(e) => match e.raw_os_error() {
                Some(code) => code,
                None => libc::EIO,
            },
            FsError::Index(_) => libc::EIO,
        }
    }

    /// Errors a caller can cause are not worth a warning in the log; the rest are.
    pub fn is_expected(&self) -> bool {
        !matches!(self, FsError::Corrupt { .. } | FsError::Index(_) | FsError::Io(_))
    }
}

pub type FsResult<T> = Result<T, FsError>;
