//! Published benchmark layouts, read as distributed: DocVQA, VQAv2 and TextVQA (ten answers
//! per question), COCO captions (images and their captions) and ChartQA (the Hugging Face
//! Parquet export).
//!
//! The JSON layouts become rows, one JSON object per item, that the suite writes as JSON lines
//! and runs. Every row has `id` (a string, unique in the file), `answers` (every reference
//! answer, a list of strings), `image` (an absolute path) and, but for captions, `question`;
//! the columns of [`Layout::columns`] name them for the suite. What else a row carries, per
//! layout, is in the documentation of [`rows`].
//!
//! ChartQA is read by the `hf_parquet` source itself (its images are bytes inside the file);
//! [`chartqa_table`] only adds what the suite needs and the export lacks: a row id, and the
//! class names of `human_or_machine`. [`CHARTQA`] names its columns.
//!
//! A file that does not fit its layout is an error naming the file, the item (its index, and
//! its id where that is known) and the field, e.g. `questions[3].question_id is missing`.
//! Large files are parsed one item at a time: the file's bytes and the rows are held, never
//! the whole JSON tree.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// A published layout that becomes rows (see [`rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// DocVQA (single page): `{"data": [{"questionId", "question", "answers", "image", ...}]}`.
    Docvqa,
    /// VQAv2 (and VQA v1, abstract scenes): a questions file and an annotations file.
    Vqav2,
    /// TextVQA 0.5.1: `{"data": [{"question_id", "question", "image_id", "answers", ...}]}`.
    Textvqa,
    /// COCO captions: `{"images": [...], "annotations": [{"image_id", "caption"}]}`.
    CocoCaptions,
}

impl Layout {
    /// The layout's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Docvqa => "DocVQA",
            Layout::Vqav2 => "VQAv2",
            Layout::Textvqa => "TextVQA",
            Layout::CocoCaptions => "COCO captions",
        }
    }

    /// The columns of its rows, as the suite's benchmark keys want them.
    pub fn columns(self) -> Columns {
        let (question, breakdown): (_, &'static [&'static str]) = match self {
            Layout::Docvqa => (Some("question"), &[]),
            Layout::Vqav2 => (Some("question"), &["answer_type", "question_type"]),
            Layout::Textvqa => (Some("question"), &[]),
            Layout::CocoCaptions => (None, &[]),
        };
        Columns { id: "id", question, answers: "answers", image: "image", breakdown }
    }
}

/// Column names of a benchmark's rows: `id_column`, `question_column` (none for captions),
/// `answers_column`, `image_column`, and the columns worth a breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    pub id: &'static str,
    pub question: Option<&'static str>,
    pub answers: &'static str,
    pub image: &'static str,
    pub breakdown: &'static [&'static str],
}

/// Where a layout's files are.
#[derive(Debug, Clone, Default)]
pub struct LayoutPaths {
    /// The layout's JSON file: for VQAv2 the questions file, else the one file.
    pub path: PathBuf,
    /// VQAv2 only: the annotations file (answers, question and answer types). Without it (the
    /// test and test-dev splits publish none) rows have no answers.
    pub annotations: Option<PathBuf>,
    /// The directory image names are relative to; default: the directory of `path`.
    pub images: Option<PathBuf>,
}

