//! Gemma 4 image preprocessing, matching transformers' `Gemma4ImageProcessor`:
//! decode, EXIF orientation, RGB, aspect-preserving resize to multiples of
//! `pooling_kernel_size * patch_size`, rescale, patchify in (row, col, dy, dx, channel)
//! order, (col, row) position ids, zero padding to the maximum patch count.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{Error, Result};
use crate::model::config::ImageProcessorConfig;

/// Images above this many pixels are refused before decoding (decompression bombs).
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// One image ready for the vision encoder.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// `[max_patches, 3 * patch_size^2]`, row-major.
    pub pixel_values: Vec<f32>,
    /// `[max_patches, 2]` as (col, row); -1 for padding.
    pub position_ids: Vec<i64>,
    pub num_soft_tokens: usize,
    /// Size after resizing, (height, width).
    pub resized: (usize, usize),
}

#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub config: ImageProcessorConfig,
    pub max_pixels: u64,
}

impl ImageProcessor {
    pub fn new(config: ImageProcessorConfig) -> Self {
        ImageProcessor { config, max_pixels: DEFAULT_MAX_PIXELS }
    }

    pub fn patch_dim(&self) -> usize {
        3 * self.config.patch_size * self.config.patch_size
    }

    /// Decodes and prepares an encoded image. `name` is used in errors.
    pub fn prepare_bytes(&self, bytes: &[u8], name: &str) -> Result<PreparedImage> {
        let image = decode(bytes, name, self.max_pixels)?;
        self.prepare(&image, name)
    }

    pub fn prepare_path(&self, path: &std::path::Path) -> Result<PreparedImage> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::Image { source_name: name.clone(), message: e.to_string() })?;
        self.prepare_bytes(&bytes, &name)
    }

    pub fn prepare(&self, image: &DynamicImage, name: &str) -> Result<PreparedImage> {
        let cfg = &self.config;
        // The model loader bounds these; a config built by hand must not divide by zero.
        if cfg.patch_size == 0 || cfg.pooling_kernel_size == 0 || cfg.max_soft_tokens == 0 {
            return Err(Error::Image {
                source_name: name.to_string(),
                message: format!(
                    "the image processor config has patch_size {}, pooling_kernel_size {}, max_soft_tokens {}; each must be at least 1",
                    cfg.patch_size, cfg.pooling_kernel_size, cfg.max_soft_tokens
                ),
            });
        }
        let rgb = image.to_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let (th, tw) = if cfg.do_resize {
            target_size(h, w, cfg.patch_size, cfg.max_patches(), cfg.pooling_kernel_size)
                .map_err(|message| Error::Image { source_name: name.to_string(), message })?
        } else {
            (h, w)
        };
        let rgb = if (th, tw) != (h, w) {
            super::image::resize_bicubic(&rgb, tw as u32, th as u32)
        } else {
            rgb
        };

        let p = cfg.patch_size;
        let (ph, pw) = (th / p, tw / p);
        let n = ph * pw;
        let max_patches = cfg.max_patches();
        if n > max_patches {
            return Err(Error::Image {
                source_name: name.to_string(),
                message: format!("{n} patches exceed the maximum of {max_patches}"),
            });
        }
        let dim = self.patch_dim();
        let scale = if cfg.do_rescale { cfg.rescale_factor } else { 1.0 };
        let mut pixel_values = vec![0f32; max_patches * dim];
        let mut position_ids = vec![-1i64; max_patches * 2];
        let raw = rgb.as_raw();
        for row in 0..ph {
            for col in 0..pw {
                let patch = row * pw + col;
                let out = &mut pixel_values[patch * dim..(patch + 1) * dim];
                let mut k = 0;
                for dy in 0..p {
                    let y = row * p + dy;
                    for dx in 0..p {
                        let x = col * p + dx;
                        let px = (y * tw + x) * 3;
                        for c in 0..3 {
                            // transformers rescales in float64 and stores float32.
                            out[k] = (raw[px + c] as f64 * scale) as f32;
                            k += 1;
                        }
                    }
                }
                position_ids[patch * 2] = col as i64;
                position_ids[patch * 2 + 1] = row as i64;
            }
        }
        let k2 = cfg.pooling_kernel_size * cfg.pooling_kernel_size;
        Ok(PreparedImage { pixel_values, position_ids, num_soft_tokens: n / k2, resized: (th, tw) })
    }
}

