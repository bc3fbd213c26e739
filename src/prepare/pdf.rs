//! PDF pages: rendered with hayro and read for their text layer with lopdf (both pure Rust,
//! MIT/Apache-2.0). Both parse untrusted bytes, so panics inside them become page errors.
//!
//! A document is opened once and its pages are rendered one at a time, on demand
//! ([`Document::page`]), so memory holds the pages of one row batch, not of a whole document.

use std::panic::{catch_unwind, AssertUnwindSafe};

use hayro::hayro_interpret::InterpreterSettings;
use hayro::hayro_syntax::Pdf;
use hayro::vello_cpu::color::palette::css::WHITE;
use hayro::vello_cpu::peniko::ImageAlphaType;
use hayro::{render, PixmapSettings, RenderCache, RenderSettings};

pub struct Page {
    pub image: Option<image::RgbImage>,
    pub text: Option<String>,
    /// Set when the page rendered or read only in part, or was not rendered (too large).
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

/// An opened PDF: the page tree is read, no page is rendered yet.
pub struct Document {
    pdf: Pdf,
    text: Option<lopdf::Document>,
}

/// Pixels of a page of `w` x `h` points rendered at `dpi` (before the longest-side limit);
/// infinite when the box is not finite.
pub fn page_pixels(w: f32, h: f32, dpi: f32) -> f64 {
    let scale = dpi as f64 / 72.0;
    let (pw, ph) = ((w as f64 * scale).ceil(), (h as f64 * scale).ceil());
    if pw.is_finite() && ph.is_finite() { pw.max(0.0) * ph.max(0.0) } else { f64::INFINITY }
}

impl Document {
    /// Parses the document's structure. An unreadable file is an error.
    pub fn open(bytes: Vec<u8>) -> Result<Self, String> {
        let text = catch_unwind(|| lopdf::Document::load_mem(&bytes)).ok().and_then(|r| r.ok());
        let pdf = catch_unwind(AssertUnwindSafe(move || Pdf::new(bytes)))
            .map_err(panic_message)?
            .map_err(|e| format!("cannot open: {e:?}"))?;
        if pdf.pages().is_empty() {
            return Err("has no pages".into());
        }
        Ok(Self { pdf, text })
    }

    pub fn page_count(&self) -> usize {
        self.pdf.pages().len()
    }

    /// Renders pages `range` (0-based; pages past the end are left out) at `dpi` and extracts
    /// their text; one render cache serves the range. A page whose box at `dpi` would have more
    /// than `max_pixels` pixels is not rendered: its `error` says so and names the key that
    /// raises the limit. Pages within the limit are scaled down to at most 4096 pixels on
    /// their longest side.
    pub fn pages(&self, range: std::ops::Range<usize>, dpi: f32, max_pixels: u64) -> Vec<Page> {
        let pages = self.pdf.pages();
        let cache = RenderCache::new();
        range.filter(|&i| i < pages.len()).map(|i| self.render_one(&pages[i], i, &cache, dpi, max_pixels)).collect()
    }

    fn render_one<'a>(&self, page: &'a hayro::hayro_syntax::page::Page<'a>, i: usize, cache: &RenderCache<'a>, dpi: f32, max_pixels: u64) -> Page {
        let (w, h) = page.render_dimensions();
        let pixels = page_pixels(w, h, dpi);
        if pixels > max_pixels as f64 {
            return Page {
                image: None,
                text: None,
                error: Some(format!(
                    "page box {w} x {h} pt at {dpi} dpi is {:.1} megapixels, over source.max_page_pixels = {max_pixels}; \
                     the page was not rendered (lower source.dpi or raise source.max_page_pixels)",
                    pixels / 1e6
                )),
            };
        }
        let mut errors = Vec::new();
        let scale = (dpi / 72.0).min(MAX_SIDE / w.max(h).max(1.0));
        let settings = PixmapSettings { x_scale: scale, y_scale: scale, bg_color: WHITE };
        let image = match catch_unwind(AssertUnwindSafe(|| {
            render(page, cache, &InterpreterSettings::default(), &RenderSettings::default(), &settings)
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
        let text = match &self.text {
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
        Page { image, text, error: (!errors.is_empty()).then(|| errors.join("; ")) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A PDF with one empty page per media box (points), written with lopdf.
    pub(crate) fn pdf_with_pages(boxes: &[(f32, f32)]) -> Vec<u8> {
        use lopdf::{dictionary, Document as Doc, Object, Stream};
        let mut doc = Doc::with_version("1.5");
        let pages_id = doc.new_object_id();
        let content = doc.add_object(Stream::new(dictionary! {}, b"0 0 m 1 1 l S".to_vec()));
        let kids: Vec<Object> = boxes
            .iter()
            .map(|&(w, h)| {
                doc.add_object(dictionary! {
                    "Type" => "Page",
                    "Parent" => pages_id,
                    "MediaBox" => vec![Object::Integer(0), Object::Integer(0), Object::Real(w), Object::Real(h)],
                    "Contents" => content,
                })
                .into()
            })
            .collect();
        let count = kids.len() as i64;
        doc.objects.insert(pages_id, Object::Dictionary(dictionary! { "Type" => "Pages", "Kids" => kids, "Count" => count }));
        let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog);
        let mut out = Vec::new();
        doc.save_to(&mut out).unwrap();
        out
    }

    #[test]
    fn pages_render_on_demand_and_oversized_boxes_are_refused() {
        let doc = Document::open(pdf_with_pages(&[(72.0, 144.0), (100_000.0, 100_000.0), (72.0, 72.0)])).unwrap();
        assert_eq!(doc.page_count(), 3);
        let mut first = doc.pages(0..1, 72.0, 40_000_000);
        assert_eq!(first.len(), 1);
        let first = first.remove(0);
        assert!(first.error.is_none(), "{:?}", first.error);
        let img = first.image.unwrap();
        assert_eq!((img.width(), img.height()), (72, 144));
        let huge = doc.pages(1..2, 96.0, 40_000_000).remove(0);
        assert!(huge.image.is_none());
        let e = huge.error.unwrap();
        assert!(e.contains("source.max_page_pixels") && e.contains("not rendered"), "{e}");
        // The same limit counts pixels at the requested resolution.
        assert!(doc.pages(2..3, 72.0, 72 * 72 - 1)[0].error.as_ref().unwrap().contains("max_page_pixels"));
        assert!(doc.pages(2..3, 72.0, 72 * 72)[0].error.is_none());
        // Past the end: nothing.
        assert_eq!(doc.pages(2..10, 72.0, 40_000_000).len(), 1);
    }

    fn assert_send<T: Send>() {}

    #[test]
    fn documents_can_move_between_threads() {
        assert_send::<Document>();
    }

    #[test]
    fn unreadable_documents_are_errors_not_panics() {
        assert!(Document::open(b"%PDF-1.4\nnot a pdf".to_vec()).is_err());
        assert!(Document::open(Vec::new()).is_err());
    }

    #[test]
    fn page_pixels_of_odd_boxes() {
        assert_eq!(page_pixels(72.0, 72.0, 72.0), 5184.0);
        assert_eq!(page_pixels(612.0, 792.0, 144.0), 1224.0 * 1584.0);
        assert!(page_pixels(f32::INFINITY, 1.0, 96.0).is_infinite());
        assert!(page_pixels(f32::NAN, 1.0, 96.0).is_infinite());
        assert_eq!(page_pixels(-5.0, 10.0, 72.0), 0.0);
    }
}
