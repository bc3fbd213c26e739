//! PDF pages: rendered with hayro and read for their text layer with lopdf (both pure Rust,
//! MIT/Apache-2.0). Both parse untrusted bytes, so panics inside them become page errors.

use std::panic::{catch_unwind, AssertUnwindSafe};

use hayro::hayro_interpret::InterpreterSettings;
use hayro::hayro_syntax::Pdf;
use hayro::vello_cpu::color::palette::css::WHITE;
use hayro::vello_cpu::peniko::ImageAlphaType;
use hayro::{render, PixmapSettings, RenderCache, RenderSettings};

pub struct Page {
    pub image: Option<image::RgbImage>,
    pub text: Option<String>,
    /// Set when the page rendered or read only in part.
    pub error: Option<String>,
}

/// Largest side of a rendered page, in pixels (the model resizes anyway).
const MAX_SIDE: f32 = 4096.0;

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the PDF library panicked".into())
}

/// Renders every page at `dpi` and extracts its text. An unreadable file is an error.
pub fn render_pages(bytes: &[u8], dpi: f32) -> Result<Vec<Page>, String> {
    let pdf = catch_unwind(|| Pdf::new(bytes.to_vec()))
        .map_err(panic_message)?
        .map_err(|e| format!("cannot open: {e:?}"))?;
    let text_doc = catch_unwind(|| lopdf::Document::load_mem(bytes)).ok().and_then(|r| r.ok());
    let pages = pdf.pages();
    if pages.is_empty() {
        return Err("has no pages".into());
    }
    let cache = RenderCache::new();
    let mut out = Vec::with_capacity(pages.len());
    for (i, page) in pages.iter().enumerate() {
        let mut errors = Vec::new();
        let (w, h) = page.render_dimensions();
        let scale = (dpi / 72.0).min(MAX_SIDE / w.max(h).max(1.0));
        let settings = PixmapSettings { x_scale: scale, y_scale: scale, bg_color: WHITE };
        let image = match catch_unwind(AssertUnwindSafe(|| {
            render(page, &cache, &InterpreterSettings::default(), &RenderSettings::default(), &settings)
        })) {
            Ok(pixmap) => {
                let (pw, ph) = (pixmap.width() as u32, pixmap.height() as u32);
                let rgba = pixmap.take_rgba8(ImageAlphaType::Alpha);
                let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
                image::RgbImage::from_raw(pw, ph, rgb)
            }
            Err(p) => {
                errors.push(format!("rendering failed: {}", panic_message(p)));
                None
            }
        };
        let text = match &text_doc {
            Some(doc) => match catch_unwind(AssertUnwindSafe(|| doc.extract_text(&[i as u32 + 1]))) {
                Ok(Ok(t)) => Some(t),
                Ok(Err(e)) => {
                    errors.push(format!("text layer: {e}"));
                    None
                }
                Err(p) => {
                    errors.push(format!("text layer: {}", panic_message(p)));
                    None
                }
            },
            None => None,
        };
        if image.is_none() && errors.is_empty() {
            errors.push("rendered to an empty image".into());
        }
        out.push(Page { image, text, error: (!errors.is_empty()).then(|| errors.join("; ")) });
    }
    Ok(out)
}
