//! Prompt rendering with the model's own `chat_template.jinja` (minijinja, with Python
//! string-method compatibility because Hugging Face templates call `.strip()` and friends).

use serde::Serialize;

use crate::error::{Error, Result};

/// One content item of a message, as Hugging Face chat templates expect it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Content {
    Text { text: String },
    Image {},
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: Vec<Content>,
}

impl Message {
    /// A user turn: the images first, then the text (the layout Gemma's examples use).
    pub fn user(text: &str, num_images: usize) -> Self {
        let mut content: Vec<Content> = (0..num_images).map(|_| Content::Image {}).collect();
        content.push(Content::Text { text: text.to_string() });
        Message { role: "user".into(), content }
    }

    pub fn system(text: &str) -> Self {
        Message { role: "system".into(), content: vec![Content::Text { text: text.to_string() }] }
    }
}

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source).map_err(|e| Error::ChatTemplate(e.to_string()))?;
        Ok(ChatTemplate { env, bos_token, eos_token })
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| Error::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| Error::ChatTemplate(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_turns_with_python_methods() {
        let src = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{% for c in m.content %}\
                   {% if c.type == 'image' %}[img]{% else %}{{ c.text.strip() }}{% endif %}{% endfor %}\
                   {% endfor %}{% if add_generation_prompt %}<model>{% endif %}";
        let t = ChatTemplate::new(src.into(), "<bos>".into(), "<eos>".into()).unwrap();
        let out = t.render(&[Message::system(" be brief "), Message::user("hi ", 2)], true).unwrap();
        assert_eq!(out, "<bos><system>be brief<user>[img][img]hi<model>");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no') }}".into(), String::new(), String::new()).unwrap();
        assert!(t.render(&[], false).is_err());
    }
}