/// The rows of a layout, in the file's order.
///
/// - DocVQA: each item as the file gives it (`questionId`, `question_types`, `docId`, ...) with
///   `id` (= `questionId`, as a string; `questionId` becomes a string too), `answers` (`[]` for
///   the test split, which has none) and `image` resolved against `images` (default: the
///   JSON's directory).
/// - VQAv2: `id` (`question_id`), `question`, `answers` (all of the annotation's
///   `answers[].answer`, ten in the published files), `image`
///   (`COCO_{data_subtype}_{image_id:012}.jpg` in `images`; test-dev images are named after
///   test2015; abstract scenes `abstract_v002_{data_subtype}_{image_id:012}.png`),
///   `image_id`, `question_type`, `answer_type` and `multiple_choice_answer`. With an
///   annotations file, questions and annotations must match one to one (as the reference
///   evaluation requires); without one, `answers` is `[]` and the types are absent: such rows
///   run (e.g. for a test-dev submission) but cannot be scored here.
/// - TextVQA: `id` (`question_id`), `question`, `answers` (the ten answers; `[]` for the test
///   split, which has none), `image` (`{image_id}.jpg` in `images`), `image_id`,
///   `image_classes` (joined with ", ") and `set_name`.
/// - COCO captions: one row per image: `id` (the image's `id`), `answers` (its captions, in
///   file order), `image` (`file_name` in `images`), `file_name`, `width`, `height`. With an
///   `annotations` array every image needs a caption; a file without one (the test image
///   lists) gives `answers: []`.
pub fn rows(layout: Layout, paths: &LayoutPaths) -> Result<Vec<Value>> {
    if let (false, Some(a)) = (layout == Layout::Vqav2, &paths.annotations) {
        return Err(source_err(a, format!("the {} layout takes no separate annotations file", layout.name())));
    }
    let images = match &paths.images {
        Some(d) => absolute(d)?,
        None => absolute(paths.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?,
    };
    match layout {
        Layout::Docvqa => docvqa(&paths.path, &images),
        Layout::Vqav2 => vqav2(&paths.path, paths.annotations.as_deref(), &images),
        Layout::Textvqa => textvqa(&paths.path, &images),
        Layout::CocoCaptions => coco_captions(&paths.path, &images),
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map(|a| crate::spec::clean(&a)).map_err(|e| Error::io(p, e))
}

fn source_err(path: &Path, message: impl fmt::Display) -> Error {
    Error::Source { source_name: path.display().to_string(), message: message.to_string() }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

// ---- Reading JSON one item at a time ---------------------------------------------------

/// What a JSON value is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Visitor methods for the values that are not the expected shape: they are recorded as what
/// they are (`Not(kind)`), not errors of the parser, so that the message can name the field.
macro_rules! other_shapes {
    ($not:path) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
            Ok($not("a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
            Ok($not("a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
            Ok($not("a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
            Ok($not("a number"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> {
            Ok($not("a string"))
        }
        fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok($not("null"))
        }
        fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok($not("null"))
        }
    };
}

/// A JSON object read as `T` (a struct of the fields a layout uses; others are skipped
/// unread), or what the value is instead.
enum Shaped<T> {
    Object(T),
    Not(&'static str),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shaped<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Shaped<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Shaped::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Shaped::Not("a list"))
            }
            other_shapes!(Shaped::Not);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A list of objects, each read on its own as `T` (or why it is not one, as the end of a
/// message that starts with the item), or what the value is instead of a list.
enum Listed<T> {
    List(Vec<std::result::Result<T, String>>),
    Not(&'static str),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Listed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for V<T> {
            type Value = Listed<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                // One item's tree at a time, converted right away.
                while let Some(v) = seq.next_element::<Value>()? {
                    items.push(match v {
                        Value::Object(_) => serde_json::from_value(v).map_err(|e| format!(": {e}")),
                        other => Err(format!(" is {}, not an object", kind(&other))),
                    });
                }
                Ok(Listed::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Listed::Not("an object"))
            }
            other_shapes!(Listed::Not);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Reads a layout's JSON file as `T` (its top-level object).
fn read_doc<T: DeserializeOwned>(path: &Path, layout: Layout) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_slice::<Shaped<T>>(&bytes) {
        Ok(Shaped::Object(doc)) => Ok(doc),
        Ok(Shaped::Not(k)) => Err(source_err(path, format!("the file is {k}, not a JSON object ({} layout)", layout.name()))),
        Err(source) => Err(Error::Json { path: path.to_path_buf(), source }),
    }
}

/// The items of a top-level list `key`: an error when it is missing or not a list.
fn items<T>(path: &Path, layout: Layout, key: &str, list: Option<Listed<T>>) -> Result<Vec<std::result::Result<T, String>>> {
    match list {
        Some(Listed::List(items)) => Ok(items),
        Some(Listed::Not(k)) => Err(source_err(path, format!("\"{key}\" is {k}, not a list ({} layout)", layout.name()))),
        None => Err(source_err(path, format!("no \"{key}\" array ({} layout)", layout.name()))),
    }
}

/// An item of a file: checks its fields, naming the file, the item and the field in errors.
struct Item<'a> {
    path: &'a Path,
    /// `questions[3]`
    at: String,
}

impl<'a> Item<'a> {
    fn new(path: &'a Path, list: &str, index: usize) -> Self {
        Item { path, at: format!("{list}[{index}]") }
    }

    fn err(&self, message: impl fmt::Display) -> Error {
        source_err(self.path, format!("{}{message}", self.at))
    }

    /// The item itself: an object (it was read as one) or the reason it is not.
    fn read<T>(&self, item: std::result::Result<T, String>) -> Result<T> {
        item.map_err(|e| self.err(e))
    }

    fn missing(&self, field: &str) -> Error {
        self.err(format!(".{field} is missing or null"))
    }

    fn string(&self, field: &str, v: Option<Value>) -> Result<String> {
        match v {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.err(format!(".{field} is {}, not a string", kind(&other)))),
            None => Err(self.missing(field)),
        }
    }

    fn optional_string(&self, field: &str, v: Option<Value>) -> Result<Option<String>> {
        v.map(|v| self.string(field, Some(v))).transpose()
    }

    /// An identifier: a non-empty string or an integer, as text.
    fn id(&self, field: &str, v: Option<Value>) -> Result<String> {
        match v {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            Some(Value::String(_)) => Err(self.err(format!(".{field} is empty"))),
            Some(other) => Err(self.err(format!(".{field} is {}, not a string or an integer", kind(&other)))),
            None => Err(self.missing(field)),
        }
    }

    fn unsigned(&self, field: &str, v: Option<Value>) -> Result<u64> {
        match v {
            Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64().unwrap_or_default()),
            Some(Value::Number(n)) => Err(self.err(format!(".{field} is {n}, not a non-negative integer"))),
            Some(other) => Err(self.err(format!(".{field} is {}, not a non-negative integer", kind(&other)))),
            None => Err(self.missing(field)),
        }
    }

    fn strings(&self, field: &str, v: Option<Value>) -> Result<Vec<String>> {
        match v {
            Some(Value::Array(a)) => a
                .into_iter()
                .enumerate()
                .map(|(j, x)| match x {
                    Value::String(s) => Ok(s),
                    other => Err(self.err(format!(".{field}[{j}] is {}, not a string", kind(&other)))),
                })
                .collect(),
            Some(other) => Err(self.err(format!(".{field} is {}, not a list", kind(&other)))),
            None => Err(self.missing(field)),
        }
    }

    /// The item's id must not repeat: `seen` maps ids to the index of their first item.
    fn unique(&self, field: &str, id: &str, index: usize, seen: &mut HashMap<String, usize>, list: &str) -> Result<()> {
        match seen.insert(id.to_string(), index) {
            Some(first) => Err(self.err(format!(": {field} {id} repeats {list}[{first}]"))),
            None => Ok(()),
        }
    }
}

// ---- DocVQA -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct DocvqaDoc {
    data: Option<Listed<Map<String, Value>>>,
}

fn docvqa(path: &Path, images: &Path) -> Result<Vec<Value>> {
    let doc: DocvqaDoc = read_doc(path, Layout::Docvqa)?;
    let mut seen = HashMap::new();
    let mut rows = Vec::new();
    for (i, item) in items(path, Layout::Docvqa, "data", doc.data)?.into_iter().enumerate() {
        let at = Item::new(path, "data", i);
        let mut q = at.read(item)?;
        let id = at.id("questionId", q.remove("questionId"))?;
        at.unique("questionId", &id, i, &mut seen, "data")?;
        let question = at.string("question", q.get("question").cloned())?;
        let image = at.string("image", q.get("image").cloned())?;
        let answers = match q.remove("answers") {
            None | Some(Value::Null) => Vec::new(),
            v => at.strings("answers", v)?,
        };
        let mut row = Map::new();
        row.insert("id".into(), id.clone().into());
        row.insert("questionId".into(), id.into());
        row.insert("question".into(), question.into());
        row.insert("answers".into(), answers.into());
        row.insert("image".into(), images.join(image).display().to_string().into());
        for (k, v) in q {
            row.entry(k).or_insert(v);
        }
        rows.push(Value::Object(row));
    }
    Ok(rows)
}

// ---- VQAv2 ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct VqaQuestionsDoc {
    questions: Option<Listed<VqaQuestion>>,
    data_type: Option<Value>,
    data_subtype: Option<Value>,
}

#[derive(Deserialize)]
struct VqaQuestion {
    question_id: Option<Value>,
    image_id: Option<Value>,
    question: Option<Value>,
}

#[derive(Deserialize)]
struct VqaAnnotationsDoc {
    annotations: Option<Listed<VqaAnnotation>>,
}

#[derive(Deserialize)]
struct VqaAnnotation {
    question_id: Option<Value>,
    image_id: Option<Value>,
    answers: Option<Value>,
    question_type: Option<Value>,
    answer_type: Option<Value>,
    multiple_choice_answer: Option<Value>,
}

/// What a question's annotation gives its row.
struct VqaAnswers {
    index: usize,
    image_id: Option<u64>,
    answers: Vec<String>,
    question_type: Option<String>,
    answer_type: Option<String>,
    multiple_choice_answer: Option<String>,
}

/// The image file name of a VQA image id, from the questions file's `data_type` and
/// `data_subtype`.
fn vqa_image_name(data_type: &str, data_subtype: &str, image_id: u64) -> Option<String> {
    // test-dev is a subset of the test images, which are named after the test split.
    let split = data_subtype.replacen("test-dev", "test", 1);
    match data_type {
        "mscoco" => Some(format!("COCO_{split}_{image_id:012}.jpg")),
        "abstract_v002" => Some(format!("abstract_v002_{split}_{image_id:012}.png")),
        _ => None,
    }
}

fn vqav2(path: &Path, annotations: Option<&Path>, images: &Path) -> Result<Vec<Value>> {
    let doc: VqaQuestionsDoc = read_doc(path, Layout::Vqav2)?;
    let top = |field: &str, v: Option<Value>| match v {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(source_err(path, format!("\"{field}\" is {}, not a string (VQAv2 layout)", kind(&other)))),
        None => Err(source_err(path, format!("no \"{field}\" (VQAv2 layout: it names the images)"))),
    };
    let data_type = top("data_type", doc.data_type)?;
    let data_subtype = top("data_subtype", doc.data_subtype)?;
    if vqa_image_name(&data_type, &data_subtype, 0).is_none() {
        return Err(source_err(path, format!("\"data_type\" is {data_type:?}; the VQA layouts name images for \"mscoco\" and \"abstract_v002\"")));
    }
    let questions = items(path, Layout::Vqav2, "questions", doc.questions)?;
    let mut by_question = match annotations {
        Some(a) => Some(vqa_annotations(a)?),
        None => None,
    };
    let mut seen = HashMap::new();
    let mut rows = Vec::with_capacity(questions.len());
    for (i, item) in questions.into_iter().enumerate() {
        let at = Item::new(path, "questions", i);
        let q = at.read(item)?;
        let id = at.id("question_id", q.question_id)?;
        at.unique("question_id", &id, i, &mut seen, "questions")?;
        let image_id = at.unsigned("image_id", q.image_id)?;
        let question = at.string("question", q.question)?;
        let image = vqa_image_name(&data_type, &data_subtype, image_id).expect("data_type checked");
        let mut row = json!({
            "id": id,
            "question": question,
            "answers": [],
            "image": images.join(image).display().to_string(),
            "image_id": image_id,
        });
        if let (Some(by_question), Some(a)) = (&mut by_question, annotations) {
            let Some(ann) = by_question.remove(&id) else {
                return Err(at.err(format!(": question_id {id} has no annotation in {}", file_name(a))));
            };
            if let Some(other) = ann.image_id.filter(|&x| x != image_id) {
                return Err(source_err(
                    a,
                    format!("annotations[{}]: image_id {other} differs from image_id {image_id} of question_id {id} in {}", ann.index, file_name(path)),
                ));
            }
            row["answers"] = ann.answers.into();
            for (k, v) in [("question_type", ann.question_type), ("answer_type", ann.answer_type), ("multiple_choice_answer", ann.multiple_choice_answer)] {
                if let Some(v) = v {
                    row[k] = v.into();
                }
            }
        }
        rows.push(row);
    }
    // Annotations of questions the file does not have: the files are of different splits.
    if let (Some(left), Some(a)) = (by_question, annotations) {
        if let Some((id, ann)) = left.iter().min_by_key(|(_, ann)| ann.index) {
            return Err(source_err(a, format!("annotations[{}]: question_id {id} is not a question of {}", ann.index, file_name(path))));
        }
    }
    Ok(rows)
}

/// The annotations of a VQA annotations file, by question id.
fn vqa_annotations(path: &Path) -> Result<HashMap<String, VqaAnswers>> {
    let doc: VqaAnnotationsDoc = read_doc(path, Layout::Vqav2)?;
    let mut out: HashMap<String, VqaAnswers> = HashMap::new();
    for (j, item) in items(path, Layout::Vqav2, "annotations", doc.annotations)?.into_iter().enumerate() {
        let at = Item::new(path, "annotations", j);
        let a = at.read(item)?;
        let id = at.id("question_id", a.question_id)?;
        if let Some(first) = out.get(&id) {
            return Err(at.err(format!(": question_id {id} repeats annotations[{}]", first.index)));
        }
        let image_id = a.image_id.map(|v| at.unsigned("image_id", Some(v))).transpose()?;
        let answers = match a.answers {
            Some(Value::Array(list)) => list
                .into_iter()
                .enumerate()
                .map(|(k, entry)| match entry {
                    Value::Object(mut m) => at.string(&format!("answers[{k}].answer"), m.remove("answer")),
                    other => Err(at.err(format!(".answers[{k}] is {}, not an object", kind(&other)))),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(other) => return Err(at.err(format!(".answers is {}, not a list", kind(&other)))),
            None => return Err(at.missing("answers")),
        };
        let entry = VqaAnswers {
            index: j,
            image_id,
            answers,
            question_type: at.optional_string("question_type", a.question_type)?,
            answer_type: at.optional_string("answer_type", a.answer_type)?,
            multiple_choice_answer: at.optional_string("multiple_choice_answer", a.multiple_choice_answer)?,
        };
        out.insert(id, entry);
    }
    Ok(out)
}

// ---- TextVQA ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct TextvqaDoc {
    data: Option<Listed<TextvqaItem>>,
}

#[derive(Deserialize)]
struct TextvqaItem {
    question_id: Option<Value>,
    question: Option<Value>,
    image_id: Option<Value>,
    answers: Option<Value>,
    image_classes: Option<Value>,
    set_name: Option<Value>,
}

fn textvqa(path: &Path, images: &Path) -> Result<Vec<Value>> {
    let doc: TextvqaDoc = read_doc(path, Layout::Textvqa)?;
    let mut seen = HashMap::new();
    let mut rows = Vec::new();
    for (i, item) in items(path, Layout::Textvqa, "data", doc.data)?.into_iter().enumerate() {
        let at = Item::new(path, "data", i);
        let q = at.read(item)?;
        let id = at.id("question_id", q.question_id)?;
        at.unique("question_id", &id, i, &mut seen, "data")?;
        let question = at.string("question", q.question)?;
        let image_id = at.id("image_id", q.image_id)?;
        // The test split has no answers.
        let answers = match q.answers {
            None => Vec::new(),
            v => at.strings("answers", v)?,
        };
        let classes = q.image_classes.map(|v| at.strings("image_classes", Some(v))).transpose()?;
        let set_name = at.optional_string("set_name", q.set_name)?;
        rows.push(json!({
            "id": id,
            "question": question,
            "answers": answers,
            "image": images.join(format!("{image_id}.jpg")).display().to_string(),
            "image_id": image_id,
            "image_classes": classes.map(|c| c.join(", ")),
            "set_name": set_name,
        }));
    }
    Ok(rows)
}

// ---- COCO captions ----------------------------------------------------------------------

#[derive(Deserialize)]
struct CocoDoc {
    images: Option<Listed<CocoImage>>,
    annotations: Option<Listed<CocoCaption>>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: Option<Value>,
    file_name: Option<Value>,
    width: Option<Value>,
    height: Option<Value>,
}

#[derive(Deserialize)]
struct CocoCaption {
    image_id: Option<Value>,
    caption: Option<Value>,
}

fn coco_captions(path: &Path, images: &Path) -> Result<Vec<Value>> {
    let doc: CocoDoc = read_doc(path, Layout::CocoCaptions)?;
    let mut seen = HashMap::new();
    let mut rows = Vec::new();
    for (i, item) in items(path, Layout::CocoCaptions, "images", doc.images)?.into_iter().enumerate() {
        let at = Item::new(path, "images", i);
        let img = at.read(item)?;
        let id = at.id("id", img.id)?;
        at.unique("id", &id, i, &mut seen, "images")?;
        let name = at.string("file_name", img.file_name)?;
        let width = img.width.map(|v| at.unsigned("width", Some(v))).transpose()?;
        let height = img.height.map(|v| at.unsigned("height", Some(v))).transpose()?;
        rows.push(json!({
            "id": id,
            "answers": [],
            "image": images.join(&name).display().to_string(),
            "file_name": name,
            "width": width,
            "height": height,
        }));
    }
    // Image lists of the test splits have no captions.
    let Some(captions) = doc.annotations else { return Ok(rows) };
    for (j, item) in items(path, Layout::CocoCaptions, "annotations", Some(captions))?.into_iter().enumerate() {
        let at = Item::new(path, "annotations", j);
        let c = at.read(item)?;
        let image_id = at.id("image_id", c.image_id)?;
        let caption = at.string("caption", c.caption)?;
        let Some(&i) = seen.get(&image_id) else {
            return Err(at.err(format!(": image_id {image_id} is not in \"images\"")));
        };
        if let Some(Value::Array(a)) = rows[i].get_mut("answers") {
            a.push(caption.into());
        }
    }
    if let Some(i) = rows.iter().position(|r| r["answers"].as_array().is_some_and(|a| a.is_empty())) {
        return Err(source_err(path, format!("images[{i}]: image {} has no caption in \"annotations\"", rows[i]["id"].as_str().unwrap_or_default())));
    }
    Ok(rows)
}

// ---- ChartQA (Hugging Face Parquet) -----------------------------------------------------

/// Columns of a ChartQA Parquet export after [`chartqa_table`] (`format = "hf_parquet"`):
/// the question is `query`, the reference answers `label` (a list of strings), the image the
/// `{bytes, path}` struct `image`; `human_or_machine` says who wrote the question.
pub const CHARTQA: Columns = Columns { id: "id", question: Some("query"), answers: "label", image: "image", breakdown: &["human_or_machine"] };

/// Class names of `human_or_machine` as HuggingFaceM4/ChartQA publishes them (0 human,
/// 1 machine), used when a file's `huggingface` metadata does not name them.
pub const CHARTQA_CLASSES: [&str; 2] = ["human", "machine"];

/// Copies a ChartQA Parquet export (a file, or a glob of the shards of a split) to `dest`, a
/// Parquet file the `hf_parquet` source reads with [`CHARTQA`]'s columns. The export has no
/// row id: `id` is added, the row's position in the split (files in name order, from 0), so
/// it is stable for the same files. `human_or_machine` becomes its class name (from the
/// file's `huggingface` schema metadata, else [`CHARTQA_CLASSES`]). Every other column, the
/// image bytes among them, is copied as it is. Returns the number of rows.
pub fn chartqa_table(path: &Path, dest: &Path) -> Result<usize> {
    use polars::prelude::*;
    let files = parquet_files(path)?;
    // Written next to `dest` and renamed when complete: `dest` is never a partial table.
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut out_schema: Option<Schema> = None;
    let mut writer: Option<polars::io::parquet::write::BatchedWriter<std::fs::File>> = None;
    let mut next = 0usize;
    for file in &files {
        let schema = chartqa_schema(file)?;
        if schema.contains("id") {
            return Err(source_err(file, "the file already has an \"id\" column; read it with the hf_parquet source as it is"));
        }
        let names = chartqa_class_names(file)?;
        // Every file of a split has the same columns; the output's schema is the first's.
        let mut fields = vec![Field::new("id".into(), DataType::String)];
        for (name, dtype) in schema.iter() {
            let dtype = if name.as_str() == "human_or_machine" { DataType::String } else { dtype.clone() };
            fields.push(Field::new(name.clone(), dtype));
        }
        let this = Schema::from_iter(fields);
        match &out_schema {
            None => {
                let f = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
                writer = Some(ParquetWriter::new(f).batched(&this).map_err(Error::polars(partial.display()))?);
                out_schema = Some(this);
            }
            Some(first) if *first != this => {
                return Err(source_err(file, format!("its columns differ from those of {} (ChartQA Parquet layout)", files[0].display())));
            }
            Some(_) => {}
        }
        let writer = writer.as_mut().expect("created with the schema");
        let lf = LazyFrame::scan_parquet(PlRefPath::new(file.display().to_string()), ScanArgsParquet::default()).map_err(Error::polars(file.display()))?;
        let batches = lf.collect_batches(Engine::Streaming, true, std::num::NonZeroUsize::new(256), false).map_err(Error::polars(file.display()))?;
        let mut in_file = 0usize;
        for df in batches {
            let mut df = df.map_err(Error::polars(file.display()))?;
            let n = df.height();
            let ids: Vec<String> = (next..next + n).map(|i| i.to_string()).collect();
            let classes = df.column("human_or_machine").and_then(|c| c.cast(&DataType::Int64)).map_err(Error::polars(file.display()))?;
            let classes = classes.i64().map_err(Error::polars(file.display()))?;
            let mut labels: Vec<Option<String>> = Vec::with_capacity(n);
            for (k, v) in classes.iter().enumerate() {
                labels.push(match v {
                    None => None,
                    Some(c) => match usize::try_from(c).ok().and_then(|c| names.get(c)) {
                        Some(name) => Some(name.clone()),
                        None => {
                            return Err(source_err(file, format!("row {} (id {}): human_or_machine is {c}, not a class of {names:?}", in_file + k, next + k)));
                        }
                    },
                });
            }
            df.replace("human_or_machine", Column::new("human_or_machine".into(), labels)).map_err(Error::polars(file.display()))?;
            df.insert_column(0, Column::new("id".into(), ids)).map_err(Error::polars(file.display()))?;
            writer.write_batch(&df).map_err(Error::polars(partial.display()))?;
            next += n;
            in_file += n;
        }
    }
    writer.expect("at least one file").finish().map_err(Error::polars(partial.display()))?;
    std::fs::rename(&partial, dest).map_err(|e| Error::io(dest, e))?;
    Ok(next)
}

/// The files of a path or glob, in name order.
fn parquet_files(path: &Path) -> Result<Vec<PathBuf>> {
    let p = path.display().to_string();
    if !p.contains(['*', '?', '[']) {
        return if path.is_file() { Ok(vec![path.to_path_buf()]) } else { Err(source_err(path, "file not found")) };
    }
    let mut files: Vec<PathBuf> = glob::glob(&p).map_err(|e| source_err(path, format!("glob: {e}")))?.filter_map(|f| f.ok()).filter(|f| f.is_file()).collect();
    files.sort();
    if files.is_empty() {
        return Err(source_err(path, "no file matches the glob"));
    }
    Ok(files)
}

/// The file's columns, checked against the ChartQA layout: `image` a `{bytes, path}` struct,
/// `query` a string, `label` a list of strings, `human_or_machine` an integer.
fn chartqa_schema(file: &Path) -> Result<polars::prelude::Schema> {
    use polars::prelude::*;
    let mut lf = LazyFrame::scan_parquet(PlRefPath::new(file.display().to_string()), ScanArgsParquet::default()).map_err(|e| source_err(file, e))?;
    let schema = lf.collect_schema().map_err(|e| source_err(file, e))?;
    let layout = "ChartQA Parquet layout";
    for (column, want) in [("image", "a {bytes, path} struct"), ("query", "a string"), ("label", "a list of strings"), ("human_or_machine", "an integer (a class label)")] {
        let Some(dtype) = schema.get(column) else {
            let have: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
            return Err(source_err(file, format!("no \"{column}\" column ({layout}; the file has {})", have.join(", "))));
        };
        let fits = match column {
            "image" => matches!(dtype, DataType::Struct(f) if f.iter().any(|f| f.name().as_str() == "bytes" && matches!(f.dtype(), DataType::Binary | DataType::BinaryOffset))),
            "query" => matches!(dtype, DataType::String),
            "label" => matches!(dtype, DataType::List(inner) if matches!(**inner, DataType::String)),
            _ => dtype.is_integer(),
        };
        if !fits {
            return Err(source_err(file, format!("column \"{column}\" is {dtype}, not {want} ({layout})")));
        }
    }
    Ok((*schema).clone())
}

/// Class names of `human_or_machine`: the `names` of its ClassLabel in the datasets library's
/// `huggingface` schema metadata, else the published ones.
fn chartqa_class_names(file: &Path) -> Result<Vec<String>> {
    use polars::prelude::*;
    let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let mut reader = ParquetReader::new(f);
    let metadata = reader.get_metadata().map_err(|e| source_err(file, e))?;
    let text = metadata.key_value_metadata().as_ref().and_then(|kv| kv.iter().find(|k| k.key == "huggingface")).and_then(|k| k.value.clone());
    let published = || CHARTQA_CLASSES.iter().map(|s| s.to_string()).collect();
    let Some(text) = text else { return Ok(published()) };
    let meta: Value = serde_json::from_str(&text).map_err(|e| source_err(file, format!("\"huggingface\" schema metadata: {e}")))?;
    match meta.pointer("/info/features/human_or_machine/names") {
        None => Ok(published()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Ok(a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()),
        Some(other) => Err(source_err(file, format!("\"huggingface\" schema metadata: features.human_or_machine.names is {}, not a list of strings", kind(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files `tools/make_eval_layouts.py` writes.
    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("evals/fixtures")
    }

    fn paths(path: PathBuf, annotations: Option<PathBuf>, images: Option<PathBuf>) -> LayoutPaths {
        LayoutPaths { path, annotations, images }
    }

    fn ids(rows: &[Value]) -> Vec<&str> {
        rows.iter().map(|r| r["id"].as_str().expect("id is a string")).collect()
    }

    fn answers(row: &Value) -> Vec<&str> {
        row["answers"].as_array().expect("answers is a list").iter().map(|a| a.as_str().expect("answers are strings")).collect()
    }

    /// Every row's image is an absolute path to an existing file named `name(row)`.
    fn images_exist(rows: &[Value]) {
        for r in rows {
            let p = Path::new(r["image"].as_str().expect("image is a string"));
            assert!(p.is_absolute() && p.is_file(), "{}", p.display());
        }
    }

    fn error(layout: Layout, p: LayoutPaths) -> String {
        match rows(layout, &p) {
            Ok(rows) => panic!("{} read a file that does not fit: {rows:?}", layout.name()),
            Err(e) => e.to_string(),
        }
    }

    /// Writes `doc` as `name` in `dir`.
    fn write(dir: &Path, name: &str, doc: &Value) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, doc.to_string()).unwrap();
        p
    }

    fn read(p: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    #[test]
    fn docvqa_items_keep_their_fields_with_ids_and_absolute_images() {
        let dir = fixtures().join("docvqa");
        let rows = rows(Layout::Docvqa, &paths(dir.join("val_v1.0.json"), None, None)).unwrap();
        assert_eq!(ids(&rows), ["57001", "57002", "57003"]);
        assert_eq!(rows[0]["questionId"], "57001", "questionId becomes a string, as the suite read it");
        assert_eq!(rows[0]["question"], "What is the invoice number?");
        assert_eq!(answers(&rows[0]), ["INV-0042", "inv-0042"]);
        assert_eq!(rows[2]["image"].as_str().unwrap(), dir.join("documents/abcd0002_3.png").display().to_string());
        assert_eq!(rows[1]["docId"], 101, "other fields are kept");
        assert_eq!(rows[1]["question_types"], json!(["table/list"]));
        images_exist(&rows);
        // The test split has no answers: the rows run, with none.
        let tmp = tempfile::tempdir().unwrap();
        let mut doc = read(&dir.join("val_v1.0.json"));
        for q in doc["data"].as_array_mut().unwrap() {
            q.as_object_mut().unwrap().remove("answers");
        }
        let p = write(tmp.path(), "test_v1.0.json", &doc);
        let rows = super::rows(Layout::Docvqa, &paths(p, None, Some(dir.clone()))).unwrap();
        assert!(rows.iter().all(|r| r["answers"] == json!([])), "{rows:?}");
        images_exist(&rows);
    }

    #[test]
    fn vqav2_joins_questions_and_their_ten_answers() {
        let dir = fixtures().join("vqav2");
        let p = paths(dir.join("v2_OpenEnded_mscoco_val2014_questions.json"), Some(dir.join("v2_mscoco_val2014_annotations.json")), Some(dir.join("val2014")));
        let rows = rows(Layout::Vqav2, &p).unwrap();
        assert_eq!(ids(&rows), ["42000", "42001", "73000"]);
        assert_eq!(rows[0]["question"], "What colour is the square?");
        assert_eq!(answers(&rows[0]), ["green", "green", "green", "green", "green", "green", "green", "dark green", "green", "teal"]);
        assert_eq!(answers(&rows[2]).len(), 10);
        assert_eq!((&rows[1]["answer_type"], &rows[1]["question_type"]), (&json!("yes/no"), &json!("is there a")));
        assert_eq!(rows[2]["multiple_choice_answer"], "1");
        assert_eq!(rows[2]["image_id"], 73);
        assert!(rows[2]["image"].as_str().unwrap().ends_with("/val2014/COCO_val2014_000000000073.jpg"), "{}", rows[2]["image"]);
        images_exist(&rows);
        assert_eq!(Layout::Vqav2.columns().breakdown, ["answer_type", "question_type"]);
    }

    #[test]
    fn vqav2_without_annotations_runs_without_answers_and_names_test_dev_images_after_test() {
        let dir = fixtures().join("vqav2");
        let tmp = tempfile::tempdir().unwrap();
        let mut doc = read(&dir.join("v2_OpenEnded_mscoco_val2014_questions.json"));
        doc["data_subtype"] = "test-dev2015".into();
        let p = write(tmp.path(), "v2_OpenEnded_mscoco_test-dev2015_questions.json", &doc);
        let rows = rows(Layout::Vqav2, &paths(p.clone(), None, Some(tmp.path().join("test2015")))).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r["answers"] == json!([]) && r.get("answer_type").is_none()), "{rows:?}");
        assert_eq!(rows[0]["image"].as_str().unwrap(), tmp.path().join("test2015/COCO_test2015_000000000042.jpg").display().to_string());
        doc["data_type"] = "abstract_v002".into();
        doc["data_subtype"] = "val2015".into();
        let p = write(tmp.path(), "abstract.json", &doc);
        let rows = super::rows(Layout::Vqav2, &paths(p, None, Some(tmp.path().into()))).unwrap();
        assert!(rows[2]["image"].as_str().unwrap().ends_with("/abstract_v002_val2015_000000000073.png"), "{}", rows[2]["image"]);
    }

    #[test]
    fn vqav2_files_of_different_splits_are_an_error_naming_the_question() {
        let dir = fixtures().join("vqav2");
        let tmp = tempfile::tempdir().unwrap();
        let questions = dir.join("v2_OpenEnded_mscoco_val2014_questions.json");
        let mut ann = read(&dir.join("v2_mscoco_val2014_annotations.json"));
        // A question without its annotation.
        let removed = ann["annotations"].as_array_mut().unwrap().remove(1);
        let a = write(tmp.path(), "a.json", &ann);
        let e = error(Layout::Vqav2, paths(questions.clone(), Some(a), None));
        assert!(e.contains("questions[1]: question_id 42001 has no annotation in a.json"), "{e}");
        // An annotation of a question the questions file lacks.
        let mut extra = removed.clone();
        extra["question_id"] = 99.into();
        ann["annotations"].as_array_mut().unwrap().push(removed);
        ann["annotations"].as_array_mut().unwrap().push(extra);
        let a = write(tmp.path(), "b.json", &ann);
        let e = error(Layout::Vqav2, paths(questions.clone(), Some(a), None));
        assert!(e.contains("b.json: annotations[3]: question_id 99 is not a question of v2_OpenEnded_mscoco_val2014_questions.json"), "{e}");
        // Another image than the question's.
        ann["annotations"].as_array_mut().unwrap().pop();
        ann["annotations"][0]["image_id"] = 7.into();
        let a = write(tmp.path(), "c.json", &ann);
        let e = error(Layout::Vqav2, paths(questions.clone(), Some(a), None));
        assert!(e.contains("annotations[0]: image_id 7 differs from image_id 42 of question_id 42000"), "{e}");
        // The same question twice.
        let mut q = read(&questions);
        let first = q["questions"][0].clone();
        q["questions"].as_array_mut().unwrap().push(first);
        let qp = write(tmp.path(), "q.json", &q);
        let e = error(Layout::Vqav2, paths(qp, None, None));
        assert!(e.contains("questions[3]: question_id 42000 repeats questions[0]"), "{e}");
    }

    #[test]
    fn textvqa_rows_have_the_ten_answers_and_the_image_by_id() {
        let dir = fixtures().join("textvqa");
        let rows = rows(Layout::Textvqa, &paths(dir.join("TextVQA_0.5.1_val.json"), None, Some(dir.join("train_images")))).unwrap();
        assert_eq!(ids(&rows), ["91001", "91002", "91003"]);
        assert_eq!(rows[2]["question"], "what number is on the jersey?");
        assert_eq!(answers(&rows[2]), ["23", "23", "23", "23", "23", "23", "twenty three", "23", "28", "unanswerable"]);
        assert!(rows.iter().all(|r| answers(r).len() == 10));
        assert_eq!(rows[0]["image_classes"], "Street sign, Signage");
        assert_eq!(rows[0]["set_name"], "val");
        assert!(rows[0]["image"].as_str().unwrap().ends_with("/train_images/0a1b2c3d4e5f6071.jpg"));
        images_exist(&rows);
    }

    #[test]
    fn coco_captions_give_one_row_per_image_with_all_its_captions() {
        let dir = fixtures().join("coco");
        let json = dir.join("annotations/captions_val2014.json");
        let rows = rows(Layout::CocoCaptions, &paths(json.clone(), None, Some(dir.join("val2014")))).unwrap();
        assert_eq!(ids(&rows), ["139", "285", "632"]);
        assert_eq!(answers(&rows[0]), ["A green square on a red background.", "A red picture with a green box in the middle.", "A square shape, red around it.", "Red and green colours."]);
        assert_eq!(answers(&rows[1]).len(), 3);
        assert_eq!(answers(&rows[2]).len(), 3);
        assert!(rows.iter().all(|r| r.get("question").is_none()));
        assert_eq!((&rows[1]["file_name"], &rows[1]["width"], &rows[1]["height"]), (&json!("COCO_val2014_000000000285.jpg"), &json!(40), &json!(30)));
        images_exist(&rows);
        assert_eq!(Layout::CocoCaptions.columns().question, None);
        // Without an images directory, file names are relative to the JSON's directory.
        let rows = super::rows(Layout::CocoCaptions, &paths(json.clone(), None, None)).unwrap();
        assert_eq!(rows[0]["image"].as_str().unwrap(), dir.join("annotations/COCO_val2014_000000000139.jpg").display().to_string());
        // A test image list (no annotations) gives rows without captions; an image without a
        // caption where there are captions is an error.
        let tmp = tempfile::tempdir().unwrap();
        let mut doc = read(&json);
        let captions = doc.as_object_mut().unwrap().remove("annotations").unwrap();
        let p = write(tmp.path(), "image_info_test2014.json", &doc);
        let rows = super::rows(Layout::CocoCaptions, &paths(p, None, None)).unwrap();
        assert!(rows.len() == 3 && rows.iter().all(|r| r["answers"] == json!([])));
        doc["annotations"] = Value::Array(captions.as_array().unwrap().iter().filter(|c| c["image_id"] != 285).cloned().collect());
        let p = write(tmp.path(), "some.json", &doc);
        let e = error(Layout::CocoCaptions, paths(p, None, None));
        assert!(e.contains("images[1]: image 285 has no caption in \"annotations\""), "{e}");
    }

    #[test]
    fn malformed_files_are_errors_naming_the_file_the_item_and_the_field() {
        let f = fixtures();
        let vqa = f.join("vqav2");
        let cases = [
            (Layout::Docvqa, paths(f.join("docvqa/malformed.json"), None, None), "malformed.json: data[1].questionId is missing"),
            (
                Layout::Vqav2,
                paths(vqa.join("malformed/questions.json"), Some(vqa.join("v2_mscoco_val2014_annotations.json")), None),
                "questions.json: questions[1].question_id is missing",
            ),
            (
                Layout::Vqav2,
                paths(vqa.join("v2_OpenEnded_mscoco_val2014_questions.json"), Some(vqa.join("malformed/annotations.json")), None),
                "annotations.json: annotations[2].answers is a string, not a list",
            ),
            (Layout::Textvqa, paths(f.join("textvqa/malformed.json"), None, None), "malformed.json: data[2].answers[3] is a number, not a string"),
            (Layout::CocoCaptions, paths(f.join("coco/malformed.json"), None, None), "malformed.json: annotations[4].caption is missing"),
        ];
        for (layout, p, want) in cases {
            let e = error(layout, p);
            assert!(e.contains(want), "{}: {e}", layout.name());
        }
    }

    #[test]
    fn a_file_of_another_shape_is_an_error_naming_the_layout_and_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let vqa = fixtures().join("vqav2");
        let cases = [
            (Layout::Vqav2, json!({"data_type": "mscoco", "data_subtype": "val2014", "data": []}), "no \"questions\" array (VQAv2 layout)"),
            (Layout::Vqav2, json!({"data_type": "mscoco", "data_subtype": "val2014", "questions": {"a": 1}}), "\"questions\" is an object, not a list (VQAv2 layout)"),
            (Layout::Vqav2, json!({"data_type": "mscoco", "questions": []}), "no \"data_subtype\""),
            (Layout::Vqav2, json!({"data_type": "flickr", "data_subtype": "val2014", "questions": []}), "\"data_type\" is \"flickr\""),
            (Layout::Vqav2, json!([{"question_id": 1, "answer": "yes"}]), "the file is a list, not a JSON object (VQAv2 layout)"),
            (Layout::Textvqa, json!({"questions": []}), "no \"data\" array (TextVQA layout)"),
            (Layout::Textvqa, json!({"data": [{"question_id": 1, "question": "q", "image_id": "a"}, "x"]}), "data[1] is a string, not an object"),
            (Layout::Textvqa, json!({"data": [{"question_id": 1.5, "question": "q", "image_id": "a"}]}), "data[0].question_id is a number, not a string or an integer"),
            (Layout::Docvqa, json!({"data": "none"}), "\"data\" is a string, not a list (DocVQA layout)"),
            (Layout::Docvqa, json!({"data": [{"questionId": 1, "question": "q"}]}), "data[0].image is missing"),
            (Layout::CocoCaptions, json!({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "c"}]}), "annotations[0]: image_id 2 is not in \"images\""),
            (Layout::CocoCaptions, json!({"annotations": []}), "no \"images\" array (COCO captions layout)"),
        ];
        for (i, (layout, doc, want)) in cases.into_iter().enumerate() {
            let p = write(tmp.path(), &format!("case{i}.json"), &doc);
            let e = error(layout, paths(p, None, None));
            assert!(e.contains(&format!("case{i}.json")) && e.contains(want), "case {i}: {e}");
        }
        let p = write(tmp.path(), "broken.json", &json!({}));
        std::fs::write(&p, b"{\"data\": [").unwrap();
        assert!(error(Layout::Textvqa, paths(p, None, None)).contains("invalid JSON"));
        // An annotations file only where the layout has one.
        let e = error(Layout::Textvqa, paths(vqa.join("v2_OpenEnded_mscoco_val2014_questions.json"), Some(vqa.join("v2_mscoco_val2014_annotations.json")), None));
        assert!(e.contains("the TextVQA layout takes no separate annotations file"), "{e}");
    }

    #[test]
    fn rows_run_as_json_lines_with_their_images() {
        let f = fixtures();
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            (Layout::Docvqa, paths(f.join("docvqa/val_v1.0.json"), None, None)),
            (Layout::Vqav2, paths(f.join("vqav2/v2_OpenEnded_mscoco_val2014_questions.json"), Some(f.join("vqav2/v2_mscoco_val2014_annotations.json")), Some(f.join("vqav2/val2014")))),
            (Layout::Textvqa, paths(f.join("textvqa/TextVQA_0.5.1_val.json"), None, Some(f.join("textvqa/train_images")))),
            (Layout::CocoCaptions, paths(f.join("coco/annotations/captions_val2014.json"), None, Some(f.join("coco/val2014")))),
        ];
        for (layout, p) in cases {
            let rows = rows(layout, &p).unwrap();
            let file = tmp.path().join(format!("{layout:?}.jsonl"));
            std::fs::write(&file, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
            let c = layout.columns();
            // The images are outside the directory of the JSON lines file.
            let text = format!(
                "name = \"t\"\n[source]\nkind = \"jsonl\"\npath = {:?}\nid_column = {:?}\nimage_column = {:?}\nconfine_images = false\n[model]\ndir = \"m\"\n[[task]]\nname = \"c\"\nkind = \"caption\"\n[sink]\ndir = \"out\"\n",
                file.display().to_string(),
                c.id,
                c.image
            );
            std::fs::write(tmp.path().join("spec.toml"), text).unwrap();
            let spec = crate::spec::PipelineSpec::load(&tmp.path().join("spec.toml")).unwrap();
            let read = source_rows(&spec);
            assert_eq!(read.iter().map(|r| r.input_id.as_str()).collect::<Vec<_>>(), ids(&rows), "{}", layout.name());
            for (r, row) in read.iter().zip(&rows) {
                assert!(r.error.is_none() && r.image.is_some(), "{}: {:?}", layout.name(), r.error);
                assert_eq!(r.columns[c.answers], row["answers"]);
                if let Some(q) = c.question {
                    assert_eq!(r.columns[q], row[q]);
                }
                for b in c.breakdown {
                    assert!(r.columns[*b].is_string(), "{}: {b}", layout.name());
                }
            }
        }
    }

    /// A pipeline spec reading `path` as the `hf_parquet` source with `source` keys.
    fn hf_parquet_spec(dir: &Path, path: &Path, source: &str) -> crate::spec::PipelineSpec {
        let text = format!(
            "name = \"t\"\n[source]\nkind = \"hf_parquet\"\npath = {:?}\nimage_column = \"image\"\n{source}\n[model]\ndir = \"m\"\n[[task]]\nname = \"q\"\nkind = \"vqa\"\nquestion_column = \"query\"\n[sink]\ndir = \"out\"\n",
            path.display().to_string()
        );
        let spec = dir.join("spec.toml");
        std::fs::write(&spec, text).unwrap();
        crate::spec::PipelineSpec::load(&spec).unwrap()
    }

    fn source_rows(spec: &crate::spec::PipelineSpec) -> Vec<crate::source::SourceRow> {
        crate::source::open(spec).unwrap().flat_map(|b| b.unwrap()).collect()
    }

    fn png_of(row: &crate::source::SourceRow) -> Vec<u8> {
        match &row.image {
            Some(crate::source::RowImage::Encoded { bytes, .. }) => {
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not PNG bytes");
                image::load_from_memory(bytes).expect("the image decodes");
                bytes.clone()
            }
            other => panic!("no encoded image: {other:?} ({:?})", row.error),
        }
    }

    #[test]
    fn the_hf_parquet_source_reads_the_chartqa_export_with_its_image_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let file = fixtures().join("chartqa/data/test-00000-of-00001.parquet");
        let rows = source_rows(&hf_parquet_spec(tmp.path(), &file, ""));
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert!(r.error.is_none(), "{:?}", r.error);
            png_of(r);
            assert!(r.columns.get("image").is_none(), "image bytes are not a template value");
        }
        assert_eq!(rows[0].columns["query"], "What is the value of the tallest bar?");
        assert_eq!(rows[1].columns["label"], json!(["2019"]));
        assert_eq!(rows[1].columns["human_or_machine"], 1);
    }

    #[test]
    fn chartqa_table_adds_row_ids_and_class_names_and_keeps_the_images() {
        let tmp = tempfile::tempdir().unwrap();
        let file = fixtures().join("chartqa/data/test-00000-of-00001.parquet");
        let dest = tmp.path().join("chartqa.parquet");
        assert_eq!(chartqa_table(&file, &dest).unwrap(), 4);
        let c = CHARTQA;
        let source = format!("id_column = {:?}", c.id);
        let rows = source_rows(&hf_parquet_spec(tmp.path(), &dest, &source));
        let raw = source_rows(&hf_parquet_spec(tmp.path(), &file, ""));
        assert_eq!(rows.iter().map(|r| r.input_id.as_str()).collect::<Vec<_>>(), ["0", "1", "2", "3"]);
        let classes: Vec<&Value> = rows.iter().map(|r| &r.columns["human_or_machine"]).collect();
        assert_eq!(classes, [&json!("human"), &json!("machine"), &json!("machine"), &json!("human")]);
        for (r, o) in rows.iter().zip(&raw) {
            assert!(r.error.is_none(), "{:?}", r.error);
            assert_eq!(png_of(r), png_of(o), "the image bytes are copied as they are");
            assert_eq!(r.columns[c.question.unwrap()], o.columns["query"]);
            assert_eq!(r.columns[c.answers], o.columns["label"]);
        }
        // The shards of a split (a glob), in name order: ids go on from one file to the next.
        let shards = tmp.path().join("data");
        std::fs::create_dir_all(&shards).unwrap();
        for n in ["test-00000-of-00002.parquet", "test-00001-of-00002.parquet"] {
            std::fs::copy(&file, shards.join(n)).unwrap();
        }
        let dest = tmp.path().join("both.parquet");
        assert_eq!(chartqa_table(&shards.join("test-*.parquet"), &dest).unwrap(), 8);
        let rows = source_rows(&hf_parquet_spec(tmp.path(), &dest, &source));
        assert_eq!(rows.iter().map(|r| r.input_id.as_str()).collect::<Vec<_>>(), ["0", "1", "2", "3", "4", "5", "6", "7"]);
        assert_eq!(rows[5].columns["label"], json!(["2019"]));
    }

    #[test]
    fn a_chartqa_file_that_does_not_fit_is_an_error_naming_the_column() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = fixtures().join("chartqa/malformed.parquet");
        let e = chartqa_table(&bad, &tmp.path().join("x.parquet")).unwrap_err().to_string();
        assert!(e.contains("malformed.parquet") && e.contains("column \"label\" is str, not a list of strings (ChartQA Parquet layout)"), "{e}");
        let e = chartqa_table(&tmp.path().join("none-*.parquet"), &tmp.path().join("y.parquet")).unwrap_err().to_string();
        assert!(e.contains("no file matches"), "{e}");
        // A Parquet file of another layout: the missing column is named.
        let mut df = polars::prelude::df!("question" => ["q"], "answer" => ["a"]).unwrap();
        let p = tmp.path().join("other.parquet");
        polars::prelude::ParquetWriter::new(std::fs::File::create(&p).unwrap()).finish(&mut df).unwrap();
        let e = chartqa_table(&p, &tmp.path().join("z.parquet")).unwrap_err().to_string();
        assert!(e.contains("no \"image\" column (ChartQA Parquet layout; the file has question, answer)"), "{e}");
        // A class label out of range (no metadata: the published names).
        use polars::prelude::*;
        let file = fixtures().join("chartqa/data/test-00000-of-00001.parquet");
        let mut df = LazyFrame::scan_parquet(PlRefPath::new(file.display().to_string()), ScanArgsParquet::default()).unwrap().collect().unwrap();
        df.replace("human_or_machine", Column::new("human_or_machine".into(), [0i64, 5, 1, 0])).unwrap();
        let p = tmp.path().join("classes.parquet");
        ParquetWriter::new(std::fs::File::create(&p).unwrap()).finish(&mut df).unwrap();
        let dest = tmp.path().join("w.parquet");
        let e = chartqa_table(&p, &dest).unwrap_err().to_string();
        assert!(e.contains("classes.parquet: row 1 (id 1): human_or_machine is 5, not a class of [\"human\", \"machine\"]"), "{e}");
        assert!(!dest.exists(), "no partial table");
    }
}
