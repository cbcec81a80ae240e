//! Every failure of the driver, cuBLAS, NVRTC or NCCL becomes [`KernelError::Device`], naming
//! what was being done and carrying the library's own message.

use std::ffi::CStr;

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use cudarc::nccl::result::NcclError;

use crate::backend::{KernelError, Result};

/// A library error that can say what went wrong in words.
pub(crate) trait DeviceMessage {
    /// The library's name for the error and its description.
    fn message(&self) -> String;
}

impl DeviceMessage for DriverError {
    fn message(&self) -> String {
        // cuGetErrorName/String need the driver, which is loaded if a DriverError exists.
        match (self.error_name(), self.error_string()) {
            (Ok(name), Ok(text)) => {
                format!("{}: {}", name.to_string_lossy(), text.to_string_lossy())
            }
            _ => format!("{:?}", self.0),
        }
    }
}

impl DeviceMessage for CublasError {
    fn message(&self) -> String {
        // SAFETY: cublasGetStatusString returns a static NUL-terminated string (or null).
        let text = unsafe { cudarc::cublas::sys::cublasGetStatusString(self.0) };
        static_str(text).map_or_else(
            || format!("{:?}", self.0),
            |text| format!("{:?}: {text}", self.0),
        )
    }
}

impl DeviceMessage for NcclError {
    fn message(&self) -> String {
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string (or null).
        let text = unsafe { cudarc::nccl::sys::ncclGetErrorString(self.0) };
        static_str(text).map_or_else(
            || format!("{:?}", self.0),
            |text| format!("{:?}: {text}", self.0),
        )
    }
}

/// A string a CUDA library returned as a `const char*` it owns for the process's lifetime.
fn static_str(ptr: *const std::ffi::c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-null, and the libraries document these as NUL-terminated static strings.
    Some(
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// `KernelError::Device` from a context and a message.
pub(crate) fn device_error(context: impl Into<String>, message: impl Into<String>) -> KernelError {
    KernelError::Device {
        context: context.into(),
        message: message.into(),
    }
}

/// Maps a library result into the crate's, building the context only on failure (the success
/// path runs for every kernel launch and must not allocate).
pub(crate) trait OrDevice<T> {
    /// `Err(KernelError::Device { context: context(), message })` on failure.
    fn or_device<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T>;

    /// The same with a fixed context.
    fn device(self, context: &str) -> Result<T>
    where
        Self: Sized,
    {
        self.or_device(|| context)
    }
}

impl<T, E: DeviceMessage> OrDevice<T> for std::result::Result<T, E> {
    fn or_device<C: Into<String>>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| device_error(context(), e.message()))
    }
}