/// Decodes common formats, refusing images above `max_pixels` before allocating them,
/// and applies the EXIF orientation.
pub fn decode(bytes: &[u8], name: &str, max_pixels: u64) -> Result<DynamicImage> {
    let err = |message: String| Error::Image { source_name: name.to_string(), message };
    if bytes.is_empty() {
        return Err(err("empty file".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(err("unrecognised image format".into()));
    };
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(err(format!(
            "{w}x{h} is {pixels} pixels, above the limit of {max_pixels} (raise it with --max-image-pixels)"
        )));
    }
    if pixels == 0 {
        return Err(err(format!("{w}x{h} image has no pixels")));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut libjpeg_error = None;
    let decoded_jpeg = if format == image::ImageFormat::Jpeg {
        match super::jpeg::decode_rgb(bytes) {
            Ok((jw, jh, px)) => image::RgbImage::from_raw(jw as u32, jh as u32, px).map(DynamicImage::ImageRgb8),
            Err(super::jpeg::JpegError::Truncated(m)) => return Err(err(format!("truncated JPEG: {m}"))),
            // Colour spaces libjpeg cannot turn into RGB (CMYK): the pure-Rust decoder does.
            Err(super::jpeg::JpegError::Failed(m)) => {
                libjpeg_error = Some(m);
                None
            }
        }
    } else {
        None
    };
    let mut image = match decoded_jpeg {
        Some(image) => image,
        None => DynamicImage::from_decoder(decoder).map_err(|e| match &libjpeg_error {
            Some(m) => err(format!("{e} (libjpeg: {m})")),
            None => err(e.to_string()),
        })?,
    };
    image.apply_orientation(orientation);
    Ok(image)
}

/// transformers' `get_aspect_ratio_preserving_size`: the largest (height, width) with both
/// sides multiples of `pooling * patch` and at most `max_patches` patches.
pub fn target_size(
    height: usize,
    width: usize,
    patch_size: usize,
    max_patches: usize,
    pooling: usize,
) -> std::result::Result<(usize, usize), String> {
    if patch_size == 0 || pooling == 0 || max_patches == 0 {
        return Err(format!(
            "patch size {patch_size}, pooling {pooling} and {max_patches} patches: each must be at least 1"
        ));
    }
    if height == 0 || width == 0 {
        return Err(format!("a {width}x{height} image has no pixels"));
    }
    let total_px = (height * width) as f64;
    let target_px = (max_patches * patch_size * patch_size) as f64;
    let factor = (target_px / total_px).sqrt();
    let ideal_h = factor * height as f64;
    let ideal_w = factor * width as f64;
    let side = pooling * patch_size;
    let mut th = (ideal_h / side as f64).floor() as usize * side;
    let mut tw = (ideal_w / side as f64).floor() as usize * side;
    if th == 0 && tw == 0 {
        return Err(format!("cannot resize {width}x{height} to a non-empty multiple of {side} pixels"));
    }
    let max_side = (max_patches / (pooling * pooling)) * side;
    if th == 0 {
        th = side;
        tw = ((width as f64 / height as f64).floor() as usize * side).min(max_side);
    } else if tw == 0 {
        tw = side;
        th = ((height as f64 / width as f64).floor() as usize * side).min(max_side);
    }
    if (th * tw) as f64 > target_px {
        return Err(format!(
            "resizing {width}x{height} to {tw}x{th} exceeds {max_patches} patches of {patch_size} pixels"
        ));
    }
    Ok((th, tw))
}

/// Bicubic resampling exactly as Pillow 13 does it for 8-bit images (Keys cubic, a = -0.5,
/// support scaled when shrinking, fixed-point weights with 22 fractional bits, 8-bit rounding
/// between the two passes), so our pixels match transformers' PIL path bit for bit.
/// Pillow runs the vertical pass first when the height shrinks by more than twice as many
/// pixels as the width, else the horizontal pass first; the order changes the rounding.
pub fn resize_bicubic(src: &image::RgbImage, dst_w: u32, dst_h: u32) -> image::RgbImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (dst_w as usize, dst_h as usize);
    let vertical_first = sh > dh && (sh as i64 - dh as i64) > 2 * (sw as i64 - dw as i64);
    let pixels = src.as_raw().clone();
    let out = if vertical_first {
        let tmp = resample_axis(&pixels, sw, sh, dh, Axis::Vertical);
        resample_axis(&tmp, sw, dh, dw, Axis::Horizontal)
    } else {
        let tmp = resample_axis(&pixels, sw, sh, dw, Axis::Horizontal);
        resample_axis(&tmp, dw, sh, dh, Axis::Vertical)
    };
    image::RgbImage::from_raw(dst_w, dst_h, out).expect("buffer size matches dimensions")
}

#[derive(Clone, Copy, PartialEq)]
enum Axis {
    Horizontal,
    Vertical,
}

/// One separable pass over an RGB buffer of `width x height`, resizing `axis` to `out_len`.
fn resample_axis(src: &[u8], width: usize, height: usize, out_len: usize, axis: Axis) -> Vec<u8> {
    let in_len = if axis == Axis::Horizontal { width } else { height };
    if in_len == out_len {
        return src.to_vec();
    }
    let weights = pil_weights(in_len, out_len);
    let (out_w, out_h) = if axis == Axis::Horizontal { (out_len, height) } else { (width, out_len) };
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        for x in 0..out_w {
            let (start, ws) = &weights[if axis == Axis::Horizontal { x } else { y }];
            let mut acc = [ROUND; 3];
            for (i, &w) in ws.iter().enumerate() {
                let px = match axis {
                    Axis::Horizontal => (y * width + start + i) * 3,
                    Axis::Vertical => ((start + i) * width + x) * 3,
                };
                for c in 0..3 {
                    acc[c] += src[px + c] as i64 * w;
                }
            }
            for c in 0..3 {
                out[(y * out_w + x) * 3 + c] = clip8(acc[c]);
            }
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;
const ROUND: i64 = 1 << (PRECISION_BITS - 1);

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index: first input index and fixed-point weights (PIL's
/// `precompute_coeffs` followed by `normalize_coeffs_8bpc`).
fn pil_weights(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).max(0) as usize).min(in_size);
            let ws: Vec<f64> = (xmin..xmax).map(|x| cubic((x as f64 - center + 0.5) / filterscale)).collect();
            let total: f64 = ws.iter().sum();
            let fixed = ws
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * (1u64 << PRECISION_BITS) as f64;
                    (if scaled < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i64
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_size_matches_transformers_rules() {
        // Values from transformers' get_aspect_ratio_preserving_size (patch 4, 630 patches, pooling 3):
        // 8x8 grows to the patch budget; a side that rounds to 0 becomes one pooled row,
        // and the other side is capped.
        assert_eq!(target_size(8, 8, 4, 630, 3).unwrap(), (96, 96));
        assert_eq!(target_size(40, 1000, 4, 630, 3).unwrap(), (12, 492));
        assert_eq!(target_size(1000, 40, 4, 630, 3).unwrap(), (492, 12));
        assert_eq!(target_size(1, 100000, 4, 630, 3).unwrap(), (12, 840));
        assert_eq!(target_size(3, 5000, 4, 630, 3).unwrap(), (12, 840));
    }

    #[test]
    fn zero_sizes_are_errors_not_divisions_by_zero() {
        assert!(target_size(8, 8, 0, 630, 3).unwrap_err().contains("patch size 0"));
        assert!(target_size(8, 8, 4, 630, 0).unwrap_err().contains("pooling 0"));
        assert!(target_size(8, 8, 4, 0, 3).is_err());
        assert!(target_size(0, 8, 4, 630, 3).unwrap_err().contains("no pixels"));
        let cfg = ImageProcessorConfig {
            patch_size: 0,
            max_soft_tokens: 70,
            pooling_kernel_size: 3,
            rescale_factor: 1.0 / 255.0,
            do_rescale: true,
            do_resize: false,
            do_convert_rgb: true,
        };
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(4, 4));
        let msg = ImageProcessor::new(cfg).prepare(&img, "x.png").unwrap_err().to_string();
        assert!(msg.contains("x.png") && msg.contains("patch_size 0"), "{msg}");
    }

    #[test]
    fn patches_and_positions_follow_row_col_order() {
        let cfg = ImageProcessorConfig {
            patch_size: 2,
            max_soft_tokens: 70,
            pooling_kernel_size: 1,
            rescale_factor: 1.0 / 255.0,
            do_rescale: true,
            do_resize: false,
            do_convert_rgb: true,
        };
        let proc = ImageProcessor::new(cfg);
        let img = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb([(x * 10 + y) as u8, 0, 255]));
        let out = proc.prepare(&DynamicImage::ImageRgb8(img), "test").unwrap();
        assert_eq!(out.num_soft_tokens, 2);
        assert_eq!(&out.position_ids[..6], &[0, 0, 1, 0, -1, -1]);
        // Second patch, (dy=1, dx=0) red channel: pixel (x=2, y=1) = 21.
        let dim = 12;
        assert!((out.pixel_values[dim + 6] - 21.0 / 255.0).abs() < 1e-7);
        assert!((out.pixel_values[2] - 1.0).abs() < 1e-7);
    }

    #[test]
    fn corrupt_and_empty_inputs_are_errors() {
        assert!(decode(b"", "empty", DEFAULT_MAX_PIXELS).is_err());
        assert!(decode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "truncated", DEFAULT_MAX_PIXELS).is_err());
        assert!(decode(b"not an image at all", "text", DEFAULT_MAX_PIXELS).is_err());
    }
}
