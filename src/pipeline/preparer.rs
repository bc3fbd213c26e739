//! Stage 2: screen each prompt with the input filters, then decode images and tokenize. A
//! failure here is that item's failed row; the rest go on.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::model_stage::image_source;
use super::screening::{set_filter_columns, Filters};
use super::tasks::{template_messages, transcript, PreparedItem, Provenance, WorkItem};
use super::Finished;
use crate::filters::{Outcome, Stage};
use crate::model::{Preparer, Request};
use crate::source::ChatPart;
use crate::spec::TaskSpec;

pub(crate) struct PrepareStage {
    pub preparer: Arc<Preparer>,
    pub tasks: Vec<TaskSpec>,
    pub provenance: Provenance,
    pub filters: Filters,
    pub item_rx: mpsc::Receiver<WorkItem>,
    pub prep_tx: mpsc::Sender<PreparedItem>,
    pub row_tx: mpsc::Sender<Finished>,
}

impl PrepareStage {
    pub fn run(mut self) {
        while let Some(item) = self.item_rx.blocking_recv() {
            let sent = match self.prepare(item) {
                Ok(p) => self.prep_tx.blocking_send(p).is_ok(),
                Err(f) => self.row_tx.blocking_send(*f).is_ok(),
            };
            if !sent {
                return;
            }
        }
    }

    /// The item ready for the model, or its finished row (filtered out or failed).
    fn prepare(&self, mut item: WorkItem) -> Result<PreparedItem, Box<Finished>> {
        let task = &self.tasks[item.task];
        // A conversation's text parts, as the model will see them (redacted by the filters).
        let mut chat_messages = item.chat.as_ref().map(|c| c.messages.clone());
        if let Some(set) = &self.filters.input {
            match &mut chat_messages {
                None => {
                    let screening = set.screen(&item.prompt, Some(Stage::Input));
                    item.decisions = screening.decisions;
                    // The model (and the stored prompt) see the redacted text.
                    item.prompt = screening.text;
                }
                Some(messages) => {
                    // Each text part on its own (what is redacted is what the model reads);
                    // spans are made offsets into the stored transcript.
                    let (_, ranges) = transcript(messages);
                    for (m, p, range) in ranges {
                        if let ChatPart::Text(text) = &mut messages[m].parts[p] {
                            let screening = set.screen(text, Some(Stage::Input));
                            for mut d in screening.decisions {
                                d.span = d.span.map(|[a, b]| [a + range.start, b + range.start]);
                                item.decisions.push(d);
                            }
                            *text = screening.text;
                        }
                    }
                    item.prompt = transcript(messages).0;
                }
            }
            let outcome = crate::filters::outcome(&item.decisions);
            if matches!(outcome, Outcome::Drop | Outcome::Quarantine) {
                let mut r = self.provenance.row(&item, task);
                set_filter_columns(&mut r, &item.decisions);
                return Err(Box::new(Finished::new(r, outcome)));
            }
        }
        let prepared = match (&chat_messages, &item.chat) {
            (Some(messages), Some(chat)) => {
                let images: Vec<_> = chat.images.iter().map(image_source).collect();
                self.preparer.prepare_chat(&template_messages(messages, item.system.as_deref()), &images)
            }
            _ => {
                let request = Request {
                    system: item.system.clone(),
                    prompt: item.prompt.clone(),
                    images: item.image.iter().map(image_source).collect(),
                };
                self.preparer.prepare(&request)
            }
        };
        match prepared {
            Ok(prepared) => Ok(PreparedItem { item, prepared }),
            Err(e) => {
                let mut r = self.provenance.row(&item, task);
                r.error = Some(e.to_string());
                if self.filters.any() {
                    set_filter_columns(&mut r, &item.decisions);
                }
                Err(Box::new(Finished::new(r, crate::filters::outcome(&item.decisions))))
            }
        }
    }
}
