//! JPEG decoding with libjpeg-turbo's decoder (through `mozjpeg`, which shares it), the one
//! Pillow uses, so decoded pixels match transformers' exactly: pure-Rust decoders differ by
//! a few levels in IDCT rounding and chroma upsampling, which shows in the model's logits.

use std::os::raw::c_int;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error};

#[derive(Debug)]
pub enum JpegError {
    /// The data ends before the image does.
    Truncated(String),
    /// libjpeg could not decode it (corrupt data, or a colour space it cannot turn into RGB).
    Failed(String),
}

/// The text libjpeg would print for the current message.
fn message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: libjpeg keeps `err` valid for the life of the decompressor; format_message
    // writes at most 80 bytes (JMSG_LENGTH_MAX) into the buffer.
    unsafe {
        let err = &*cinfo.err;
        let Some(format) = err.format_message else { return format!("libjpeg message {}", err.msg_code) };
        let mut buffer = [0u8; 80];
        let format = std::mem::transmute::<
            unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &[u8; 80]),
            unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &mut [u8; 80]),
        >(format);
        format(cinfo, &mut buffer);
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    }
}

extern "C-unwind" fn fatal(cinfo: &mut jpeg_common_struct) {
    resume_unwind(Box::new(JpegError::Failed(message(cinfo))));
}

/// Warnings are ignored, as Pillow ignores them, except running out of data: Pillow refuses
/// truncated files and so do we (libjpeg alone would pad the image with grey).
extern "C-unwind" fn warning(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level < 0 {
        let text = message(cinfo);
        if text.contains("Premature end") {
            resume_unwind(Box::new(JpegError::Truncated(text)));
        }
    }
}

fn error_manager() -> jpeg_error_mgr {
    // SAFETY: jpeg_std_error fills every field of a zeroed manager.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { jpeg_std_error(&mut err) };
    err.error_exit = Some(fatal);
    err.emit_message = Some(warning);
    err
}

/// Decodes to 8-bit RGB: (width, height, pixels).
pub fn decode_rgb(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), JpegError> {
    run(|| {
        let d = mozjpeg::Decompress::with_err(error_manager()).from_mem(bytes).map_err(|e| JpegError::Failed(e.to_string()))?;
        let mut started = d.rgb().map_err(|e| JpegError::Failed(e.to_string()))?;
        let (w, h) = (started.width(), started.height());
        let pixels = started.read_scanlines::<u8>().map_err(|e| JpegError::Failed(e.to_string()))?;
        started.finish().map_err(|e| JpegError::Failed(e.to_string()))?;
        if pixels.len() != w * h * 3 {
            return Err(JpegError::Truncated(format!("decoded {} of {} bytes", pixels.len(), w * h * 3)));
        }
        Ok((w, h, pixels))
    })
}

fn run<T>(f: impl FnOnce() -> Result<T, JpegError>) -> Result<T, JpegError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => match payload.downcast::<JpegError>() {
            Ok(e) => Err(*e),
            Err(payload) => match payload.downcast::<String>() {
                Ok(s) => Err(JpegError::Failed(*s)),
                Err(_) => Err(JpegError::Failed("libjpeg failed".into())),
            },
        },
    }
}
